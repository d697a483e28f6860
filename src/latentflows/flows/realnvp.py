"""Conditional RealNVP over a standard normal base, assembled as in the seed notebook.

Each block is an affine coupling, then a random permutation (or, without permutations,
the next coupling flips its mask), then invertible batch norm.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..registry import register
from .base import Composite, Transform, standard_normal_log_prob
from .batchnorm import InvertibleBatchNorm
from .coupling import AffineCoupling
from .permutation import RandomPermutation


@register
class ConditionalRealNVP(Transform):
    def __init__(self, features: int, context_size: int = 0, couplings: int = 12,
                 hidden: Sequence[int] = (256, 256), batch_norm: bool = True, permute: bool = True,
                 mask: str = "alternate", shared_network: bool = True, activation="relu",
                 seed: int = 0, scale_fn: str = "tanh", network: dict | None = None):
        super().__init__()
        if couplings < 1:
            raise ValueError(f"couplings must be at least 1, got {couplings}")
        self.features, self.context_size, self.couplings = features, context_size, couplings
        self.hidden, self.batch_norm, self.permute = list(hidden), batch_norm, permute
        self.mask, self.shared_network, self.seed = mask, shared_network, seed
        self.scale_fn = scale_fn
        layers: list[Transform] = []
        flip = False
        for i in range(couplings):
            layers.append(AffineCoupling(features, mask, hidden, context_size, shared_network, flip, activation,
                                         scale_fn, network))
            if permute:
                layers.append(RandomPermutation(features, seed=seed * 1_000_003 + i))
            else:
                flip = not flip
            if batch_norm:
                layers.append(InvertibleBatchNorm(features))
        self.transform = Composite(layers)
        first = layers[0]
        self.activation, self.network = first.activation, first.network  # as saved (JSON-safe)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform(x, self._context(context, x.shape[0]))

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(z, self._context(context, z.shape[0]))

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-density of each row of ``x`` (nats), under the flow and its base."""
        z, logabsdet = self(x, context)
        return standard_normal_log_prob(z) + logabsdet

    def sample(self, n: int, context: Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        return self.sample_and_log_prob(n, context, temperature, generator)[0]

    def sample_and_log_prob(self, n: int, context: Tensor | None = None, temperature: float = 1.0,
                            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` samples and their log-density under the model.

        ``temperature`` scales the base noise (below 1: more typical samples); the returned
        log-density is the model's own, log p(x) = log N(z) - log|det dx/dz|, whatever the
        temperature.
        """
        if n < 1:
            raise ValueError(f"the number of samples must be at least 1, got {n}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        reference = next(self.parameters())
        z = torch.randn(n, self.features, generator=generator, dtype=reference.dtype,
                        device=generator.device if generator is not None else reference.device)
        z = (z * temperature).to(reference.device)
        x, logabsdet = self.inverse(z, context)
        return x, standard_normal_log_prob(z) - logabsdet

    def _context(self, context: Tensor | None, batch: int) -> Tensor | None:
        if not self.context_size:
            if context is not None:
                raise ValueError("this flow was built with context_size=0; do not pass a context")
            return None
        if context is None:
            raise ValueError(f"this flow is conditional (context_size={self.context_size}); pass a context")
        if context.dim() == 1:
            context = context.unsqueeze(0)
        if context.shape[0] == 1 and batch != 1:
            context = context.expand(batch, -1)
        return context

    def get_config(self):
        return {"features": self.features, "context_size": self.context_size, "couplings": self.couplings,
                "hidden": self.hidden, "batch_norm": self.batch_norm, "permute": self.permute,
                "mask": self.mask, "shared_network": self.shared_network,
                "activation": self.activation, "seed": self.seed, "scale_fn": self.scale_fn,
                "network": self.network}
