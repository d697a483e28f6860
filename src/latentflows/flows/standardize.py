"""A fixed affine map ``(x - mean) / std``: the head of a flow over raw embeddings."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..registry import register
from .base import Transform, check_features


@register
class Standardize(Transform):
    """Subtract a fixed mean and divide by a fixed standard deviation, feature by feature.

    The statistics are buffers (saved with the weights, never trained). At the head of a
    flow it lets the flow's density be that of the raw embeddings, while the layers after
    it see data at unit scale; its log-determinant is the constant ``-sum(log std)``.

    Args:
        features: number of features.
        mean, std: the statistics (default 0 and 1: the identity until weights are loaded).

    Example:
        >>> import torch
        >>> from latentflows.flows import Standardize
        >>> layer = Standardize(2, mean=torch.tensor([1.0, 2.0]), std=torch.tensor([2.0, 4.0]))
        >>> z, logabsdet = layer(torch.tensor([[3.0, 6.0]]))
        >>> z.tolist(), round(logabsdet.item(), 4)
        ([[1.0, 1.0]], -2.0794)
    """

    def __init__(self, features: int, mean: Tensor | None = None, std: Tensor | None = None):
        super().__init__()
        self.features = features
        mean = torch.zeros(features) if mean is None else torch.as_tensor(mean, dtype=torch.float32).detach().clone()
        std = torch.ones(features) if std is None else torch.as_tensor(std, dtype=torch.float32).detach().clone()
        if mean.shape != (features,) or std.shape != (features,):
            raise ValueError(f"mean and std must have shape ({features},), got {tuple(mean.shape)}, {tuple(std.shape)}")
        if not bool((std > 0).all()):
            raise ValueError("every std must be positive")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    @classmethod
    def fit(cls, x: Tensor, eps: float = 1e-8) -> "Standardize":
        """The standardization of ``x``'s features (std plus ``eps``, so constant features work)."""
        return cls(x.shape[1], x.mean(0), x.std(0) + eps)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(x, self.features, "Standardize")
        return (x - self.mean) / self.std, (-self.std.log().sum()).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(z, self.features, "Standardize")
        return z * self.std + self.mean, self.std.log().sum().expand(z.shape[0])

    def get_config(self) -> dict[str, Any]:
        return {"features": self.features}
