"""Callbacks of ``Trainer.fit``: logging, checkpoints, early stopping, schedules.

A callback with state to keep across an interruption has ``state()`` / ``load_state()``;
the checkpoint stores that state under the callback's ``name``, so adding or reordering
callbacks never hands one callback another's state.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor, nn

from ..storage import load_safetensors, save_safetensors

CHECKPOINT_FORMAT = "latentflows-checkpoint"


@dataclass
class EpochRecord:
    """What one epoch produced: mean training losses and metrics, validation figures, seconds."""

    stage: str
    epoch: int
    train: dict[str, float]
    val: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"stage": self.stage, "epoch": self.epoch, "seconds": round(self.seconds, 3)}
        row.update({f"train_{k}": v for k, v in self.train.items()})
        row.update({f"val_{k}": v for k, v in self.val.items()})
        return row


class Loop(Protocol):
    """What a callback may use of the loop that calls it (a ``Trainer``). Callbacks depend on
    this, not on ``trainer.py``, which imports them."""

    model: nn.Module
    stage: str
    stop_training: bool

    def training_state(self) -> tuple[dict[str, Tensor], dict[str, str]]: ...


class Callback:
    """Hooks called by ``Trainer.fit``; set ``trainer.stop_training = True`` to stop early.

    ``name`` keys the callback's saved state in checkpoints (default: the class name).

    Example:
        >>> class PrintEpoch(Callback):
        ...     def on_epoch_end(self, trainer, record):
        ...         print(record.epoch, sorted(record.train))
    """

    @property
    def name(self) -> str:
        return type(self).__name__

    def on_epoch_end(self, trainer: Loop, record: EpochRecord) -> None:
        pass

    def on_train_end(self, trainer: Loop) -> None:
        pass


class StepSchedule(Callback):
    """Step an epoch-based learning-rate scheduler (``torch.optim.lr_scheduler``) after each epoch.

    Args:
        scheduler: the scheduler to step.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
        >>> schedule = StepSchedule(torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5))
        >>> optimizer.step()  # an epoch of training
        >>> schedule.on_epoch_end(None, None)
        >>> optimizer.param_groups[0]["lr"]
        0.5
    """

    def __init__(self, scheduler: Any):
        self.scheduler = scheduler

    def on_epoch_end(self, trainer: Loop, record: EpochRecord) -> None:
        self.scheduler.step()


class CosineLearningRate(Callback):
    """Anneal each optimizer's learning rate from its start value to ``final`` times it, on a cosine.

    The rate of epoch ``e + 1`` is set at the end of epoch ``e`` from the epoch number alone,
    so a resumed run continues the same curve (the optimizers' saved state holds the rate).

    Args:
        optimizers: the optimizers to anneal.
        lr: the learning rate of the first epoch.
        epochs: the epochs of the whole run.
        final: the last epoch's rate, as a fraction of ``lr``.

    References:
        Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017,
        arXiv:1608.03983.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
        >>> schedule = CosineLearningRate([optimizer], lr=1.0, epochs=3, final=0.0)
        >>> schedule.on_epoch_end(None, EpochRecord("autoencoder", 1, {}))
        >>> optimizer.param_groups[0]["lr"]
        0.5
    """

    def __init__(self, optimizers: list[Any], lr: float, epochs: int, final: float = 0.01):
        self.optimizers, self.lr, self.epochs, self.final = list(optimizers), lr, epochs, final

    def rate(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (1-based)."""
        progress = (epoch - 1) / max(self.epochs - 1, 1)
        return self.lr * (self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    def on_epoch_end(self, trainer: Loop, record: EpochRecord) -> None:
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = self.rate(record.epoch + 1)


class JsonlLogger(Callback):
    """Appends one JSON line per epoch (losses, metrics, seconds) to a file.

    Args:
        path: the ``.jsonl`` file (created if missing, appended to otherwise).

    Example:
        >>> import json, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
        >>> JsonlLogger(path).on_epoch_end(None, EpochRecord("flow", 1, {"loss": 2.5}))
        >>> json.loads(path.read_text())
        {'stage': 'flow', 'epoch': 1, 'seconds': 0.0, 'train_loss': 2.5}
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_epoch_end(self, trainer: Loop, record: EpochRecord) -> None:
        with self.path.open("a") as stream:
            stream.write(json.dumps(record.as_dict()) + "\n")


class Checkpoint(Callback):
    """Saves the whole training state every ``every`` epochs, so training can resume.

    The file (safetensors) holds the model's weights and buffers, each optimizer's state,
    the random number generators' states and the callbacks' states; the header records stage
    and epoch. Each write goes to a temporary file that is renamed into place, so a crash
    mid-write leaves the previous checkpoint intact. Put it last among the callbacks: it
    records the others' state.

    Args:
        path: the checkpoint file.
        every: epochs between saves.

    Example:
        >>> import tempfile, pathlib, torch
        >>> from torch import nn
        >>> from latentflows.training import Batches, Trainer, adam
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.safetensors"
        >>> model = nn.Linear(1, 1)
        >>> loss_fn = lambda m, batch: {"loss": m(batch[0]).pow(2).mean()}
        >>> trainer = Trainer(model, adam(model.parameters(), 1e-2), loss_fn, callbacks=[Checkpoint(path)], progress=False)
        >>> _ = trainer.fit(Batches([torch.ones(4, 1)], 2), epochs=2)
        >>> read_checkpoint(path)[1]["epoch"]
        '2'
    """

    def __init__(self, path: str | Path, every: int = 1):
        if every < 1:
            raise ValueError(f"checkpoint interval must be at least 1 epoch, got {every}")
        self.path, self.every = Path(path), every

    def on_epoch_end(self, trainer: Loop, record: EpochRecord) -> None:
        if record.epoch % self.every == 0:
            tensors, metadata = trainer.training_state()
            save_safetensors(self.path, tensors, CHECKPOINT_FORMAT,
                             {**metadata, "stage": record.stage, "epoch": str(record.epoch)})


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and header of a ``Checkpoint`` file."""
    return load_safetensors(path, CHECKPOINT_FORMAT)


def load_checkpoint(path: str | Path, model: nn.Module) -> dict[str, str]:
    """Load the model weights of a ``Checkpoint`` file into ``model``; returns its header."""
    tensors, metadata = read_checkpoint(path)
    model.load_state_dict(unprefix(tensors, "model."))
    return metadata


def unprefix(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries whose key starts with ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


class EarlyStopping(Callback):
    """Stop when the monitored validation value has not improved for ``patience`` epochs.

    Args:
        monitor: the validation figure to watch (lower is better).
        patience: epochs without improvement before stopping.
        min_delta: the smallest change that counts as an improvement.
        restore_best: end with the weights (and buffers) of the best epoch.

    Example:
        >>> stop = EarlyStopping(patience=2, restore_best=False)
        >>> class Loop:  # stands in for a Trainer
        ...     stop_training = False
        >>> loop = Loop()
        >>> for epoch, value in enumerate([3.0, 2.0, 2.5, 2.4], 1):
        ...     stop.on_epoch_end(loop, EpochRecord("flow", epoch, {}, {"loss": value}))
        >>> stop.best_epoch, loop.stop_training
        (2, True)
    """

    def __init__(self, monitor: str = "loss", patience: int = 10, min_delta: float = 0.0, restore_best: bool = True):
        self.monitor, self.patience, self.min_delta, self.restore_best = monitor, patience, min_delta, restore_best
        self.best = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, Tensor] | None = None

    def on_epoch_end(self, trainer: Loop, record: EpochRecord) -> None:
        value = record.val.get(self.monitor)
        if value is None:
            raise ValueError(f"EarlyStopping monitors val {self.monitor!r}, but validation gave {sorted(record.val)}")
        if value < self.best - self.min_delta:
            self.best, self.best_epoch = value, record.epoch
            if self.restore_best:
                self.best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        elif record.epoch - self.best_epoch >= self.patience:
            trainer.stop_training = True

    def on_train_end(self, trainer: Loop) -> None:
        if self.restore_best and self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)

    def state(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        tensors = {f"best.{k}": v for k, v in (self.best_state or {}).items()}
        return tensors, {"best": repr(self.best), "best_epoch": str(self.best_epoch)}

    def load_state(self, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
        self.best, self.best_epoch = float(metadata["best"]), int(metadata["best_epoch"])
        best = unprefix(tensors, "best.")
        self.best_state = best or None
