import os
import random
import signal
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from latentflows.training import Callback


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
def pets_parquet(tmp_path_factory):
    """The embedded photos as one parquet file in the hub schema (image, label, dog): a data
    file as a user would pass it, made from what every clone has, so nothing skips."""
    import pyarrow.parquet as pq

    from latentflows.data import embedded_files

    path = tmp_path_factory.mktemp("parquet") / "oxford-pets-64.parquet"
    tables = [pq.read_table(file) for file in embedded_files()]
    import pyarrow as pa

    pq.write_table(pa.concat_tables(tables), path)
    return path


@pytest.fixture(scope="session")
def pets():
    from latentflows import load_images

    return load_images()


@pytest.fixture(scope="session")
def small_pets(pets):
    """A stratified slice of the real embedded pets: 240 images."""
    from latentflows.runs import apply_limit

    return apply_limit(pets, 240, seed=0)


def global_state():
    """What a test may change for the tests after it: thread count, switches, handlers."""
    return {
        "torch threads": torch.get_num_threads(),
        "deterministic algorithms": (torch.are_deterministic_algorithms_enabled(),
                                     torch.is_deterministic_algorithms_warn_only_enabled()),
        "default dtype": torch.get_default_dtype(),
        "grad mode": torch.is_grad_enabled(),
        "cudnn flags": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic),
        "matmul precision": torch.get_float32_matmul_precision(),
        "signal handlers": {name: signal.getsignal(getattr(signal, name)) for name in ("SIGINT", "SIGTERM")},
    }


@pytest.fixture(autouse=True)
def deterministic():
    """Each test starts from seeded random generators and leaves the process as it found it:
    the generators' states are put back, and a test that changes the thread count, a
    determinism or precision switch, the default dtype or a signal handler fails here, so
    that no test's result depends on the tests that ran before it (CI runs them in random order)."""
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    before = global_state()
    torch.manual_seed(0)
    yield
    torch.set_rng_state(states[0])
    random.setstate(states[1])
    np.random.set_state(states[2])
    after = global_state()
    changed = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
    assert not changed, f"the test did not restore the global state it changed (before, after): {changed}"


@pytest.fixture(scope="session")
def tiny_config():
    """A training config small enough for seconds on CPU, with real data."""
    from latentflows import PRESETS
    from latentflows.cli.options import with_options

    return with_options(PRESETS["quick"], width=8, embedding_dim=64, ae_epochs=2, ae_batch_size=32, couplings=3, channels=8,
                        flow_epochs=3, flow_batch_size=64).with_values(
        {"stages.flow.config.patience": None})


class InterruptAt(Callback):
    """A callback that raises KeyboardInterrupt (Ctrl-C) after a given stage's epoch."""

    def __init__(self, stage, epoch):
        self.stage, self.epoch = stage, epoch

    def on_epoch_end(self, trainer, record):
        if (record.stage, record.epoch) == (self.stage, self.epoch):
            raise KeyboardInterrupt


@contextmanager
def interrupting(monkeypatch, stage, epoch):
    """Inside the block, every ``Trainer`` raises a Ctrl-C after ``stage``'s ``epoch`` (its checkpoint written)."""
    import latentflows as lf

    original_init = lf.training.Trainer.__init__

    def with_interrupt(self, *init_args, **init_kwargs):
        init_kwargs["callbacks"] = [*init_kwargs.get("callbacks", ()), InterruptAt(stage, epoch)]
        original_init(self, *init_args, **init_kwargs)

    monkeypatch.setattr(lf.training.Trainer, "__init__", with_interrupt)
    try:
        yield
    finally:
        monkeypatch.setattr(lf.training.Trainer, "__init__", original_init)


def train_until_interrupted(monkeypatch, stage, epoch, *args, **kwargs):
    """``lf.train(*args, **kwargs)`` stopped by a Ctrl-C after ``stage``'s ``epoch`` (its checkpoint written)."""
    import latentflows as lf

    with interrupting(monkeypatch, stage, epoch), pytest.raises(KeyboardInterrupt):
        lf.train(*args, **kwargs)

