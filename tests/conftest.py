import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_PARQUET = Path(os.environ.get("LATENTFLOWS_SHARED_DATA", REPO.parent / "shared" / "data")) / "oxford-pets-64.parquet"


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Tests never read or write the user's decode cache."""
    path = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("LATENTFLOWS_CACHE")
    os.environ["LATENTFLOWS_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("LATENTFLOWS_CACHE", None)
    else:
        os.environ["LATENTFLOWS_CACHE"] = previous


@pytest.fixture(autouse=True, scope="session")
def no_downloads():
    """Tests never reach the network (the FID weights download is tested with a stand-in)."""
    previous = os.environ.get("LATENTFLOWS_NO_DOWNLOAD")
    os.environ["LATENTFLOWS_NO_DOWNLOAD"] = "1"
    yield
    if previous is None:
        os.environ.pop("LATENTFLOWS_NO_DOWNLOAD", None)
    else:
        os.environ["LATENTFLOWS_NO_DOWNLOAD"] = previous


@pytest.fixture(scope="session")
def shared_parquet():
    if not SHARED_PARQUET.is_file():
        pytest.skip(f"shared data not found at {SHARED_PARQUET}")
    return SHARED_PARQUET


@pytest.fixture(scope="session")
def pets():
    from latentflows import load_images

    return load_images()


@pytest.fixture(scope="session")
def small_pets(pets):
    """A stratified slice of the real embedded pets: 240 images."""
    keep, _ = pets.split(1 - 240 / len(pets), seed=0)
    return keep


@pytest.fixture(autouse=True)
def deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_config():
    """A training config small enough for seconds on CPU, with real data."""
    from dataclasses import replace

    from latentflows import PRESETS

    return replace(PRESETS["quick"], width=8, fc_dim=64, embedding_dim=32, ae_epochs=2, ae_batch_size=32,
                   couplings=3, hidden=[32], flow_epochs=3, flow_batch_size=64, flow_patience=None)
