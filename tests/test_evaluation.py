"""Evaluation: every figure on small real data, FID/KID offline, the CLI commands."""

import json
import math
import re

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from latentflows import train
from latentflows.cli import main
from latentflows.errors import LatentflowsError, ModelFileError
from latentflows.evaluation import (
    FIDInceptionV3,
    ImageClassifier,
    evaluate,
    evaluate_run,
    feature_distances,
    format_report,
    load_inception,
    mean_pairwise_distance,
    nearest_neighbours,
    nll_summary,
    reconstruction_quality,
    train_classifier,
)
from latentflows.evaluation import inception as inception_module
from latentflows.evaluation.inception import inception_from_file, tf1_bilinear_resize
from latentflows.interpolation import interpolate, interpolation_path, slerp
from latentflows.runs import RunFolder, split_dataset
from latentflows.runtime import Runtime, resolve_device
from latentflows.saving import load_model, save_model
from latentflows.storage import save_safetensors

TINY = ["--width", "8", "--embedding-dim", "64", "--ae-epochs", "1", "--couplings", "2", "--channels", "8",
        "--flow-epochs", "2", "--no-progress"]


def random_inception(seed=0) -> FIDInceptionV3:
    """The FID network with variance-preserving random weights: the offline stand-in for the real ones."""
    torch.manual_seed(seed)
    network = FIDInceptionV3()
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return network


@pytest.fixture(scope="module")
def split(small_pets):
    return split_dataset(small_pets, 0.25, 0)


@pytest.fixture(scope="module")
def tiny_pipeline(split, tiny_config):
    train_set, val_set = split
    from latentflows.data import ImageDataset

    both = ImageDataset(torch.cat([train_set.images, val_set.images]), torch.cat([train_set.labels, val_set.labels]),
                        train_set.class_names)
    return train(both, tiny_config, progress=False)


# ---------------------------------------------------------------------- FID network

def test_tf1_resize_matches_the_definition():
    images = torch.rand(2, 3, 5, 7) * 255
    out = tf1_bilinear_resize(images, 11)
    expected = torch.empty(2, 3, 11, 11)
    for i in range(11):
        for j in range(11):
            y, x = i * 5 / 11, j * 7 / 11  # source position: no half-pixel offset, as in TF 1.x
            y0, x0 = int(y), int(x)
            y1, x1 = min(y0 + 1, 4), min(x0 + 1, 6)
            dy, dx = y - y0, x - x0
            top = images[..., y0, x0] * (1 - dx) + images[..., y0, x1] * dx
            bottom = images[..., y1, x0] * (1 - dx) + images[..., y1, x1] * dx
            expected[..., i, j] = top * (1 - dy) + bottom * dy
    assert torch.allclose(out, expected, atol=1e-3)
    same = torch.rand(1, 3, 6, 6)
    assert torch.equal(tf1_bilinear_resize(same, 6), same)


def test_inception_gives_2048_features_and_loads_its_weights_strictly(tmp_path):
    network = random_inception()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    features = network(images)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    # torchvision's Inception-v3 has 27,161,264 parameters; less its auxiliary head (3,326,696),
    # plus 8 more classes in the fc layer (8 x 2049): the FID graph's 23,850,960
    assert sum(p.numel() for p in network.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049
    with pytest.raises(ValueError, match="uint8"):
        network(images.float())

    save_safetensors(tmp_path / "w.safetensors", network.state_dict(), "fid-inception-v3")
    torch.save(network.state_dict(), tmp_path / "w.pth")  # torch-fidelity's format, read with weights_only
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        loaded, source = load_inception(path)
        assert source == str(path) and torch.allclose(loaded(images), features)

    state = network.state_dict()
    state.pop("Mixed_7c.branch_pool.conv.weight")
    save_safetensors(tmp_path / "partial.safetensors", state, "x")
    with pytest.raises(ModelFileError, match="not the FID Inception weights.*Mixed_7c"):
        inception_from_file(tmp_path / "partial.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a file of tensors")
    with pytest.raises(ModelFileError, match="not a readable Inception weights file"):
        inception_from_file(tmp_path / "junk.pth")
    with pytest.raises(ModelFileError, match="not found"):
        load_inception(tmp_path / "missing.safetensors")


def test_random_inception_fid_is_zero_for_identical_sets_and_larger_for_shifted(small_pets):
    network = random_inception()
    images = small_pets.images[:16]
    real = network(images)
    same = feature_distances(real, network(images.clone()))
    shifted = feature_distances(real, network((images.int() + 60).clamp(0, 255).to(torch.uint8)))
    assert abs(same["fid"]) < 1e-4 * shifted["fid"]  # "about 0": eigenvalue round-off of 2048-d covariances
    assert shifted["fid"] > 0 and shifted["kid_mean"] > 10 * abs(same["kid_mean"]) + 1e-12


def test_without_weights_no_number_and_a_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTFLOWS_CACHE", str(tmp_path))  # the stand-in download stays in this test
    network, reason = load_inception()
    assert network is None and "--fid-weights" in reason and "downloads are off" in reason

    monkeypatch.delenv("LATENTFLOWS_NO_DOWNLOAD")

    def offline(folder):
        raise OSError("network is unreachable")

    monkeypatch.setattr(inception_module, "_download", offline)
    network, reason = load_inception()
    assert network is None and "download failed" in reason and "unreachable" in reason

    # a successful download is stored as safetensors in the cache and used from there on
    state = random_inception().state_dict()
    calls = []
    monkeypatch.setattr(inception_module, "_download", lambda folder: calls.append(folder) or state)
    network, source = load_inception()
    assert network is not None and inception_module.WEIGHTS_URL in source
    again, source = load_inception()
    assert again is not None and len(calls) == 1 and source.startswith(str(tmp_path))


# ---------------------------------------------------------------------- measures

def test_feature_distances_rank_same_distribution_below_shifted():
    torch.manual_seed(1)
    a, b = torch.randn(400, 16), torch.randn(400, 16)
    identical = feature_distances(a, a)
    same_distribution = feature_distances(a, b)
    shifted = feature_distances(a, b + 1.0)
    assert abs(identical["fid"]) < 1e-8
    assert 0 < same_distribution["fid"] < 0.5 < 16 * 0.9 < shifted["fid"]  # ||shift||^2 = 16
    assert abs(same_distribution["kid_mean"]) < 0.05 < shifted["kid_mean"]
    assert feature_distances(a, b) == same_distribution  # KID subsets are seeded
    with pytest.raises(ValueError, match="at least 4"):
        feature_distances(a[:3], b)


def test_reconstruction_quality_by_hand():
    torch.manual_seed(2)
    originals = torch.randint(20, 230, (6, 3, 16, 16), dtype=torch.uint8)
    noisy = (originals.int() + torch.randint(-10, 11, originals.shape)).clamp(0, 255).to(torch.uint8)
    scores = reconstruction_quality(originals, noisy, batch_size=4)
    difference = (originals.float() - noisy.float()) / 255
    assert scores["mse"] == pytest.approx(float((2 * difference).square().mean()), rel=1e-5)  # [-1, 1] scale
    per_image = 10 * torch.log10(1 / difference.square().mean((1, 2, 3)))
    assert scores["psnr_db"] == pytest.approx(float(per_image.mean()), rel=1e-4)
    assert 0 < scores["ssim"] < 1
    assert reconstruction_quality(originals, originals)["ssim"] == pytest.approx(1.0, abs=1e-6)


def test_diversity_and_nearest_neighbours():
    black, white = torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    assert mean_pairwise_distance(torch.cat([black, white])) == pytest.approx(1.0)
    assert mean_pairwise_distance(torch.cat([black, black, black])) == 0.0
    references = torch.randint(0, 256, (30, 3, 4, 4), dtype=torch.uint8)
    distances, index = nearest_neighbours(references[[7, 3]], references, batch_size=1)
    assert index.tolist() == [7, 3] and distances.abs().max() < 1e-6
    queries = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    for on_cpu, default in zip(nearest_neighbours(queries, references, device="cpu"), nearest_neighbours(queries, references)):
        assert on_cpu.device.type == "cpu" and torch.equal(on_cpu, default)
    assert mean_pairwise_distance(references, device="cpu") == mean_pairwise_distance(references)
    assert nll_summary(torch.tensor([-2.0, -4.0]), 3)["bits_per_dim"] == pytest.approx(1 / math.log(2))


def test_classifier_learns_and_round_trips(tmp_path, small_pets):
    from latentflows.data import ImageDataset

    # an easy task on real photos: each photo either as it is (class 0) or darkened (class 1)
    images = small_pets.images[:160]
    dark = (images.float() * 0.4).to(torch.uint8)
    data = ImageDataset(torch.cat([images, dark]), torch.tensor([0] * 160 + [1] * 160), ["bright", "dark"])
    train_set, val_set = split_dataset(data, 0.25, 0)
    model, history = train_classifier(train_set, val_set, epochs=3, batch_size=32, width=8, progress=False)
    assert history[-1]["val_accuracy"] > 0.9
    save_model(tmp_path / "clf", model)
    loaded, _ = load_model(tmp_path / "clf")
    assert torch.equal(loaded.predict(val_set.images), model.predict(val_set.images))


class NoDeviceMixing(TorchDispatchMode):
    """Fails any op that mixes tensors of several devices (CPU scalars aside, as CUDA allows
    them): some meta kernels, the convolution's among them, do not check devices themselves."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        devices = {t.device.type for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.dim() > 0}
        if len(devices) > 1:
            raise AssertionError(f"{func} mixes tensors on {sorted(devices)}")
        return func(*args, **(kwargs or {}))


def test_evaluation_networks_make_their_tensors_on_the_device_of_their_input():
    """On the meta device (shapes only), nothing mixes in a CPU tensor: the judge's loss with
    its random flips and blur, the blur's kernel, the forward passes of the feature networks."""
    from latentflows.evaluation.classifier import _classification_loss, gaussian_blur
    from latentflows.evaluation.efficientnet import EfficientNetLite

    meta = resolve_device("meta")
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8, device=meta)
    classifier = ImageClassifier(2, width=4).to(meta).train()
    with torch.device("meta"):  # no weights to initialize: built at once
        inception, efficientnet = FIDInceptionV3(), EfficientNetLite(0).eval()
    with NoDeviceMixing():
        losses = _classification_loss(classifier, (images, torch.zeros(4, dtype=torch.long, device=meta)))
        assert losses["loss"].device == meta and losses["accuracy"].device == meta
        assert classifier.embed(images).shape == (4, 32)
        assert gaussian_blur(torch.zeros(2, 3, 16, 16, device=meta), 1.5).device == meta
        assert inception(images).shape == (4, 2048) and inception(images).device == meta
        assert efficientnet.features(images).device == meta
    with pytest.raises(AssertionError, match="mixes tensors on"), NoDeviceMixing():  # the guard guards
        torch.nn.functional.conv2d(torch.zeros(1, 1, 3, 3, device=meta), torch.ones(1, 1, 1, 1))


def test_evaluate_run_on_a_chosen_device(tiny_pipeline, tmp_path):
    from latentflows.config import RunConfig

    run = tmp_path / "run"
    tiny_pipeline.save(run)
    RunFolder(run).write_settings(RunConfig.from_dict(tiny_pipeline.config), {"limit": 240})  # the small_pets slice
    options = {"fid": False, "imagenet": (), "classifier_epochs": 1, "progress": False}
    with pytest.raises(ValueError, match="unknown device"):
        evaluate_run(run, device="tpu", **options)
    report = evaluate_run(run, device="cpu", **options)
    assert report["settings"]["device"] == "cpu" and report["classifier"]["trained_now"]
    # no guidance given: the samples are guided as the run's preset (quick) says, and the report says so
    assert {key: report["settings"][key] for key in ("guidance", "candidates")} == {"guidance": 64.0, "candidates": 32}
    assert json.loads((run / "eval.json").read_text())["flow"] == report["flow"]
    judge, _ = load_model(run / "classifier")
    assert all(t.device.type == "cpu" for t in judge.state_dict().values())
    with pytest.raises(LatentflowsError, match="guidance must be a finite number >= 0"):
        evaluate_run(run, guidance=-1.0, out=tmp_path / "bad.json", **options)
    again = evaluate_run(run, device=Runtime("cpu"), out=tmp_path / "again.json", guidance=2.0, candidates=3,
                         **options)
    assert again["settings"]["guidance"] == 2.0 and again["settings"]["candidates"] == 3
    assert not again["classifier"]["trained_now"] and again["classifier"]["val_accuracy"] == report["classifier"]["val_accuracy"]


# ---------------------------------------------------------------------- the report

def test_evaluate_on_real_data(tiny_pipeline, split):
    train_set, val_set = split
    features = random_inception()
    report, artefacts = evaluate(tiny_pipeline, train_set, val_set, feature_extractor=features, classifier_epochs=1,
                                 progress=False)
    counts = val_set.class_counts()
    assert report["settings"]["generated_per_class"] == counts
    assert 0 < report["autoencoder"]["val"]["mse"] < 2 and report["autoencoder"]["val"]["psnr_db"] > 5
    assert 0 <= report["autoencoder"]["latent_probe"]["balanced_accuracy"] <= 1
    flow = report["flow"]
    assert flow["gap_nats_per_dim"] == pytest.approx(flow["val"]["nats_per_dim"] - flow["train"]["nats_per_dim"])
    assert flow["val"]["bits_per_dim"] == pytest.approx(flow["val"]["nats_per_dim"] / math.log(2))
    assert sum(c["val"]["count"] for c in flow["per_class"].values()) == len(val_set)
    direct = -tiny_pipeline.log_prob(val_set.images, val_set.labels).mean() / tiny_pipeline.flow.features
    assert flow["val"]["nats_per_dim"] == pytest.approx(float(direct), rel=1e-5)
    assert math.isfinite(flow["gaussian_baseline"]["nats_per_dim"]) and flow["gaussian_baseline"]["count"] == len(val_set)
    assert report["fid"]["available"] and set(report["fid"]["per_class"]) == {"cat", "dog"}
    assert report["fid"]["overall"]["n_generated"] == len(val_set)
    assert report["judge_fd"]["overall"]["fid"] > 0 and set(report["judge_fd"]["per_class"]) == {"cat", "dog"}
    classifier = report["classifier"]
    assert 0 <= classifier["val_accuracy"] <= 1 and classifier["trained_now"]
    shares = [classifier["per_class"][c]["generated_share"] for c in ("cat", "dog")]
    expected = sum(s * counts[c] for s, c in zip(shares, ("cat", "dog"))) / len(val_set)
    assert classifier["generated_accuracy"] == pytest.approx(expected)
    for name in ("cat", "dog"):
        assert report["memorisation"][name]["generated_to_train"]["min"] >= 0
        assert report["diversity"][name]["real"] > 0
    assert artefacts["neighbours"][0][1].shape[1:] == (3, 64, 64)
    assert "flow val NLL" in format_report(report)
    json.dumps(report)  # eval.json material


def evaluate_a_generator_that_returns(images_of, pipeline, train_set, val_set, monkeypatch, **options) -> dict:
    """Evaluate ``pipeline`` with its generator replaced by real images (``images_of(class)``)."""
    from latentflows.pipeline import Samples

    def generate(label, n=16, temperature=1.0, seed=0, guidance=0.0, candidates=8):
        images = images_of(pipeline.class_index(label))[:n]
        return Samples(images, torch.zeros(len(images)), label)

    monkeypatch.setattr(pipeline, "generate", generate)
    return evaluate(pipeline, train_set, val_set, classifier_epochs=1, progress=False, **options)[0]


def test_evaluation_detects_a_model_that_copies_its_training_images(tiny_pipeline, split, monkeypatch):
    train_set, val_set = split
    report = evaluate_a_generator_that_returns(lambda c: train_set.images[train_set.labels == c], tiny_pipeline,
                                               train_set, val_set, monkeypatch)
    for name in ("cat", "dog"):
        memory = report["memorisation"][name]
        assert memory["generated_to_train"]["mean"] < 1e-6 < memory["val_to_train"]["mean"]
        assert memory["ratio"] < 1e-3 and memory["val_reconstruction_to_train"]["mean"] > 1e-3
    assert not report["fid"]["available"] and "no feature extractor" in report["fid"]["reason"]


def test_a_generator_that_returns_the_validation_images_scores_perfectly(tiny_pipeline, split, monkeypatch):
    train_set, val_set = split
    from latentflows.evaluation.efficientnet import ImageNetYardstick

    report = evaluate_a_generator_that_returns(lambda c: val_set.images[val_set.labels == c], tiny_pipeline,
                                               train_set, val_set, monkeypatch, yardsticks=[ImageNetYardstick.load(0)])
    assert abs(report["judge_fd"]["overall"]["fid"]) < 1e-4  # identical sets; round-off only
    imagenet = report["imagenet"]["efficientnet-lite0"]
    assert abs(imagenet["generated"]["overall"]["fid"]) < 1e-3
    assert imagenet["species"]["generated"] == imagenet["species"]["real"]
    assert imagenet["species"]["real"]["balanced"] > 0.6  # real photos: ImageNet knows cats from dogs
    assert imagenet["reconstruction"]["fid"] > 1.0  # the tiny autoencoder's blur is visible to it
    for name in ("cat", "dog"):
        diversity = report["diversity"][name]
        assert diversity["generated"] == pytest.approx(diversity["real"])
        assert report["classifier"]["per_class"][name]["generated_share"] == \
            report["classifier"]["per_class"][name]["real_recall"]


# ---------------------------------------------------------------------- interpolation

def test_slerp_and_paths():
    torch.manual_seed(3)
    a, b = torch.randn(32), torch.randn(32)
    for mode in ("linear", "spherical"):
        path = interpolation_path(a, b, 5, mode)
        assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    unit = slerp(a / a.norm(), b / b.norm(), torch.linspace(0, 1, 7))
    assert torch.allclose(unit.norm(dim=1), torch.ones(7), atol=1e-5)  # stays on the sphere
    assert interpolation_path(a, b, 3, "linear")[1].norm() < unit.norm(dim=1)[3] * a.norm()  # the chord dips
    with pytest.raises(ValueError, match="at least 2"):
        interpolation_path(a, b, 1)
    with pytest.raises(ValueError, match="unknown interpolation mode"):
        interpolation_path(a, b, 3, "cubic")


def test_interpolate_decodes_from_one_class_to_the_other(tiny_pipeline):
    rows = interpolate(tiny_pipeline, "cat", "dog", steps=4, seed=5)
    assert set(rows) == {"linear", "spherical"}
    for images in rows.values():
        assert images.shape == (4, 3, 64, 64) and images.dtype == torch.uint8
    # the same two end points in both modes (slerp's ends equal them up to rounding, which the
    # flow's inverse may carry into one level of a pixel, depending on the thread count)
    for end in (0, -1):
        assert (rows["linear"][end].int() - rows["spherical"][end].int()).abs().max() <= 1
    ends = torch.randn(2, tiny_pipeline.flow.features, generator=torch.Generator().manual_seed(5))
    start, _ = tiny_pipeline.flow.transform.inverse(ends[:1], tiny_pipeline.one_hot(torch.tensor([0])))
    # the same end point, decoded alone (matrix products over other batch sizes differ in the last bit)
    assert (rows["linear"][0].int() - tiny_pipeline.decode(start)[0].int()).abs().max() <= 1


# ---------------------------------------------------------------------- CLI

def test_cli_evaluate_compare_interpolate(tmp_path, pets_parquet, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(pets_parquet), "--limit", "200", "--out", str(run), *TINY]) == 0
    assert main(["evaluate", str(run), "--fid-weights", str(tmp_path / "none.safetensors"), "--no-progress"]) == 2
    assert "none.safetensors" in capsys.readouterr().err and not (run / "eval.json").exists()

    with pytest.raises(SystemExit) as usage_error:
        main(["evaluate", str(run), "--imagenet", "3", "--no-progress"])
    assert usage_error.value.code == 2 and "among 0, 1, 2" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--classifier-epochs", "1", "--imagenet", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "FID/KID not computed" in out and "--fid-weights" in out and "generated classified as asked" in out
    assert "ImageNet-L0 species generated" in out
    assert re.search(r"generated with class guidance \(gamma\) +64\n +candidates per generated image +32\n", out)
    report = json.loads((run / "eval.json").read_text())
    assert report["classifier"]["trained_now"] and (run / "classifier" / "model.json").is_file()
    assert (run / "eval-nearest.png").is_file() and report["fid"]["available"] is False

    before = (run / "eval.json").read_bytes()
    assert main(["evaluate", str(run), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err and (run / "eval.json").read_bytes() == before
    second = tmp_path / "again.json"
    assert main(["evaluate", str(run), "--no-fid", "--imagenet", "none", "--out", str(second), "--no-progress"]) == 0
    assert "ImageNet figures not computed: turned off" in capsys.readouterr().out
    again = json.loads(second.read_text())
    assert not again["classifier"]["trained_now"]  # the run's judge is reused
    assert again["classifier"]["val_accuracy"] == report["classifier"]["val_accuracy"]
    assert again["flow"] == report["flow"]

    judged = tmp_path / "judged.json"
    assert main(["evaluate", str(run), "--no-fid", "--judge", str(tmp_path / "nowhere"), "--out", str(judged),
                 "--no-progress"]) == 2
    assert "no judge classifier" in capsys.readouterr().err and not judged.exists()
    assert main(["evaluate", str(run), "--no-fid", "--judge", str(run / "classifier"), "--out", str(judged),
                 "--guidance", "0", "--no-progress"]) == 0
    assert json.loads(judged.read_text())["classifier"]["judge"] == str(run / "classifier")

    capsys.readouterr()
    assert main(["compare", str(run), str(second)]) == 0
    table = capsys.readouterr().out
    assert "run" in table.splitlines()[0] and "again.json" in table.splitlines()[0]
    assert "flow val NLL (nats/dim)" in table and f"{report['flow']['val']['nats_per_dim']:.4f}" in table
    assert main(["compare", str(run), str(judged)]) == 0  # plain beside guided samples: the table says which
    assert re.search(r"generated with class guidance \(gamma\) +64 +0\n", capsys.readouterr().out)
    assert main(["compare", str(tmp_path)]) == 2
    assert "run latentflows evaluate" in capsys.readouterr().err

    strip = tmp_path / "walk.png"
    assert main(["interpolate", str(run), "--from", "cat", "--to", "dog", "--steps", "5", "--out", str(strip)]) == 0
    assert strip.is_file()
    assert main(["interpolate", str(run), "--from", "cat", "--to", "horse", "--out", str(tmp_path / "h.png")]) == 2
    assert "unknown class 'horse'" in capsys.readouterr().err
    assert main(["interpolate", str(run), "--from", "cat", "--to", "dog", "--steps", "1",
                 "--out", str(tmp_path / "one.png")]) == 2
    assert main(["interpolate", str(run), "--from", "cat", "--to", "dog", "--out", str(strip)]) == 2


def test_gaussian_baseline_is_the_true_nll_for_gaussian_classes_and_fits_each_class():
    from latentflows.evaluation.measures import gaussian_baseline

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(20000) % 2
    scale = torch.tensor([[1.0, 0.0], [0.8, 0.6]])  # correlated features
    x = torch.randn(20000, 2, generator=generator, dtype=torch.float64) @ scale.T.double()
    x = x + 5.0 * labels[:, None]
    baseline = gaussian_baseline(x[:10000], labels[:10000], x[10000:], labels[10000:], 2)
    true = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64),
                                                  scale_tril=scale.double()).entropy() / 2
    assert baseline["nats_per_dim"] == pytest.approx(float(true), abs=0.01) and baseline["count"] == 10000
    pooled = gaussian_baseline(x[:10000], torch.zeros(10000, dtype=torch.long), x[10000:],
                               torch.zeros(10000, dtype=torch.long), 1)
    assert pooled["nats_per_dim"] > baseline["nats_per_dim"] + 0.3, "one Gaussian per class, not one for all"
    with pytest.raises(ValueError, match="no class"):
        gaussian_baseline(x[:1], labels[:1], x[1:3], labels[1:3], 2)
