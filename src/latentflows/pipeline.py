"""The trained generator: autoencoder + conditional flow over its embeddings.

``LatentFlowPipeline`` holds the two trained parts, generates class-conditional images
ranked by log-density, and saves and loads itself as JSON config + safetensors (nothing
is ever unpickled). Training it is ``latentflows.training.train``; its files are
described in ``latentflows.runs``. Through ``huggingface_hub``'s ``ModelHubMixin`` it also has
``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` (the same files, a model card
beside them, Hub ids as well as folders; see ``latentflows.hub``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import ModelHubMixin
from torch import Tensor, nn

from ._version import __version__
from .autoencoder import decode_embeddings, encode_images, is_class_conditional
from .compat import saved_fields, saved_weights
from .config import SAMPLING, sampling_settings
from .errors import LatentflowsError, MissingModuleError, ModelFileError, UnknownComponentError
from .flows import Flow, check_sampling
from .guidance import check_guidance, guided_sample
from .hubclient import LIBRARY_NAME, resolve_run, upload_errors
from .modelcard import CARD_TAGS, card_text
from .registry import defining_modules, deserialize, recorded_module, serialize
from .runs import RUN_FORMAT, RUN_FORMAT_VERSION, WEIGHTS_FORMAT, RunFolder
from .runtime import PRECISION_CHOICES, autocast_to, evaluation_mode, resolve_device, resolve_precision
from .storage import load_safetensors, load_state_strictly, read_json, save_safetensors, write_json

if TYPE_CHECKING:  # pragma: no cover
    from .data import MappedImages


@dataclass
class Samples:
    """Generated images of one class, highest log-density first.

    Attributes:
        images: uint8 ``(n, 3, S, S)``.
        log_prob: log-density (nats) of each image's embedding under the flow.
        label: the class name.
        class_prob: the flow's probability ``p(label | embedding)`` of each image (Bayes' rule
            over its classes, equal priors, tempered as in ``latentflows.guidance``); ``None``
            for a flow of a single class.

    Example:
        >>> import torch
        >>> Samples(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([5.0, 1.0]), "cat").label
        'cat'
    """

    images: Tensor
    log_prob: Tensor
    label: str
    class_prob: Tensor | None = None


class LatentFlowPipeline(nn.Module, ModelHubMixin, library_name=LIBRARY_NAME, tags=list(CARD_TAGS)):
    """Autoencoder and conditional flow: images <-> embeddings, and new embeddings per class.

    The flow models the autoencoder's raw embeddings (its head standardizes them), so
    ``log_prob`` and the log-densities of samples are densities of embeddings, in nats.

    ``save`` writes a run folder's ``config.json`` + ``model.safetensors``; ``from_pretrained``
    (``latentflows.load``) reads one, or a Hugging Face Hub id; ``save_pretrained`` /
    ``push_to_hub`` add a model card and upload (``huggingface_hub.ModelHubMixin``).

    Args:
        autoencoder: a trained autoencoder with ``encode`` / ``decode``.
        flow: a trained ``Flow`` over its embeddings, with a one-hot class as context.
        class_names: the classes, in label order.
        config: the run config it was trained with (a dict), kept for reference.
        summary: figures of its training (seconds, best flow epoch).
        precision: what the decoder computes in: ``"auto"`` (bf16 where the device multiplies
            bf16 matrices natively, else fp32; see ``resolve_precision``), ``"fp32"``, ``"bf16"``
            or ``"fp16"``. The encoder and the flow always compute in fp32: embeddings and
            log-densities are exactly those the flow was trained on.

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
                 config: dict[str, Any] | None = None, summary: dict[str, Any] | None = None,
                 precision: str = "auto"):
        super().__init__()
        self.autoencoder, self.flow = autoencoder, flow
        self.class_names = list(class_names)
        self.config = dict(config or {})
        self.summary = dict(summary or {})
        self.precision = precision

    @property
    def precision(self) -> str:
        """What the decoder computes in, as asked (``"auto"`` is resolved for the device at each
        decode; ``decode_precision`` says what it becomes)."""
        return self._precision

    @precision.setter
    def precision(self, precision: str) -> None:
        if precision not in PRECISION_CHOICES:
            raise LatentflowsError(f"unknown precision {precision!r}; use one of {', '.join(PRECISION_CHOICES)}")
        self._precision = precision

    @property
    def decode_precision(self) -> str:
        """The precision the decoder computes in on the pipeline's current device."""
        return resolve_precision(self._precision, self.device)[0]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ embeddings
    def embed(self, images: Tensor | MappedImages, batch_size: int = 256) -> Tensor:
        """uint8 images (anywhere) -> the autoencoder's embeddings (what the flow models), on its device."""
        return encode_images(self.autoencoder, images, batch_size)

    def decode(self, embeddings: Tensor, context: Tensor | None = None, batch_size: int = 256) -> Tensor:
        """Embeddings -> uint8 images (on the CPU). ``context``: the classes as one-hot rows
        (``one_hot``), which a class-conditional decoder needs and any other ignores."""
        if context is not None:
            context = context.to(self.device)
        elif is_class_conditional(self.autoencoder):
            raise LatentflowsError("this model's decoder is class-conditional: decode(embeddings, "
                                   "pipeline.one_hot(labels)) needs the classes of the embeddings")
        with autocast_to(self.decode_precision, self.device):
            return decode_embeddings(self.autoencoder, embeddings.to(self.device), batch_size, context)

    def reconstruct(self, images: Tensor | MappedImages, labels: Tensor | None = None) -> Tensor:
        """uint8 images -> their uint8 reconstructions (a class-conditional decoder also needs
        the images' labels)."""
        return self.decode(self.embed(images), None if labels is None else self.one_hot(labels))

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

    @property
    def sampling(self) -> dict[str, Any]:
        """How ``generate`` guides by default: the run's ``sampling`` setting (``{"guidance": GAMMA,
        "candidates": K}``; ``quick`` and ``best``: 64 and 32, ``seed``: plain sampling), none for a
        flow of a single class or a run that records none.

        Example:
            >>> import latentflows as lf
            >>> from latentflows.flows import ConditionalRealNVP
            >>> pipeline = lf.LatentFlowPipeline(lf.ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
            ...                                  ConditionalRealNVP(8, context_size=2, couplings=1, hidden=[4]),
            ...                                  ["cat", "dog"], config={"sampling": {"guidance": 64, "candidates": 32}})
            >>> pipeline.sampling
            {'guidance': 64.0, 'candidates': 32}
        """
        if len(self.class_names) < 2:
            return dict(SAMPLING)
        return sampling_settings(self.config.get("sampling", {}))

    def guidance_or_default(self, guidance: float | None, candidates: int | None) -> tuple[float, int]:
        """``(guidance, candidates)`` with each one left out (None) taken from the run's ``sampling``."""
        if guidance is None or candidates is None:
            defaults = self.sampling
            guidance = defaults["guidance"] if guidance is None else guidance
            candidates = defaults["candidates"] if candidates is None else candidates
        return guidance, candidates

    @torch.no_grad()
    def generate(self, label: str | int, n: int = 16, temperature: float = 1.0, seed: int = 0,
                 guidance: float | None = None, candidates: int | None = None) -> Samples:
        """``n`` images of class ``label``, sorted by the flow's log-density (highest first).

        ``guidance`` (``gamma >= 0``) draws ``candidates`` embeddings per image and keeps ``n``
        with probability proportional to ``p(label | z) ** gamma``, the flow's own class
        posterior (``latentflows.guidance``), tempered by ``summary["posterior_temperature"]``
        (fitted to the validation codes after training; 1 when absent); 0 is plain sampling.
        Either left out (None) takes the run's own (``sampling``).
        """
        guidance, candidates = self.guidance_or_default(guidance, candidates)
        check_sampling(n, temperature)
        check_guidance(guidance, candidates)
        index = self.class_index(label)
        classes = len(self.class_names)
        with evaluation_mode(self.flow):
            # drawn on the CPU, then moved: a seed gives the same images on every device
            generator = torch.Generator().manual_seed(seed)
            if classes > 1:
                embeddings, log_prob, class_prob = guided_sample(
                    self.flow, n, index, classes, guidance, candidates, temperature, generator,
                    float(self.summary.get("posterior_temperature", 1.0)))
            elif guidance > 0:
                raise LatentflowsError("guidance needs a model of at least 2 classes; this one has one")
            else:
                embeddings, log_prob = self.flow.sample_and_log_prob(n, self.one_hot(torch.tensor([index])),
                                                                     temperature, generator)
                class_prob = None
        order = torch.argsort(log_prob, descending=True)
        context = self.one_hot(torch.tensor([index])).expand(n, -1)
        return Samples(self.decode(embeddings[order], context), log_prob[order].cpu(), self.class_names[index],
                       None if class_prob is None else class_prob[order].cpu())

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
    def saved_config(self) -> dict[str, Any]:
        """What ``save`` writes to ``config.json``: format tags, component specs, classes, config,
        summary, and ``imports``: the modules outside latentflows that registered the components
        it names (module -> names), which loading names when one is missing but never imports."""
        autoencoder, flow = serialize(self.autoencoder), serialize(self.flow)
        return {
            "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "latentflows_version": __version__,
            "autoencoder": autoencoder, "flow": flow,
            "class_names": self.class_names, "config": self.config, "summary": self.summary,
            "imports": defining_modules([autoencoder, flow, self.config]),
        }

    def save(self, run_dir: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``run_dir``."""
        run = RunFolder(run_dir)
        saved = self.saved_config()  # an unsaveable component fails before any file is written
        run.path.mkdir(parents=True, exist_ok=True)
        save_safetensors(run.weights_file, self.state_dict(), WEIGHTS_FORMAT)
        write_json(run.config_file, saved)

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "auto",
             precision: str = "auto") -> "LatentFlowPipeline":
        """``from_pretrained(run_dir, device=device, precision=precision)``, kept for older code;
        ``latentflows.load`` is the one loader to use."""
        return cls.from_pretrained(run_dir, device=device, precision=precision)

    @classmethod
    def _read_run(cls, run_dir: Path, device: str | torch.device, precision: str) -> "LatentFlowPipeline":
        """The pipeline in a local run folder (JSON + safetensors only; older runs are
        converted in memory by ``compat``), on ``device``."""
        run = RunFolder(run_dir)
        saved = read_json(run.config_file)
        if saved.get("format") != RUN_FORMAT:
            raise ModelFileError(f"{run.config_file}: not a latentflows run config (no format tag {RUN_FORMAT!r})")
        if int(saved.get("format_version", 0)) > RUN_FORMAT_VERSION:
            raise ModelFileError(f"{run.config_file}: written by a newer latentflows; upgrade to load it")
        try:
            fields = saved_fields(saved)
            autoencoder = deserialize(fields["autoencoder"])
            flow = deserialize(fields["flow"], Flow)
            class_names = list(fields["class_names"])
        except UnknownComponentError as error:  # never imported here: a run from the Hub must not run code
            module = recorded_module(saved.get("imports"), error.component)
            if module is None:
                raise
            raise MissingModuleError(str(error.component), module) from None
        except LatentflowsError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{run.config_file}: incomplete or incompatible config ({error})") from None
        pipeline = cls(autoencoder, flow, class_names, fields.get("config"), fields.get("summary"), precision)
        try:
            pipeline.sampling  # noqa: B018 (checked now, not at the first sample)
        except LatentflowsError as error:
            raise ModelFileError(f"{run.config_file}: {error} (or edit its config's sampling)") from None
        tensors, _ = load_safetensors(run.weights_file, WEIGHTS_FORMAT)
        load_state_strictly(pipeline, saved_weights(saved, tensors), run.weights_file)
        return pipeline.to(resolve_device(device)).eval()

    # ------------------------------------------------------------------ the Hugging Face Hub (ModelHubMixin)
    def save_pretrained(self, save_directory: str | Path, *, config: Any = None, repo_id: str | None = None,
                        push_to_hub: bool = False, model_card_kwargs: dict[str, Any] | None = None,
                        **push_to_hub_kwargs: Any) -> str | None:
        """Write ``config.json`` and ``model.safetensors`` (as ``save``) and a model card ``README.md``
        (``latentflows.modelcard.model_card``; an existing README.md is kept) into ``save_directory``.

        Args:
            save_directory: the folder (created if needed).
            config: ignored: ``config.json`` is always the pipeline's own (kept for the mixin's signature).
            repo_id: the Hub id the card names, and where ``push_to_hub=True`` pushes.
            push_to_hub: also push to ``repo_id`` (see ``push_to_hub``).
            model_card_kwargs: ``repo_id`` for the card's examples.
            **push_to_hub_kwargs: passed on to ``push_to_hub``.

        Returns:
            the commit URL when pushed, else None.
        """
        card = {"repo_id": repo_id, **(model_card_kwargs or {}), "run_dir": Path(save_directory)}
        return super().save_pretrained(save_directory, config=config, repo_id=repo_id, push_to_hub=push_to_hub,
                                       model_card_kwargs=card, **push_to_hub_kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        # the mixin writes config.json only when we have not (we always have: it keeps ours)
        self.save(save_directory)

    def generate_model_card(self, *args: Any, run_dir: str | Path | None = None, repo_id: str | None = None,
                            **kwargs: Any) -> Any:
        """Our model card (not the mixin's): ``latentflows.modelcard.card_text`` for this pipeline, showing
        ``run_dir``'s samples picture and evaluation when it has them."""
        from huggingface_hub import ModelCard

        return ModelCard(card_text(self.saved_config(), run_dir, repo_id=repo_id))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, device: str | torch.device = "auto",
                        revision: str | None = None, token: str | bool | None = None, cache_dir: str | Path | None = None,
                        force_download: bool = False, local_files_only: bool = False, precision: str = "auto",
                        **model_kwargs: Any) -> "LatentFlowPipeline":
        """Load a pipeline from a run folder or a Hugging Face Hub id (``owner/name``: its
        ``config.json`` and ``model.safetensors`` are downloaded into the Hugging Face cache once,
        then read from there, offline too). The one loader: ``latentflows.load`` is this.

        JSON and safetensors only: nothing is unpickled, and no module is imported. A run that
        uses a component registered by a module of its own (``config.json``'s ``imports``) needs
        that module imported first, or fails with a ``MissingModuleError`` naming it.

        Args:
            pretrained_model_name_or_path: a folder, or ``owner/name``.
            device: where to put it (``"auto"``: a GPU when there is one, else the CPU).
            revision: a branch, tag or commit of the Hub repo.
            token: a Hugging Face token, for a private repo.
            cache_dir: another cache folder than the Hugging Face default.
            force_download: download again even when cached.
            local_files_only: never download; only the cache.
            precision: what the decoder computes in (see the class).

        Raises:
            LatentflowsError: one line: no such folder or model, offline and not cached, incompatible
                files, a component whose module is not imported.
            TypeError: an option this method does not take.

        Example:
            >>> import tempfile, torch, latentflows as lf
            >>> from latentflows.flows import ConditionalRealNVP
            >>> pipeline = lf.LatentFlowPipeline(lf.ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
            ...                                  ConditionalRealNVP(8, context_size=2, couplings=2, hidden=[8]),
            ...                                  ["cat", "dog"])
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     pipeline.save_pretrained(folder)
            ...     print(sorted(path.name for path in Path(folder).iterdir()))
            ...     loaded = lf.LatentFlowPipeline.from_pretrained(folder, device="cpu")
            ['README.md', 'config.json', 'model.safetensors']
            >>> torch.equal(loaded.generate("cat", 2).images, pipeline.generate("cat", 2).images)
            True
        """
        if model_kwargs:  # the mixin's signature, none of its model arguments: config.json holds them all
            raise TypeError(f"from_pretrained() got unexpected keyword argument(s): {', '.join(sorted(model_kwargs))}")
        folder = resolve_run(pretrained_model_name_or_path, download=not local_files_only, revision=revision,
                             token=token, cache_dir=cache_dir, force_download=force_download, files=RunFolder.MODEL_FILES)
        return cls._read_run(folder, device, precision)

    def push_to_hub(self, repo_id: str, *, config: Any = None,
                    commit_message: str = "Upload latentflows pipeline", private: bool | None = None,
                    token: str | None = None, branch: str | None = None, create_pr: bool | None = None,
                    allow_patterns: list[str] | str | None = None, ignore_patterns: list[str] | str | None = None,
                    delete_patterns: list[str] | str | None = None,
                    model_card_kwargs: dict[str, Any] | None = None) -> str:
        """Upload ``config.json``, ``model.safetensors`` and the model card to the Hub repo
        ``repo_id`` (created if needed) in one commit; the commit's URL.

        For a run folder with its samples picture and evaluation, ``latentflows.hub.push``
        (``latentflows push RUN owner/name``) uploads those too. Failures are one line
        (``LatentflowsError``). Arguments as ``huggingface_hub.ModelHubMixin.push_to_hub``.
        """
        card = {"repo_id": repo_id, **(model_card_kwargs or {})}
        with upload_errors(repo_id):
            return super().push_to_hub(repo_id, config=config, commit_message=commit_message, private=private,
                                       token=token, branch=branch, create_pr=create_pr, allow_patterns=allow_patterns,
                                       ignore_patterns=ignore_patterns, delete_patterns=delete_patterns,
                                       model_card_kwargs=card)


def load(path_or_hub_id: str | Path, device: str | torch.device = "auto", precision: str = "auto",
         **hub_options: Any) -> LatentFlowPipeline:
    """Load a trained pipeline from a run folder or a Hub id onto ``device``: the one loader,
    ``LatentFlowPipeline.from_pretrained`` under a short name (``hub_options``: its ``revision``,
    ``token``, ``cache_dir``, ``force_download``, ``local_files_only``); ``precision``: what
    its decoder computes in (``LatentFlowPipeline``)."""
    return LatentFlowPipeline.from_pretrained(path_or_hub_id, device=device, precision=precision, **hub_options)
