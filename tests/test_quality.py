"""The autoencoder's quality pieces: the spatial latent, the L1 loss, flips, the cosine
schedule and the adversarial term (whose discriminator must never move the decoder)."""

import json
import math

import pytest
import torch

import latentflows as lf
from latentflows.autoencoder import SpatialAutoencoder
from latentflows.cli.options import with_options
from latentflows.training import (
    Adversarial,
    AutoencoderStage,
    CosineLearningRate,
    Objective,
    PatchDiscriminator,
    Trainer,
    adaptive_weight,
    diff_augment,
    validate_config,
)
from latentflows.training.stages import AutoencoderTraining

SPATIAL = {"class": "SpatialAutoencoder", "config": {"embedding_dim": 64, "width": 8, "blocks": 1}}


def test_spatial_autoencoder_keeps_the_embedding_size_and_rejects_a_bad_one():
    model = SpatialAutoencoder(embedding_dim=256, width=8, image_size=64)
    assert model.latent_shape == (4, 8, 8)
    reconstruction, embedding = model(torch.zeros(3, 3, 64, 64))
    assert reconstruction.shape == (3, 3, 64, 64) and embedding.shape == (3, 256)
    assert torch.equal(model.decode(embedding), reconstruction)
    with pytest.raises(ValueError, match="multiple of 64"):
        SpatialAutoencoder(embedding_dim=100, width=8, image_size=64)
    with pytest.raises(ValueError, match="power of 2"):
        SpatialAutoencoder(embedding_dim=64, width=8, downsample=6)


def test_l1_loss_from_the_command_line_name():
    loss = lf.losses.parse_loss("l1")
    assert loss(torch.zeros(1, 3), torch.tensor([[1.0, -2.0, 0.0]])).item() == pytest.approx(1.0)


def test_flip_mirrors_about_half_of_a_training_batch_and_nothing_in_eval():
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, outputs):
            seen["images"] = outputs["images"]
            return {"loss": outputs["reconstruction"].sum() * 0}

    model = AutoencoderTraining(SpatialAutoencoder(64, width=8, image_size=32), Spy(), flip=True)
    images = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8)
    x = lf.autoencoder.to_signed_unit(images)
    model.train()(images, torch.zeros(200, dtype=torch.long))
    flipped = (seen["images"] == x.flip(-1)).flatten(1).all(1)
    unchanged = (seen["images"] == x).flatten(1).all(1)
    assert bool((flipped | unchanged).all()) and 60 < int(flipped.sum()) < 140
    model.eval()(images, torch.zeros(200, dtype=torch.long))
    assert torch.equal(seen["images"], x)


def test_cosine_schedule_goes_from_lr_to_one_percent():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = CosineLearningRate([optimizer], lr=0.1, epochs=5)
    rates = [schedule.rate(epoch) for epoch in range(1, 6)]
    assert rates[0] == pytest.approx(0.1) and rates[-1] == pytest.approx(0.001)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[2] == pytest.approx(0.001 + 0.099 * 0.5)


def test_adaptive_weight_matches_a_hand_computation():
    torch.manual_seed(0)
    last = torch.nn.Parameter(torch.randn(3, 4))
    x = torch.randn(5, 4)
    output = x @ last.T
    reconstruction_loss = output.pow(2).mean()
    generator_loss = -(output * torch.tensor([1.0, -2.0, 0.5])).mean()
    # by hand: d/dW mean(o^2) = 2 o^T x / numel;  d/dW -mean(o * c) = -(c^T 1) x / numel
    numel = output.numel()
    rec_grad = 2 * output.T @ x / numel
    gen_grad = -(torch.tensor([1.0, -2.0, 0.5])[:, None] * x.sum(0)[None, :]) / numel
    expected = rec_grad.norm() / (gen_grad.norm() + 1e-4)
    assert adaptive_weight(reconstruction_loss, generator_loss, last).item() == pytest.approx(expected.item(), rel=1e-5)


def test_diff_augment_is_differentiable_and_the_same_for_the_same_seed():
    images = torch.rand(4, 3, 16, 16, requires_grad=True)
    a = diff_augment(images, torch.Generator().manual_seed(3))
    b = diff_augment(images, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    a.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def _adversarial_model(start=0, lecam=0.0):
    torch.manual_seed(0)
    autoencoder = SpatialAutoencoder(64, width=8, image_size=32)
    objective = Objective({"reconstruction": {"class": "Reconstruction", "config": {
        "loss": {"class": "L1Loss", "config": {}}}},
        "adversarial": Adversarial(weight=0.5, start=start, width=8, lecam=lecam)})
    stage = AutoencoderStage(epochs=1, batch_size=8, lr=1e-3)
    return AutoencoderTraining(autoencoder, objective), stage.updates(autoencoder, objective)


@pytest.mark.parametrize("lecam", [0.0, 0.3])
def test_adversarial_losses_reach_only_their_own_parameters(lecam):
    model, updates = _adversarial_model(lecam=lecam)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    batch = (images, torch.zeros(8, dtype=torch.long))
    trainer = Trainer(model, updates, lambda m, b: m(*b), progress=False)
    torch.manual_seed(1)
    losses, _ = trainer._forward_backward(batch)
    assert set(losses) >= {"loss", "discriminator", "adversarial_loss", "adversarial_discriminator"}
    discriminator = list(model.objective.terms["adversarial"].discriminator.parameters())
    autoencoder = list(model.autoencoder.parameters())
    grads = {id(p): p.grad for p in discriminator + autoencoder}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # the same step again, by hand: each loss alone
    torch.manual_seed(1)
    model.objective.terms["adversarial"].steps.zero_()
    model.objective.terms["adversarial"].score_averages.zero_()
    fresh = model(*batch)
    from_discriminator_loss = torch.autograd.grad(fresh["discriminator"], autoencoder, allow_unused=True)
    assert all(g is None or g.abs().max() == 0 for g in from_discriminator_loss)  # never moves the decoder
    expected_d = torch.autograd.grad(fresh["discriminator"], discriminator, retain_graph=True)
    for parameter, expected in zip(discriminator, expected_d):
        assert torch.allclose(parameter.grad, expected, atol=1e-6)  # the generator loss did not push D
    expected_ae = torch.autograd.grad(fresh["loss"], autoencoder)
    for parameter, expected in zip(autoencoder, expected_ae):
        assert torch.allclose(parameter.grad, expected, atol=1e-6)


def test_lecam_penalises_scores_beyond_the_other_sides_average_and_tracks_both_averages():
    term = Adversarial(start=0, width=8, lecam=0.3, lecam_decay=0.9)
    term.score_averages.copy_(torch.tensor([0.5, -0.5]))  # a_real, a_fake
    real, fake = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 2.0])
    # real scores above a_fake = -0.5: (1.5^2 + 0) / 2; fake scores below a_real = 0.5: (0.5^2 + 0) / 2
    assert torch.isclose(term.lecam_penalty(real, fake), torch.tensor((1.5**2 + 0.5**2) / 2))
    assert torch.allclose(term.score_averages, torch.tensor([0.9 * 0.5 + 0.1 * -0.5, 0.9 * -0.5 + 0.1 * 1.0]))
    term.score_averages.copy_(torch.tensor([0.5, -0.5]))
    assert term.lecam_penalty(torch.tensor([-1.0]), torch.tensor([1.0])) == 0  # within the averages: no penalty
    rebuilt = Adversarial.from_config(term.get_config())
    assert (rebuilt.lecam, rebuilt.lecam_decay) == (0.3, 0.9)
    old_checkpoint = {k: v for k, v in term.state_dict().items() if k != "score_averages"}
    rebuilt.load_state_dict(old_checkpoint)  # a checkpoint from before LeCam still loads
    assert torch.equal(rebuilt.score_averages, torch.zeros(2))
    with pytest.raises(ValueError, match="lecam must be"):
        Adversarial(lecam=-1.0)


def test_adversarial_term_is_off_during_its_warm_up_and_its_discriminator_stays_put():
    model, _ = _adversarial_model(start=3)
    autoencoder, objective = model.autoencoder, model.objective
    # weight decay on: an idle Adam step would shrink the discriminator (it did, in a trial)
    updates = AutoencoderStage(epochs=1, batch_size=8, lr=1e-3, weight_decay=1e-2).updates(autoencoder, objective)
    trainer = Trainer(model, updates, lambda m, b: m(*b), progress=False)
    batch = (torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.zeros(8, dtype=torch.long))
    discriminator = objective.terms["adversarial"].discriminator
    before = [p.detach().clone() for p in discriminator.parameters()]
    for _ in range(3):
        losses = trainer.train_step(batch)
        assert "discriminator" not in losses and losses["adversarial_loss"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, discriminator.parameters()))
    losses = trainer.train_step(batch)  # step 4: on
    assert losses["discriminator"] > 0 and losses["adversarial_loss"] != 0
    assert not all(torch.equal(a, b) for a, b in zip(before, discriminator.parameters()))


def test_patch_discriminator_scores_patches():
    scores = PatchDiscriminator(width=8, layers=3)(torch.zeros(2, 3, 64, 64))
    assert scores.shape[:2] == (2, 1) and scores.shape[-1] > 1


def test_perceptual_distance_is_zero_for_the_same_image_grows_with_blur_and_trains_only_the_autoencoder(small_pets):
    from latentflows.training import Perceptual

    term = Perceptual()
    assert list(term.parameters()) == [] and term.state_dict() == {}  # frozen, not saved
    x = lf.autoencoder.to_signed_unit(small_pets.images[:8])
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    very_blurred = torch.nn.functional.avg_pool2d(x, 7, 1, 3)
    assert term({"images": x, "reconstruction": x}).item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < term({"images": x, "reconstruction": blurred}) < term({"images": x, "reconstruction": very_blurred})
    autoencoder = SpatialAutoencoder(64, width=8, image_size=64)
    reconstruction, _ = autoencoder(x)
    term({"images": x, "reconstruction": reconstruction}).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in autoencoder.parameters())
    assert all(p.grad is None for p in term.network.parameters())


@pytest.mark.parametrize("terms", ["l1", "perceptual", "adversarial", "class-head"])
def test_each_quality_setting_trains_end_to_end_on_a_small_slice(small_pets, tiny_config, terms):
    values = {"stages.autoencoder.config.model": SPATIAL, "stages.autoencoder.config.flip": True,
              "stages.autoencoder.config.schedule": "cosine", "stages.flow.config.schedule": "cosine"}
    config = with_options(tiny_config, ae_loss="l1").with_values(values)
    if terms == "perceptual":
        config = config.with_values({"stages.autoencoder.config.terms.perceptual": {
            "class": "Perceptual", "config": {"weight": 0.5}}})
    if terms == "class-head":
        config = config.with_values({"stages.autoencoder.config.terms.class_head": {
            "class": "ClassHead", "config": {"weight": 0.1}}, "stages.autoencoder.config.latent_noise": 0.1})
    if terms == "adversarial":
        config = config.with_values({"stages.autoencoder.config.terms.adversarial": {
            "class": "Adversarial", "config": {"weight": 0.5, "start": 2, "width": 8}}})
    pipeline = lf.train(small_pets, config, progress=False, figures=False)
    samples = pipeline.generate("cat", 4, seed=0)
    assert samples.images.shape == (4, 3, 64, 64) and math.isfinite(float(samples.log_prob[0]))
    assert lf.RunConfig(pipeline.config).get("stages.autoencoder.config.model.class") == "SpatialAutoencoder"


def test_latent_noise_perturbs_only_what_the_decoder_sees_while_training():
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, outputs):
            seen.update(outputs)
            return {"loss": outputs["reconstruction"].mean()}

    torch.manual_seed(0)
    autoencoder = SpatialAutoencoder(64, width=8, image_size=32)
    model = AutoencoderTraining(autoencoder, Spy(), latent_noise=0.5)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    x = lf.autoencoder.to_signed_unit(images)
    model.train()(images, torch.zeros(16, dtype=torch.long))
    clean = autoencoder.decode(autoencoder.encode(x))
    assert torch.allclose(seen["embedding"], autoencoder.encode(x)) and not torch.allclose(seen["reconstruction"], clean)
    model.eval()(images, torch.zeros(16, dtype=torch.long))
    assert torch.allclose(seen["reconstruction"], autoencoder.eval().decode(autoencoder.encode(x)))
    with pytest.raises(ValueError, match="latent_noise"):
        AutoencoderStage(epochs=1, batch_size=8, lr=1e-3, latent_noise=-1)


def test_class_head_trains_the_encoder_and_its_head_but_not_the_decoder():
    from latentflows.training import ClassHead

    autoencoder = SpatialAutoencoder(64, width=8, image_size=32)
    head = ClassHead(weight=1.0)
    head.bind({"embedding_dim": 64, "classes": 3})
    head.head.weight.data.normal_()
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    _, embedding = autoencoder(x)
    head({"embedding": embedding, "labels": torch.tensor([0, 1, 2, 0, 1, 2])}).backward()
    assert all(p.grad is None for p in autoencoder.decoder.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in autoencoder.encoder.parameters())
    assert head.head.weight.grad.abs().sum() > 0


def test_a_scheduled_class_head_stops_at_its_step_and_a_resume_counts_from_the_checkpoint():
    from latentflows.training import ClassHead

    torch.manual_seed(0)
    head = ClassHead(weight=1.0, stop=2)
    head.bind({"embedding_dim": 4, "classes": 2})
    outputs = {"embedding": torch.randn(6, 4, requires_grad=True), "labels": torch.tensor([0, 1] * 3)}
    assert head(outputs).item() == pytest.approx(math.log(2), rel=1e-6)  # step 1: on (a head at zero)
    assert head.eval()(outputs).item() > 0  # validation after step 1: the next step is on
    assert head.train()(outputs).item() > 0  # step 2: on
    assert head.eval()(outputs).item() == 0  # validation after step 2: off from now on
    off = head.train()(outputs)  # step 3: off, and pushes nothing
    assert off.item() == 0
    off.backward()
    assert outputs["embedding"].grad.abs().max() == 0
    resumed = ClassHead.from_config(head.get_config())
    resumed.bind({"embedding_dim": 4, "classes": 2})
    resumed.load_state_dict(head.state_dict())
    assert (resumed.stop, resumed._steps) == (2, 3) and resumed(outputs).item() == 0
    unscheduled = ClassHead()  # a checkpoint written before heads counted steps still loads
    unscheduled.bind({"embedding_dim": 4, "classes": 2})
    unscheduled.load_state_dict({k: v for k, v in unscheduled.state_dict().items() if k != "steps"})
    with pytest.raises(RuntimeError, match="steps"):  # a schedule needs its count
        resumed.load_state_dict({k: v for k, v in head.state_dict().items() if k != "steps"})
    with pytest.raises(ValueError, match="stop must be"):
        ClassHead(stop=0)
    with pytest.raises(ValueError, match="start must be"):
        ClassHead(start=-1)


def test_a_schedule_in_epochs_switches_at_the_epochs_the_stage_counts():
    from latentflows.training import Adversarial, ClassHead, ScheduledTerm

    term = ScheduledTerm(start=1, stop=3, unit="epochs")
    term.bind({"steps_per_epoch": 2})
    assert [term.switched_on() for _ in range(7)] == [False, False, True, True, True, True, False]
    head = ClassHead.from_config(ClassHead(stop=20, unit="epochs").get_config())  # the unit is in the config
    assert (head.stop, head.unit) == (20, "epochs")
    assert Adversarial(start=20, unit="epochs", width=8).get_config()["unit"] == "epochs"
    unbound = ScheduledTerm(stop=1, unit="epochs")
    with pytest.raises(RuntimeError, match="steps_per_epoch"):
        unbound.switched_on()
    with pytest.raises(ValueError, match="unit must be 'steps' or 'epochs'"):
        ScheduledTerm(stop=1, unit="epoch")
    with pytest.raises(ValueError, match="stop must be a number of epochs"):
        ScheduledTerm(start=2, stop=2, unit="epochs")


def test_a_head_stopped_after_one_epoch_trains_as_one_stopped_after_that_epochs_steps(small_pets, tiny_config, tmp_path):
    from safetensors.torch import load_file

    from latentflows.runs import run_split

    def head(stop: int, unit: str) -> dict:
        return {"class": "ClassHead", "config": {"weight": 0.5, "stop": stop, "unit": unit}}

    base = tiny_config.with_values({"stages.autoencoder.config.epochs": 2, "stages.flow.config.epochs": 1})
    per_epoch = len(run_split(small_pets, base)[0]) // 32  # full batches of 32 an epoch, which the stage tells the term
    for name, stop, unit in (("epochs", 1, "epochs"), ("steps", per_epoch, "steps"), ("later", per_epoch + 1, "steps")):
        config = base.with_values({"stages.autoencoder.config.terms.class_head": head(stop, unit)})
        lf.train(small_pets, config, tmp_path / name, progress=False, figures=False)
    epochs, steps, later = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("epochs", "steps", "later"))
    assert all(torch.equal(epochs[k], steps[k]) for k in epochs)
    assert not all(torch.equal(epochs[k], later[k]) for k in epochs)  # one step more is another run
    records = [json.loads(line) for line in (tmp_path / "epochs" / "metrics.jsonl").read_text().splitlines()]
    head_losses = [r["train_class_head"] for r in records if r["stage"] == "autoencoder"]
    assert head_losses[0] > 0 and head_losses[1] == 0


def test_a_class_head_switched_off_mid_run_resumes_to_the_same_weights(small_pets, tiny_config, tmp_path, monkeypatch):
    from conftest import train_until_interrupted
    from safetensors.torch import load_file

    # 216 training images in batches of 32: 6 steps an epoch, so the head stops inside epoch 2
    head = {"class": "ClassHead", "config": {"weight": 0.5, "stop": 10}}
    config = tiny_config.with_values({"stages.autoencoder.config.epochs": 3, "stages.flow.config.epochs": 1,
                                      "stages.autoencoder.config.terms.class_head": head})
    lf.train(small_pets, config, tmp_path / "full", progress=False, figures=False)
    train_until_interrupted(monkeypatch, "autoencoder", 1, small_pets, config, tmp_path / "resumed",
                            progress=False, figures=False)
    lf.train(small_pets, config, tmp_path / "resumed", progress=False, figures=False, resume=True)
    never = config.with_values({"stages.autoencoder.config.terms.class_head.config.stop": None})
    lf.train(small_pets, never, tmp_path / "never", progress=False, figures=False)
    full, resumed, unstopped = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("full", "resumed", "never"))
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert not all(torch.equal(full[k], unstopped[k]) for k in full)  # the stop changed the training
    saved = json.loads((tmp_path / "full" / "run.json").read_text())["config"]  # recorded with the run
    assert saved["stages"]["autoencoder"]["config"]["terms"]["class_head"]["config"]["stop"] == 10


def test_every_preset_builds_at_its_real_size_and_quick_is_the_measured_choice():
    for name, preset in lf.PRESETS.items():
        assert validate_config(preset).preset == name
    quick, best = lf.PRESETS["quick"], lf.PRESETS["best"]
    assert quick.get("stages.autoencoder.config.model.class") == "SpatialAutoencoder"
    assert quick.get("stages.autoencoder.config.terms.reconstruction.config.loss.class") == "L1Loss"
    assert quick.get("stages.autoencoder.config.flip") and quick.get("stages.autoencoder.config.schedule") == "cosine"
    assert best.get("stages.autoencoder.config.terms.adversarial.class") == "Adversarial"
    # best's class head stops where its adversarial term starts (H20 in docs/quality.md), both
    # counted in epochs so that they fall at the same epoch on a user's data
    head, adversarial = (best.get(f"stages.autoencoder.config.terms.{name}.config") for name in ("class_head", "adversarial"))
    assert (head["stop"], head["unit"]) == (adversarial["start"], adversarial["unit"]) == (20, "epochs")
    assert quick.get("stages.autoencoder.config.terms.class_head.config").get("stop") is None
    assert lf.PRESETS["seed"].get("stages.autoencoder.config.model.class") == "ConvAutoencoder"  # the notebook's
