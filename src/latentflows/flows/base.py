"""The transform contract shared by every flow layer.

Direction is data -> noise everywhere:
``forward(x, context) -> (z, logabsdet)`` and ``inverse(z, context) -> (x, logabsdet)``,
where ``logabsdet`` has one value per sample: log |det dz/dx| for ``forward`` and
log |det dx/dz| for ``inverse``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..registry import Configurable, deserialize, register, serialize


class Transform(nn.Module, Configurable):
    """An invertible map with a tractable log-determinant."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


@register
class Composite(Transform):
    """Transforms applied in order; inverse applies their inverses in reverse order."""

    def __init__(self, transforms: Sequence[Transform]):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x, context=None):
        total = x.new_zeros(x.shape[0])
        for transform in self.transforms:
            x, logabsdet = transform(x, context)
            total = total + logabsdet
        return x, total

    def inverse(self, z, context=None):
        total = z.new_zeros(z.shape[0])
        for transform in reversed(self.transforms):
            z, logabsdet = transform.inverse(z, context)
            total = total + logabsdet
        return z, total

    def get_config(self):
        return {"transforms": [serialize(t) for t in self.transforms]}

    @classmethod
    def from_config(cls, config):
        return cls([deserialize(spec) for spec in config["transforms"]])


def check_features(x: Tensor, features: int, where: str) -> None:
    if x.dim() != 2 or x.shape[1] != features:
        raise ValueError(f"{where} expects inputs of shape (batch, {features}), got {tuple(x.shape)}")


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """Log-density of a standard normal, summed over the last dimension."""
    return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * torch.log(torch.tensor(2 * torch.pi, dtype=z.dtype)))
