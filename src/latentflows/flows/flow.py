"""A normalizing flow: a transform (data -> noise) and a base distribution.

Called with a context, a flow returns the distribution it defines,
``flow(context) -> FlowDistribution`` (zuko's idiom), while its transform keeps the
``forward(x, context) -> (z, logabsdet)`` / ``inverse`` contract of every layer.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from ..registry import Configurable, deserialize, register, serialize
from .base import Composite, Transform
from .distributions import BaseDistribution, FlowDistribution, check_sampling


@register
class Flow(nn.Module, Configurable):
    """A transform and a base distribution; ``flow(context)`` is the conditional distribution.

    ``flow(context, temperature)`` returning a ``torch.distributions.Distribution`` is the API
    (as zuko's). ``log_prob(x, context)``, ``sample(n, context)`` and ``sample_and_log_prob``
    are shorthands over it for (batch, features) matrices, with one context row per sample
    or one context for all.

    Args:
        transform: the invertible map from data to noise.
        base: the distribution of the noise.
        context_size: size of the context vectors (0 for an unconditional flow).

    References:
        Papamakarios et al., "Normalizing Flows for Probabilistic Modeling and Inference",
        JMLR 2021, arXiv:1912.02762.

    Example:
        >>> import torch
        >>> from latentflows.flows import Flow, RandomPermutation, StandardNormal
        >>> flow = Flow(RandomPermutation(3), StandardNormal(3))
        >>> round(flow().log_prob(torch.zeros(3)).item(), 4)   # a permuted standard normal
        -2.7568
    """

    def __init__(self, transform: Transform, base: BaseDistribution, context_size: int = 0):
        super().__init__()
        self.transform, self.base, self.context_size = transform, base, context_size

    @property
    def features(self) -> int:
        return self.base.features

    @property
    def head(self) -> Transform | None:
        """A fixed leading layer the flow stage applies once to every embedding before training
        (None: no such layer). ``StandardizedFlow`` puts its ``Standardize`` layer here."""
        return None

    @property
    def body(self) -> Transform:
        """The layers each training step runs: ``transform`` without ``head`` (sharing its parameters)."""
        return self.transform

    def forward(self, context: Tensor | None = None, temperature: float = 1.0) -> FlowDistribution:
        """The distribution of the data given ``context`` (one vector, or a batch of them): the API."""
        return FlowDistribution(self.transform, self.base, self._context(context), temperature)

    def _context(self, context: Tensor | None, rows: int | None = None) -> Tensor | None:
        """``context`` checked against ``context_size``; given ``rows``, one row per sample (a
        single vector or row is repeated ``rows`` times)."""
        if not self.context_size:
            if context is not None:
                raise ValueError("this flow was built with context_size=0; do not pass a context")
            return None
        if context is None:
            raise ValueError(f"this flow is conditional (context_size={self.context_size}); pass a context")
        if context.shape[-1] != self.context_size:
            raise ValueError(f"context must have {self.context_size} features, got shape {tuple(context.shape)}")
        if rows is None:
            return context
        if context.dim() == 1:
            context = context.unsqueeze(0)
        if context.dim() != 2 or context.shape[0] not in (1, rows):
            raise ValueError(f"context must be one row or one row per sample ({rows}), got shape {tuple(context.shape)}")
        return context.expand(rows, -1) if context.shape[0] == 1 and rows != 1 else context

    # shorthands over ``flow(context)`` for (batch, features) matrices, as training loops use them
    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``flow(context).log_prob(x)``: log-density (nats) of each row of ``x`` given its context
        row (or one context for all)."""
        if x.dim() != 2:
            raise ValueError(f"x must be a (batch, features) matrix, got shape {tuple(x.shape)}")
        return self(self._context(context, x.shape[0])).log_prob(x)

    def sample(self, n: int, context: Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws of ``flow(context, temperature)`` (one context vector, or one row per sample)."""
        return self.sample_and_log_prob(n, context, temperature, generator)[0]

    def sample_and_log_prob(self, n: int, context: Tensor | None = None, temperature: float = 1.0,
                            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` draws of ``flow(context, temperature)`` and their log-density under the model (not
        under the tempered noise)."""
        check_sampling(n)
        distribution = self(self._context(context, n), temperature)  # batch_shape (n,) when conditional
        return distribution.rsample_and_log_prob(() if distribution.batch_shape else (n,), generator)

    def get_config(self) -> dict[str, Any]:
        return {"transform": serialize(self.transform), "base": serialize(self.base),
                "context_size": self.context_size}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Flow":
        return cls(deserialize(config["transform"], Transform), deserialize(config["base"], BaseDistribution),
                   config.get("context_size", 0))


class StandardizedFlow(Flow):
    """A flow whose first layer is, when ``standardize`` is set, a fixed ``Standardize`` head.

    The flow stage's contract (``Flow.head`` / ``Flow.body``, see ``docs/architecture.md``):
    ``head`` standardizes every embedding once before training, and each step runs only
    ``body``. Subclasses set ``standardize`` and put the ``Standardize`` layer first when it is True.

    Example:
        >>> import torch
        >>> from latentflows.flows import ConditionalRealNVP
        >>> flow = ConditionalRealNVP(4, couplings=1, hidden=[8], standardize=True)
        >>> type(flow.head).__name__, len(flow.body.transforms) == len(flow.transform.transforms) - 1
        ('Standardize', True)
    """

    standardize: bool = False

    @property
    def head(self) -> Transform | None:
        """The fixed standardization at the head, if any."""
        return self._layers()[0] if self.standardize else None

    @property
    def body(self) -> Transform:
        """The trainable layers after the head (shares their parameters)."""
        return Composite(self._layers()[1:]) if self.standardize else self.transform

    def _layers(self) -> list[Transform]:
        # a standardized flow's transform is a Composite of Transforms (see the subclasses)
        return cast("list[Transform]", list(cast(Composite, self.transform).transforms))
