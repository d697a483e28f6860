"""The trained generator: autoencoder + conditional flow over its embeddings.

``LatentFlowPipeline`` holds the two trained parts, generates class-conditional images
ranked by log-density, and saves and loads itself as JSON config + safetensors (nothing
is ever unpickled). Training it is ``latentflows.training.train``; its files are
described in ``latentflows.runs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._version import __version__
from .autoencoder import decode_embeddings, encode_images
from .compat import pipeline_config_from_v1, weights_from_v1
from .errors import LatentflowsError, ModelFileError
from .flows import Flow
from .registry import deserialize, serialize
from .runs import RunFolder
from .runtime import evaluation_mode, resolve_device
from .storage import load_safetensors, load_state_strictly, read_json, save_safetensors, write_json

RUN_FORMAT = "latentflows-run"
RUN_FORMAT_VERSION = 2
WEIGHTS_FORMAT = "latentflows-weights"


@dataclass
class Samples:
    """Generated images of one class, highest log-density first.

    Attributes:
        images: uint8 ``(n, 3, S, S)``.
        log_prob: log-density (nats) of each image's embedding under the flow.
        label: the class name.

    Example:
        >>> import torch
        >>> Samples(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([5.0, 1.0]), "cat").label
        'cat'
    """

    images: Tensor
    log_prob: Tensor
    label: str


class LatentFlowPipeline(nn.Module):
    """Autoencoder and conditional flow: images <-> embeddings, and new embeddings per class.

    The flow models the autoencoder's raw embeddings (its head standardizes them), so
    ``log_prob`` and the log-densities of samples are densities of embeddings, in nats.

    Args:
        autoencoder: a trained autoencoder with ``encode`` / ``decode``.
        flow: a trained ``Flow`` over its embeddings, with a one-hot class as context.
        class_names: the classes, in label order.
        config: the run config it was trained with (a dict), kept for reference.
        summary: figures of its training (seconds, best flow epoch).

    Example:
        >>> import torch, latentflows as lf
        >>> from latentflows.flows import ConditionalRealNVP
        >>> pipeline = lf.LatentFlowPipeline(lf.ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
        ...                                  ConditionalRealNVP(8, context_size=2, couplings=2, hidden=[8]),
        ...                                  ["cat", "dog"])
        >>> samples = pipeline.generate("dog", n=3, seed=0)
        >>> samples.images.shape, samples.label, bool((samples.log_prob.diff() <= 0).all())
        (torch.Size([3, 3, 32, 32]), 'dog', True)
    """

    def __init__(self, autoencoder: nn.Module, flow: Flow, class_names: list[str],
                 config: dict[str, Any] | None = None, summary: dict[str, Any] | None = None):
        super().__init__()
        self.autoencoder, self.flow = autoencoder, flow
        self.class_names = list(class_names)
        self.config = dict(config or {})
        self.summary = dict(summary or {})

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ embeddings
    def embed(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """uint8 images (anywhere) -> the autoencoder's embeddings (what the flow models), on its device."""
        return encode_images(self.autoencoder, images, batch_size)

    def decode(self, embeddings: Tensor, batch_size: int = 256) -> Tensor:
        """Embeddings -> uint8 images (on the CPU)."""
        return decode_embeddings(self.autoencoder, embeddings.to(self.device), batch_size)

    def reconstruct(self, images: Tensor) -> Tensor:
        """uint8 images -> their uint8 reconstructions."""
        return self.decode(self.embed(images))

    def one_hot(self, labels: Tensor) -> Tensor:
        """Class labels -> the flow's context vectors."""
        return nn.functional.one_hot(labels.to(self.device), len(self.class_names)).float()

    # ------------------------------------------------------------------ generation
    def class_index(self, label: str | int) -> int:
        """The index of a class given by name (any case) or index; an unknown one lists the known."""
        if isinstance(label, int) and 0 <= label < len(self.class_names):
            return label
        names = [n.lower() for n in self.class_names]
        if isinstance(label, str) and label.lower() in names:
            return names.index(label.lower())
        raise LatentflowsError(f"unknown class {label!r}; this model knows: {', '.join(self.class_names)}")

    @torch.no_grad()
    def generate(self, label: str | int, n: int = 16, temperature: float = 1.0, seed: int = 0) -> Samples:
        """``n`` images of class ``label``, sorted by the flow's log-density (highest first)."""
        if n < 1:
            raise LatentflowsError(f"the number of samples must be at least 1, got {n}")
        if temperature <= 0:
            raise LatentflowsError(f"temperature must be positive, got {temperature}")
        index = self.class_index(label)
        with evaluation_mode(self.flow):
            context = self.one_hot(torch.tensor([index]))
            # drawn on the CPU, then moved: a seed gives the same images on every device
            generator = torch.Generator().manual_seed(seed)
            embeddings, log_prob = self.flow.sample_and_log_prob(n, context, temperature, generator)
        order = torch.argsort(log_prob, descending=True)
        return Samples(self.decode(embeddings[order]), log_prob[order].cpu(), self.class_names[index])

    @torch.no_grad()
    def log_prob(self, images: Tensor, labels: Tensor) -> Tensor:
        """Log-density (nats) of the images' embeddings given their labels."""
        return self.embedding_log_prob(self.embed(images), labels)

    @torch.no_grad()
    def embedding_log_prob(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Log-density (nats) of embeddings already computed (``embed``) given their labels."""
        with evaluation_mode(self.flow):
            return self.flow.log_prob(embeddings.to(self.device), self.one_hot(labels)).cpu()

    # ------------------------------------------------------------------ files
    def save(self, run_dir: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``run_dir``."""
        run = RunFolder(run_dir)
        run.path.mkdir(parents=True, exist_ok=True)
        save_safetensors(run.weights_file, self.state_dict(), WEIGHTS_FORMAT)
        write_json(run.config_file, {
            "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "latentflows_version": __version__,
            "autoencoder": serialize(self.autoencoder), "flow": serialize(self.flow),
            "class_names": self.class_names, "config": self.config, "summary": self.summary,
        })

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "auto") -> "LatentFlowPipeline":
        """Load a run folder (JSON + safetensors only; runs of format 1 are converted in memory)
        onto ``device`` (``"auto"``: a GPU when there is one, else the CPU)."""
        run = RunFolder(run_dir)
        if not run.path.is_dir():
            raise ModelFileError(f"{run.path}: no such run folder")
        saved = read_json(run.config_file)
        if saved.get("format") != RUN_FORMAT:
            raise ModelFileError(f"{run.config_file}: not a latentflows run config (no format tag {RUN_FORMAT!r})")
        version = int(saved.get("format_version", 0))
        if version > RUN_FORMAT_VERSION:
            raise ModelFileError(f"{run.config_file}: written by a newer latentflows; upgrade to load it")
        try:
            fields = pipeline_config_from_v1(saved) if version < 2 else saved
            autoencoder = deserialize(fields["autoencoder"])
            flow = deserialize(fields["flow"], Flow)
            class_names = list(fields["class_names"])
        except LatentflowsError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{run.config_file}: incomplete or incompatible config ({error})") from None
        pipeline = cls(autoencoder, flow, class_names, fields.get("config"), fields.get("summary"))
        tensors, _ = load_safetensors(run.weights_file, WEIGHTS_FORMAT)
        load_state_strictly(pipeline, weights_from_v1(tensors) if version < 2 else tensors, run.weights_file)
        return pipeline.to(resolve_device(device)).eval()


def load(run_dir: str | Path, device: str | torch.device = "auto") -> LatentFlowPipeline:
    """Load a trained pipeline from a run folder (JSON + safetensors only) onto ``device``."""
    return LatentFlowPipeline.load(run_dir, device)
