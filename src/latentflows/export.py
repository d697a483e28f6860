"""Export a trained generator to ONNX: base noise and a one-hot class in, images and log-density out.

``export_onnx(pipeline, "generator.onnx")`` writes the whole sampling path (the flow's
inverse, its log-density, the decoder) as one ONNX graph with a dynamic batch, checks it
with onnxruntime against PyTorch, and stores the class names, embedding size and image size
in the model's metadata, so that sampling needs onnxruntime and NumPy only (``NUMPY_EXAMPLE``,
shown in the README). It needs the ``export`` extra: ``pip install 'latentflows[export]'``.

The graph (inputs and outputs float32, ``B`` any batch size):

============================  ==========================================================
``noise`` (B, D)              base-space draws, already scaled by any temperature
``class_one_hot`` (B, C)      one-hot class of each row (the flow's context)
``images`` (B, 3, S, S)       decoded images in [-1, 1] (uint8: clamp, ``(x + 1) * 127.5``, round)
``log_prob`` (B,)             log-density (nats) of each embedding under the flow, as
                              ``LatentFlowPipeline.generate`` reports it
============================  ==========================================================

The exporter is PyTorch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``):
it needs nothing beyond torch and onnx, while the newer ``torch.export``-based exporter also
needs the ``onnxscript`` package; the generator is a fixed graph without data-dependent
control flow, which tracing captures exactly. Two layers are rewritten for the export: the
inverses of ``LULinear`` and ``ContextLinear`` (triangular solves, which ONNX lacks) become
matrix products (see ``Generator``). ``check_onnx`` then compares onnxruntime with PyTorch.

Example:
    >>> import tempfile, torch, latentflows as lf
    >>> from pathlib import Path
    >>> from latentflows.flows import ConditionalRealNVP
    >>> pipeline = lf.LatentFlowPipeline(lf.ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
    ...                                  ConditionalRealNVP(8, context_size=2, couplings=2, hidden=[8]),
    ...                                  ["cat", "dog"]).eval()
    >>> images, log_prob = Generator(pipeline)(torch.zeros(3, 8), torch.eye(2)[[0, 1, 1]])
    >>> tuple(images.shape), tuple(log_prob.shape)
    ((3, 3, 32, 32), (3,))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     report = export_onnx(pipeline, Path(folder) / "generator.onnx")
    >>> report["batches"], report["max_abs_diff_images"] <= 1e-4
    ([1, 7], True)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence, cast

import torch
from torch import Tensor, nn

from ._version import __version__
from .errors import LatentflowsError
from .extras import require
from .flows import Composite, ContextLinear, Coupling, LULinear, Transform
from .runtime import evaluation_mode
from .storage import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import LatentFlowPipeline

INPUT_NAMES = ("noise", "class_one_hot")
OUTPUT_NAMES = ("images", "log_prob")
DEFAULT_OPSET = 17  # every op used is in opset 17; onnxruntime has read it since 1.13 (2022)
MIN_OPSET, MAX_OPSET = 13, 20  # 20: the newest the TorchScript exporter writes
TRACE_BATCH = 2  # the example batch traced; the checks run at other sizes, so none is baked in
CHECK_BATCHES = (1, 7)
IMAGE_TOLERANCE = 1e-4  # max abs difference on the [-1, 1] image scale
LOG_PROB_TOLERANCE = 1e-4  # relative: |difference| <= LOG_PROB_TOLERANCE * max(1, |log_prob|) ...
FLOAT32_FACTOR = 10  # ... or at most this many times PyTorch's own float32 error (see check_onnx)

NUMPY_EXAMPLE = '''\
import json

import numpy as np
import onnxruntime as ort
from PIL import Image

session = ort.InferenceSession("generator.onnx", providers=["CPUExecutionProvider"])
metadata = session.get_modelmeta().custom_metadata_map
classes = json.loads(metadata["class_names"])
label, n, temperature, columns = classes[-1], 16, 1.0, 8

rng = np.random.default_rng(0)
noise = (rng.standard_normal((n, int(metadata["embedding_size"]))) * temperature).astype(np.float32)
one_hot = np.zeros((n, len(classes)), dtype=np.float32)
one_hot[:, classes.index(label)] = 1
images, log_prob = session.run(["images", "log_prob"], {"noise": noise, "class_one_hot": one_hot})

order = np.argsort(-log_prob)  # highest log-density first
pixels = ((images[order].clip(-1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)
pixels = np.concatenate([pixels, np.full((-n % columns, *pixels.shape[1:]), 255, np.uint8)])  # fill the last row
grid = np.concatenate([np.concatenate(list(pixels[i : i + columns]), axis=1)
                       for i in range(0, len(pixels), columns)], axis=0)
Image.fromarray(grid).save("samples.png")
print(f"wrote samples.png: {n} {label} images, log-density {log_prob.max():.1f} .. {log_prob.min():.1f} nats")
'''
"""Sampling from an exported ``generator.onnx`` with onnxruntime, NumPy and Pillow alone (no torch)."""


class _FrozenLinearInverse(nn.Module):
    """The inverse of an ``LULinear`` as one matrix product: ``x = (z - bias) W^-T``.

    ``LULinear.inverse`` solves two triangular systems, which ONNX has no operator for; with
    the weights fixed the inverse matrix is computed once instead, in float64 from the exact
    factors (not from their float32 product), which makes it at least as accurate as the
    solves. It is a snapshot of the layer's weights when the ``Generator`` is built.
    """

    matrix: Tensor
    bias: Tensor
    logabsdet: Tensor

    def __init__(self, layer: LULinear):
        super().__init__()
        with torch.no_grad():
            lower, upper = (factor.double() for factor in layer.factors())
            weight = (lower @ upper)[layer.permutation]
            self.register_buffer("matrix", torch.linalg.inv(weight).T.contiguous().to(layer.lower.dtype))
            bias = layer.bias if layer.bias is not None else layer.lower.new_zeros(layer.features)
            self.register_buffer("bias", bias.detach().clone().to(layer.lower.dtype))
            self.register_buffer("logabsdet", -layer.log_diag.detach().sum())

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        return (z - self.bias) @ self.matrix, self.logabsdet.expand(z.shape[0])


class _FrozenContextLinearInverse(nn.Module):
    """The inverse of a ``ContextLinear`` as matrix products: ``x = L(c)^-1 (z - b(c))``.

    Its ``inverse`` solves a triangular system per class, which ONNX has no operator for; with
    the weights fixed each class's inverse matrix is computed once, in float64. Every class's
    map runs on the whole batch and the one-hot class picks each row's (no indexing by label).
    """

    matrices: Tensor
    offsets: Tensor
    logabsdets: Tensor

    def __init__(self, layer: ContextLinear):
        super().__init__()
        with torch.no_grad():
            dtype = layer.lower.dtype
            matrices = layer.lower.double().tril(-1) + torch.diag_embed(layer.log_diagonal.double().exp())
            self.register_buffer("matrices", torch.linalg.inv(matrices).to(dtype))
            self.register_buffer("offsets", layer.offset.detach().clone())
            self.register_buffer("logabsdets", -layer.log_diagonal.detach().sum(1))
        self.classes = layer.classes

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        weights = context if self.classes else z.new_ones(z.shape[0], 1)
        mapped = torch.einsum("cij,cbj->cbi", self.matrices, z.unsqueeze(0) - self.offsets.unsqueeze(1))
        return torch.einsum("bc,cbi->bi", weights, mapped), weights @ self.logabsdets


class Generator(nn.Module):
    """The pipeline's sampling path as one module: ``(noise, class_one_hot) -> (images, log_prob)``.

    The same math as ``LatentFlowPipeline.generate(..., guidance=0)`` (plain sampling; a run's
    default class guidance resamples outside the graph) without its sorting and its uint8
    conversion: ``noise`` is the base-space draw (already times the temperature), the flow's
    inverse maps it to embeddings, which the autoencoder decodes; ``log_prob`` is
    ``base.log_prob(noise) - logabsdet`` of the inverse, the model's own log-density of each
    embedding (as ``generate`` reports it). The pipeline always runs in eval mode (its own
    mode is given back after each call; ``train()`` on the generator leaves it alone). It
    computes in fp32 whatever the pipeline's ``precision``: an ONNX graph is exported, and
    checked, in the precision its users' runtimes will run it in.

    Args:
        pipeline: the trained pipeline (a ``LatentFlowPipeline``).
        exportable: replace the layers ONNX cannot express by equivalent ones (the triangular
            solves of an ``LULinear`` or a ``ContextLinear`` by inverse matrices, a snapshot of
            their weights now). With False, every layer runs its own ``inverse``: the reference the export
            is checked against.

    Example:
        >>> import torch, latentflows as lf
        >>> from latentflows.flows import ConditionalRealNVP
        >>> pipeline = lf.LatentFlowPipeline(lf.ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
        ...                                  ConditionalRealNVP(8, 2, couplings=2, hidden=[8], mixing="lu"),
        ...                                  ["cat", "dog"])
        >>> noise, one_hot = torch.randn(4, 8), torch.eye(2)[[0, 1, 0, 1]]
        >>> exported, reference = Generator(pipeline)(noise, one_hot), Generator(pipeline, exportable=False)(noise, one_hot)
        >>> all(torch.allclose(a, b, atol=1e-5) for a, b in zip(exported, reference))
        True
    """

    pipeline: LatentFlowPipeline

    def __init__(self, pipeline: LatentFlowPipeline, exportable: bool = True):
        super().__init__()
        flow = pipeline.flow
        classes = len(pipeline.class_names)
        if flow.context_size != classes:
            raise LatentflowsError(f"the flow's context has {flow.context_size} features but the pipeline has "
                                   f"{classes} classes; only a flow conditioned on the one-hot class can be exported")
        self.pipeline, self.exportable = pipeline, exportable
        self.features, self.classes = flow.features, classes
        self.image_size = int(getattr(pipeline.autoencoder, "image_size"))
        self.frozen = nn.ModuleDict()  # str(id(layer)) -> its export-friendly inverse
        if exportable:
            for layer in _layers(flow.transform):
                if isinstance(layer, LULinear):
                    self.frozen[str(id(layer))] = _FrozenLinearInverse(layer)
                elif isinstance(layer, ContextLinear):
                    self.frozen[str(id(layer))] = _FrozenContextLinearInverse(layer)
        self.training = False

    def train(self, mode: bool = True) -> "Generator":
        """Only the generator's own flag: the pipeline always runs in eval mode."""
        self.training = mode
        return self

    def _inverse(self, transform: Transform, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(transform, Composite):
            total = z.new_zeros(z.shape[0])
            for layer in reversed(transform.transforms):
                z, logabsdet = self._inverse(cast(Transform, layer), z, context)
                total = total + logabsdet
            return z, total
        key = str(id(transform))
        if key in self.frozen:
            return self.frozen[key](z, context)
        return transform.inverse(z, context)

    def forward(self, noise: Tensor, class_one_hot: Tensor) -> tuple[Tensor, Tensor]:
        if noise.dim() != 2 or noise.shape[1] != self.features:
            raise ValueError(f"noise must have shape (batch, {self.features}), got {tuple(noise.shape)}")
        if class_one_hot.shape != (noise.shape[0], self.classes):
            raise ValueError(f"class_one_hot must have shape ({noise.shape[0]}, {self.classes}), "
                             f"got {tuple(class_one_hot.shape)}")
        flow = self.pipeline.flow
        with evaluation_mode(self.pipeline):
            embeddings, logabsdet = self._inverse(flow.transform, noise, class_one_hot)
            log_prob = flow.base.log_prob(noise) - logabsdet
            decoder: Any = self.pipeline.autoencoder  # any registered autoencoder: decode, duck-typed
            images = decoder.decode(embeddings, class_one_hot)
        return images, log_prob


def _layers(transform: Transform) -> list[Transform]:
    """The flow's layers, nested composites flattened, in the data -> noise order."""
    if isinstance(transform, Composite):
        return [layer for part in transform.transforms for layer in _layers(cast(Transform, part))]
    return [transform]


def _describe(layer: nn.Module) -> str:
    if isinstance(layer, Coupling):
        return f"Coupling with {type(layer.bijection).__name__}"
    return type(layer).__name__


class _OneLayer(nn.Module):
    """One flow layer's inverse (or the decoder) alone: to find which part will not export."""

    def __init__(self, generator: Generator, layer: Transform | None):
        super().__init__()
        self.generator, self.layer = generator, layer

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        with evaluation_mode(self.generator.pipeline):
            if self.layer is None:
                decoder: Any = self.generator.pipeline.autoencoder  # any registered autoencoder, duck-typed
                return decoder.decode(z, context), context
            return self.generator._inverse(self.layer, z, context)


@contextlib.contextmanager
def _no_graph_dumps() -> Iterator[None]:
    """Keep the TorchScript exporter from printing its whole graph when an operator fails.

    It logs through ``torch._C._jit_onnx_log`` and (torch 2.13) always switches that log on;
    the failure itself still raises, and is reported in one line.
    """
    original = getattr(torch._C, "_jit_onnx_log", None)
    if original is None:
        yield
        return
    torch._C._jit_onnx_log = lambda *args: None
    try:
        yield
    finally:
        torch._C._jit_onnx_log = original


def _trace(module: nn.Module, inputs: tuple[Tensor, Tensor], opset: int) -> bytes:
    """The module as ONNX bytes (TorchScript exporter, batch dimension dynamic)."""
    buffer = io.BytesIO()
    dynamic = {name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES}
    with warnings.catch_warnings(), _no_graph_dumps():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks, constant per graph
        # ClassWhitening's row selection: its indices (argmax, arange) are never negative
        warnings.filterwarnings("ignore", "Exporting aten::index operator of advanced indexing", UserWarning)
        # the TorchScript exporter writes to a file-like object too; torch's annotation omits it
        torch.onnx.export(module, inputs, buffer, dynamo=False, opset_version=opset,  # type: ignore[arg-type]
                          input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          dynamic_axes=dynamic)
    return buffer.getvalue()


def _unexportable(generator: Generator, inputs: tuple[Tensor, Tensor], opset: int) -> list[str]:
    """The kinds of flow layers (and the decoder) that fail to export on their own."""
    failed: dict[str, None] = {}
    parts: list[tuple[str, Transform | None, Tensor]] = [
        (_describe(layer), layer, inputs[0]) for layer in _layers(generator.pipeline.flow.transform)]
    with torch.no_grad():
        parts.append((f"the decoder ({type(generator.pipeline.autoencoder).__name__})", None,
                      torch.zeros_like(inputs[0])))
        for name, layer, z in parts:
            if name in failed:
                continue
            try:
                _trace(_OneLayer(generator, layer), (z, inputs[1]), opset)
            except Exception:  # any failure names the layer
                failed[name] = None
    return list(failed)


def _example(generator: Generator, batch: int, seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Seeded standard-normal noise and random one-hot classes (drawn on the CPU)."""
    rng = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, generator.features, generator=rng)
    labels = torch.randint(generator.classes, (batch,), generator=rng)
    one_hot = nn.functional.one_hot(labels, generator.classes).float()
    return noise.to(device), one_hot.to(device)


def check_onnx(model: str | Path | bytes, pipeline: LatentFlowPipeline, batches: Sequence[int] = CHECK_BATCHES,
               seed: int = 0) -> dict[str, Any]:
    """Run an exported generator with onnxruntime and compare it with the pipeline in PyTorch.

    At each batch size, seeded noise and random classes go through both; the reference is
    ``Generator(pipeline, exportable=False)`` (every layer's own ``inverse``). Images must
    agree within 1e-4 on the [-1, 1] scale. Log-densities must agree within 1e-4 relative
    to ``max(1, |log_prob|)``, unless PyTorch's own float32 rounding is that large: a
    flow's log-density can be ill-conditioned (a spline bin a thousandth wide turns input
    rounding into whole hundredths of a nat), so beyond the tolerance the figures are
    weighed against a float64 copy of the pipeline: onnxruntime's largest relative error
    against it fails only if above ``FLOAT32_FACTOR`` (10) times PyTorch's own float32 one.

    Args:
        model: the ONNX file, or its bytes.
        pipeline: the pipeline it was exported from.
        batches: the batch sizes to run.
        seed: seeds the noise and the classes.

    Returns:
        ``{"max_abs_diff_images", "max_abs_diff_log_prob", "max_rel_diff_log_prob", "batches"}``
        (relative: ``|difference| / max(1, |log_prob|)``), and ``"float32_rel_error_log_prob"``
        (PyTorch float32 against float64) when the float64 copy was consulted.

    Raises:
        LatentflowsError: the shapes or images differ, or the log-densities beyond both bounds.
    """
    ort = require("onnxruntime", "export")
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    reference = Generator(pipeline, exportable=False)
    device = next(pipeline.parameters()).device
    inputs, outputs, onnx_outputs = [], [], []
    for i, batch in enumerate(batches):
        noise, one_hot = _example(reference, batch, seed + i, device)
        with torch.no_grad():
            images, log_prob = (t.double().cpu() for t in reference(noise, one_hot))
        got = session.run(list(OUTPUT_NAMES), {"noise": noise.cpu().numpy(), "class_one_hot": one_hot.cpu().numpy()})
        if got[0].shape != tuple(images.shape) or got[1].shape != tuple(log_prob.shape):
            raise LatentflowsError(f"the ONNX generator gave shapes {got[0].shape} and {got[1].shape} at batch "
                                   f"{batch}; PyTorch gives {tuple(images.shape)} and {tuple(log_prob.shape)}")
        inputs.append((noise, one_hot))
        outputs.append((images, log_prob))
        onnx_outputs.append(tuple(torch.from_numpy(array).double() for array in got))
    image_diff = max((b[0] - a[0]).abs().max().item() for a, b in zip(outputs, onnx_outputs))
    lp_diff = torch.cat([(b[1] - a[1]).abs() for a, b in zip(outputs, onnx_outputs)])
    scale = torch.cat([a[1].abs().clamp_min(1) for a in outputs])
    report: dict[str, Any] = {"max_abs_diff_images": image_diff, "max_abs_diff_log_prob": lp_diff.max().item(),
                              "max_rel_diff_log_prob": (lp_diff / scale).max().item(), "batches": list(batches)}
    # written as "not <=" so that a NaN fails too
    if not image_diff <= IMAGE_TOLERANCE:
        raise LatentflowsError(f"the ONNX generator's images differ from PyTorch's by up to {image_diff:.2e} "
                               f"(tolerance {IMAGE_TOLERANCE:g} on the [-1, 1] scale); the export is not faithful")
    if not report["max_rel_diff_log_prob"] <= LOG_PROB_TOLERANCE:
        exact = Generator(copy.deepcopy(pipeline).double(), exportable=False)
        with torch.no_grad():
            exact_log_prob = torch.cat([exact(noise.double(), one_hot.double())[1].cpu() for noise, one_hot in inputs])
        float32_error = (torch.cat([a[1] for a in outputs]) - exact_log_prob).abs()
        report["float32_rel_error_log_prob"] = (float32_error / scale).max().item()
        onnx_error = (torch.cat([b[1] for b in onnx_outputs]) - exact_log_prob).abs()
        if not (onnx_error / scale).max().item() <= max(LOG_PROB_TOLERANCE,
                                                        FLOAT32_FACTOR * report["float32_rel_error_log_prob"]):
            raise LatentflowsError(
                f"the ONNX generator's log-densities differ from PyTorch's by up to {report['max_abs_diff_log_prob']:.2e} "
                f"nats ({report['max_rel_diff_log_prob']:.2e} relative; tolerance {LOG_PROB_TOLERANCE:g}, and PyTorch's "
                f"own float32 error is {report['float32_rel_error_log_prob']:.1e}); the export is not faithful")
    return report


def export_onnx(pipeline: LatentFlowPipeline, path: str | Path, *, opset: int | None = None, check: bool = True
                ) -> dict[str, Any]:
    """Write the pipeline's generator (``Generator``) as an ONNX model with a dynamic batch.

    The file is written atomically (a temporary file, then a rename), only once the model
    passes ``onnx.checker`` and (``check=True``) ``check_onnx`` at batch 1 and 7; its
    metadata (``custom_metadata_map`` in onnxruntime) holds ``class_names`` (JSON, in label
    order), ``embedding_size``, ``image_size`` and ``latentflows_version``.

    Args:
        pipeline: a ``LatentFlowPipeline`` (on the CPU for the closest match; any device works).
        path: the ``.onnx`` file to write (replaced if it exists).
        opset: the ONNX opset, 13 to 20 (default 17).
        check: compare onnxruntime with PyTorch before writing.

    Returns:
        ``check_onnx``'s figures (``None`` and ``[]`` without the check), and ``path``,
        ``bytes`` and ``opset``.

    Raises:
        LatentflowsError: a path not ending in ``.onnx``, an opset out of range, a layer
            that cannot be exported (named), or a failed check (nothing is written then).
    """
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise LatentflowsError(f"the output file must end in .onnx, got {path}")
    opset = DEFAULT_OPSET if opset is None else opset
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise LatentflowsError(f"the ONNX opset must be from {MIN_OPSET} to {MAX_OPSET}, got {opset!r}")
    onnx = require("onnx", "export")
    if check:
        require("onnxruntime", "export")
    generator = Generator(pipeline)
    inputs = _example(generator, TRACE_BATCH, 0, next(pipeline.parameters()).device)
    try:
        with torch.no_grad():
            data = _trace(generator, inputs, opset)
    except Exception as error:  # reported with the layers at fault
        failed = _unexportable(generator, inputs, opset)
        where = f"these parts cannot be: {', '.join(failed)}" if failed else "no single layer fails on its own"
        raise LatentflowsError(f"this generator cannot be exported to ONNX ({where}); "
                               f"the exporter said: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
                               ) from None
    model = onnx.load_from_string(data)
    metadata = {"class_names": json.dumps(list(pipeline.class_names)), "embedding_size": str(generator.features),
                "image_size": str(generator.image_size), "latentflows_version": __version__}
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = ("latentflows generator: noise (batch, embedding_size) float32 and class_one_hot "
                        "(batch, classes) float32 -> images (batch, 3, image_size, image_size) in [-1, 1] and "
                        "log_prob (batch,) in nats; the classes are metadata class_names (JSON)")
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    report: dict[str, Any] = {"max_abs_diff_images": None, "max_abs_diff_log_prob": None,
                              "max_rel_diff_log_prob": None, "batches": []}
    if check:
        report = check_onnx(data, pipeline)
    with atomic_write(path, "wb") as stream:
        stream.write(data)
    return {**report, "path": str(path), "bytes": len(data), "opset": opset}


# ---------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``latentflows export``."""
    parser.add_argument("run", type=Path, help="the trained run folder")
    parser.add_argument("--out", type=Path, required=True, metavar="PATH",
                        help="the ONNX file to write, e.g. generator.onnx")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--opset", type=int, default=None,
                        help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")


def run(args: argparse.Namespace) -> None:
    """``latentflows export RUN --out generator.onnx``: export on the CPU, check, report."""
    from .pipeline import load

    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise LatentflowsError(f"--out must end in .onnx, got {out}")
    if out.exists() and not args.overwrite:
        raise LatentflowsError(f"{out} already exists; choose another name or pass --overwrite")
    if args.opset is not None and not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise LatentflowsError(f"--opset must be from {MIN_OPSET} to {MAX_OPSET}, got {args.opset}")
    require("onnx", "export")
    require("onnxruntime", "export")
    report = export_onnx(load(args.run, "cpu"), out, opset=args.opset)
    print(f"checked with onnxruntime against PyTorch at batch {' and '.join(map(str, report['batches']))}: "
          f"images within {report['max_abs_diff_images']:.1e} (of [-1, 1]), "
          f"log-density within {report['max_abs_diff_log_prob']:.1e} nats")
    print(f"wrote {out} ({report['bytes'] / 1e6:.1f} MB, opset {report['opset']}); "
          f"sample it with onnxruntime and NumPy alone: see the README")
