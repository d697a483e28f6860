"""Custom gradients: a softplus with its own exact backward.

Exact Jacobians of flow layers (for checking log-determinants) are in
``latentflows.flows.checks.jacobian_logabsdet``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class StableSoftplus(torch.autograd.Function):
    """softplus(x) = log(1 + e^x), computed without overflow and with its own backward.

    The naive ``log(exp(x) + 1)`` gives inf at x = 100 and a NaN gradient; here the value is
    ``max(x, 0) + log1p(exp(-|x|))`` and the gradient is ``sigmoid(x)``, exact everywhere.

    Example:
        >>> import torch
        >>> x = torch.tensor([100.0], requires_grad=True)
        >>> StableSoftplus.apply(x).backward()
        >>> x.grad.item()
        1.0
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * torch.sigmoid(x)


def stable_softplus(x: Tensor) -> Tensor:
    """``StableSoftplus.apply(x)``."""
    return StableSoftplus.apply(x)


def naive_softplus(x: Tensor) -> Tensor:
    """The textbook formula, kept to show (and test) why ``stable_softplus`` exists."""
    return torch.log(torch.exp(x) + 1.0)
