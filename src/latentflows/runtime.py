"""Where and how tensors are computed: device and precision, in one object.

The trainer, the stages and the pipeline ask the ``Runtime`` to move batches, build
metrics and enter autocast, instead of deciding it themselves. A later distributed
strategy (several processes) extends this class rather than every loop.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Iterator, Sequence

import torch
from torch import Tensor

# fp16 needs loss scaling (a GradScaler) to train safely; it is left out until the trainer has one
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple's MPS, then the CPU; anything else is checked.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but this torch build sees no CUDA GPU; use the cpu device")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} was asked for, but MPS is not available here; use the cpu device")
    return resolved


class Runtime:
    """Device and numeric precision of a training or inference run.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a ``torch.device``.
        precision: ``"fp32"`` or ``"bf16"`` (autocast for the parts of a model
            that allow it; flow log-determinants stay in fp32).

    Example:
        >>> import torch
        >>> runtime = Runtime("cpu")
        >>> images, labels = runtime.move((torch.zeros(2, 3), torch.tensor([0, 1])))
        >>> images.device, runtime.precision
        (device(type='cpu'), 'fp32')
    """

    def __init__(self, device: str | torch.device | None = "auto", precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        self.device = resolve_device(device)
        self.precision = precision

    def __repr__(self) -> str:
        return f"Runtime(device={str(self.device)!r}, precision={self.precision!r})"

    def move(self, batch: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """The batch's tensors on this device (no copy when they are already there)."""
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def tensor(self, value: Any, dtype: torch.dtype | None = None) -> Tensor:
        """A new tensor on this device."""
        return torch.as_tensor(value, dtype=dtype, device=self.device)

    def metric(self, metric: Any) -> Any:
        """A torchmetrics ``Metric`` with its state on this device."""
        return metric.to(self.device)

    @property
    def accumulate_dtype(self) -> torch.dtype:
        """float64 for running sums where the device has it (MPS does not)."""
        return torch.float32 if self.device.type == "mps" else torch.float64

    def autocast(self, enabled: bool = True) -> ContextManager:
        """Autocast to the chosen precision (a no-op for fp32 or ``enabled=False``)."""
        dtype = PRECISIONS[self.precision]
        if dtype is None or not enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def generator(self, seed: int) -> torch.Generator:
        """A seeded CPU generator: the same draws on every device, moved where they are used."""
        return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def evaluation_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Put modules in eval mode for the block, then give each back the mode it had.

    Example:
        >>> from torch import nn
        >>> layer = nn.Dropout().train()
        >>> with evaluation_mode(layer):
        ...     layer.training
        False
        >>> layer.training
        True
    """
    states = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, training in states:
            module.training = training
