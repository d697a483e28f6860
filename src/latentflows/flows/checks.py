"""Exact Jacobians of transforms, for checking log-determinants (used by the tests)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .batchnorm import held_batch_statistics

if TYPE_CHECKING:  # pragma: no cover
    from .base import Transform


def jacobian_logabsdet(transform: Transform, x: Tensor, context: Tensor | None = None,
                       direction: str = "forward") -> tuple[Tensor, Tensor]:
    """Per-sample Jacobians (batch, d, d) and log|det| (batch,) of ``transform``.

    Computed with ``torch.autograd.functional.jacobian`` one sample at a time. A
    training-mode transform is first run on the whole batch and its batch-norm
    statistics are then held fixed, so each sample sees the same function as in that pass.

    Example:
        >>> import torch
        >>> from latentflows.flows import Standardize, jacobian_logabsdet
        >>> layer = Standardize(2, mean=torch.zeros(2), std=torch.tensor([2.0, 4.0]))
        >>> jacobian, logabsdet = jacobian_logabsdet(layer, torch.randn(3, 2))
        >>> torch.allclose(logabsdet, layer(torch.randn(3, 2))[1])
        True
    """
    if direction not in ("forward", "inverse"):
        raise ValueError(f"direction must be 'forward' or 'inverse', got {direction!r}")
    apply = transform if direction == "forward" else transform.inverse
    with torch.no_grad():
        apply(x, context)  # sets the batch statistics that are held below
    jacobians = []
    with held_batch_statistics(transform):
        for i in range(x.shape[0]):
            row_context = None if context is None else context[i : i + 1]

            def single(v: Tensor, row_context: Tensor | None = row_context) -> Tensor:
                return apply(v.unsqueeze(0), row_context)[0].squeeze(0)

            jacobians.append(torch.autograd.functional.jacobian(single, x[i]))
    jacobian = torch.stack(jacobians)
    return jacobian, torch.linalg.slogdet(jacobian).logabsdet
