"""Interrupted training continues from its last checkpoint and ends with the same weights."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import latentflows as lf
from latentflows.training import Callback


def weights(run):
    return load_file(str(run / "model.safetensors"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class InterruptAt(Callback):
    def __init__(self, stage, epoch):
        self.stage, self.epoch = stage, epoch

    def on_epoch_end(self, trainer, record):
        if (record.stage, record.epoch) == (self.stage, self.epoch):
            raise KeyboardInterrupt


@pytest.mark.parametrize("stage,epoch", [("autoencoder", 2), ("flow", 2), ("flow", 5)])
def test_resume_after_interruption_matches_uninterrupted(small_pets, tiny_config, tmp_path, monkeypatch, stage, epoch):
    config = replace(tiny_config, ae_epochs=3, flow_epochs=6, flow_patience=3, flow_noise=0.05)
    full = tmp_path / "full"
    lf.train(small_pets, config, full, progress=False, figures=False)
    assert not (full / "checkpoints").exists()  # removed once the run is complete

    run = tmp_path / "interrupted"
    original_init = lf.training.Trainer.__init__

    def with_interrupt(self, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", ()), InterruptAt(stage, epoch)]
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(lf.training.Trainer, "__init__", with_interrupt)
    with pytest.raises(KeyboardInterrupt):
        lf.train(small_pets, config, run, progress=False, figures=False)
    monkeypatch.setattr(lf.training.Trainer, "__init__", original_init)
    assert (run / "checkpoints" / f"{stage}.safetensors").exists()

    lf.train(small_pets, config, run, progress=False, figures=False, resume=True)
    assert_same_weights(weights(run), weights(full))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines == (full / "metrics.jsonl").read_text().splitlines() or \
        [json.loads(x)["epoch"] for x in lines] == [json.loads(x)["epoch"] for x in (full / "metrics.jsonl").read_text().splitlines()]


def test_resume_needs_a_started_run(tmp_path, small_pets, tiny_config):
    with pytest.raises(lf.ModelFileError, match="nothing to resume"):
        lf.train(small_pets, tiny_config, tmp_path, resume=True, progress=False)


def cli(*args):
    return [sys.executable, "-m", "latentflows", "train", "--no-progress", *args]


def test_sigkill_mid_training_then_resume_gives_the_same_weights(tmp_path, shared_parquet):
    settings = ["--data", str(shared_parquet), "--limit", "600", "--width", "8", "--embedding-dim", "32",
                "--ae-epochs", "4", "--couplings", "2", "--hidden", "32", "--flow-epochs", "6"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full = tmp_path / "full"
    subprocess.run(cli(*settings, "--out", str(full)), check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    process = subprocess.Popen(cli(*settings, "--out", str(run)), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = run / "checkpoints" / "autoencoder.safetensors"
    deadline = time.time() + 120
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "training ended before it could be killed"
    process.send_signal(signal.SIGKILL)  # mid-epoch 2: no chance to clean up
    process.wait()
    assert not (run / "model.safetensors").exists()

    resumed = subprocess.run(cli("--resume", str(run)), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(weights(run), weights(full))
