"""Training stages: each builds its models, optimizers and objective from the config.

``train`` runs the stages in order (autoencoder, then flow); a stage receives what the
earlier ones produced through the ``StageContext`` and returns a ``StagePlan`` that the
``Trainer`` executes. Adding a stage (or changing how one trains) is one registered
subclass of ``Stage``, named in the run config.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from ..autoencoder import class_context, encode_images, to_signed_unit
from ..data import Batches, ImageDataset, MappedImages, mirror_and_shift
from ..flows import Flow, Standardize, Transform, conditioners_in, fit_leading_layers
from ..layers import GaussianNoise
from ..losses import to_bits_per_dim
from ..registry import Configurable, build, get_registered, register
from ..runtime import Runtime
from .callbacks import Callback, CosineLearningRate, EarlyStopping
from .objective import Objective
from .trainer import Update, adam


@dataclass
class StageContext:
    """What a stage can use: the data split, the run's settings and the earlier stages' products.

    Attributes:
        train_set, val_set: the run's split.
        runtime: device and precision.
        seed: the run's seed.
        image_size: the images' side in pixels.
        models: what earlier stages produced, by stage name (e.g. ``models["autoencoder"]``).
        summary: figures a stage wants saved with the run (e.g. its best epoch).
    """

    train_set: ImageDataset
    val_set: ImageDataset
    runtime: Runtime
    seed: int = 0
    image_size: int = 64
    models: dict[str, nn.Module] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return list(self.train_set.class_names)

    def one_hot(self, labels: Tensor) -> Tensor:
        """Labels -> one-hot class contexts, on the runtime's device."""
        return nn.functional.one_hot(labels.to(self.runtime.device), len(self.class_names)).float()


@dataclass
class StagePlan:
    """Everything the trainer needs for one stage, and how to get the product afterwards.

    Attributes:
        model: the module the trainer trains and checkpoints.
        updates: one ``Update`` per loss to minimize.
        loss_fn: ``loss_fn(model, batch) -> dict`` of losses.
        train_batches, val_batches: the batches of each epoch.
        epochs: the number of epochs.
        product: returns the trained component handed to later stages and the pipeline.
        callbacks: the stage's own callbacks (e.g. early stopping).
        autocast: whether mixed precision may apply.
        precision_tag: what the status line says about the stage's precision, where
            ``autocast`` does not tell it (default: the autocast precision).
    """

    model: nn.Module
    updates: list[Update]
    loss_fn: Callable[[nn.Module, tuple[Tensor, ...]], dict[str, Tensor]]
    train_batches: Batches
    val_batches: Batches
    epochs: int
    product: Callable[[], nn.Module]
    callbacks: list[Callback] = field(default_factory=list)
    autocast: bool = True
    precision_tag: str | None = None


class Stage(Configurable):
    """A training stage built from the config.

    Args:
        epochs: training epochs.
        batch_size: rows per training batch.
        lr: Adam learning rate (every update of the stage).
        weight_decay: Adam weight decay.
        model: spec of the model the stage trains.
        terms: name -> spec of each objective term.
        schedule: ``"constant"`` learning rate, or ``"cosine"`` annealing to 1% of ``lr``
            over the stage's epochs.

    Example:
        >>> stage = AutoencoderStage(epochs=2, batch_size=16, lr=1e-3)
        >>> sorted(stage.objective().terms), stage.get_config()["epochs"]
        (['reconstruction'], 2)
    """

    default_model: dict[str, Any] = {}
    default_terms: dict[str, dict[str, Any]] = {}

    def __init__(self, epochs: int, batch_size: int, lr: float, weight_decay: float = 0.0,
                 model: dict | None = None, terms: Mapping[str, dict] | None = None, schedule: str = "constant"):
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be constant or cosine, got {schedule!r}")
        self.schedule = schedule
        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < lr < 1:
            raise ValueError(f"lr must be between 0 and 1, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.model_spec = dict(model or self.default_model)
        self.term_specs = dict(terms if terms is not None else self.default_terms)

    def objective(self) -> Objective:
        return Objective(self.term_specs)

    def updates(self, model: nn.Module, objective: Objective) -> list[Update]:
        """One Adam per target: the main model plus its terms for "loss", the terms alone for the others."""
        updates = []
        for target in objective.targets:
            parameters = list(model.parameters()) + objective.parameters_of(target) if target == "loss" \
                else objective.parameters_of(target)
            if not parameters:
                raise ValueError(f"the terms that target {target!r} have no parameters to train")
            updates.append(Update(target, adam(parameters, self.lr, self.weight_decay), target, parameters))
        return updates

    def schedule_callbacks(self, updates: list[Update]) -> list[Callback]:
        """The learning-rate schedule of the stage's updates, as callbacks."""
        if self.schedule == "cosine":
            return [CosineLearningRate([update.optimizer for update in updates], self.lr, self.epochs)]
        return []

    def plan(self, context: StageContext) -> StagePlan:
        raise NotImplementedError

    def dry_run(self, shapes: dict[str, Any]) -> dict[str, Any]:
        """Build the model for ``shapes`` (sizes the earlier stages produce) and add this stage's; raises on bad options."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "weight_decay": self.weight_decay, "model": self.model_spec, "terms": self.term_specs,
                "schedule": self.schedule}


class AutoencoderTraining(nn.Module):
    """The autoencoder stage's model: autoencoder and objective terms (which may own weights).

    Args:
        autoencoder: the autoencoder.
        objective: its objective; called with the images, reconstruction, embedding and labels.
        flip: mirror a random half of each training batch left to right (pets have no
            handedness: twice the poses for free).
        latent_noise: while training, decode ``embedding + latent_noise * std * eps`` (std:
            each embedding number's spread over the batch, eps ~ N(0, 1)), so the decoder
            learns to turn the whole neighbourhood of a code into a picture, not only the
            code itself: the flow's samples, never exactly on a training code, decode cleanly.

    Example:
        >>> import torch
        >>> from latentflows import ConvAutoencoder
        >>> model = AutoencoderTraining(ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
        ...                             Objective({"reconstruction": {"class": "Reconstruction"}})).eval()
        >>> sorted(model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1])))
        ['loss']
    """

    autoencoder: Any  # any registered autoencoder: encode/decode, duck-typed

    def __init__(self, autoencoder: nn.Module, objective: Objective, flip: bool = False, latent_noise: float = 0.0):
        super().__init__()
        self.autoencoder, self.objective, self.flip, self.latent_noise = autoencoder, objective, flip, latent_noise

    def forward(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        x = to_signed_unit(images)
        if self.flip and self.training:
            mirrored = torch.rand(len(x), device=x.device) < 0.5
            x = torch.where(mirrored[:, None, None, None], x.flip(-1), x)
        context = class_context(self.autoencoder, labels)
        if self.latent_noise and self.training:
            embedding = self.autoencoder.encode(x)
            spread = embedding.detach().std(0, keepdim=True)
            reconstruction = self.autoencoder.decode(
                embedding + self.latent_noise * spread * torch.randn_like(embedding), context)
        else:
            reconstruction, embedding = self.autoencoder(x, context)
        return self.objective({"images": x, "reconstruction": reconstruction, "embedding": embedding,
                               "labels": labels, "autoencoder": self.autoencoder})


@register
class AutoencoderStage(Stage):
    """Train the autoencoder on the training images (uint8 batches scaled to [-1, 1]).

    Args:
        epochs, batch_size, lr, weight_decay, model, terms, schedule: see ``Stage``; ``model``
            is the autoencoder's spec (its ``image_size`` comes from the run config), ``terms``
            default to ``{"reconstruction": Reconstruction(MSELoss())}``.
        flip: mirror a random half of each training batch (see ``AutoencoderTraining``).
        latent_noise: noise on the codes the decoder sees while training (see ``AutoencoderTraining``).

    Example:
        >>> stage = AutoencoderStage(epochs=1, batch_size=8, lr=1e-3,
        ...                          model={"class": "ConvAutoencoder", "config": {"embedding_dim": 8, "width": 2}})
        >>> stage.dry_run({"image_size": 32})["embedding_dim"]
        8
    """

    default_model = {"class": "ConvAutoencoder", "config": {}}
    default_terms = {"reconstruction": {"class": "Reconstruction", "config": {}}}

    def __init__(self, epochs: int, batch_size: int, lr: float, weight_decay: float = 0.0,
                 model: dict | None = None, terms: Mapping[str, dict] | None = None, schedule: str = "constant",
                 flip: bool = False, latent_noise: float = 0.0):
        super().__init__(epochs, batch_size, lr, weight_decay, model, terms, schedule)
        if not isinstance(flip, bool):
            raise ValueError(f"flip must be true or false, got {flip!r}")
        if not (isinstance(latent_noise, (int, float)) and 0 <= latent_noise < 10):
            raise ValueError(f"latent_noise must be a number in [0, 10), got {latent_noise!r}")
        self.flip, self.latent_noise = flip, float(latent_noise)

    def build_model(self, image_size: int, classes: int) -> nn.Module:
        """The autoencoder of ``model``, at the run's image size; ``classes: "auto"`` in its
        config becomes the data's number of classes."""
        extra = {"classes": classes} if self.model_spec.get("config", {}).get("classes") == "auto" else {}
        return build(self.model_spec, nn.Module, image_size=image_size, **extra)

    def dry_run(self, shapes: dict[str, Any]) -> dict[str, Any]:
        autoencoder = self.build_model(shapes["image_size"], shapes.get("classes", 2))
        self.objective()
        latent = getattr(autoencoder, "latent_shape", None)  # a spatial autoencoder's code grid
        return {**shapes, "embedding_dim": autoencoder.embedding_dim, **({"latent_shape": latent} if latent else {})}

    def plan(self, context: StageContext) -> StagePlan:
        autoencoder = self.build_model(context.image_size, len(context.class_names))
        train, val = context.train_set, context.val_set
        train_batches = Batches(context.runtime.place([train.images, train.labels]), self.batch_size,
                                shuffle=True, seed=context.seed, drop_last=True)
        objective = self.objective()
        bind_terms(objective, {"embedding_dim": autoencoder.embedding_dim, "classes": len(context.class_names),
                               "image_size": context.image_size, "steps_per_epoch": len(train_batches)})
        autoencoder, objective = autoencoder.to(context.runtime.device), objective.to(context.runtime.device)
        model = AutoencoderTraining(autoencoder, objective, self.flip, self.latent_noise)
        updates = self.updates(autoencoder, objective)
        return StagePlan(
            model=model, updates=updates, loss_fn=_call_model, callbacks=self.schedule_callbacks(updates),
            train_batches=train_batches,
            val_batches=Batches(context.runtime.place([val.images, val.labels]), 256), epochs=self.epochs,
            product=lambda: autoencoder)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "flip": self.flip, "latent_noise": self.latent_noise}


def _call_model(model: nn.Module, batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
    return model(*batch)


def bind_terms(objective: Objective, facts: dict[str, Any]) -> None:
    """Tell every term of a stage what it may need before training: the data's sizes, and the
    steps per epoch (a schedule counted in epochs)."""
    for _, term in objective.named_terms():
        term.bind(facts)


class FlowTraining(nn.Module):
    """The flow stage's model: noise on the standardized embeddings (training only), the flow's
    trainable body, and the objective.

    The flow's fixed head (standardization) is applied once to all embeddings before
    training, so each step runs only the body; ``head_logabsdet`` adds the head's constant
    log-determinant back, so ``log_prob`` is the flow's density of the raw embeddings.

    Args:
        flow: the flow; each step runs its ``body`` and its ``base``.
        noise_std: std of the training noise, in standardized units.
        objective: its objective; called with ``log_prob``, ``z`` and ``context``.
        head_logabsdet: the head's constant log-determinant.
        conditioner_dtype: run the couplings' networks in this dtype (``flows.conditioners_in``;
            None: as the flow is, fp32).

    Example:
        >>> import torch
        >>> from latentflows.flows import ConditionalRealNVP
        >>> flow = ConditionalRealNVP(4, 2, couplings=1, hidden=[8], standardize=True)
        >>> model = FlowTraining(flow, 0.0, Objective({"nll": {"class": "NegativeLogLikelihood"}}), torch.tensor(0.0))
        >>> sorted(model.eval()(torch.zeros(3, 4), torch.eye(2)[[0, 1, 1]]))
        ['bits_per_dim', 'loss']
    """

    def __init__(self, flow: Flow, noise_std: float, objective: Objective, head_logabsdet: Tensor,
                 conditioner_dtype: torch.dtype | None = None):
        super().__init__()
        self.flow, self.noise, self.objective = flow, GaussianNoise(noise_std), objective
        self.conditioner_dtype = conditioner_dtype
        self.register_buffer("head_logabsdet", head_logabsdet, persistent=False)

    def forward(self, standardized: Tensor, context: Tensor) -> dict[str, Tensor]:
        with conditioners_in(self.conditioner_dtype):  # the coupling networks only: log-dets stay fp32
            z, logabsdet = self.flow.body(self.noise(standardized), context)
        log_prob = self.flow.base.log_prob(z) + logabsdet + self.head_logabsdet
        losses = self.objective({"log_prob": log_prob, "z": z, "context": context})
        losses["bits_per_dim"] = to_bits_per_dim(losses["loss"].detach(), z.shape[1])
        return losses


def fixed_head(flow: Flow) -> Transform | None:
    """The flow's ``head``, checked against the flow stage's contract: a ``Transform`` with no
    trainable parameter (it is applied once, before training), or None.

    Example:
        >>> from latentflows.flows import ConditionalRealNVP
        >>> type(fixed_head(ConditionalRealNVP(4, couplings=1, hidden=[8], standardize=True))).__name__
        'Standardize'
    """
    head = flow.head
    if head is None:
        return None
    if not isinstance(head, Transform):
        raise TypeError(f"{type(flow).__name__}.head must be a flows.Transform or None, got {type(head).__name__}; "
                        "see the flow stage's contract in docs/architecture.md")
    trainable = [name for name, p in head.named_parameters() if p.requires_grad]
    if trainable:
        raise TypeError(f"{type(flow).__name__}.head has trainable parameters ({', '.join(trainable)}); the flow "
                        "stage applies the head once before training, so it must be fixed: move them into body")
    return head


@register
class FlowStage(Stage):
    """Train the conditional flow on the autoencoder's embeddings of the training images.

    The flow is built with ``features`` (the embedding size), ``context_size`` (the number
    of classes), ``seed`` (the run's) and the embeddings' ``mean`` and ``std``, which its
    fixed head standardizes with; the context is the one-hot class.

    Args:
        epochs, batch_size, lr, weight_decay, model, terms: see ``Stage``; ``terms`` default
            to ``{"nll": NegativeLogLikelihood()}``.
        noise: std of Gaussian noise added to the standardized embeddings while training (a
            regularizer that smooths the density around the training points).
        patience: stop after this many epochs without a better validation loss, keeping the
            best weights (None: train every epoch).
        augment: encode this many augmented copies of each training photo (mirrored with
            probability 1/2 and shifted by up to 1/16 of its size, see
            ``data.augment.mirror_and_shift``) beside the photo itself, so the flow trains on
            ``1 + augment`` codes per photo: new, valid pictures of the same pets that it cannot
            memorise. An epoch passes over all of them; validation uses the photos alone.

    Example:
        >>> stage = FlowStage(epochs=1, batch_size=8, lr=1e-3, model={"class": "ConditionalRealNVP",
        ...                   "config": {"couplings": 2, "hidden": [8], "standardize": True}})
        >>> stage.dry_run({"embedding_dim": 4, "classes": 2})["flow_parameters"] > 0
        True
    """

    default_model = {"class": "ConditionalRealNVP", "config": {"standardize": True}}
    default_terms = {"nll": {"class": "NegativeLogLikelihood", "config": {}}}

    def __init__(self, epochs: int, batch_size: int, lr: float, weight_decay: float = 0.0,
                 model: dict | None = None, terms: Mapping[str, dict] | None = None, noise: float = 0.0,
                 patience: int | None = None, schedule: str = "constant", augment: int = 0):
        super().__init__(epochs, batch_size, lr, weight_decay, model, terms, schedule)
        if not noise >= 0:
            raise ValueError(f"noise must be non-negative, got {noise}")
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience must be a positive integer or None, got {patience!r}")
        if not isinstance(augment, int) or augment < 0:
            raise ValueError(f"augment must be a non-negative integer (copies per photo), got {augment!r}")
        self.noise, self.patience, self.augment = noise, patience, augment

    def build_flow(self, features: int, classes: int, seed: int, mean: Tensor | None = None,
                   std: Tensor | None = None, latent_shape: Any = None) -> Flow:
        """The flow of ``model`` for these sizes. A flow that takes ``latent_shape`` (one on the
        code's grid) and is not given one gets the autoencoder's, so the grid it convolves over
        is the code's at every image size."""
        inject: dict[str, Any] = {"features": features, "context_size": classes, "seed": seed, "mean": mean, "std": std}
        config = self.model_spec.get("config") or {}
        if latent_shape is not None and "latent_shape" not in config and \
                "latent_shape" in inspect.signature(get_registered(self.model_spec["class"])).parameters:
            inject["latent_shape"] = [int(size) for size in latent_shape]
        return build(self.model_spec, Flow, **inject)

    def dry_run(self, shapes: dict[str, Any]) -> dict[str, Any]:
        flow = self.build_flow(shapes["embedding_dim"], shapes.get("classes", 2), 0,
                               latent_shape=shapes.get("latent_shape"))
        self.objective()
        return {**shapes, "flow_parameters": sum(p.numel() for p in flow.parameters())}

    def augmented_codes(self, autoencoder: nn.Module, images: Tensor | MappedImages, seed: int, batch_size: int = 256) -> Tensor:
        """Codes of ``self.augment`` augmented copies of every image, copy by copy."""
        generator = torch.Generator().manual_seed(seed)
        max_shift = min(images.shape[-2:]) // 16
        codes = [encode_images(autoencoder, mirror_and_shift(images[i : i + batch_size], max_shift, generator))
                 for _ in range(self.augment) for i in range(0, len(images), batch_size)]
        return torch.cat(codes) if codes else torch.empty(0)

    def plan(self, context: StageContext) -> StagePlan:
        autoencoder = context.models["autoencoder"]
        raw_train = encode_images(autoencoder, context.train_set.images)
        raw_val = encode_images(autoencoder, context.val_set.images)
        statistics = Standardize.fit(raw_train)
        labels = context.train_set.labels
        if self.augment:
            raw_train = torch.cat([raw_train, self.augmented_codes(autoencoder, context.train_set.images,
                                                                   context.seed + 2)])
            labels = labels.repeat(1 + self.augment)
        flow = self.build_flow(raw_train.shape[1], len(context.class_names), context.seed, statistics.mean,
                               statistics.std, getattr(autoencoder, "latent_shape", None)).to(context.runtime.device)
        # a flow without a head: the identity
        head = fixed_head(flow) or Standardize(raw_train.shape[1]).to(raw_train.device)
        with torch.no_grad():
            train_x, head_logabsdet = head(raw_train)
            val_x, _ = head(raw_val)
        train_context = context.one_hot(labels)
        fit_leading_layers(flow.body, train_x, train_context)
        train_batches = Batches(context.runtime.place([train_x, train_context]), self.batch_size,
                                shuffle=True, seed=context.seed + 1, drop_last=True)
        objective = self.objective()
        bind_terms(objective, {"features": train_x.shape[1], "classes": len(context.class_names),
                               "steps_per_epoch": len(train_batches)})
        objective = objective.to(context.runtime.device)
        # bf16 where the autoencoder trains in it: the coupling networks gain as much (1.5-1.7x
        # on AVX-512 BF16), and the maps and densities around them stay fp32
        conditioner_dtype = torch.bfloat16 if context.runtime.precision == "bf16" else None
        model = FlowTraining(flow, self.noise, objective, head_logabsdet[0], conditioner_dtype)
        updates = self.updates(flow, objective)
        callbacks = self.schedule_callbacks(updates)
        if self.patience:
            callbacks.append(EarlyStopping("loss", self.patience))
        val = context.val_set
        return StagePlan(
            model=model, updates=updates, loss_fn=_call_model,
            train_batches=train_batches,
            val_batches=Batches(context.runtime.place([val_x, context.one_hot(val.labels)]), 1024),
            epochs=self.epochs,
            product=lambda: flow, callbacks=callbacks, autocast=False,  # log-determinants stay in fp32
            precision_tag="bf16 couplings" if conditioner_dtype is not None else None)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "noise": self.noise, "patience": self.patience, "augment": self.augment}
