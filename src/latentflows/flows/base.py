"""The transform contract shared by every flow layer.

Direction is data -> noise everywhere:
``forward(x, context) -> (z, logabsdet)`` and ``inverse(z, context) -> (x, logabsdet)``,
where ``logabsdet`` has one value per sample: log |det dz/dx| for ``forward`` and
log |det dx/dz| for ``inverse``.
"""

from __future__ import annotations

from typing import Any, Sequence, cast

import torch
from torch import Tensor, nn

from ..registry import Configurable, deserialize, register, serialize


class Transform(nn.Module, Configurable):
    """An invertible map with a tractable log-determinant, in the data -> noise direction.

    Subclasses implement ``forward(x, context) -> (z, logabsdet)`` and
    ``inverse(z, context) -> (x, logabsdet)`` with one log-determinant per sample, and
    ``get_config`` so that ``@register`` can save and rebuild them by name.

    Example:
        >>> import torch
        >>> from latentflows.flows import RandomPermutation
        >>> layer = RandomPermutation(4, seed=1)
        >>> z, logabsdet = layer(torch.arange(8.0).view(2, 4))
        >>> x, _ = layer.inverse(z)
        >>> x.tolist(), logabsdet.tolist()
        ([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]], [0.0, 0.0])
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


@register
class Composite(Transform):
    """Transforms applied in order; the inverse applies their inverses in reverse order.

    Args:
        transforms: the layers, first applied first in the data -> noise direction.

    Example:
        >>> import torch
        >>> from latentflows.flows import Composite, InvertibleBatchNorm, RandomPermutation
        >>> flow = Composite([RandomPermutation(3), InvertibleBatchNorm(3)]).eval()
        >>> x = torch.randn(5, 3)
        >>> z, logabsdet = flow(x)
        >>> torch.allclose(flow.inverse(z)[0], x, atol=1e-6)
        True
    """

    def __init__(self, transforms: Sequence[Transform]):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for transform in self.transforms:
            x, logabsdet = transform(x, context)
            total = total + logabsdet
        return x, total

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[0])
        for transform in reversed(self.transforms):
            z, logabsdet = cast(Transform, transform).inverse(z, context)
            total = total + logabsdet
        return z, total

    def get_config(self) -> dict[str, Any]:
        return {"transforms": [serialize(cast(Transform, t)) for t in self.transforms]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Composite":
        return cls([deserialize(spec, Transform) for spec in config["transforms"]])


def check_features(x: Tensor, features: int, where: str) -> None:
    """Raise a clear error unless ``x`` is a (batch, features) matrix."""
    if x.dim() != 2 or x.shape[1] != features:
        raise ValueError(f"{where} expects inputs of shape (batch, {features}), got {tuple(x.shape)}")


def class_labels(x: Tensor, context: Tensor | None, classes: int, where: str) -> Tensor:
    """The class of each row of ``x`` from its one-hot ``context``, with a clear error otherwise."""
    if context is None or context.shape != (x.shape[0], classes):
        got = None if context is None else tuple(context.shape)
        raise ValueError(f"{where} needs a one-hot context of shape (batch, {classes}), got {got}")
    return context.argmax(1)


def per_class_matmul(matrices: Tensor, x: Tensor, labels: Tensor) -> Tensor:
    """Row ``b`` times ``matrices[labels[b]]``: every class's map on the whole batch, then each
    row's own, with no boolean indexing (no host sync per step on a GPU; C small products).

    Example:
        >>> import torch
        >>> per_class_matmul(torch.stack([torch.eye(2), 2 * torch.eye(2)]), torch.ones(2, 2), torch.tensor([1, 0]))
        tensor([[2., 2.],
                [1., 1.]])
    """
    return torch.einsum("cij,bj->cbi", matrices, x)[labels, torch.arange(x.shape[0], device=x.device)]
