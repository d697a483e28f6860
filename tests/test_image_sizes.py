"""Bigger images: every autoencoder type trains at 32, 64, 128 and 256 pixels through the
config, with the adversarial and perceptual terms too; ``--image-size`` offers exactly those
sizes; SpatialAutoencoder's ``downsample="auto"`` keeps an 8x8 latent and saves the number."""

import json
import math

import pytest
import torch

import latentflows as lf
from latentflows.autoencoder import SpatialAutoencoder
from latentflows.cli import main
from latentflows.cli.options import with_options
from latentflows.errors import ModelFileError
from latentflows.registry import build
from latentflows.runs import RunFolder
from latentflows.training import validate_config
from latentflows.training.adversarial import PatchDiscriminator

SIZES = (32, 64, 128, 256)
# tiny widths; everything else as the presets have it (SpatialAutoencoder: quick's, downsample "auto")
MODELS = {
    "ConvAutoencoder": {"class": "ConvAutoencoder", "config": {"embedding_dim": 64, "width": 4, "fc_dim": 64}},
    "SpatialAutoencoder": {"class": "SpatialAutoencoder", "config": {"embedding_dim": 256, "width": 8, "blocks": 1}},
}
IMAGES, TRAIN_BATCH = 20, 16  # 18 training images after the split: one step per stage


def random_pets(size: int, n: int = IMAGES) -> lf.ImageDataset:
    generator = torch.Generator().manual_seed(size)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    return lf.ImageDataset(images, torch.arange(n) % 2, ["cat", "dog"], source="random")


def one_step_config(size: int, model: dict) -> lf.RunConfig:
    return with_options(
        lf.PRESETS["quick"], image_size=size, ae_epochs=1, ae_batch_size=TRAIN_BATCH, flow_epochs=1, flow_batch_size=TRAIN_BATCH,
        couplings=2, channels=8).with_values({"stages.autoencoder.config.model": model,
                                                "stages.flow.config.patience": None})


def trained_steps(run) -> dict[str, list[dict]]:
    rows = RunFolder(run).metrics()
    return {stage: [r for r in rows if r["stage"] == stage] for stage in ("autoencoder", "flow")}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_autoencoder_trains_a_step_at_every_size(kind, size, tmp_path):
    data, config = random_pets(size), one_step_config(size, MODELS[kind])
    pipeline = lf.train(data, config, tmp_path / "run", progress=False, figures=False)
    for stage, rows in trained_steps(tmp_path / "run").items():
        assert len(rows) == 1 and math.isfinite(rows[0]["train_loss"]), (stage, rows)

    autoencoder = pipeline.autoencoder
    dim = autoencoder.embedding_dim
    x = lf.autoencoder.to_signed_unit(data.images[:3])
    reconstruction, embedding = autoencoder(x)
    assert reconstruction.shape == (3, 3, size, size) and embedding.shape == (3, dim)
    assert pipeline.embed(data.images[:3]).shape == (3, dim)
    assert pipeline.reconstruct(data.images[:3]).shape == (3, 3, size, size)
    samples = pipeline.generate("dog", 2, seed=0)
    assert samples.images.shape == (2, 3, size, size) and samples.images.dtype == torch.uint8
    assert all(math.isfinite(float(v)) for v in samples.log_prob)

    saved = json.loads((tmp_path / "run" / "config.json").read_text())["autoencoder"]["config"]
    assert saved["image_size"] == size
    if kind == "SpatialAutoencoder":  # an 8x8 latent at every size, saved as a number
        assert autoencoder.latent_shape == (4, 8, 8) and saved["downsample"] == size // 8
    loaded = lf.load(tmp_path / "run", "cpu")
    assert torch.equal(loaded.generate("dog", 2, seed=0).images, samples.images)


def _perceptual_weights_or_skip() -> None:
    from latentflows.evaluation.efficientnet import wheel_weights_path

    try:
        wheel_weights_path(0)
    except ModelFileError as error:
        pytest.skip(f"the Perceptual term needs ImageNet weights: {error}")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("term", ["adversarial", "perceptual"])
def test_the_best_presets_terms_train_a_step_at_every_size(term, size, tmp_path):
    if term == "perceptual":
        _perceptual_weights_or_skip()
    best = lf.PRESETS["best"]
    terms = best.get("stages.autoencoder.config.terms")
    adversarial = terms.pop("adversarial")
    adversarial["config"].update(start=0, width=8)  # on from the first step
    if term == "perceptual":  # before the adversarial term, whose adaptive weight balances the others
        terms["perceptual"] = {"class": "Perceptual", "config": {"weight": 0.5}}
    config = with_options(
        best, image_size=size, ae_epochs=1, ae_batch_size=TRAIN_BATCH, flow_epochs=1, flow_batch_size=TRAIN_BATCH,
        couplings=2, channels=8).with_values({"stages.autoencoder.config.model.config.width": 8,
                                                "stages.autoencoder.config.model.config.blocks": 1,
                                                "stages.autoencoder.config.terms": {**terms, "adversarial": adversarial}})
    pipeline = lf.train(random_pets(size), config, tmp_path / "run", progress=False, figures=False)
    [row] = trained_steps(tmp_path / "run")["autoencoder"]
    losses = ["train_adversarial_loss", "train_discriminator"] + ["train_perceptual"] * (term == "perceptual")
    assert all(math.isfinite(row[key]) and row[key] != 0 for key in losses), row
    assert pipeline.generate("cat", 1).images.shape == (1, 3, size, size)
    scores = PatchDiscriminator(width=8)(torch.zeros(1, 3, size, size))
    assert scores.shape == (1, 1, size // 8 - 1, size // 8 - 1)  # one score per patch, more patches when larger


def test_image_size_offers_32_64_128_or_256_and_names_them_otherwise(capsys):
    assert main(["train", "--show-config", "--image-size", "128"]) == 0
    assert json.loads(capsys.readouterr().out)["image_size"] == 128
    for bad in ("100", "16", "512", "big"):
        assert main(["train", "--show-config", "--image-size", bad]) == 2
        assert f"--image-size: choose 32, 64, 128 or 256 pixels, got '{bad}'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="choose 32, 64, 128 or 256"):
        with_options(lf.PRESETS["quick"], image_size=100)
    for name, preset in lf.PRESETS.items():
        for size in SIZES:
            assert validate_config(with_options(preset, image_size=size)).image_size == size, name


def test_auto_downsample_keeps_the_64_pixel_networks_and_saves_a_number():
    quick = lf.PRESETS["quick"].get("stages.autoencoder.config.model")
    assert "downsample" not in quick["config"]  # the presets say nothing: "auto"
    torch.manual_seed(0)
    auto = build(quick, image_size=64)
    torch.manual_seed(0)
    explicit = SpatialAutoencoder(**{**quick["config"], "image_size": 64, "downsample": 8})
    assert auto.get_config() == explicit.get_config() and auto.get_config()["downsample"] == 8
    assert auto.state_dict().keys() == explicit.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(auto.state_dict().values(), explicit.state_dict().values()))
    for size in SIZES:
        model = SpatialAutoencoder(image_size=size, width=8)
        assert model.downsample == size // 8 and model.latent_shape == (4, 8, 8)
        again = lf.deserialize(lf.serialize(model))
        assert again.get_config() == model.get_config() and again.get_config()["downsample"] == size // 8


def test_a_saved_downsample_of_8_loads_as_it_was_at_any_size():
    # what every run before "auto" saved: the factor as a number
    for size, latent in ((32, (16, 4, 4)), (64, (4, 8, 8)), (128, (1, 16, 16))):
        old = {"embedding_dim": 256, "width": 8, "image_size": size, "downsample": 8, "blocks": 1, "groups": 8}
        model = lf.deserialize({"class": "SpatialAutoencoder", "config": old})
        assert model.get_config() == old and model.latent_shape == latent
        config = lf.PRESETS["quick"].with_values({"image_size": size, "stages.autoencoder.config.model": {
            "class": "SpatialAutoencoder", "config": old}})
        assert lf.RunConfig.from_dict(config.as_dict()) == config and validate_config(config)


def test_auto_downsample_explains_an_image_size_it_cannot_serve():
    with pytest.raises(ValueError, match=r"8 times a power of 2 \(32, 64, 128 or 256\), got 96"):
        SpatialAutoencoder(image_size=96, width=8)
    SpatialAutoencoder(embedding_dim=144, image_size=96, width=8, downsample=8)  # explicit: 12x12 latent
    with pytest.raises(ValueError, match="'auto' or a power of 2"):
        SpatialAutoencoder(width=8, downsample="8")
    with pytest.raises(lf.LatentflowsError, match="stages.autoencoder: .*multiple of 32"):
        validate_config(lf.PRESETS["seed"].with_values({"image_size": 100}))
