"""A short training loop that a user can read, copy or subclass.

``Trainer.fit`` runs epochs of ``train_step`` over batches, shows the running losses in a
status bar, evaluates on validation batches after each epoch and hands a record of the
epoch to its callbacks. ``compute_loss`` returns a dict of scalar losses whose ``"loss"``
entry is optimized; every other entry is shown and logged beside it.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

LossFn = Callable[[nn.Module, tuple[Tensor, ...]], dict[str, Tensor]]


class Batches:
    """Mini-batches of in-memory tensors, reshuffled each epoch by a seeded generator.

    Slicing tensors that are already in memory costs microseconds, where a DataLoader
    with per-item collation costs far more than the small models it feeds.
    """

    def __init__(self, tensors: Sequence[Tensor], batch_size: int, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.tensors, self.batch_size, self.shuffle, self.drop_last = list(tensors), batch_size, shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.size = len(self.tensors[0])

    def __len__(self) -> int:
        if self.drop_last and self.size >= self.batch_size:
            return self.size // self.batch_size
        return math.ceil(self.size / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        order = torch.randperm(self.size, generator=self.generator) if self.shuffle else None
        for i in range(len(self)):
            start, stop = i * self.batch_size, min((i + 1) * self.batch_size, self.size)
            if order is None:
                yield tuple(t[start:stop] for t in self.tensors)
            else:
                index = order[start:stop]
                yield tuple(t[index] for t in self.tensors)


@dataclass
class EpochRecord:
    stage: str
    epoch: int
    train: dict[str, float]
    val: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        row = {"stage": self.stage, "epoch": self.epoch, "seconds": round(self.seconds, 3)}
        row.update({f"train_{k}": v for k, v in self.train.items()})
        row.update({f"val_{k}": v for k, v in self.val.items()})
        return row


class Callback:
    """Hooks called by ``Trainer.fit``; set ``trainer.stop_training = True`` to stop early."""

    def on_epoch_end(self, trainer: "Trainer", record: EpochRecord) -> None:
        pass


class JsonlLogger(Callback):
    """Appends one JSON line per epoch (losses, seconds) to a file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_epoch_end(self, trainer, record):
        with self.path.open("a") as stream:
            stream.write(json.dumps(record.as_dict()) + "\n")


class Trainer:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn, *,
                 stage: str = "train", callbacks: Sequence[Callback] = (), progress: bool = True,
                 grad_clip: float | None = None, refresh_every: int = 10):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.stage, self.callbacks, self.progress = stage, list(callbacks), progress
        self.grad_clip, self.refresh_every = grad_clip, refresh_every
        self.history: list[EpochRecord] = []
        self.stop_training = False

    def compute_loss(self, batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        return self.loss_fn(self.model, batch)

    def train_step(self, batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        losses = self.compute_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return {name: value.detach() for name, value in losses.items()}

    @torch.no_grad()
    def evaluate(self, batches) -> dict[str, float]:
        self.model.eval()
        totals: dict[str, Tensor] = {}
        count = 0
        for batch in batches:
            n = len(batch[0])
            for name, value in self.compute_loss(batch).items():
                totals[name] = totals.get(name, 0) + value.detach() * n
            count += n
        return {name: float(total / count) for name, total in totals.items()}

    def fit(self, train_batches, epochs: int, val_batches=None) -> list[EpochRecord]:
        from tqdm.auto import tqdm

        for epoch in range(1, epochs + 1):
            self.model.train()
            started = time.perf_counter()
            totals: dict[str, Tensor] = {}
            count = 0
            bar = tqdm(train_batches, desc=f"{self.stage} {epoch}/{epochs}", leave=False,
                       disable=not self.progress, file=sys.stderr, dynamic_ncols=True)
            for step, batch in enumerate(bar, 1):
                n = len(batch[0])
                for name, value in self.train_step(batch).items():
                    totals[name] = totals.get(name, 0) + value * n  # stays a tensor: no host sync per step
                count += n
                if self.progress and step % self.refresh_every == 0:
                    bar.set_postfix({k: f"{float(v / count):.4f}" for k, v in totals.items()})
            bar.close()
            train = {name: float(total / count) for name, total in totals.items()}
            val = self.evaluate(val_batches) if val_batches is not None else {}
            record = EpochRecord(self.stage, epoch, train, val, time.perf_counter() - started)
            self.history.append(record)
            if self.progress:
                shown = " ".join(f"{k}={v:.4f}" for k, v in train.items())
                shown += "".join(f" val_{k}={v:.4f}" for k, v in val.items())
                print(f"{self.stage} epoch {epoch}/{epochs} {shown} ({record.seconds:.1f}s)", file=sys.stderr)
            for callback in self.callbacks:
                callback.on_epoch_end(self, record)
            if self.stop_training:
                break
        return self.history
