"""A fixed random permutation of the features: mixes which half a coupling transforms."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..registry import register
from .base import Transform, check_features


class _PermuteColumns(torch.autograd.Function):
    """``x[:, index]`` for a permutation ``index``, whose gradient is a gather by the inverse
    permutation: autograd's own backward of an indexing is an accumulating ``index_put``,
    which on a CPU took a fifth of a RealNVP training step."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, index: Tensor, inverse_index: Tensor) -> Tensor:
        ctx.save_for_backward(inverse_index)
        return x.index_select(1, index)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (inverse_index,) = ctx.saved_tensors
        return permute_columns(grad, inverse_index, None), None, None


def permute_columns(x: Tensor, index: Tensor, inverse_index: Tensor | None) -> Tensor:
    """The columns of ``x`` (batch, features) in the order ``index``, a permutation whose
    inverse is ``inverse_index``; differentiable, its gradient a gather too.

    Example:
        >>> x = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
        >>> y = permute_columns(x, torch.tensor([2, 0, 1]), torch.tensor([1, 2, 0]))
        >>> y.tolist(), torch.autograd.grad(y, x, torch.tensor([[10.0, 20.0, 30.0]]))[0].tolist()
        ([[3.0, 1.0, 2.0]], [[20.0, 30.0, 10.0]])
    """
    if inverse_index is None or not (torch.is_grad_enabled() and x.requires_grad):
        return x.index_select(1, index)  # no gradient to take (sampling, an exported graph)
    return _PermuteColumns.apply(x, index, inverse_index)


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

    permutation: Tensor
    inverse_permutation: Tensor

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
        return permute_columns(x, self.permutation, self.inverse_permutation), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(z, self.features, "RandomPermutation")
        return permute_columns(z, self.inverse_permutation, self.permutation), z.new_zeros(z.shape[0])

    def get_config(self) -> dict[str, Any]:
        return {"features": self.features, "seed": self.seed}
