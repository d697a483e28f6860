"""Skipping a step whose loss is not finite, decided on the device.

Reading a "was the loss finite?" flag back to the host costs a GPU a synchronisation every
step. The optimizers with a fused kernel (Adam, AdamW, SGD) can instead take the flag as
``found_inf`` and skip on the device, which is how ``torch.amp.GradScaler`` talks to them.
PyTorch exposes that protocol only through private attributes (``_step_supports_amp_scaling``
and ``grad_scale`` / ``found_inf`` set on the optimizer for one ``step``), so this module is
the one place in latentflows that touches them; ``tests/test_runtime.py`` checks the protocol
against the installed torch and fails loudly when it changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` honours a ``found_inf`` flag (the fused Adam, AdamW and SGD).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> w = [nn.Parameter(torch.zeros(2))]
        >>> skips_on_device(torch.optim.Adam(w, fused=True)), skips_on_device(torch.optim.Adam(w))
        (True, False)
    """
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def step_unless(optimizer: torch.optim.Optimizer, skip: Tensor) -> None:
    """``optimizer.step()``, a no-op where the device flag ``skip`` is true, without reading it
    back (only for an optimizer where ``skips_on_device`` is true).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> w = nn.Parameter(torch.ones(1)); w.grad = torch.ones(1)
        >>> optimizer = torch.optim.Adam([w], lr=0.5, fused=True)
        >>> step_unless(optimizer, torch.tensor(True)); w.item()
        1.0
        >>> step_unless(optimizer, torch.tensor(False)); round(w.item(), 4)
        0.5
    """
    fused: Any = optimizer  # grad_scale/found_inf: read by a fused step, absent from torch's Optimizer type
    fused.grad_scale, fused.found_inf = None, skip.float()
    try:
        optimizer.step()
    finally:
        del fused.grad_scale, fused.found_inf


def poison_gradients(parameters: Iterable[nn.Parameter], finite: Tensor) -> None:
    """Make the gradients infinite where the device flag ``finite`` is false, so that a
    ``GradScaler`` skips the step as it skips one that overflowed; unchanged where it is true.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> w = nn.Parameter(torch.zeros(2)); w.grad = torch.ones(2)
        >>> poison_gradients([w], torch.tensor(False)); w.grad.tolist()
        [inf, inf]
    """
    factor = torch.where(finite, 1.0, float("inf"))
    for parameter in parameters:
        if parameter.grad is not None:
            parameter.grad.mul_(factor)
