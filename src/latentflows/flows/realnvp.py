"""Conditional RealNVP, assembled as in the seed notebook, over a standard normal base.

An optional fixed standardization comes first; then each block is a coupling, then a
random permutation (or, without permutations, the next coupling flips its mask), then
invertible batch norm.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from ..registry import register
from .base import Composite, Transform
from .batchnorm import InvertibleBatchNorm
from .coupling import DEFAULT_CONDITIONER, Coupling
from .distributions import StandardNormal
from .flow import Flow
from .permutation import RandomPermutation
from .standardize import Standardize

DEFAULT_BIJECTION = {"class": "TanhAffine", "config": {}}


@register
class ConditionalRealNVP(Flow):
    """RealNVP with a context (e.g. a one-hot class) fed to every coupling's conditioner.

    Args:
        features: number of features.
        context_size: size of the context vector; 0 for an unconditional flow.
        couplings: number of coupling layers.
        mask: ``"alternate"`` or ``"half"`` (see ``coupling_mask``).
        permute: a seeded random permutation after each coupling; without it the masks
            alternate between the two halves.
        batch_norm: invertible batch norm after each coupling.
        bijection: spec of each coupling's element-wise bijection (default ``TanhAffine``).
        conditioner: spec of each coupling's conditioner (default ``CouplingNet`` with its
            defaults); ``hidden`` is a shortcut for its hidden sizes.
        seed: seeds the permutations.
        standardize: begin with a fixed ``Standardize`` layer (its statistics are given by
            ``mean`` and ``std``, or loaded with the weights), so that densities are of the
            raw data.
        mean, std: the standardization statistics (weights, not config).

    References:
        Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", ICLR 2017,
        arXiv:1605.08803.

    Example:
        >>> import torch
        >>> from latentflows.flows import ConditionalRealNVP
        >>> flow = ConditionalRealNVP(6, context_size=2, couplings=3, hidden=[16]).eval()
        >>> x, log_prob = flow.sample_and_log_prob(4, torch.tensor([1.0, 0.0]))
        >>> torch.allclose(flow.log_prob(x, torch.tensor([1.0, 0.0])), log_prob, atol=1e-5)
        True
    """

    def __init__(self, features: int, context_size: int = 0, couplings: int = 12, mask: str = "alternate",
                 permute: bool = True, batch_norm: bool = True, bijection: dict | None = None,
                 conditioner: dict | None = None, hidden: Sequence[int] | None = None, seed: int = 0,
                 standardize: bool = False, *, mean: Tensor | None = None, std: Tensor | None = None):
        if couplings < 1:
            raise ValueError(f"couplings must be at least 1, got {couplings}")
        conditioner = dict(conditioner or DEFAULT_CONDITIONER)
        if hidden is not None:
            conditioner["config"] = {**conditioner.get("config", {}), "hidden": list(hidden)}
        bijection = dict(bijection or DEFAULT_BIJECTION)
        layers: list[Transform] = [Standardize(features, mean, std)] if standardize else []
        flip = False
        for i in range(couplings):
            layers.append(Coupling(features, mask, bijection, conditioner, context_size, flip))
            if permute:
                layers.append(RandomPermutation(features, seed=seed * 1_000_003 + i))
            else:
                flip = not flip
            if batch_norm:
                layers.append(InvertibleBatchNorm(features))
        super().__init__(Composite(layers), StandardNormal(features), context_size)
        first = layers[1] if standardize else layers[0]
        self.couplings, self.mask, self.permute, self.batch_norm = couplings, mask, permute, batch_norm
        self.seed, self.standardize = seed, standardize
        self.bijection_spec, self.conditioner_spec = first.get_config()["bijection"], first.get_config()["conditioner"]

    @property
    def head(self) -> Standardize | None:
        """The fixed standardization at the head, if any."""
        return self.transform.transforms[0] if self.standardize else None

    @property
    def body(self) -> Composite:
        """The trainable layers after the head (shares their parameters)."""
        return Composite(list(self.transform.transforms)[1:]) if self.standardize else self.transform

    def get_config(self) -> dict[str, Any]:
        return {"features": self.features, "context_size": self.context_size, "couplings": self.couplings,
                "mask": self.mask, "permute": self.permute, "batch_norm": self.batch_norm,
                "bijection": self.bijection_spec, "conditioner": self.conditioner_spec, "seed": self.seed,
                "standardize": self.standardize}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ConditionalRealNVP":
        return cls(**config)
