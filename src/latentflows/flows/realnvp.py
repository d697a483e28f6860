"""Conditional RealNVP (Dinh et al., arXiv:1605.08803) on embedding vectors, over a standard normal base.

An optional fixed standardization comes first; then each block is a coupling, then a
mixing layer (a random permutation, or a learned ``LULinear``; without one, the next
coupling flips its mask), then a normalization layer (invertible batch norm or ActNorm).
Optionally a first ``ContextAffine`` layer gives each class its own mean and scale.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from ..registry import register
from .base import Composite, Transform
from .batchnorm import InvertibleBatchNorm
from .coupling import DEFAULT_CONDITIONER, Coupling
from .distributions import StandardNormal
from .flow import StandardizedFlow
from .linear import ActNorm, ContextAffine, LULinear
from .permutation import RandomPermutation
from .standardize import ClassWhitening, Standardize

DEFAULT_BIJECTION = {"class": "TanhAffine", "config": {}}
MIXINGS = ("permutation", "lu", "none")
NORMALIZATIONS = ("batchnorm", "actnorm", "none")


def _check_kind(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


@register
class ConditionalRealNVP(StandardizedFlow):
    """RealNVP with a context (e.g. a one-hot class) fed to every coupling's conditioner.

    Args:
        features: number of features.
        context_size: size of the context vector; 0 for an unconditional flow.
        couplings: number of coupling layers.
        mask: ``"alternate"`` or ``"half"`` (see ``coupling_mask``).
        bijection: spec of each coupling's element-wise bijection (default ``TanhAffine``).
        conditioner: spec of each coupling's conditioner (default ``CouplingNet`` with its
            defaults); ``hidden`` is a shortcut for its hidden sizes.
        seed: seeds the permutations.
        standardize: begin with a fixed ``Standardize`` layer (its statistics are given by
            ``mean`` and ``std``, or loaded with the weights), so that densities are of the
            raw data.
        mixing: the layer after each coupling: ``"permutation"`` (a seeded random
            permutation, the default), ``"lu"`` (a learned ``LULinear``, started at a seeded
            random orthogonal matrix) or ``"none"`` (then the masks alternate between the two
            halves from one coupling to the next).
        normalization: the layer after each mixing layer: ``"batchnorm"``
            (``InvertibleBatchNorm``, the default), ``"actnorm"`` (``ActNorm``) or ``"none"``.
        class_affine: begin (after the standardization) with a ``ContextAffine`` layer: a
            mean and scale per class, set from the first batch and trained, so that the class
            moves every sample directly.
        class_whitening: begin (after the standardization) with a ``ClassWhitening`` layer
            fitted to the training data: the flow starts as one full-covariance Gaussian per
            class, and its couplings learn what those miss.
        mean, std: the standardization statistics (weights, not config).

    References:
        Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", ICLR 2017,
        arXiv:1605.08803; Kingma, Dhariwal, "Glow", NeurIPS 2018, arXiv:1807.03039 (ActNorm,
        LU-parametrized mixing).

    Example:
        >>> import torch
        >>> from latentflows.flows import ConditionalRealNVP
        >>> flow = ConditionalRealNVP(6, context_size=2, couplings=3, hidden=[16]).eval()
        >>> x, log_prob = flow.sample_and_log_prob(4, torch.tensor([1.0, 0.0]))
        >>> torch.allclose(flow.log_prob(x, torch.tensor([1.0, 0.0])), log_prob, atol=1e-5)
        True
        >>> glow_like = ConditionalRealNVP(6, 2, couplings=2, hidden=[16], mixing="lu", normalization="actnorm",
        ...                                bijection={"class": "RationalQuadraticSpline", "config": {"bins": 4}})
        >>> [type(layer).__name__ for layer in glow_like.transform.transforms][:3]
        ['Coupling', 'LULinear', 'ActNorm']
    """

    def __init__(self, features: int, context_size: int = 0, couplings: int = 12, mask: str = "alternate",
                 bijection: dict | None = None, conditioner: dict | None = None,
                 hidden: Sequence[int] | None = None, seed: int = 0, standardize: bool = False,
                 mixing: str = "permutation", normalization: str = "batchnorm", class_affine: bool = False,
                 class_whitening: bool = False, *, mean: Tensor | None = None, std: Tensor | None = None):
        if couplings < 1:
            raise ValueError(f"couplings must be at least 1, got {couplings}")
        mixing = _check_kind("mixing", mixing, MIXINGS)
        normalization = _check_kind("normalization", normalization, NORMALIZATIONS)
        conditioner = dict(conditioner or DEFAULT_CONDITIONER)
        if hidden is not None:
            conditioner["config"] = {**conditioner.get("config", {}), "hidden": list(hidden)}
        bijection = dict(bijection or DEFAULT_BIJECTION)
        layers: list[Transform] = [Standardize(features, mean, std)] if standardize else []
        if class_whitening:
            layers.append(ClassWhitening(features, context_size))
        if class_affine:
            layers.append(ContextAffine(features, context_size))
        flip = False
        for i in range(couplings):
            layers.append(Coupling(features, mask, bijection, conditioner, context_size, flip))
            if mixing == "permutation":
                layers.append(RandomPermutation(features, seed=seed * 1_000_003 + i))
            elif mixing == "lu":
                layers.append(LULinear(features, seed=seed * 1_000_003 + i))
            else:
                flip = not flip
            if normalization == "batchnorm":
                layers.append(InvertibleBatchNorm(features))
            elif normalization == "actnorm":
                layers.append(ActNorm(features))
        super().__init__(Composite(layers), StandardNormal(features), context_size)
        first = next(layer for layer in layers if isinstance(layer, Coupling))
        self.couplings, self.mask = couplings, mask
        self.seed, self.standardize, self.mixing, self.normalization = seed, standardize, mixing, normalization
        self.class_affine, self.class_whitening = class_affine, class_whitening
        self.bijection_spec, self.conditioner_spec = first.get_config()["bijection"], first.get_config()["conditioner"]

    def get_config(self) -> dict[str, Any]:
        config = {"features": self.features, "context_size": self.context_size, "couplings": self.couplings,
                  "mask": self.mask, "mixing": self.mixing, "normalization": self.normalization,
                  "bijection": self.bijection_spec, "conditioner": self.conditioner_spec, "seed": self.seed,
                  "standardize": self.standardize}
        if self.class_affine:
            config["class_affine"] = True
        if self.class_whitening:
            config["class_whitening"] = True
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ConditionalRealNVP":
        return cls(**config)
