"""Interrupted training continues from its last checkpoint and ends with the same weights."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import train_until_interrupted
from safetensors.torch import load_file

import latentflows as lf
from latentflows.cli.options import with_options


def weights(run):
    return load_file(str(run / "model.safetensors"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("stage,epoch", [("autoencoder", 2), ("flow", 2), ("flow", 5)])
def test_resume_after_interruption_matches_uninterrupted(small_pets, tiny_config, tmp_path, monkeypatch, stage, epoch):
    # patience 5: the flow (which starts at the per-class Gaussians) does not stop before epoch 5
    config = with_options(tiny_config, ae_epochs=3, flow_epochs=6, flow_patience=5, flow_noise=0.05)
    full = tmp_path / "full"
    lf.train(small_pets, config, full, progress=False, figures=False)
    assert not (full / "checkpoints").exists()  # removed once the run is complete

    run = tmp_path / "interrupted"
    train_until_interrupted(monkeypatch, stage, epoch, small_pets, config, run, progress=False, figures=False)
    assert (run / "checkpoints" / f"{stage}.safetensors").exists()

    lf.train(small_pets, config, run, progress=False, figures=False, resume=True)
    assert_same_weights(weights(run), weights(full))
    assert metric_rows(run) == metric_rows(full)


def test_resume_computes_as_the_run_started_whatever_the_threads_and_default_precision(
        small_pets, tiny_config, tmp_path, monkeypatch, started="fp32", resumed="auto"):
    """A CPU reduction's bits depend on the thread count, and ``auto`` may pick another precision
    elsewhere: a resume takes both from run.json, so it still ends with the same weights."""
    config = with_options(tiny_config, ae_epochs=3, flow_epochs=2)
    full = lf.train(small_pets, config, tmp_path / "full", precision=started, progress=False, figures=False)
    assert full.summary["precision"] == started
    recorded = json.loads((tmp_path / "full" / "run.json").read_text())["compute"]
    assert recorded == {"precision": started, "threads": torch.get_num_threads(),
                        "kernels": torch.backends.cpu.get_cpu_capability()}
    run = tmp_path / "interrupted"
    train_until_interrupted(monkeypatch, "autoencoder", 1, small_pets, config, run, precision=started, progress=False,
                            figures=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)  # the resume happens where threads are set otherwise
    try:
        resumed_pipeline = lf.train(small_pets, config, run, precision=resumed, progress=False, figures=False,
                                    resume=True)
        assert torch.get_num_threads() == (1 if threads > 1 else 2)  # given back after the run
    finally:
        torch.set_num_threads(threads)
    assert resumed_pipeline.summary["precision"] == started
    assert_same_weights(weights(run), weights(tmp_path / "full"))


def test_a_resume_that_asks_for_another_precision_is_refused(small_pets, tiny_config, tmp_path, monkeypatch):
    config = with_options(tiny_config, ae_epochs=2, flow_epochs=1)
    monkeypatch.setattr(lf.training.Trainer, "fit", lambda self, *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        lf.train(small_pets, config, tmp_path / "run", precision="fp32", progress=False, figures=False)
    with pytest.raises(lf.LatentflowsError, match="run.json: the run started in fp32 and this resume asks for bf16; "
                                                  "drop --precision"):
        lf.train(small_pets, config, tmp_path / "run", precision="bf16", progress=False, figures=False, resume=True)


def test_resume_needs_a_started_run(tmp_path, small_pets, tiny_config):
    with pytest.raises(lf.ModelFileError, match="nothing to resume"):
        lf.train(small_pets, tiny_config, tmp_path, resume=True, progress=False)


def cli(*args):
    return [sys.executable, "-m", "latentflows", "train", "--no-progress", *args]


# A small run killed at exact moments (tests/kill_switch.py): 8 autoencoder steps in each of 3
# epochs, then 4 flow steps in each of 4 epochs; a checkpoint after every epoch (7 in all).
KILLED_RUN = ["--limit", "300", "--width", "8", "--embedding-dim", "64", "--ae-epochs", "3", "--ae-batch-size", "32",
              "--couplings", "2", "--channels", "8", "--flow-epochs", "4", "--flow-batch-size", "64",
              "--import", "kill_switch"]
STEPS = {"autoencoder": 24, "flow": 16}
# 20 moments over both stages: mid-step of every epoch, the first and last step of each stage, and
# inside checkpoint writes; the two signals alternate (SIGINT is Ctrl-C, SIGKILL gives no chance to clean up)
STRESS = [f"{kind}:{n}:{('SIGKILL', 'SIGINT')[i % 2]}" for i, (kind, n) in enumerate(
    [("step", n) for n in (1, 5, 9, 13, 17, 21, 24, 25, 27, 29, 31, 34, 37, 40)] + [("save", n) for n in (1, 2, 3, 4, 6, 7)])]
# in the README's test command, one after the other in one run: epoch 2 of the autoencoder (its first
# process), its last checkpoint write (the first resume's second save), epoch 2 of the flow (the second
# resume's 8 autoencoder steps, then 7 of the flow)
QUICK = ["step:10:SIGKILL", "save:2:SIGKILL", "step:15:SIGINT"]


def kill_env(moment=None, steps=None, on_disk=False):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"LATENTFLOWS_IN_MEMORY_BYTES": "0"} if on_disk else {}),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    env.pop("LATENTFLOWS_TEST_KILL", None)
    if moment:
        env["LATENTFLOWS_TEST_KILL"] = moment
    if steps:
        env["LATENTFLOWS_TEST_STEPS"] = str(steps)
    return env


def metric_rows(run):  # everything but the timings
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, pets_parquet):
    folder = tmp_path_factory.mktemp("uninterrupted")
    steps = folder / "steps.txt"
    subprocess.run(cli("--data", str(pets_parquet), *KILLED_RUN, "--out", str(folder / "run")), check=True,
                   env=kill_env(steps=steps), capture_output=True)
    stages = steps.read_text().split()
    assert {stage: stages.count(stage) for stage in STEPS} == STEPS  # the moments above hit both stages
    return folder / "run"


def run_until(moment, command, on_disk=False):
    """Run a training command that stops itself at ``moment`` (Ctrl-C handled as in a terminal).
    ``on_disk``: the images are read from the decode cache by a prefetch thread, not held in memory."""
    return subprocess.run(command, env=kill_env(moment, on_disk=on_disk), capture_output=True, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def kill_then_resume(moment, run, pets_parquet, on_disk=False):
    """Train until ``moment``, then resume to the end."""
    run_until(moment, cli("--data", str(pets_parquet), *KILLED_RUN, "--out", str(run)), on_disk)
    assert not (run / "model.safetensors").exists(), "the run ended before the moment"
    resumed = subprocess.run(cli("--resume", str(run)), env=kill_env(on_disk=on_disk), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr


def assert_resumed_like(run, uninterrupted):
    assert_same_weights(weights(run), weights(uninterrupted))
    assert metric_rows(run) == metric_rows(uninterrupted)
    assert not (run / "checkpoints").exists()  # no checkpoint or half-written temporary file left behind


def test_a_run_killed_three_times_resumes_each_time_to_the_same_weights(tmp_path, pets_parquet, uninterrupted):
    """Three stops in one run, each resumed (a resumed process counts its steps and saves from 1): SIGKILL
    mid-epoch 2 of the autoencoder, SIGKILL while its last checkpoint is written, Ctrl-C mid-epoch 2 of
    the flow; then a last resume ends the run."""
    run = tmp_path / "run"
    command = cli("--data", str(pets_parquet), *KILLED_RUN, "--out", str(run))
    for moment in QUICK:
        killed = run_until(moment, command)
        assert not (run / "model.safetensors").exists(), "the run ended before the moment"
        if moment.endswith("SIGKILL"):
            assert killed.returncode == -signal.SIGKILL
        else:  # Ctrl-C: exit code 130, how to continue, no traceback
            assert killed.returncode == 130, killed.stderr[-2000:]
            assert "latentflows train --resume" in killed.stderr and "Traceback" not in killed.stderr
        assert (run / "checkpoints" / "autoencoder.safetensors").exists()
        command = cli("--resume", str(run))
    resumed = subprocess.run(command, env=kill_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_resumed_like(run, uninterrupted)
    assert lf.load(run).class_names == ["cat", "dog"]


@pytest.mark.slow
def test_kill_stress_20_moments_over_both_stages(tmp_path, pets_parquet, uninterrupted, capsys):
    identical = 0
    for index, moment in enumerate(STRESS):  # every other one reads its images from disk (prefetch thread)
        kill_then_resume(moment, tmp_path / f"run{index}", pets_parquet, on_disk=index % 4 >= 2)
        assert_resumed_like(tmp_path / f"run{index}", uninterrupted)
        identical += 1
    with capsys.disabled():
        kills = sum(m.endswith("SIGKILL") for m in STRESS)
        print(f"\nkill stress: {len(STRESS)} kills ({kills} SIGKILL, {len(STRESS) - kills} SIGINT; half of the runs "
              f"read their images from disk), {len(STRESS)} resumes, {identical} identical")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_that_python_drops_in_a_finalizer_still_stops_training():
    """Python drops an exception raised in ``__del__``, KeyboardInterrupt included; the trainer
    remembers the Ctrl-C and raises it before the next step."""
    from torch import nn

    from latentflows.losses import MSELoss
    from latentflows.training import Batches, Callback, Trainer, adam, supervised

    class InterruptedFinalizer:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):  # the handler runs here, inside __del__
                pass

    class DropACtrlC(Callback):
        returned = False

        def on_epoch_end(self, trainer, record):
            if not self.returned:
                InterruptedFinalizer()  # collected at once
                self.returned = True  # the KeyboardInterrupt did not come out of here

    model, dropper = nn.Linear(3, 1), DropACtrlC()
    trainer = Trainer(model, adam(model.parameters(), 1e-2), supervised(MSELoss()), callbacks=[dropper],
                      progress=False)
    found = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (see the test above)
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.fit(Batches([torch.randn(16, 3), torch.randn(16, 1)], 8), 5)
        assert dropper.returned and [r.epoch for r in trainer.history] == [1]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
        trainer.fit(Batches([torch.randn(16, 3), torch.randn(16, 1)], 8), 2)  # nothing left pending
        assert len(trainer.history) == 3
    finally:
        signal.signal(signal.SIGINT, found)


def test_files_from_a_newer_version_are_refused_with_a_clear_error(tmp_path, small_pets, tiny_config):
    run = tmp_path / "run"
    lf.train(small_pets, with_options(tiny_config, ae_epochs=1, flow_epochs=1), run, progress=False, figures=False)
    config = json.loads((run / "config.json").read_text())
    config["format_version"] = 99
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(lf.ModelFileError, match="config.json: written by a newer latentflows"):
        lf.load(run)


@pytest.mark.parametrize("preset", ["seed", "quick"])
def test_flow_of_each_preset_stays_finite_at_learning_rate_1e3(small_pets, tiny_config, preset, tmp_path):
    """The presets' flows (12 couplings, [256, 256]) on real embeddings at lr 1e-3: no NaN, no skipped step."""
    config = with_options(tiny_config.with_values({"stages.flow": lf.PRESETS[preset].get("stages.flow")}),
                          embedding_dim=256, ae_epochs=1, flow_epochs=3, flow_lr=1e-3)
    pipeline = lf.train(small_pets, config, tmp_path / "run", progress=False, figures=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows].count("flow") == 3
    assert not any("skipped_steps" in r for r in rows)
    assert all(torch.isfinite(p).all() for p in pipeline.flow.parameters())
    assert torch.isfinite(pipeline.log_prob(small_pets.images[:64], small_pets.labels[:64])).all()
