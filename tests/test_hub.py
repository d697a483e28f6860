"""The Hugging Face Hub: save_pretrained / from_pretrained / push, the model card, hub ids as RUN.

Nothing here reaches the network: downloads and uploads go to stand-ins, and the offline
tests run huggingface_hub's own code with offline mode on (or the connection refused).
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import constants as hub_constants
from huggingface_hub import errors as hub_errors
from PIL import Image

import latentflows as lf
from latentflows import hub
from latentflows.errors import ModelFileError
from latentflows.flows import ConditionalRealNVP
from latentflows.hub import HubError
from latentflows.runs import RunFolder

MISSING = "someone/nothing: no such model on the Hugging Face Hub (or it is private: log in with `hf auth login`)"


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path):
    """A safety net: huggingface_hub is offline and its cache is empty, unless a test says otherwise."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)  # no local folder is named like an owner


def tiny_pipeline(classes=("cat", "dog")) -> lf.LatentFlowPipeline:
    pipeline = lf.LatentFlowPipeline(lf.ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
                                     ConditionalRealNVP(8, context_size=len(classes), couplings=2, hidden=[8]),
                                     list(classes), lf.PRESETS["quick"].as_dict(),
                                     {"train_seconds": 12.3, "flow_best_epoch": 2})
    with torch.no_grad():  # no weight left at its (often zero) initial value
        for parameter in pipeline.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return pipeline.eval()


def assert_same(a: lf.LatentFlowPipeline, b: lf.LatentFlowPipeline) -> None:
    assert a.class_names == b.class_names and a.config == b.config and a.summary == b.summary
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    for label in a.class_names:
        x, y = a.generate(label, 5, temperature=0.9, seed=3), b.generate(label, 5, temperature=0.9, seed=3)
        assert torch.equal(x.images, y.images) and torch.equal(x.log_prob, y.log_prob)
    images, labels = a.generate("cat", 4, seed=1).images, torch.tensor([0, 1, 0, 1])
    assert torch.equal(a.log_prob(images, labels), b.log_prob(images, labels))


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` with its content hash and modification time."""
    return {path.relative_to(folder).as_posix(): (path.is_dir(), path.stat().st_mtime_ns,
                                                  None if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest())
            for path in sorted(folder.rglob("*"))}


@pytest.fixture
def run(tmp_path):
    """A finished, evaluated run folder with everything a run has (most of which is not uploaded)."""
    pipeline = tiny_pipeline()
    folder = tmp_path / "runs" / "tiny"
    pipeline.save(folder)
    RunFolder(folder).write_settings(lf.PRESETS["quick"], {"source": "/home/me/secret/pets.parquet", "limit": None})
    (folder / "metrics.jsonl").write_text('{"stage": "flow", "epoch": 1, "train_loss": 1.0, "val_loss": 1.1}\n')
    (folder / "figures").mkdir()
    Image.new("RGB", (8, 4), "red").save(folder / "figures" / "samples.png")
    Image.new("RGB", (8, 4), "blue").save(folder / "figures" / "flow_loss.png")
    (folder / "classifier").mkdir()
    (folder / "classifier" / "model.safetensors").write_bytes(b"not uploaded")
    (folder / "eval.json").write_text(json.dumps({
        "format": "latentflows-eval", "autoencoder": {"val": {"mse": 0.0123, "psnr_db": 21.5, "ssim": 0.61}},
        "flow": {"val": {"nats_per_dim": 1.2345, "bits_per_dim": 1.781}},
        "fid": {"available": False, "reason": "skipped (--no-fid)"}, "settings": {"generated_per_class": 50}}))
    return pipeline, folder


class FakeHfApi:
    """Records what would go to the Hub: the repo, and each commit's files (read before the staging goes)."""

    log: list = []
    existing: set = set()
    fail: Exception | None = None

    def __init__(self, token=None, **kwargs):
        self.log.append(("init", token))

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **kwargs):
        if self.fail is not None:
            raise self.fail
        repo_id = repo_id if "/" in repo_id else f"me/{repo_id}"
        self.log.append(("create_repo", repo_id, repo_type, private, exist_ok))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def file_exists(self, repo_id, filename, *, repo_type=None, **kwargs):
        return (repo_id, filename) in self.existing

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, commit_message=None, delete_patterns=None,
                      **kwargs):
        folder = Path(folder_path)
        files = {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
        self.log.append(("upload_folder", repo_id, repo_type, commit_message, delete_patterns, files))
        return f"https://huggingface.co/{repo_id}/commit/0123"

    @classmethod
    def uploads(cls) -> list:
        return [entry for entry in cls.log if entry[0] == "upload_folder"]


@pytest.fixture
def fake_api(monkeypatch):
    FakeHfApi.log, FakeHfApi.existing, FakeHfApi.fail = [], set(), None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)  # latentflows.hub.push
    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", FakeHfApi)  # ModelHubMixin.push_to_hub
    return FakeHfApi


def card_metadata(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def http_error(kind, status: int, url: str = "https://huggingface.co/api/models/someone/nothing"):
    return kind(f"{status} Client Error", response=httpx.Response(status, request=httpx.Request("GET", url)))


# ---------------------------------------------------------------------------------------- save / load
def test_save_pretrained_and_from_pretrained_give_identical_samples(tmp_path):
    pipeline = tiny_pipeline()
    assert pipeline.save_pretrained(tmp_path / "model") is None
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["format"] == "latentflows-run" and saved == json.loads(json.dumps(pipeline.saved_config()))

    loaded = lf.LatentFlowPipeline.from_pretrained(tmp_path / "model", device="cpu")
    assert type(loaded) is lf.LatentFlowPipeline and not loaded.training
    assert_same(pipeline, loaded)
    assert_same(lf.LatentFlowPipeline.load(tmp_path / "model", "cpu"), loaded)  # from_pretrained of a folder is load

    card = huggingface_hub.ModelCard.load(tmp_path / "model" / "README.md")  # ours, not the mixin's template
    assert card.data.library_name == "latentflows" and card.data.to_dict()["classes"] == ["cat", "dog"]
    assert {"normalizing-flows", "image-generation", "pytorch"} <= set(card.data.tags)
    assert "PytorchModelHubMixin" not in card.text and "Not evaluated" in card.text


def test_save_pretrained_into_a_run_folder_keeps_its_readme_or_shows_its_figures(run, tmp_path):
    pipeline, folder = run
    pipeline.save_pretrained(folder)
    text = (folder / "README.md").read_text()
    assert "![generated samples, one row per class](figures/samples.png)" in text and "21.50" in text
    (folder / "README.md").write_text("mine")
    pipeline.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "mine"


def test_from_pretrained_rejects_unknown_options_and_foreign_folders(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path / "model")
    with pytest.raises(TypeError, match="dvice"):
        lf.LatentFlowPipeline.from_pretrained(tmp_path / "model", dvice="cpu")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelFileError, match="not a latentflows run config"):
        lf.LatentFlowPipeline.from_pretrained(tmp_path / "other")


# ---------------------------------------------------------------------------------------- hub ids
def test_a_hub_id_is_downloaded_into_the_cache_with_only_the_files_needed(tmp_path, monkeypatch):
    pipeline = tiny_pipeline()
    pipeline.save_pretrained(tmp_path / "served")
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path / "served")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    loaded = lf.LatentFlowPipeline.from_pretrained("someone/pets", device="cpu", revision="v1")
    assert_same(pipeline, loaded)
    assert calls[0][0] == "someone/pets" and calls[0][1]["allow_patterns"] == ["config.json", "model.safetensors"]
    assert calls[0][1]["revision"] == "v1" and calls[0][1]["local_files_only"] is False

    assert hub.resolve_run("someone/pets") == tmp_path / "served"
    assert set(calls[1][1]["allow_patterns"]) == {"config.json", "model.safetensors", "eval.json", "run.json",
                                                 "metrics.jsonl"}
    hub.resolve_run("someone/pets", download=False)
    assert calls[2][1]["local_files_only"] is True
    assert len(calls) == 3


def test_a_cached_hub_model_loads_offline(tmp_path):
    """huggingface_hub's own cache lookup, offline: a model downloaded once needs no connection."""
    pipeline = tiny_pipeline()
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(hub_constants.HF_HUB_CACHE) / "models--someone--pets"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    pipeline.save(repo / "snapshots" / commit)
    assert hub.resolve_run("someone/pets").resolve() == (repo / "snapshots" / commit).resolve()
    assert_same(pipeline, lf.LatentFlowPipeline.from_pretrained("someone/pets", device="cpu"))


def test_offline_with_an_uncached_id_is_one_line(tmp_path):
    """HF_HUB_OFFLINE=1 in the environment, an empty HF_HOME: huggingface_hub's real code path, no network."""
    script = textwrap.dedent("""
        import latentflows as lf
        from latentflows.hub import resolve_run

        for load in (resolve_run, lf.LatentFlowPipeline.from_pretrained):
            try:
                load("someone/pets")
            except lf.LatentflowsError as error:
                print(error)
    """)
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE_"))}
    environment.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = ("someone/pets is not in the local Hugging Face cache and the Hub cannot be reached (HF_HUB_OFFLINE is "
                "set); download it once online, or pass a local run folder")
    assert result.stdout.splitlines() == [expected, expected]


def test_no_connection_and_no_downloads_are_one_line(monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)

    def refused(*args, **kwargs):
        raise httpx.ConnectError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", refused)  # the first request snapshot_download makes
    with pytest.raises(HubError, match=r"^someone/pets is not in the local Hugging Face cache and the Hub cannot be "
                                       r"reached \(no connection\); download it once online, or pass a local run "
                                       r"folder$"):
        hub.resolve_run("someone/pets")
    with pytest.raises(HubError, match=r"not in the local Hugging Face cache and downloads are off"):
        lf.LatentFlowPipeline.from_pretrained("someone/pets", local_files_only=True)


@pytest.mark.parametrize("error, message", [
    (http_error(hub_errors.RepositoryNotFoundError, 404), MISSING),
    (http_error(hub_errors.HfHubHTTPError, 401), MISSING),
    (http_error(hub_errors.GatedRepoError, 403), "someone/nothing is gated: accept its conditions on "
                                                 "https://huggingface.co/someone/nothing and log in with `hf auth login`"),
    (http_error(hub_errors.RevisionNotFoundError, 404), "someone/nothing: no revision 'v9' on the Hugging Face Hub"),
    (http_error(hub_errors.HfHubHTTPError, 500), "someone/nothing: the Hugging Face Hub answered 500: 500 Client Error"),
])
def test_a_missing_repo_and_other_hub_answers_are_one_line(monkeypatch, error, message):
    def snapshot_download(repo_id, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    for load in (lambda: hub.resolve_run("someone/nothing", revision="v9"),
                 lambda: lf.LatentFlowPipeline.from_pretrained("someone/nothing", revision="v9")):
        with pytest.raises(HubError) as raised:
            load()
        assert str(raised.value) == message


def test_a_repo_without_a_model_is_not_loaded(tmp_path, monkeypatch):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: str(tmp_path / "served"))
    with pytest.raises(HubError, match=r"^someone/bert is only partly in the local Hugging Face cache \(no "
                                       r"model.safetensors\)"):
        hub.resolve_run("someone/bert")  # offline: the cache may hold part of it
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelFileError, match=r"^someone/bert: not a latentflows model \(the Hub repo has no "
                                             r"model.safetensors\)$"):
        hub.resolve_run("someone/bert")


def test_text_that_is_neither_a_folder_nor_a_hub_id(tmp_path, monkeypatch):
    def snapshot_download(repo_id, **kwargs):
        raise AssertionError("no download for a local path")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    for text in ["nothing", "a/b/c", "./x/y", str(tmp_path / "gone"), "owner/--name"]:
        with pytest.raises(ModelFileError, match="no such run folder"):
            hub.resolve_run(text)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ModelFileError, match=r"^runs/quikc: no such run folder \(runs/ is a local folder"):
        hub.resolve_run("runs/quikc")
    (tmp_path / "runs" / "file").write_text("x")
    with pytest.raises(ModelFileError, match="is a file, not a run folder"):
        hub.resolve_run("runs/file")
    assert hub.resolve_run("runs") == Path("runs")


# ---------------------------------------------------------------------------------------- push
def test_push_uploads_exactly_the_model_card_and_figures_and_leaves_the_run_alone(run, fake_api):
    _, folder = run
    before = snapshot(folder)
    url = hub.push(folder, "someone/pets", token="hf_secret")
    assert url == "https://huggingface.co/someone/pets"
    assert snapshot(folder) == before

    assert [entry[:5] for entry in fake_api.log if entry[0] != "upload_folder"] == [
        ("init", "hf_secret"), ("create_repo", "someone/pets", "model", None, True)]
    [(_, repo_id, repo_type, message, delete_patterns, files)] = fake_api.uploads()
    assert (repo_id, repo_type) == ("someone/pets", "model") and "tiny" in message
    assert sorted(files) == ["README.md", "config.json", "eval.json", "figures/samples.png", "model.safetensors"]
    for name in ["config.json", "eval.json", "figures/samples.png", "model.safetensors"]:
        assert files[name] == (folder / name).read_bytes(), name
    assert set(delete_patterns) == {"eval.json", "figures/samples.png"}  # an older evaluation does not stay behind

    card = files["README.md"].decode()
    assert card == hub.model_card(folder, repo_id="someone/pets")
    metadata = card_metadata(card)
    assert metadata["library_name"] == "latentflows" and metadata["classes"] == ["cat", "dog"]
    assert metadata["latentflows_version"] == lf.__version__
    assert {"normalizing-flows", "image-generation", "pytorch", "latentflows"} <= set(metadata["tags"])
    assert "![generated samples, one row per class](figures/samples.png)" in card
    assert "latentflows sample someone/pets --class dog -n 16 --out grid.png" in card
    assert 'lf.LatentFlowPipeline.from_pretrained("someone/pets")' in card
    assert "`ConvAutoencoder`, 32x32 RGB images <-> embeddings of 8 numbers" in card
    assert "`ConditionalRealNVP` with 2 couplings" in card
    assert "- **Training**: preset `quick`; 12 s of training; the flow's weights of epoch 2" in card
    for figure in ["autoencoder val PSNR (dB)", "21.50", "flow val NLL (nats/dim)", "1.2345", "50 generated images"]:
        assert figure in card, figure
    assert "Not evaluated" not in card
    assert "local data (`pets.parquet`)" in card and "/home/me" not in card  # no local path leaves the machine


def test_push_of_a_run_without_samples_or_evaluation(tmp_path, fake_api):
    tiny_pipeline().save(tmp_path / "bare")
    hub.push(tmp_path / "bare", "pets", private=True, commit_message="first")
    assert ("create_repo", "pets", "model", True, True) not in fake_api.log  # the bare name went to the user
    assert ("create_repo", "me/pets", "model", True, True) in fake_api.log
    [(_, repo_id, _, message, _, files)] = fake_api.uploads()
    assert (repo_id, message) == ("me/pets", "first")
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    card = files["README.md"].decode()
    assert "Not evaluated: run `latentflows evaluate RUN`" in card and "## Samples" not in card
    assert "latentflows sample me/pets --class dog" in card


def test_push_refuses_an_incomplete_run_and_an_existing_model(run, tmp_path, fake_api):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text((run[1] / "config.json").read_text())
    (tmp_path / "half" / "checkpoints").mkdir()
    with pytest.raises(ModelFileError, match=r"incomplete run \(no model.safetensors\); finish it with latentflows "
                                             r"train --resume"):
        hub.push(tmp_path / "half", "someone/pets")
    assert fake_api.log == []  # nothing reached the Hub

    fake_api.existing = {("someone/pets", "model.safetensors")}
    with pytest.raises(HubError, match=r"^someone/pets already holds a model; pass --overwrite"):
        hub.push(run[1], "someone/pets")
    assert fake_api.uploads() == []
    hub.push(run[1], "someone/pets", overwrite=True)
    assert len(fake_api.uploads()) == 1


@pytest.mark.parametrize("error, message", [
    (http_error(hub_errors.HfHubHTTPError, 401), "cannot push to someone/pets: not logged in to the Hugging Face Hub "
                                                 "(log in with `hf auth login`, set HF_TOKEN or pass --token)"),
    (http_error(hub_errors.HfHubHTTPError, 403), "cannot push to someone/pets: the token has no write access there "
                                                 "(a write token of its owner is needed)"),
    (httpx.ConnectError("unreachable"), "cannot push to someone/pets: the Hugging Face Hub cannot be reached "
                                        "(HF_HUB_OFFLINE is set)"),
])
def test_push_failures_are_one_line(run, fake_api, error, message):
    fake_api.fail = error
    for push in (lambda: hub.push(run[1], "someone/pets"), lambda: run[0].push_to_hub("someone/pets")):
        with pytest.raises(HubError) as raised:
            push()
        assert str(raised.value) == message


def test_pipeline_push_to_hub_goes_through_the_mixin(fake_api):
    pipeline = tiny_pipeline()
    assert pipeline.push_to_hub("someone/pets") == "https://huggingface.co/someone/pets/commit/0123"
    [(_, repo_id, _, _, _, files)] = fake_api.uploads()
    assert repo_id == "someone/pets" and sorted(files) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads(files["config.json"])["format"] == "latentflows-run"
    card = files["README.md"].decode()
    assert card_metadata(card)["library_name"] == "latentflows"
    assert "latentflows sample someone/pets --class dog" in card


def test_the_push_command(run, fake_api, capsys):
    parser = hub.add_push_arguments(argparse.ArgumentParser())
    hub.run_push(parser.parse_args([str(run[1]), "someone/pets", "--message", "v1", "--token", "hf_x"]))
    assert capsys.readouterr().out.strip() == f"pushed {run[1]} to https://huggingface.co/someone/pets"
    assert fake_api.uploads()[0][3] == "v1" and ("init", "hf_x") in fake_api.log


def test_commands_that_take_a_run_take_a_hub_id(tmp_path, monkeypatch, capsys):
    from latentflows.cli import main

    tiny_pipeline().save_pretrained(tmp_path / "served")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: str(tmp_path / "served"))
    grid = tmp_path / "dogs.png"
    assert main(["sample", "someone/pets", "--class", "dog", "-n", "3", "--out", str(grid), "--device", "cpu"]) == 0
    assert Image.open(grid).size[0] > 3 * 32
    assert main(["info", "someone/pets"]) == 0 and '"classes": [' in capsys.readouterr().out
    # evaluate writes beside the run by default: never into the Hugging Face cache
    assert main(["evaluate", "someone/pets", "--no-progress"]) == 2
    assert "someone/pets is a Hub model" in capsys.readouterr().err and not (tmp_path / "served" / "eval.json").exists()

    monkeypatch.undo()  # the real huggingface_hub, offline, with an empty cache
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "someone/nothing", "--class", "dog", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in the local Hugging Face cache" in err
