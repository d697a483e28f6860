"""Training in several processes (GPUs, machines) on Hugging Face Accelerate.

``accelerate launch -m latentflows train ...`` (or ``torchrun``) starts one process per
device; each builds a ``DistributedRuntime``, which Accelerate connects to the others
(NCCL on GPUs, gloo on CPUs). The training loop is the single-process one: the runtime
gives each process its share of every global batch, averages gradients over processes,
synchronises batch-norm statistics, gathers validation figures, and lets only the main
process write files.

Gradients are averaged explicitly after the backward passes (one flattened all-reduce
per update) rather than by wrapping the model in ``DistributedDataParallel``: an objective
with an adversary runs two backward passes over one forward pass, each reaching only its
own update's parameters, which DDP's one-forward-one-backward contract does not allow.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch
from torch import Tensor, nn

from .errors import LatentflowsError
from .extras import require
from .runtime import Runtime


def launched_processes() -> int:
    """How many processes the launcher (accelerate, torchrun) started: ``WORLD_SIZE``, else 1.

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"WORLD_SIZE": "4"}):
        ...     launched_processes()
        4
    """
    return int(os.environ.get("WORLD_SIZE", "1"))


class DistributedRuntime(Runtime):
    """A ``Runtime`` for one of several processes started by ``accelerate launch`` or ``torchrun``.

    Args:
        device: ``"auto"`` (this process's GPU, else the CPU) or ``"cpu"``; a process never
            chooses another process's GPU.
        precision, deterministic: as for ``Runtime``.

    References:
        Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training",
        VLDB 2020, arXiv:2006.15704; Goyal et al., "Accurate, Large Minibatch SGD", arXiv:1706.02677
        (a global batch split over processes, gradients averaged).

    Example (two processes on the CPU):
        ``accelerate launch --cpu --num_processes 2 -m latentflows train --device cpu --out runs/a``
    """

    def __init__(self, device: str | torch.device | None = "auto", precision: str = "fp32",
                 deterministic: bool = False):
        PartialState = require("accelerate", "distributed").PartialState
        if device not in (None, "auto", "cpu") and not str(device).startswith("cuda"):
            raise ValueError(f"device {device!r}: several processes train on CUDA GPUs or on the CPU")
        self.state = PartialState(cpu=str(device) == "cpu")
        # Ends the process group while Python is still whole: left to interpreter teardown, gloo's
        # worker threads abort the process now and then (SIGABRT, "terminate called without an
        # active exception"), failing a run that had finished. Registered once per process.
        atexit.unregister(_end_process_group)
        atexit.register(_end_process_group, self.state)
        super().__init__(self.state.device, precision, deterministic)

    @property
    def is_main_process(self) -> bool:
        return self.state.is_main_process

    @property
    def world_size(self) -> int:
        return self.state.num_processes

    @property
    def rank(self) -> int:
        return self.state.process_index

    def __repr__(self) -> str:
        return (f"DistributedRuntime(device={str(self.device)!r}, rank={self.rank}, world_size={self.world_size}, "
                f"precision={self.precision!r})")

    def barrier(self) -> None:
        self.state.wait_for_everyone()

    def main_process_first(self) -> Any:
        return self.state.main_process_first()

    def prepare(self, model: nn.Module) -> nn.Module:
        """Every process starts from the main process's weights; batch norms see the global batch
        (``SyncBatchNorm`` on GPUs; the flow's invertible batch norm all-reduces its statistics)."""
        if self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        for module in model.modules():
            if hasattr(module, "synchronize"):  # InvertibleBatchNorm, ActNorm, ContextAffine
                setattr(module, "synchronize", True)
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                torch.distributed.broadcast(tensor.data, src=0)
        return model

    def shard(self, batches: Any) -> Any:
        """This process's rows of every global batch (``Batches.shard``)."""
        if not hasattr(batches, "sharded"):
            raise LatentflowsError(f"{type(batches).__name__} cannot be split over processes; use latentflows "
                                   "Batches")
        return batches.sharded(self.rank, self.world_size)

    def sync_gradients(self, parameters: list[nn.Parameter]) -> None:
        """Average the gradients over processes: one all-reduce of all of them, flattened."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch._utils._flatten_dense_tensors(grads)
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        for grad, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            grad.copy_(synced)

    def all_true(self, flag: Tensor) -> Tensor:
        """Whether ``flag`` holds in every process (an all-reduce, no host sync)."""
        value = flag.float().reshape(1)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        return value[0] > 0

    def compute(self, metric: Any, sync: bool = True) -> Tensor:
        """A streaming metric's value over every process's updates (or this process's alone)."""
        if not sync:
            return metric.compute()
        with metric.sync_context(should_sync=True, distributed_available=lambda: True):
            return metric.compute()

    def reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        names = sorted(values)
        tensor = torch.tensor([values[n] for n in names], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return dict(zip(names, (tensor / self.world_size).tolist()))


def as_runtime(device: str | torch.device | Runtime | None = "auto", precision: str = "fp32",
               deterministic: bool = False) -> Runtime:
    """A ``Runtime`` from what an API call was given: a runtime itself, or a device name (in a
    process started by ``accelerate launch`` or ``torchrun`` with several processes, a
    ``DistributedRuntime``). It is here, above both classes, so that ``runtime`` never imports
    this module.

    Example:
        >>> as_runtime("cpu", "bf16")
        Runtime(device='cpu', precision='bf16', deterministic=False)
    """
    if isinstance(device, Runtime):
        return device
    if launched_processes() > 1:
        return DistributedRuntime(device, precision, deterministic)
    return Runtime(device, precision, deterministic)


def _end_process_group(state: Any) -> None:
    state.destroy_process_group()  # a no-op when it is already gone


def broadcast_from_main(*tensors: Tensor) -> None:
    """Overwrite ``tensors`` in place with the main process's (a data-dependent initialisation
    computed on each process's own first batch becomes the same everywhere); alone: nothing."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for tensor in tensors:
            torch.distributed.broadcast(tensor.data, src=0)


def all_reduce_statistics(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and biased variance of ``x``'s rows over every process, with gradients, and the
    global number of rows (a tensor: nothing is read back to the host). Two all-reduces:
    the mean first, then the squared deviations from it, as one process computes them.

    Example (one process: the usual statistics):
        >>> import torch
        >>> mean, var, n = all_reduce_statistics(torch.tensor([[1.0], [3.0]]))
        >>> mean.tolist(), var.tolist(), n.item()
        ([2.0], [1.0], 2.0)
    """
    count = torch.full((1,), float(x.shape[0]), device=x.device)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x.mean(0), x.var(0, unbiased=False), count
    torch.distributed.all_reduce(count)
    mean = _SumOverProcesses.apply(x.sum(0)) / count
    var = _SumOverProcesses.apply((x - mean).pow(2).sum(0)) / count
    return mean, var, count


class _SumOverProcesses(torch.autograd.Function):
    """The sum of a tensor over processes; its gradient is the sum of the processes' gradients
    (every process's output depends on every process's input)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        tensor = tensor.clone()
        torch.distributed.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad
