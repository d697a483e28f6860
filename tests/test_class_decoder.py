"""The class-conditional decoder (``SpatialAutoencoder(classes=...)``) and the focal frequency
loss: what each computes, and that a run with them trains, saves, loads, samples,
interpolates, evaluates and exports."""

import math

import numpy as np
import pytest
import torch

import latentflows as lf
from latentflows.autoencoder import ClassConditionalNorm, SpatialAutoencoder
from latentflows.cli.options import with_options
from latentflows.errors import LatentflowsError
from latentflows.evaluation import evaluate
from latentflows.export import export_onnx
from latentflows.interpolation import interpolate
from latentflows.losses import FocalFrequencyLoss
from latentflows.registry import serialize
from latentflows.training import Reconstruction
from latentflows.training.stages import AutoencoderStage, AutoencoderTraining

CONDITIONAL = {"class": "SpatialAutoencoder", "config": {"embedding_dim": 64, "width": 8, "classes": "auto"}}
FREQUENCY = {"class": "Reconstruction", "config": {"loss": {"class": "FocalFrequencyLoss", "config": {}}, "weight": 1.0}}


# ---------------------------------------------------------------- focal frequency loss

def test_focal_frequency_loss_matches_a_numpy_computation():
    rng = np.random.default_rng(0)
    target, prediction = rng.uniform(-1, 1, (2, 3, 6, 5)), rng.uniform(-1, 1, (2, 3, 6, 5))
    spectrum = np.fft.fft2(prediction - target, norm="ortho")
    distance = np.abs(spectrum) ** 2
    weight = np.abs(spectrum) / np.abs(spectrum).max(axis=(-2, -1), keepdims=True)
    expected = (weight * distance).reshape(2, -1).mean(1)
    loss = FocalFrequencyLoss(reduction="none")(torch.tensor(target), torch.tensor(prediction))
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


def test_focal_frequency_gradient_holds_the_weights_fixed():
    """d/dprediction of mean_k(w_k |E_k|^2) with w constant is 2 Re(F^H(w E)) / n (F unitary)."""
    target, prediction = torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4, requires_grad=True)
    FocalFrequencyLoss()(target, prediction).backward()
    error = torch.fft.fft2(prediction.detach() - target, norm="ortho")
    weight = error.abs() / error.abs().max()
    expected = 2 * torch.fft.ifft2(weight * error, norm="ortho").real / 16
    assert torch.allclose(prediction.grad, expected, atol=1e-6)
    assert torch.isfinite(prediction.grad).all()


def test_focal_frequency_loss_weighs_blur_over_a_brightness_shift_and_rejects_flat_inputs():
    """For the same pixel error, an error spread over many frequencies (blur) costs more relative
    to its squared error than one in a single frequency (a uniform shift) does."""
    images = lf.autoencoder.to_signed_unit(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8))
    blurred = torch.nn.functional.avg_pool2d(images, 3, 1, 1)
    shifted = images + (blurred - images).pow(2).mean().sqrt()  # the same mean squared error
    loss = FocalFrequencyLoss()
    assert loss(images, blurred) < (blurred - images).pow(2).mean()            # weights are at most 1
    assert loss(images, shifted) == pytest.approx((shifted - images).pow(2).mean().item(), rel=1e-4)
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        loss(torch.zeros(2, 5), torch.ones(2, 5))
    with pytest.raises(ValueError, match="alpha"):
        FocalFrequencyLoss(alpha=-1)


def test_focal_frequency_term_trains_only_the_autoencoder():
    autoencoder = SpatialAutoencoder(64, width=8, image_size=32)
    term = Reconstruction(FocalFrequencyLoss())
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    reconstruction, _ = autoencoder(x)
    term({"images": x, "reconstruction": reconstruction}).backward()
    assert list(term.parameters()) == []
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in autoencoder.decoder.parameters())
    assert serialize(term)["config"]["loss"] == {"class": "FocalFrequencyLoss",
                                                               "config": {"reduction": "mean", "alpha": 1.0}}


# ---------------------------------------------------------------- class-conditional decoder

def test_class_conditional_norm_is_linear_in_the_one_hot_class():
    norm = ClassConditionalNorm(2, 4, classes=3)
    torch.nn.init.normal_(norm.modulation.weight)
    x = torch.randn(2, 4, 3, 3)
    cat, dog = torch.eye(3)[[0, 0]], torch.eye(3)[[1, 1]]
    assert not torch.allclose(norm(x, cat), norm(x, dog))
    halfway = norm(x, (cat + dog) / 2)
    assert torch.allclose(halfway, (norm(x, cat) + norm(x, dog)) / 2, atol=1e-5)


def test_class_conditional_decoder_needs_the_class_and_uses_it():
    model = SpatialAutoencoder(64, width=8, image_size=32, classes=2).eval()
    for layer in model.modules():
        if isinstance(layer, ClassConditionalNorm):
            torch.nn.init.normal_(layer.modulation.weight)
    embedding = torch.randn(3, 64)
    as_cat, as_dog = model.decode(embedding, torch.eye(2)[[0, 0, 0]]), model.decode(embedding, torch.eye(2)[[1, 1, 1]])
    assert as_cat.shape == (3, 3, 32, 32) and not torch.allclose(as_cat, as_dog)
    with pytest.raises(ValueError, match="one-hot classes as context, shape \\(3, 2\\)"):
        model.decode(embedding)
    with pytest.raises(ValueError, match="classes must be 0"):
        SpatialAutoencoder(64, width=8, image_size=32, classes=1)
    with pytest.raises(ValueError, match="filled in by the training stage"):
        SpatialAutoencoder(64, width=8, image_size=32, classes="auto")
    # its config round trip, and an old config (no classes) is an unconditional model
    assert SpatialAutoencoder.from_config(model.get_config()).classes == 2
    plain = SpatialAutoencoder(64, width=8, image_size=32)
    assert "classes" not in plain.get_config() and plain.classes == 0
    assert torch.equal(plain.decode(embedding), plain.decode(embedding, torch.eye(2)[[0, 1, 1]]))


def test_the_training_step_feeds_the_decoder_the_batch_labels():
    autoencoder = SpatialAutoencoder(64, width=8, image_size=32, classes=3)
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, outputs):
            seen.update(outputs)
            return {"loss": outputs["reconstruction"].mean()}

    images, labels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 2, 1, 2])
    AutoencoderTraining(autoencoder, Spy()).eval()(images, labels)
    x = lf.autoencoder.to_signed_unit(images)
    expected = autoencoder.decode(autoencoder.encode(x), torch.eye(3)[labels])
    assert torch.allclose(seen["reconstruction"], expected)
    stage = AutoencoderStage(epochs=1, batch_size=8, lr=1e-3, model=CONDITIONAL)
    assert stage.build_model(32, 5).classes == 5


def test_a_run_with_a_class_conditional_decoder_and_frequency_term_works_end_to_end(small_pets, tiny_config, tmp_path):
    config = tiny_config.with_values({"stages.autoencoder.config.model": CONDITIONAL,
                                      "stages.autoencoder.config.terms.frequency": FREQUENCY})
    pipeline = lf.train(small_pets, config, tmp_path / "run", progress=False, tensorboard=True)
    assert pipeline.autoencoder.classes == 2
    assert any((tmp_path / "run" / "tensorboard").iterdir())  # its reconstruction grids pass the classes too
    assert (tmp_path / "run" / "figures" / "reconstructions.png").exists()
    loaded = lf.load(tmp_path / "run", device="cpu")
    assert loaded.autoencoder.get_config()["classes"] == 2
    samples = loaded.generate("cat", 3, seed=0)
    assert torch.equal(samples.images, pipeline.generate("cat", 3, seed=0).images)
    assert math.isfinite(float(samples.log_prob[0]))
    images, labels = small_pets.images[:4], small_pets.labels[:4]
    assert loaded.reconstruct(images, labels).shape == images.shape
    with pytest.raises(LatentflowsError, match="class-conditional"):
        loaded.reconstruct(images)
    rows = interpolate(loaded, "cat", "dog", steps=4)
    assert {tuple(r.shape) for r in rows.values()} == {(4, 3, 64, 64)}
    report, _ = evaluate(loaded, small_pets, small_pets, samples_per_class=4, progress=False)
    assert 0 <= report["autoencoder"]["val"]["ssim"] <= 1


def test_a_class_conditional_decoder_exports_to_onnx(small_pets, tiny_config, tmp_path):
    config = with_options(tiny_config, ae_epochs=1, flow_epochs=1).with_values(
        {"stages.autoencoder.config.model": CONDITIONAL})
    pipeline = lf.train(small_pets, config, progress=False, figures=False)
    export_onnx(pipeline, tmp_path / "generator.onnx")   # checks onnxruntime against torch itself
    assert (tmp_path / "generator.onnx").stat().st_size > 0
