"""``train(..., tensorboard=...)``: the event files read back hold every epoch's figures of both
stages, image grids and the hyperparameters, change nothing of training, and survive a resume."""

import io
import json
import sys

import numpy as np
import pytest
import torch
from conftest import train_until_interrupted
from safetensors.torch import load_file

import latentflows as lf
from latentflows.cli.options import with_options
from latentflows.extras import MissingExtraError
from latentflows.plots import image_grid
from latentflows.runs import run_split

AE_EPOCHS, FLOW_EPOCHS, EVERY = 3, 3, 2
SIDE = 8 * (64 + 2) + 2  # a grid row: 8 images of 64 px, 2 px of padding around each


@pytest.fixture(scope="module")
def config(tiny_config):
    return with_options(tiny_config, ae_epochs=AE_EPOCHS, flow_epochs=FLOW_EPOCHS)


@pytest.fixture(scope="module")
def watched(small_pets, config, tmp_path_factory):
    """A run logged for TensorBoard, image grids every 2 epochs."""
    pytest.importorskip("tensorboard")
    run = tmp_path_factory.mktemp("watched") / "run"
    lf.train(small_pets, config, run, progress=False, figures=False, tensorboard=EVERY)
    return run


def events(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    return accumulator.Reload()


def step(stage, epoch):
    return epoch + (AE_EPOCHS if stage == "flow" else 0)


def expected_scalars(run):
    """tag -> [(step, value)] from metrics.jsonl, as TensorBoard stores them (float32)."""
    scalars = {}
    for row in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(row)
        for key, value in row.items():
            if key.startswith(("train_", "val_")):
                part, name = key.split("_", 1)
                scalars.setdefault(f"{row['stage']}/{part}/{name}", []).append(
                    (step(row["stage"], row["epoch"]), float(np.float32(value))))
    return {tag: sorted(values) for tag, values in scalars.items()}


def logged_scalars(accumulator):
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"] if not tag.endswith("/seconds")}


def test_every_epoch_of_both_stages_is_logged_as_in_metrics_jsonl(watched):
    accumulator = events(watched)
    scalars = logged_scalars(accumulator)
    assert {"autoencoder/train/loss", "autoencoder/val/loss", "flow/train/loss", "flow/val/loss",
            "flow/val/bits_per_dim"} <= set(scalars)
    assert scalars == expected_scalars(watched)
    for stage, epochs in (("autoencoder", AE_EPOCHS), ("flow", FLOW_EPOCHS)):
        seconds = accumulator.Scalars(f"{stage}/seconds")
        assert [e.step for e in seconds] == [step(stage, epoch) for epoch in range(1, epochs + 1)]
        assert all(e.value > 0 for e in seconds)


def test_image_grids_every_n_epochs_and_at_each_stage_end_show_the_models_of_that_epoch(watched, small_pets, config):
    from PIL import Image

    accumulator = events(watched)
    assert set(accumulator.Tags()["images"]) == {"autoencoder/reconstructions", "flow/samples"}
    reconstructions, samples = accumulator.Images("autoencoder/reconstructions"), accumulator.Images("flow/samples")
    assert [e.step for e in reconstructions] == [2, 3]  # epoch 2 (every 2) and 3 (the last)
    assert [e.step for e in samples] == [step("flow", 2), step("flow", 3)]
    for event in reconstructions + samples:  # two rows: originals over reconstructions, or cat and dog
        assert (event.width, event.height) == (SIDE, 2 * 66 + 2)

    def picture(event):
        return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))

    # the last grids: the trained pipeline's reconstructions of fixed validation images, and its samples
    pipeline = lf.load(watched, device="cpu")
    _, val_set = run_split(small_pets, config)
    originals = val_set.images[torch.randperm(len(val_set), generator=torch.Generator().manual_seed(0))[:8]]
    assert np.array_equal(picture(reconstructions[-1]),
                          np.asarray(image_grid([originals, pipeline.reconstruct(originals)])))
    # plain samples: mid-training there is no fitted posterior temperature to guide by
    rows = [pipeline.generate(name, 8, seed=k, guidance=0.0).images for k, name in enumerate(pipeline.class_names)]
    assert np.array_equal(picture(samples[-1]), np.asarray(image_grid(rows)))
    assert not np.array_equal(picture(samples[0]), picture(samples[-1]))  # the flow of epoch 2, then 3


def test_the_run_config_is_logged_as_hyperparameters(watched, config):
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = events(watched).PluginTagToContent("hparams")
    data = {tag: HParamsPluginData.FromString(value) for tag, value in content.items()}
    assert set(data) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    hparams = data["_hparams_/session_start_info"].session_start_info.hparams
    assert hparams["stages.autoencoder.config.epochs"].number_value == AE_EPOCHS
    assert hparams["stages.flow.config.lr"].number_value == pytest.approx(config.get("stages.flow.config.lr"))
    assert hparams["stages.flow.config.patience"].string_value == "none"
    assert hparams["preset"].string_value == config.preset
    metrics = {m.name.tag for m in data["_hparams_/experiment"].experiment.metric_infos}
    assert metrics == {"autoencoder/val/loss", "flow/val/loss"}  # scalar tags: the dashboard shows their last value
    assert data["_hparams_/session_end_info"].session_end_info.status == 1  # STATUS_SUCCESS


def test_logging_changes_no_weight(watched, small_pets, config, tmp_path):
    plain = tmp_path / "plain"
    lf.train(small_pets, config, plain, progress=False, figures=False)
    logged, unlogged = load_file(str(watched / "model.safetensors")), load_file(str(plain / "model.safetensors"))
    assert logged.keys() == unlogged.keys()
    for key in logged:
        assert torch.equal(logged[key], unlogged[key]), key
    assert not (plain / "tensorboard").exists()


def test_a_resumed_run_continues_the_event_files_without_repeating_a_step(watched, small_pets, config, tmp_path,
                                                                          monkeypatch):
    # checkpoints every 2 epochs, interrupted after the flow's epoch 3 was logged: the autoencoder
    # resumes from epoch 2 (its epoch 3, logged before, is not logged again) and the flow's epoch 3
    # (logged, but after its last checkpoint) is purged and logged again
    run = tmp_path / "run"
    train_until_interrupted(monkeypatch, "flow", 3, small_pets, config, run, progress=False, figures=False,
                            checkpoint_every=2, tensorboard=EVERY)
    assert [e.step for e in events(run).Scalars("flow/train/loss")] == [4, 5, 6]

    lf.train(small_pets, config, run, progress=False, figures=False, checkpoint_every=2, tensorboard=EVERY, resume=True)
    accumulator = events(run)
    assert logged_scalars(accumulator) == logged_scalars(events(watched))  # each step once, the same values
    assert [e.step for e in accumulator.Images("flow/samples")] == [5, 6]
    assert [e.step for e in accumulator.Images("autoencoder/reconstructions")] == [2, 3]
    assert len(accumulator.PluginTagToContent("hparams")) == 3  # the hyperparameters and the end of the run


def test_tensorboard_needs_a_run_folder_and_a_valid_interval(small_pets, tiny_config):
    with pytest.raises(lf.LatentflowsError, match="run folder"):
        lf.train(small_pets, tiny_config, None, tensorboard=True, progress=False)
    with pytest.raises(lf.LatentflowsError, match="positive number of epochs"):
        lf.train(small_pets, tiny_config, None, tensorboard=0, progress=False)


def test_without_the_extra_one_line_names_the_pip_command(small_pets, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes importing it fail
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(MissingExtraError) as error:
        lf.train(small_pets, tiny_config, tmp_path / "run", tensorboard=True, progress=False)
    message = str(error.value)
    assert "\n" not in message and "pip install 'latentflows[tensorboard]'" in message
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(MissingExtraError, match=r"pip install 'latentflows\[tensorboard\]'"):
        lf.training.TensorBoardLogger(tmp_path / "events")


def test_the_command_line_reports_a_missing_extra_before_any_work(tmp_path, monkeypatch, capsys):
    import builtins

    from latentflows.cli import main

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("tensorboard") or name == "torch.utils.tensorboard":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    monkeypatch.setattr("importlib.import_module", lambda name, *a: no_tensorboard(name))
    assert main(["train", "--log", "tensorboard", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'latentflows[tensorboard]'" in err
    assert not (tmp_path / "run").exists()
