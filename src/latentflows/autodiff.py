"""Autodiff utilities: exact Jacobians and log-determinants of transforms, for checking flows."""

from __future__ import annotations

import torch
from torch import Tensor

from .flows.batchnorm import held_batch_statistics


def jacobian_logabsdet(transform, x: Tensor, context: Tensor | None = None,
                       direction: str = "forward") -> tuple[Tensor, Tensor]:
    """Per-sample Jacobians (batch, d, d) and log|det| (batch,) of ``transform``.

    Computed with ``torch.autograd.functional.jacobian`` one sample at a time. A
    training-mode transform is first run on the whole batch and its batch-norm
    statistics are then held fixed, so each sample sees the same function as in that pass.
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

            def single(v, row_context=row_context):
                return apply(v.unsqueeze(0), row_context)[0].squeeze(0)

            jacobians.append(torch.autograd.functional.jacobian(single, x[i]))
    jacobian = torch.stack(jacobians)
    return jacobian, torch.linalg.slogdet(jacobian).logabsdet


class StableSoftplus(torch.autograd.Function):
    """softplus(x) = log(1 + e^x), computed without overflow and with its own backward.

    The naive ``log(exp(x) + 1)`` gives inf at x = 100 and a NaN gradient; here the value is
    ``max(x, 0) + log1p(exp(-|x|))`` and the gradient is ``sigmoid(x)``, exact everywhere.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * torch.sigmoid(x)


def stable_softplus(x: Tensor) -> Tensor:
    return StableSoftplus.apply(x)


def naive_softplus(x: Tensor) -> Tensor:
    """The textbook formula, kept to show (and test) why ``stable_softplus`` exists."""
    return torch.log(torch.exp(x) + 1.0)
