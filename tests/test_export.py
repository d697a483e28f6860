"""ONNX export of the generator: onnxruntime matches PyTorch, the batch is dynamic, NumPy alone can sample."""

import argparse
import json
import subprocess
import sys

import pytest
import torch

import latentflows as lf
from latentflows.autoencoder import SpatialAutoencoder
from latentflows.errors import LatentflowsError
from latentflows.flows import ClassWhitening, ConditionalRealNVP, InvertibleBatchNorm, SpatialRealNVP, Standardize

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from latentflows import export  # noqa: E402  (after the skips: it needs the export extra)

CLASSES = ["cat", "dog", "fox"]


def randomized(pipeline, seed=0):
    """An untrained pipeline made to depend on everything: random flow weights (the conditioners'
    zero-initialised outputs included), statistics and per-class whitening, so that a layer
    exported wrongly (or a class input ignored) shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # He-scaled weights keep activations near 1, so the images use [-1, 1]
        for module in pipeline.autoencoder.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.normal_(0, (2 / module.weight[0].numel()) ** 0.5, generator=generator)
            elif isinstance(module, torch.nn.ConvTranspose2d):  # stride 2: each output sees a quarter of the kernel
                module.weight.normal_(0, (8 / module.weight[:, 0].numel()) ** 0.5, generator=generator)
    flow = pipeline.flow
    features, classes = flow.features, len(pipeline.class_names)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
        for layer in flow.transform.transforms:
            if isinstance(layer, Standardize):
                layer.mean.copy_(0.3 * torch.randn(features, generator=generator))
                layer.std.copy_(0.5 + torch.rand(features, generator=generator))
            elif isinstance(layer, InvertibleBatchNorm):
                layer.running_mean.copy_(0.2 * torch.randn(features, generator=generator))
                layer.running_var.copy_(0.5 + torch.rand(features, generator=generator))
            elif isinstance(layer, ClassWhitening):
                labels = torch.arange(3 * features * classes) % classes
                x = torch.randn(len(labels), features, generator=generator) @ torch.randn(features, features, generator=generator)
                layer.fit_to_data(x * 0.3 + 2 * torch.randn(classes, features, generator=generator)[labels],
                                  torch.eye(classes)[labels])
    return pipeline.eval()


def conv_pipeline():
    torch.manual_seed(0)
    return lf.LatentFlowPipeline(lf.ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
                                 ConditionalRealNVP(8, 3, couplings=2, hidden=[16], standardize=True), CLASSES)


def spatial_pipeline(**flow):
    torch.manual_seed(0)
    return lf.LatentFlowPipeline(SpatialAutoencoder(64, width=8, image_size=32),
                                 ConditionalRealNVP(64, 3, couplings=2, hidden=[32], **flow), CLASSES)


PIPELINES = {
    "conv, standardize": conv_pipeline,
    "spatial, class whitening, batch norm": lambda: spatial_pipeline(standardize=True, class_whitening=True,
                                                                     normalization="batchnorm"),
    "spatial, LU mixing, ActNorm, class affine": lambda: spatial_pipeline(standardize=True, mixing="lu",
                                                                          normalization="actnorm", class_affine=True),
    "spatial flow, class linear (quick's)": lambda: lf.LatentFlowPipeline(
        SpatialAutoencoder(64, width=8, image_size=32),
        SpatialRealNVP(64, 3, couplings=2, latent_shape=[4, 4, 4], hidden=8, class_linear=True, standardize=True),
        CLASSES),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The whitening pipeline, exported once: (pipeline, path, report)."""
    pipeline = randomized(PIPELINES["spatial, class whitening, batch norm"]())
    path = tmp_path_factory.mktemp("export") / "generator.onnx"
    return pipeline, path, export.export_onnx(pipeline, path)


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(path, noise, one_hot):
    return session(path).run(None, {"noise": noise.numpy(), "class_one_hot": one_hot.numpy()})


@pytest.mark.parametrize("name", list(PIPELINES))
def test_onnxruntime_matches_pytorch_at_batch_1_and_7(name, tmp_path):
    pipeline = randomized(PIPELINES[name]())
    report = export.export_onnx(pipeline, tmp_path / "generator.onnx")
    assert report["batches"] == [1, 7]
    assert 0 <= report["max_abs_diff_images"] <= 1e-4
    assert 0 <= report["max_rel_diff_log_prob"] <= 1e-4
    assert report["bytes"] == (tmp_path / "generator.onnx").stat().st_size
    # the figures are real: the same comparison done here
    noise, one_hot = torch.randn(7, pipeline.flow.features), torch.eye(3)[[0, 1, 2, 2, 1, 0, 1]]
    images, log_prob = run_onnx(tmp_path / "generator.onnx", noise, one_hot)
    with torch.no_grad():
        expected_images, expected_log_prob = export.Generator(pipeline, exportable=False)(noise, one_hot)
    assert images.shape == (7, 3, 32, 32) and log_prob.shape == (7,)
    assert (torch.from_numpy(images) - expected_images).abs().max() <= 1e-4
    assert torch.allclose(torch.from_numpy(log_prob), expected_log_prob, rtol=1e-4, atol=1e-4)
    assert [f.name for f in tmp_path.iterdir()] == ["generator.onnx"]  # no temporary file left


def test_the_generator_is_generate_without_the_sort():
    pipeline = randomized(conv_pipeline())
    pipeline.precision = "fp32"  # the exported graph computes in fp32
    samples = pipeline.generate("dog", n=5, temperature=0.7, seed=3)
    noise = 0.7 * torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        images, log_prob = export.Generator(pipeline)(noise, torch.eye(3)[[1] * 5])
    order = torch.argsort(log_prob, descending=True)
    assert torch.allclose(log_prob[order], samples.log_prob, atol=1e-5)
    assert (lf.autoencoder.to_uint8(images[order]).int() - samples.images.int()).abs().max() <= 1  # rounding
    assert not pipeline.training and not pipeline.flow.training  # its mode is left alone


def test_the_batch_is_dynamic_and_the_class_matters(exported):
    pipeline, path, _ = exported
    noise = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))  # traced at 2, checked at 1 and 7
    images = {c: run_onnx(path, noise, torch.eye(3)[[c] * 5]) for c in range(3)}
    with torch.no_grad():
        expected, _ = export.Generator(pipeline)(noise, torch.eye(3)[[2] * 5])
    assert images[2][0].shape == (5, 3, 32, 32)
    assert (torch.from_numpy(images[2][0]) - expected).abs().max() <= 1e-4
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        assert abs(images[a][0] - images[b][0]).max() > 1e-2
        assert abs(images[a][1] - images[b][1]).max() > 1e-2


def test_metadata_names_the_classes(exported):
    pipeline, path, report = exported
    metadata = session(path).get_modelmeta().custom_metadata_map
    assert json.loads(metadata["class_names"]) == CLASSES
    assert (metadata["embedding_size"], metadata["image_size"]) == ("64", "32")
    assert metadata["latentflows_version"] == lf.__version__
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["noise", "class_one_hot"]
    assert [o.name for o in model.graph.output] == ["images", "log_prob"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch
    assert report["opset"] == export.DEFAULT_OPSET


def test_the_check_fails_on_a_different_model(exported):
    pipeline, path, _ = exported
    bias = pipeline.autoencoder.decoder[-2].bias
    with torch.no_grad():
        bias.add_(0.01)
    try:
        with pytest.raises(LatentflowsError, match="images differ"):
            export.check_onnx(path, pipeline)
    finally:
        with torch.no_grad():
            bias.sub_(0.01)
    assert export.check_onnx(path, pipeline)["max_abs_diff_images"] <= 1e-4


def test_a_failed_check_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "IMAGE_TOLERANCE", -1.0)
    out = tmp_path / "generator.onnx"
    out.write_bytes(b"mine")
    with pytest.raises(LatentflowsError, match="not faithful"):
        export.export_onnx(randomized(conv_pipeline()), out)
    assert out.read_bytes() == b"mine" and len(list(tmp_path.iterdir())) == 1


def test_bad_paths_and_opsets_are_refused(tmp_path):
    pipeline = conv_pipeline()
    with pytest.raises(LatentflowsError, match=r"\.onnx"):
        export.export_onnx(pipeline, tmp_path / "generator.onx")
    with pytest.raises(LatentflowsError, match="opset"):
        export.export_onnx(pipeline, tmp_path / "generator.onnx", opset=9)


def test_a_wrong_log_density_fails_the_check(tmp_path):
    pipeline = randomized(conv_pipeline())
    export.export_onnx(pipeline, tmp_path / "generator.onnx")
    base = pipeline.flow.base
    base.log_prob = lambda z, original=base.log_prob: original(z) + 1.0  # the reference is off by one nat
    with pytest.raises(LatentflowsError, match="log-densities differ"):
        export.check_onnx(tmp_path / "generator.onnx", pipeline)


def test_a_spline_flow_exports_and_matches_or_is_named(tmp_path, monkeypatch):
    # the hardest case seen: a randomized spline flow's float32 log-density is ill-conditioned (PyTorch's own
    # rounding reaches 1e-3 relative at batch 64), and LULinear's inverse is a matrix in the graph
    pipeline = randomized(spatial_pipeline(standardize=True, class_whitening=True, mixing="lu",
                                           bijection={"class": "RationalQuadraticSpline", "config": {"bins": 8}}))
    try:
        report = export.export_onnx(pipeline, tmp_path / "generator.onnx")
    except LatentflowsError as error:
        assert "RationalQuadraticSpline" in str(error)
        return
    assert report["max_abs_diff_images"] <= 1e-4
    # beyond the tolerance, the log-densities are weighed against float64: onnxruntime is as close as PyTorch
    monkeypatch.setattr(export, "LOG_PROB_TOLERANCE", 1e-9)
    report = export.check_onnx(tmp_path / "generator.onnx", pipeline)
    assert report["max_rel_diff_log_prob"] > 1e-9 and report["float32_rel_error_log_prob"] > 0


def test_numpy_example_samples_without_torch(exported, tmp_path):
    from PIL import Image

    _, path, _ = exported
    (tmp_path / "generator.onnx").write_bytes(path.read_bytes())
    script = "import sys\nsys.modules['torch'] = sys.modules['latentflows'] = None  # no torch here\n"
    result = subprocess.run([sys.executable, "-c", script + export.NUMPY_EXAMPLE], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "wrote samples.png: 16 fox images" in result.stdout
    with Image.open(tmp_path / "samples.png") as picture:
        assert picture.size == (8 * 32, 2 * 32) and picture.mode == "RGB"


def parse(*argv):
    parser = argparse.ArgumentParser()
    export.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def test_cli_refuses_an_existing_out_or_another_suffix(tmp_path):
    out = tmp_path / "generator.onnx"
    out.write_bytes(b"mine")
    with pytest.raises(LatentflowsError, match="already exists.*--overwrite"):
        export.run(parse(tmp_path / "no-such-run", "--out", out))
    with pytest.raises(LatentflowsError, match=r"must end in \.onnx"):
        export.run(parse(tmp_path / "no-such-run", "--out", tmp_path / "generator.png"))
    assert out.read_bytes() == b"mine"


def test_cli_exports_a_saved_run(tmp_path, capsys):
    pipeline = randomized(conv_pipeline())
    pipeline.save(tmp_path / "run")
    out = tmp_path / "generator.onnx"
    out.write_bytes(b"old")
    export.run(parse(tmp_path / "run", "--out", out, "--overwrite", "--opset", "18"))
    printed = capsys.readouterr().out
    assert "batch 1 and 7" in printed and f"wrote {out}" in printed and "opset 18" in printed
    assert json.loads(session(out).get_modelmeta().custom_metadata_map["class_names"]) == CLASSES


def test_a_layer_that_cannot_be_exported_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "LULinear", type("NotALayer", (), {}))  # LULinear's triangular solves stay in
    pipeline = spatial_pipeline(mixing="lu")
    with pytest.raises(LatentflowsError, match=r"cannot be exported to ONNX \(these parts cannot be: LULinear\)"):
        export.export_onnx(pipeline, tmp_path / "generator.onnx")
    assert not list(tmp_path.iterdir())


def test_the_readme_shows_the_tested_numpy_script():
    from pathlib import Path

    from latentflows.export import NUMPY_EXAMPLE

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert NUMPY_EXAMPLE.strip() in readme
