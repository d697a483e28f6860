"""Devices, precision and determinism: the plumbing, tested on the CPU (and the meta device)."""

import pytest
import torch
from torch import nn

import latentflows as lf
from latentflows.cli import main
from latentflows.losses import MSELoss
from latentflows.runs import run_split
from latentflows.runtime import Runtime, as_runtime, resolve_device
from latentflows.training import Batches, NonFiniteLossError, Trainer, adam, supervised
from latentflows.training.stages import StageContext


def test_devices_resolve_and_bad_ones_name_the_fix():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device 'tpu'; use auto .* cuda:N or mps"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="'vulkan' is not supported"):
        resolve_device("vulkan")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU; use --device cpu"):
            resolve_device("cuda:0")
    with pytest.raises(ValueError, match="unknown precision 'fp8'; use one of fp32, bf16, fp16"):
        Runtime("cpu", "fp8")
    assert as_runtime(Runtime("cpu", "bf16")).precision == "bf16"


def test_cli_refuses_a_missing_device_before_any_work(tmp_path, capsys):
    assert main(["train", "--device", "tpu", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "--device tpu: unknown device 'tpu'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit, match="2"):
        main(["train", "--precision", "fp8", "--out", str(tmp_path / "run")])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_deterministic_session_sets_the_switches_and_restores_them():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    with Runtime("cpu", deterministic=True).session():
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before


def test_deterministic_training_gives_identical_weights(small_pets, tiny_config):
    config = tiny_config.with_options(ae_epochs=1, flow_epochs=1)
    seen = []

    class Spy(lf.training.Callback):
        def on_epoch_end(self, trainer, record):
            seen.append(torch.are_deterministic_algorithms_enabled())

    runs = []
    for _ in range(2):
        pipeline = lf.train(small_pets, config, device="cpu", deterministic=True, progress=False, figures=False)
        runs.append(pipeline.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not torch.are_deterministic_algorithms_enabled()  # given back after training
    trainer = Trainer(nn.Linear(1, 1), adam(nn.Linear(1, 1).parameters(), 1e-3),
                      lambda m, b: {"loss": m(b[0]).pow(2).mean()}, progress=False, callbacks=[Spy()])
    with Runtime("cpu", deterministic=True).session():
        trainer.fit(Batches([torch.randn(4, 1)], 2), 1)
    assert seen == [True]


def test_every_tensor_a_training_step_makes_follows_the_model_to_its_device(small_pets):
    """On the meta device, any op that mixes in a tensor made on the CPU raises: the guard
    that batches, contexts, noise and losses are all made where the model is."""
    config = lf.PRESETS["quick"].with_options(width=8, embedding_dim=64, couplings=2, hidden=[16]).with_values({
        "stages.autoencoder.config.terms.adversarial": {"class": "Adversarial", "config": {"start": 0, "width": 8}},
        "stages.autoencoder.config.latent_noise": 0.1})
    train_set, val_set = run_split(small_pets, config)
    meta = Runtime("meta")
    (_, ae_stage), (_, flow_stage) = config.stages()
    plan = ae_stage.plan(StageContext(train_set, val_set, meta, image_size=64))
    assert all(t.device.type == "meta" for t in plan.train_batches.tensors)
    losses = plan.loss_fn(plan.model.train(), next(iter(plan.train_batches)))
    assert {v.device.type for v in losses.values()} == {"meta"} and "discriminator" in losses
    losses["loss"].backward(retain_graph=True)
    losses["discriminator"].backward()

    # the flow stage's one-off set-up reads values back (checks, a Cholesky fit); its steps must not
    cpu = StageContext(train_set, val_set, Runtime("cpu"), image_size=64)
    cpu.models["autoencoder"] = ae_stage.plan(cpu).product()
    plan = flow_stage.plan(cpu)
    plan.model.to("meta")
    batch = meta.move(next(iter(plan.train_batches)))
    losses = plan.loss_fn(plan.model.train(), batch)
    assert {v.device.type for v in losses.values()} == {"meta"}
    losses["loss"].backward()
    flow = plan.product().eval()
    z, log_prob = flow.sample_and_log_prob(5, torch.eye(2)[[1]].to("meta"), 0.8, torch.Generator().manual_seed(0))
    assert z.device.type == log_prob.device.type == "meta" and z.shape == (5, 64)


def _poisoned_data():
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    y[8:16] = float("nan")  # the second of four batches
    return x, y


def test_a_non_finite_step_is_skipped_on_the_device_without_reading_it_back():
    x, y = _poisoned_data()
    model = nn.Linear(3, 1)
    optimizer = adam(model.parameters(), 1e-2)
    trainer = Trainer(model, optimizer, supervised(MSELoss()), progress=False, check_every=1000)
    reads = []
    original = torch.Tensor.__bool__

    def counting_bool(self):
        reads.append(1)
        return original(self)

    torch.Tensor.__bool__ = counting_bool
    try:
        for batch in Batches([x, y], 8):
            trainer.train_step(batch)
    finally:
        torch.Tensor.__bool__ = original
    assert reads == []  # no step read its flag back
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert int(optimizer.state[model.weight]["step"]) == 3  # the poisoned step did not count
    assert int(trainer._skipped) == 1 and trainer.nonfinite_in_a_row == 0

    stuck = Trainer(model, adam(model.parameters(), 1e-2), supervised(MSELoss()), progress=False,
                    max_nonfinite=3, check_every=1000)
    before = model.weight.detach().clone()
    with pytest.raises(NonFiniteLossError, match="4 steps in a row"):  # noticed at the epoch's end
        stuck.fit(Batches([x, torch.full_like(y, float("nan"))], 8), 5)
    assert torch.equal(model.weight, before)


def test_fp16_trains_with_loss_scaling_and_skips_a_poisoned_step():
    torch.manual_seed(0)
    x, y = _poisoned_data()
    model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1))
    trainer = Trainer(model, adam(model.parameters(), 1e-2), supervised(MSELoss()), progress=False,
                      runtime=Runtime("cpu", "fp16"), grad_clip=1.0)
    assert trainer.scaler is not None and trainer.scaler.get_scale() == 2.0**16
    history = trainer.fit(Batches([x, y], 8), 20)
    assert [r.train["skipped_steps"] for r in history] == [1] * 20
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert history[-1].train["loss"] < history[0].train["loss"]
    assert trainer.scaler.get_scale() < 2.0**16  # backed off at the poisoned steps
