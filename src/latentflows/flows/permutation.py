"""A fixed random permutation of the features: mixes which half a coupling transforms."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..registry import register
from .base import Transform, check_features


@register
class RandomPermutation(Transform):
    """A fixed random permutation of the features, so that successive couplings transform different ones.

    Volume-preserving (logabsdet 0); the permutation is a buffer, saved with the weights.

    Args:
        features: number of features.
        seed: seeds the permutation.

    Example:
        >>> import torch
        >>> layer = RandomPermutation(3, seed=0)
        >>> z, logabsdet = layer(torch.tensor([[1.0, 2.0, 3.0]]))
        >>> sorted(z[0].tolist()), layer.inverse(z)[0].tolist(), logabsdet.tolist()
        ([1.0, 2.0, 3.0], [[1.0, 2.0, 3.0]], [0.0])
    """

    def __init__(self, features: int, seed: int = 0):
        super().__init__()
        self.features = features
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        permutation = torch.randperm(features, generator=generator)
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(x, self.features, "RandomPermutation")
        return x[:, self.permutation], x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(z, self.features, "RandomPermutation")
        return z[:, self.inverse_permutation], z.new_zeros(z.shape[0])

    def get_config(self) -> dict[str, Any]:
        return {"features": self.features, "seed": self.seed}
