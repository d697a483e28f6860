"""Devices, precision and determinism: the plumbing, tested on the CPU (and the meta device)."""

import numpy as np
import pytest
import torch
from torch import nn

import latentflows as lf
from latentflows.cli import main
from latentflows.cli.options import with_options
from latentflows.distributed import as_runtime
from latentflows.losses import MSELoss
from latentflows.runs import run_split
from latentflows.runtime import Runtime, resolve_device
from latentflows.training import Batches, NonFiniteLossError, Trainer, adam, build_stages, supervised
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
    with pytest.raises(ValueError, match="unknown precision 'fp8'; use one of auto, fp32, bf16, fp16"):
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
    config = with_options(tiny_config, ae_epochs=1, flow_epochs=1)
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
    config = with_options(lf.PRESETS["quick"], width=8, embedding_dim=64, couplings=2, hidden=[16], flow="realnvp").with_values({
        "stages.autoencoder.config.terms.adversarial": {"class": "Adversarial", "config": {"start": 0, "width": 8}},
        "stages.autoencoder.config.latent_noise": 0.1})
    train_set, val_set = run_split(small_pets, config)
    meta = Runtime("meta")
    (_, ae_stage), (_, flow_stage) = build_stages(config)
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


# ------------------------------------------------------------------ --precision auto

def _cpu_has_bf16_units():
    from latentflows.runtime import _cpu_flags

    flags = _cpu_flags() or set()
    return bool({"amx_bf16", "avx512_bf16"} & flags) and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _auto_precision_in_a_process(**env):
    import os
    import subprocess
    import sys

    code = "from latentflows.runtime import Runtime; r = Runtime('cpu', 'auto'); print(r.precision, '|', r.precision_reason)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True).stdout.strip()
    return out.split(" | ")


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_bf16_matrix_units():
    runtime = Runtime("cpu", "auto")
    assert runtime.precision == ("bf16" if _cpu_has_bf16_units() else "fp32")
    assert runtime.precision_reason.startswith("auto: ")
    assert Runtime("cpu", "fp32").precision == "fp32" and Runtime("cpu", "bf16").precision == "bf16"  # as asked
    assert Runtime("meta", "auto").precision == "fp32"


@pytest.mark.parametrize("hidden", [{"ATEN_CPU_CAPABILITY": "avx2"}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}])
def test_auto_precision_is_fp32_where_the_kernels_cannot_use_bf16_units(hidden):
    precision, reason = _auto_precision_in_a_process(**hidden)
    assert precision == "fp32" and "no native bf16" in reason


def test_the_cli_trains_in_auto_precision_by_default_and_records_it(tmp_path, pets_parquet, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(pets_parquet), "--limit", "120", "--width", "8", "--embedding-dim", "64",
                 "--ae-epochs", "1", "--flow-epochs", "1", "--couplings", "1", "--channels", "8", "--out", str(run)]) == 0
    expected = Runtime("cpu", "auto")
    err = capsys.readouterr().err
    assert f"{expected.precision} ({expected.precision_reason})" in err  # the status lines say it
    assert (f"autoencoder [{expected.precision}] epoch 1/1" in err) == (expected.precision != "fp32")
    # the flow stage keeps its maps in fp32 and says which part runs in bf16
    assert ("flow [bf16 couplings] epoch 1/1" in err) == (expected.precision == "bf16")
    assert "flow [bf16] epoch" not in err
    assert lf.load(run).summary["precision"] == expected.precision
    from latentflows.cli import build_parser
    from latentflows.cli.common import runtime_of

    forced = build_parser().parse_args(["train", "--precision", "fp32", "--out", str(tmp_path / "fp32")])
    assert runtime_of(forced).precision == "fp32"  # --precision fp32 still forces fp32

    # sampling decodes in the precision asked for (auto by default); the flow's log-densities stay fp32's
    printed = {}
    for precision in ("fp32", "bf16", None):
        out = tmp_path / f"{precision}.png"
        chosen = ["--precision", precision] if precision else []
        assert main(["sample", str(run), "--class", "dog", "-n", "4", "--out", str(out), "--npy",
                     str(out.with_suffix(".npy")), *chosen]) == 0
        printed[precision] = capsys.readouterr().out.split("log-density")[1]
    assert printed["fp32"] == printed["bf16"] == printed[None]
    images = {p: torch.from_numpy(np.load(tmp_path / f"{p}.npy")).float() for p in ("fp32", "bf16", None)}
    assert torch.equal(images[None], images[expected.precision])
    assert 0 < (images["bf16"] - images["fp32"]).abs().mean() < 2  # of 255 levels: a rounding, not another image


def test_bf16_training_reaches_the_fp32_validation_loss_and_ranks_images_alike(small_pets, tiny_config):
    """bf16 keeps 8 bits of mantissa: over a short run on real pets its validation reconstruction loss
    stays within 1% of fp32's (measured: 0.01%), the held-out log-densities within 2% (the flow's
    coupling networks train in bf16 too), and the two models order held-out images alike."""
    config = with_options(tiny_config, ae_epochs=3, flow_epochs=3)
    runs = {precision: lf.train(small_pets, config, device="cpu", precision=precision, progress=False, figures=False)
            for precision in ("fp32", "bf16")}
    losses = {precision: pipeline.summary for precision, pipeline in runs.items()}
    assert {p: s["precision"] for p, s in losses.items()} == {"fp32": "fp32", "bf16": "bf16"}
    _, val_set = run_split(small_pets, config)
    images, labels = val_set.images[:24], val_set.labels[:24]
    errors = {p: (pipeline.reconstruct(images, labels).float() - images.float()).abs().mean().item() / 255
              for p, pipeline in runs.items()}
    assert abs(errors["bf16"] - errors["fp32"]) <= 0.01 * errors["fp32"], errors
    log_probs = {p: pipeline.log_prob(images, labels) for p, pipeline in runs.items()}
    assert all(torch.isfinite(v).all() for v in log_probs.values())
    means = {p: v.mean().item() for p, v in log_probs.items()}  # the flow's coupling networks trained in bf16 too
    assert abs(means["bf16"] - means["fp32"]) <= 0.02 * abs(means["fp32"]), means
    ranks = {p: v.argsort().argsort().float() for p, v in log_probs.items()}
    assert torch.corrcoef(torch.stack([ranks["fp32"], ranks["bf16"]]))[0, 1] > 0.98  # Spearman's rank correlation
    samples = runs["bf16"].generate("cat", n=8, seed=1)
    assert torch.isfinite(samples.log_prob).all() and (samples.log_prob.diff() <= 0).all()  # ranked, highest first
    assert runs["bf16"].precision == "bf16" and runs["fp32"].precision == "fp32"  # a trained pipeline decodes so


def test_a_pipeline_decodes_in_its_precision_and_refuses_an_unknown_one():
    from latentflows.flows import ConditionalRealNVP

    pipeline = lf.LatentFlowPipeline(lf.ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
                                     ConditionalRealNVP(8, context_size=2, couplings=2, hidden=[8]), ["cat", "dog"])
    assert pipeline.precision == "auto" and pipeline.decode_precision == Runtime("cpu", "auto").precision
    seen = {}
    for part in ("fc_encode", "fc_decode"):
        getattr(pipeline.autoencoder, part).register_forward_hook(lambda m, i, out, part=part: seen.update({part: out.dtype}))
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        pipeline.precision = precision
        images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
        reconstructions = pipeline.reconstruct(images)
        assert seen == {"fc_encode": torch.float32, "fc_decode": dtype}  # the encoder always fp32: exact embeddings
        assert reconstructions.dtype == torch.uint8
    with pytest.raises(lf.LatentflowsError, match="unknown precision 'fp8'; use one of auto, fp32, bf16, fp16"):
        pipeline.precision = "fp8"


# ------------------------------------------------------------------ the one private PyTorch protocol the trainer uses


@pytest.mark.parametrize("make", [
    lambda w: torch.optim.Adam(w, lr=0.1, fused=True),
    lambda w: torch.optim.AdamW(w, lr=0.1, fused=True),
    lambda w: torch.optim.SGD(w, lr=0.1, momentum=0.9, fused=True),
])
def test_the_installed_torch_still_skips_fused_steps_on_a_device_flag(make):
    """training/skipping.py relies on GradScaler's private protocol; if torch changes it, this fails."""
    from latentflows.training.skipping import skips_on_device, step_unless

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = make([weight])
    assert skips_on_device(optimizer), "fused optimizers no longer advertise _step_supports_amp_scaling"
    weight.grad = torch.full((3,), 2.0)
    step_unless(optimizer, torch.tensor(False))
    after_one, state = weight.detach().clone(), {k: v.clone() for k, v in optimizer.state[weight].items()}
    assert not torch.equal(after_one, torch.ones(3))
    step_unless(optimizer, torch.tensor(True))  # skipped: weights and optimizer state unchanged
    assert torch.equal(weight.detach(), after_one)
    assert all(torch.equal(optimizer.state[weight][k], v) for k, v in state.items())
    assert not hasattr(optimizer, "found_inf") and not hasattr(optimizer, "grad_scale")
    assert not skips_on_device(torch.optim.Adam([weight], foreach=False)) and not skips_on_device(torch.optim.LBFGS([weight]))


def test_the_flow_stage_trains_its_coupling_networks_in_bf16_exactly_when_the_run_does(small_pets, tiny_config):
    train_set, val_set = run_split(small_pets, tiny_config)
    (_, ae_stage), (_, flow_stage) = build_stages(tiny_config)
    for precision, expected in (("bf16", torch.bfloat16), ("fp32", None)):
        context = StageContext(train_set, val_set, Runtime("cpu", precision), seed=0, image_size=64)
        context.models["autoencoder"] = ae_stage.build_model(64, 2)
        plan = flow_stage.plan(context)
        model = plan.model
        assert model.conditioner_dtype == expected and not plan.autocast
        assert plan.precision_tag == ("bf16 couplings" if expected else None)
        seen = []
        hook = model.flow.body.transforms[1].conditioner.register_forward_hook(
            lambda module, inputs, output: seen.append((torch.is_autocast_enabled("cpu"), output.dtype)))
        losses = model(torch.randn(8, model.flow.features), torch.eye(2)[torch.arange(8) % 2])
        hook.remove()
        assert seen == [(expected is not None, expected or torch.float32)] and losses["loss"].dtype == torch.float32
