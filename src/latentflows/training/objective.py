"""Objectives made of named, weighted terms.

A stage's model returns its forward outputs as a dict (images, reconstruction,
embedding, log_prob, ...). Each ``Term`` turns those outputs into one scalar; the
``Objective`` adds each term, times its weight, to the loss of the update it ``target``s
(``"loss"`` for the stage's main model, another name for e.g. a discriminator), and shows
every term under its own name. A new loss term is one registered subclass of ``Term``.
"""

from __future__ import annotations

from typing import Any, Mapping, cast

import torch
from torch import Tensor, nn

from ..losses import Loss, MSELoss
from ..registry import Configurable, deserialize, register, serialize


class Term(nn.Module, Configurable):
    """One named part of an objective: a scalar computed from the stage's forward outputs.

    Subclasses implement ``forward(outputs) -> Tensor`` (unweighted) and extend
    ``get_config``. A term may own trainable modules (a discriminator); they are trained by
    the update named by ``target``. A term that adds to several losses at once (an
    adversarial term: the generator's loss and the discriminator's) returns a dict
    ``{loss name: value}`` instead, weighted by the term itself; ``outputs["totals"]`` holds the weighted sums of the
    terms before it (e.g. for an adaptive weight).

    Args:
        weight: the factor applied when the term is added to its target loss.
        target: the loss it adds to: ``"loss"`` (the stage's model) or the name of another
            update (e.g. ``"discriminator"``), which gets its own optimizer over the
            parameters of the terms that target it.

    Example:
        >>> import torch
        >>> from latentflows import register
        >>> @register(name="docs.MeanAbsolute")
        ... class MeanAbsolute(Term):
        ...     def forward(self, outputs):
        ...         return (outputs["images"] - outputs["reconstruction"]).abs().mean()
        >>> objective = Objective({"l1": MeanAbsolute(weight=0.5)})
        >>> objective({"images": torch.ones(2, 3), "reconstruction": torch.zeros(2, 3)})["loss"].item()
        0.5
    """

    def __init__(self, weight: float = 1.0, target: str = "loss"):
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"a term's weight must be non-negative, got {weight}")
        self.weight, self.target = float(weight), target

    def bind(self, shapes: dict[str, Any]) -> None:
        """Learn the stage's facts before training (the autoencoder stage's ``embedding_dim``,
        ``classes``, ``image_size``; every stage's ``steps_per_epoch``): a term with its own
        layers (a class head) builds them here, a schedule in epochs converts them to steps."""

    def forward(self, outputs: dict[str, Any]) -> Tensor | dict[str, Tensor]:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"weight": self.weight, "target": self.target}


class ScheduledTerm(Term):
    """A term that is on only between two points of training, counted in steps or in epochs.

    It counts the training steps it sees in a buffer saved with the checkpoint (and a copy on
    the host, so a step never waits on the device), so a resumed run switches at the same step.
    Subclasses call ``switched_on()`` once per forward: in training it counts the step and says
    whether the term is on for it; in evaluation it says whether the next training step would be.
    Counted in epochs, a schedule means the same on any dataset: the stage tells the term its
    steps per epoch (``bind({"steps_per_epoch": N})``) before training.

    Args:
        weight, target: see ``Term``.
        start: steps (or epochs) before the term switches on (0: on from the first step).
        stop: steps (or epochs) after which it is off for good (None: never), e.g. a class head
            that shapes the codes early and then leaves them to the reconstruction.
        unit: ``"steps"`` or ``"epochs"``, what ``start`` and ``stop`` count.

    Example:
        >>> term = ScheduledTerm(start=1, stop=2)
        >>> [term.switched_on() for _ in range(3)]  # training steps 1, 2, 3
        [False, True, False]
        >>> term = ScheduledTerm(stop=1, unit="epochs")
        >>> term.bind({"steps_per_epoch": 2})
        >>> [term.switched_on() for _ in range(3)]  # epoch 1 (steps 1, 2), then epoch 2
        [True, True, False]
    """

    steps: Tensor
    units = ("steps", "epochs")

    def __init__(self, weight: float = 1.0, target: str = "loss", start: int = 0, stop: int | None = None,
                 unit: str = "steps"):
        super().__init__(weight, target)
        if unit not in self.units:
            raise ValueError(f"unit must be 'steps' or 'epochs' (what start and stop count), got {unit!r}")
        if not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be a non-negative number of {unit}, got {start!r}")
        if stop is not None and (not isinstance(stop, int) or stop <= start):
            raise ValueError(f"stop must be a number of {unit} after start ({start}) or None, got {stop!r}")
        self.start, self.stop, self.unit = start, stop, unit
        self.steps_per_epoch: int | None = None  # set by bind; needed when counting epochs
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # saved in checkpoints
        self._steps = 0  # its value on the host, kept alongside

    def bind(self, shapes: dict[str, Any]) -> None:
        if "steps_per_epoch" in shapes:
            self.steps_per_epoch = int(shapes["steps_per_epoch"])

    def _in_steps(self, count: int) -> int:
        if self.unit == "steps":
            return count
        if self.steps_per_epoch is None:
            raise RuntimeError(f"{type(self).__name__} counts epochs and needs the steps per epoch: "
                               "call bind({'steps_per_epoch': N}) before training (a stage does it)")
        return count * self.steps_per_epoch

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        if self.start == 0 and self.stop is None:  # always on: a checkpoint without a count still loads
            state_dict.setdefault(prefix + "steps", torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args)
        if prefix + "steps" in state_dict:  # a resumed count, read from the loaded (host) tensor
            self._steps = int(state_dict[prefix + "steps"])

    def switched_on(self) -> bool:
        """Count a training step (in training mode); whether the term is on for it."""
        if self.training:
            self.steps += 1
            self._steps += 1
        step = self._steps if self.training else self._steps + 1
        return self._in_steps(self.start) < step and (self.stop is None or step <= self._in_steps(self.stop))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "start": self.start, "stop": self.stop, "unit": self.unit}


@register
class Reconstruction(Term):
    """A reconstruction loss between the images and their reconstructions (both in [-1, 1]).

    Args:
        loss: a ``Loss`` or its spec (default ``MSELoss``).
        weight, target: see ``Term``.

    Example:
        >>> import torch
        >>> term = Reconstruction({"class": "HuberLoss", "config": {"threshold": 2.0}})
        >>> term({"images": torch.zeros(1, 4), "reconstruction": torch.ones(1, 4)}).item()
        0.5
    """

    def __init__(self, loss: Loss | dict | None = None, weight: float = 1.0, target: str = "loss"):
        super().__init__(weight, target)
        self.loss = loss if isinstance(loss, Loss) else (deserialize(loss, Loss) if loss else MSELoss())

    def forward(self, outputs: dict[str, Any]) -> Tensor:
        return self.loss(outputs["images"], outputs["reconstruction"])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "loss": serialize(self.loss)}


@register
class ClassHead(ScheduledTerm):
    """Cross-entropy of a linear classifier on the embedding: asks the encoder to keep the
    class where a linear map finds it, which is where a class-conditional flow looks.

    The head's weights are trained with the autoencoder (target ``"loss"``) and are not part
    of the saved model. On a long run the head learns the training labels and then only pushes
    the training codes apart (docs/quality.md, `best`): ``stop`` switches it off after that
    many steps or epochs (its value is then 0, in training and in validation).

    Args:
        weight, target: see ``Term``.
        start, stop, unit: see ``ScheduledTerm`` (default: on for every step).

    References:
        Odena, Olah, Shlens, "Conditional Image Synthesis with Auxiliary Classifier GANs",
        ICML 2017, arXiv:1610.09585 (an auxiliary class loss beside the main objective).

    Example:
        >>> import torch
        >>> head = ClassHead()
        >>> head.bind({"embedding_dim": 4, "classes": 2})
        >>> loss = head({"embedding": torch.zeros(3, 4), "labels": torch.tensor([0, 1, 1])})
        >>> round(loss.item(), 4)  # a head that starts at zero: log 2
        0.6931
    """

    def __init__(self, weight: float = 0.1, target: str = "loss", start: int = 0, stop: int | None = None,
                 unit: str = "steps"):
        super().__init__(weight, target, start, stop, unit)
        self.head: nn.Linear | None = None

    def bind(self, shapes: dict[str, Any]) -> None:
        super().bind(shapes)
        self.head = nn.Linear(int(shapes["embedding_dim"]), int(shapes.get("classes", 2)))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, outputs: dict[str, Any]) -> Tensor:
        if self.head is None:
            raise RuntimeError("ClassHead.bind(shapes) must run before training (the stage does it)")
        if not self.switched_on():
            return outputs["embedding"].sum() * 0.0
        return nn.functional.cross_entropy(self.head(outputs["embedding"]), outputs["labels"])


@register
class NegativeLogLikelihood(Term):
    """Mean negative log-likelihood (nats) of the flow's inputs: ``-outputs["log_prob"].mean()``.

    Example:
        >>> import torch
        >>> NegativeLogLikelihood()({"log_prob": torch.tensor([-1.0, -3.0])}).item()
        2.0
    """

    def forward(self, outputs: dict[str, Any]) -> Tensor:
        return (-outputs["log_prob"]).mean()


class Objective(nn.Module):
    """Named terms summed, with their weights, into one loss per target.

    Returns ``{target: total, ...}`` plus each term's unweighted value under its name
    (left out where it would repeat its target's total: a single term of weight 1).

    Args:
        terms: name -> ``Term`` (or its spec).

    Example:
        >>> import torch
        >>> objective = Objective({"pixels": Reconstruction(),
        ...                        "huber": {"class": "Reconstruction", "config": {
        ...                            "loss": {"class": "HuberLoss", "config": {}}, "weight": 0.5}}})
        >>> losses = objective({"images": torch.zeros(1, 2), "reconstruction": torch.ones(1, 2)})
        >>> sorted(losses), round(losses["loss"].item(), 3)
        (['huber', 'loss', 'pixels'], 1.25)
    """

    def __init__(self, terms: Mapping[str, Term | dict]):
        super().__init__()
        built = {name: term if isinstance(term, Term) else deserialize(term, Term) for name, term in terms.items()}
        if not built:
            raise ValueError("an objective needs at least one term")
        targets = {term.target for term in built.values()}
        clashes = sorted(set(built) & (targets | {"loss", "metric_inputs"}))
        if clashes:
            raise ValueError(f"term names {clashes} clash with loss names; rename the terms")
        self.terms = nn.ModuleDict(built)
        self.targets = sorted(targets, key=lambda target: (target != "loss", target))

    def forward(self, outputs: dict[str, Any]) -> dict[str, Tensor]:
        totals: dict[str, Tensor] = {}
        shown: dict[str, Tensor] = {}
        outputs = {**outputs, "totals": totals}
        for name, term in self.named_terms():
            value = term(outputs)
            parts = value if isinstance(value, dict) else {term.target: value}
            for target, part in parts.items():
                # a term that returns several losses weights them itself
                weighted = part if term.weight == 1.0 or isinstance(value, dict) else term.weight * part
                totals[target] = weighted if target not in totals else totals[target] + weighted
                shown[f"{name}_{target}" if isinstance(value, dict) else name] = part.detach()
        for name, term in self.named_terms():
            alone = sum(t.target == term.target for _, t in self.named_terms()) == 1
            if alone and term.weight == 1.0 and name in shown:
                shown.pop(name)
        return {**totals, **shown}

    def parameters_of(self, target: str) -> list[nn.Parameter]:
        """Trainable parameters of the terms that add to ``target``."""
        return [p for term in self.terms.values() if term.target == target for p in term.parameters()]

    def named_terms(self) -> list[tuple[str, Term]]:
        """``self.terms`` with their type (an ``nn.ModuleDict`` yields plain modules)."""
        return [(name, cast(Term, term)) for name, term in self.terms.items()]

    def specs(self) -> dict[str, dict]:
        return {name: serialize(term) for name, term in self.terms.items()}
