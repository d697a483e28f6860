"""Training in two processes (gloo, on the CPU), launched as a user would: accelerate launch."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from latentflows.storage import load_safetensors

pytest.importorskip("accelerate", reason="the distributed extra: pip install 'latentflows[distributed]'")
psutil = pytest.importorskip("psutil")  # installed with accelerate

WORKER = Path(__file__).with_name("distributed_worker.py")
TINY = ["--width", "8", "--embedding-dim", "64", "--couplings", "2", "--channels", "8", "--flow-batch-size", "64",
        "--ae-batch-size", "32", "--limit", "200", "--no-progress", "--device", "cpu"]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(*args, processes=2, **kwargs):
    """``accelerate launch`` with ``processes`` processes on this machine's CPUs (gloo)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def finished(process, timeout=300):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def tensors(path):
    return load_safetensors(path, "test")[0]


def test_two_processes_end_equal_and_match_one_process_at_the_same_global_batch(tmp_path):
    finished(launch(str(WORKER), str(tmp_path)))
    subprocess.run([sys.executable, str(WORKER), str(tmp_path)], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    rank0, rank1 = tensors(tmp_path / "rank0-weights.safetensors"), tensors(tmp_path / "rank1-weights.safetensors")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # the processes never drift apart
    # each process ended its process group before Python's teardown (where gloo aborts now and then)
    assert [(tmp_path / f"exit-{rank}.txt").read_text() for rank in (0, 1)] == ["False", "False"]

    # the averaged gradients of a global batch split over two processes are the gradients of the
    # batch in one: the share of each, the synchronised flow batch norm and the all-reduce
    split, whole = tensors(tmp_path / "rank0-grads.safetensors"), tensors(tmp_path / "single-grads.safetensors")
    assert split.keys() == whole.keys() and any(k.startswith("flow.") for k in whole)
    for key in whole:
        assert torch.allclose(split[key], whole[key], rtol=1e-4, atol=1e-6), key

    # after whole epochs, Adam (which divides by the gradients' scale) magnifies float rounding in
    # near-zero gradients up to about its step size (lr 1e-3); nothing more
    single = tensors(tmp_path / "single-weights.safetensors")
    assert max((rank0[k].double() - single[k].double()).abs().max().item()
               for k in single if single[k].is_floating_point()) < 1e-2


@pytest.mark.parametrize("variant", ["glow", "spatial"])
def test_layers_initialised_from_data_start_alike_in_every_process(tmp_path, variant):
    finished(launch(str(WORKER), str(tmp_path), variant))
    rank0, rank1 = (tensors(tmp_path / f"rank{rank}-{variant}.safetensors") for rank in (0, 1))
    assert any("log_scale" in k for k in rank0)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)


def test_cli_resumes_a_killed_two_process_run_to_the_same_weights(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    settings = [*TINY, "--ae-epochs", "6", "--flow-epochs", "2"]  # killed after epoch 1: 5 epochs to spare
    finished(launch("-m", "latentflows", "train", "--out", str(full), *settings))
    assert (full / "model.safetensors").is_file() and not (full / "checkpoints").exists()

    process = launch("-m", "latentflows", "train", "--out", str(killed), *settings)
    checkpoint = killed / "checkpoints" / "autoencoder.safetensors"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # the launcher and both workers, mid-training (torchrun starts the workers in sessions of their own)
    for child in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
        child.send_signal(signal.SIGKILL)
    output, _ = process.communicate()
    assert checkpoint.exists() and not (killed / "model.safetensors").exists(), output[-3000:]

    output = finished(launch("-m", "latentflows", "train", "--resume", str(killed), "--no-progress", "--device", "cpu"))
    assert output.count("resuming") == 1  # one process speaks
    a, b = tensors_of(full), tensors_of(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (killed / "metrics.jsonl").read_text().count('"stage": "autoencoder"') == 6


def tensors_of(run):
    return load_safetensors(run / "model.safetensors", "latentflows-weights")[0]
