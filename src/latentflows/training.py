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
from torchmetrics import Metric

from .errors import LatentflowsError
from .layers import apply_constraints, pop_auxiliary_losses, regularization_loss
from .metrics import MeanMetric
from .storage import load_safetensors, save_safetensors

CHECKPOINT_FORMAT = "latentflows-checkpoint"


class NonFiniteLossError(LatentflowsError):
    """Training produced NaN or infinite losses too many times in a row."""

LossFn = Callable[[nn.Module, tuple[Tensor, ...]], dict[str, Tensor]]


def adam(parameters, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam with the fused kernel where available: one kernel for all parameters instead of a
    Python loop over them (+15% flow steps per second at batch 32 on CPU, see bench/)."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):  # e.g. a device or dtype without a fused kernel
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)


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

    def on_train_end(self, trainer: "Trainer") -> None:
        pass


class StepSchedule(Callback):
    """Step an epoch-based learning-rate scheduler (torch.optim.lr_scheduler) after each epoch."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def on_epoch_end(self, trainer, record):
        self.scheduler.step()


class JsonlLogger(Callback):
    """Appends one JSON line per epoch (losses, seconds) to a file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_epoch_end(self, trainer, record):
        with self.path.open("a") as stream:
            stream.write(json.dumps(record.as_dict()) + "\n")


class Checkpoint(Callback):
    """Saves the whole training state every ``every`` epochs, so training can resume.

    The file (safetensors) holds the model's weights and buffers, the optimizer's state, the
    random number generators' states and the callbacks' states; the header records stage and
    epoch. Each write goes to a temporary file that is renamed into place, so a crash mid-write
    leaves the previous checkpoint intact.
    """

    def __init__(self, path: str | Path, every: int = 1):
        if every < 1:
            raise ValueError(f"checkpoint interval must be at least 1 epoch, got {every}")
        self.path, self.every = Path(path), every

    def on_epoch_end(self, trainer, record):
        if record.epoch % self.every == 0:
            tensors, metadata = trainer.training_state()
            save_safetensors(self.path, tensors, CHECKPOINT_FORMAT,
                             {**metadata, "stage": record.stage, "epoch": str(record.epoch)})


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    return load_safetensors(path, CHECKPOINT_FORMAT)


def load_checkpoint(path: str | Path, model: nn.Module) -> dict[str, str]:
    """Load the model weights of a ``Checkpoint`` file into ``model``; returns its header."""
    tensors, metadata = read_checkpoint(path)
    model.load_state_dict(_unprefix(tensors, "model."))
    return metadata


def _unprefix(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


class EarlyStopping(Callback):
    """Stop when the monitored validation value has not improved for ``patience`` epochs.

    With ``restore_best`` the model ends with the weights (and buffers) of its best epoch.
    """

    def __init__(self, monitor: str = "loss", patience: int = 10, min_delta: float = 0.0, restore_best: bool = True):
        self.monitor, self.patience, self.min_delta, self.restore_best = monitor, patience, min_delta, restore_best
        self.best = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, Tensor] | None = None

    def on_epoch_end(self, trainer, record):
        value = record.val.get(self.monitor)
        if value is None:
            raise ValueError(f"EarlyStopping monitors val {self.monitor!r}, but validation gave {sorted(record.val)}")
        if value < self.best - self.min_delta:
            self.best, self.best_epoch = value, record.epoch
            if self.restore_best:
                self.best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        elif record.epoch - self.best_epoch >= self.patience:
            trainer.stop_training = True

    def on_train_end(self, trainer):
        if self.restore_best and self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)

    def state(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        tensors = {f"best.{k}": v for k, v in (self.best_state or {}).items()}
        return tensors, {"best": repr(self.best), "best_epoch": str(self.best_epoch)}

    def load_state(self, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
        self.best, self.best_epoch = float(metadata["best"]), int(metadata["best_epoch"])
        best = _unprefix(tensors, "best.")
        self.best_state = best or None


class Trainer:
    """The loop: batches -> loss + auxiliary losses + regularization -> step -> metrics.

    ``loss_fn(model, batch)`` returns a dict with the main ``"loss"``, any other scalars to
    show, and optionally ``"metric_inputs"``: the arguments given to each streaming metric's
    ``update``. Losses a model adds during its forward pass (``AddsLosses.add_loss``) and
    its regularization loss are added to the main loss and shown under their own names.
    ``compile=True`` runs the step through ``torch.compile``. A step whose loss is NaN or
    infinite is skipped (no update) and counted as ``skipped_steps``; after
    ``max_nonfinite`` in a row training stops with a ``NonFiniteLossError``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn, *,
                 metrics: dict[str, Metric] | None = None, stage: str = "train",
                 callbacks: Sequence[Callback] = (), progress: bool = True, grad_clip: float | None = None,
                 refresh_every: int = 10, compile: bool = False, max_nonfinite: int = 10):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.metrics = dict(metrics or {})
        self.stage, self.callbacks, self.progress = stage, list(callbacks), progress
        self.grad_clip, self.refresh_every = grad_clip, refresh_every
        self.max_nonfinite = max_nonfinite
        self.nonfinite_in_a_row = 0
        self.train_batches = None
        self.history: list[EpochRecord] = []
        self.stop_training = False
        self._step = torch.compile(self._forward_backward) if compile else self._forward_backward

    def compute_loss(self, batch: tuple[Tensor, ...]) -> tuple[dict[str, Tensor], tuple | None]:
        """All losses of one batch (``"loss"`` is the total to optimize) and the metric inputs."""
        output = dict(self.loss_fn(self.model, batch))
        metric_inputs = output.pop("metric_inputs", None)
        extra = pop_auxiliary_losses(self.model)
        regularization = regularization_loss(self.model)
        if regularization is not None:
            extra["regularization"] = regularization
        if extra:
            output["main_loss"] = output["loss"]
            output["loss"] = output["loss"] + sum(extra.values())
            output.update(extra)
        return output, metric_inputs

    def _forward_backward(self, batch):
        losses, metric_inputs = self.compute_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        return losses, metric_inputs

    def train_step(self, batch: tuple[Tensor, ...]) -> dict[str, Tensor] | None:
        """One optimizer step; None when the loss was not finite and the step was skipped."""
        losses, metric_inputs = self._step(batch)
        if not torch.isfinite(losses["loss"]):  # one host sync per step, free on CPU
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row >= self.max_nonfinite:
                raise NonFiniteLossError(
                    f"{self.stage}: the loss was NaN or infinite in {self.nonfinite_in_a_row} steps in a row "
                    f"(epoch {len(self.history) + 1}); stopping. Lower the learning rate or pass --grad-clip")
            return None
        self.nonfinite_in_a_row = 0
        self.optimizer.step()
        apply_constraints(self.model)
        if metric_inputs is not None:
            for metric in self.metrics.values():
                metric.update(*(t.detach() for t in metric_inputs))
        return {name: value.detach() for name, value in losses.items()}

    @torch.no_grad()
    def evaluate(self, batches) -> dict[str, float]:
        """Losses and metrics over all ``batches``, in eval mode (weighted by batch size)."""
        self.model.eval()
        means: dict[str, MeanMetric] = {}
        metrics = {name: metric.clone() for name, metric in self.metrics.items()}
        for metric in metrics.values():
            metric.reset()
        for batch in batches:
            losses, metric_inputs = self.compute_loss(batch)
            _accumulate(means, losses, len(batch[0]))
            if metric_inputs is not None:
                for metric in metrics.values():
                    metric.update(*metric_inputs)
        return _results(means, metrics)

    def training_state(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        """Everything needed to continue bit-identically: tensors and string metadata."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        optimizer = self.optimizer.state_dict()
        for index, values in optimizer["state"].items():
            for name, value in values.items():
                tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value)
        tensors["rng.torch"] = torch.get_rng_state()
        generator = getattr(self.train_batches, "generator", None)
        if generator is not None:
            tensors["rng.batches"] = generator.get_state()
        metadata = {"param_groups": json.dumps(optimizer["param_groups"]),
                    "nonfinite_in_a_row": str(self.nonfinite_in_a_row), "stop_training": str(self.stop_training)}
        for i, callback in enumerate(self.callbacks):
            if hasattr(callback, "state"):
                extra, extra_metadata = callback.state()
                tensors.update({f"callback{i}.{k}": v for k, v in extra.items()})
                metadata.update({f"callback{i}.{k}": v for k, v in extra_metadata.items()})
        return tensors, metadata

    def load_training_state(self, tensors: dict[str, Tensor], metadata: dict[str, str], train_batches=None) -> None:
        """Restore what ``training_state`` saved (call before ``fit(..., start_epoch=...)``)."""
        self.model.load_state_dict(_unprefix(tensors, "model."))
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in _unprefix(tensors, "optimizer.").items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
        for parameter, values in self.optimizer.state.items():
            for name, value in values.items():
                if torch.is_tensor(value) and value.shape == parameter.shape:
                    # saved contiguous; give it the parameter's strides (channels-last convolutions),
                    # which the fused optimizer kernels assume
                    values[name] = torch.empty_like(parameter).copy_(value)
        torch.set_rng_state(tensors["rng.torch"])
        generator = getattr(train_batches, "generator", None)
        if generator is not None and "rng.batches" in tensors:
            generator.set_state(tensors["rng.batches"])
        self.nonfinite_in_a_row = int(metadata.get("nonfinite_in_a_row", 0))
        self.stop_training = metadata.get("stop_training") == "True"
        for i, callback in enumerate(self.callbacks):
            if hasattr(callback, "load_state"):
                prefix = f"callback{i}."
                callback.load_state(_unprefix(tensors, prefix),
                                    {k[len(prefix):]: v for k, v in metadata.items() if k.startswith(prefix)})

    def fit(self, train_batches, epochs: int, val_batches=None, start_epoch: int = 1) -> list[EpochRecord]:
        """Train epochs ``start_epoch`` .. ``epochs`` (``start_epoch`` > 1 after a resume)."""
        from tqdm.auto import tqdm

        self.train_batches = train_batches
        for epoch in range(start_epoch, epochs + 1):
            if self.stop_training:  # e.g. early stopping had fired before an interruption
                break
            self.model.train()
            started = time.perf_counter()
            means: dict[str, MeanMetric] = {}
            for metric in self.metrics.values():
                metric.reset()  # streaming metrics cover one epoch
            bar = tqdm(train_batches, desc=f"{self.stage} {epoch}/{epochs}", leave=False,
                       disable=not self.progress, file=sys.stderr, dynamic_ncols=True)
            skipped = 0
            for step, batch in enumerate(bar, 1):
                losses = self.train_step(batch)
                if losses is None:
                    skipped += 1
                    continue
                _accumulate(means, losses, len(batch[0]))
                if self.progress and step % self.refresh_every == 0:  # loss values read only here
                    bar.set_postfix({k: f"{v:.4f}" for k, v in _results(means, self.metrics).items()})
            bar.close()
            train = _results(means, self.metrics)
            if skipped:
                train["skipped_steps"] = skipped
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
        for callback in self.callbacks:
            callback.on_train_end(self)
        return self.history


def _accumulate(means: dict[str, "MeanMetric"], losses: dict[str, Tensor], n: int) -> None:
    for name, value in losses.items():
        if name not in means:
            means[name] = MeanMetric()
        means[name].update(value.detach().reshape(1), torch.tensor([float(n)]))


def _results(means, metrics) -> dict[str, float]:
    results = {name: float(mean.compute()) for name, mean in means.items()}
    results.update({name: float(metric.compute()) for name, metric in metrics.items() if metric.update_count})
    return results


def supervised(loss: Callable[[Tensor, Tensor], Tensor]) -> LossFn:
    """A ``loss_fn`` for batches ``(*inputs, target)``: model(*inputs) is compared with target."""

    def loss_fn(model, batch):
        *inputs, target = batch
        prediction = model(*inputs)
        return {"loss": loss(target, prediction), "metric_inputs": (prediction, target)}

    return loss_fn
