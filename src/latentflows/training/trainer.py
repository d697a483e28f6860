"""A short training loop that a user can read, copy or subclass.

``Trainer.fit`` runs epochs of ``train_step`` over batches, shows the running losses in a
status bar, evaluates on validation batches after each epoch and hands a record of the
epoch to its callbacks. ``loss_fn(model, batch)`` returns a dict of scalar losses; each
``Update`` (an optimizer and the name of the loss it minimizes) steps its own parameters,
so an objective with an adversary (autoencoder and discriminator) is one forward pass and
two updates. Every other entry of the dict is shown and logged.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from ..data import Batches
from ..errors import LatentflowsError
from ..layers import apply_constraints, pop_auxiliary_losses, regularization_loss
from ..metrics import MeanMetric
from ..runtime import Runtime
from .callbacks import Callback, EpochRecord, unprefix
from .interrupts import raise_pending_interrupt, remembered_interrupts
from .skipping import poison_gradients, skips_on_device, step_unless

LossFn = Callable[[nn.Module, tuple[Tensor, ...]], dict[str, Any]]  # losses, and optionally "metric_inputs"


class NonFiniteLossError(LatentflowsError):
    """Training produced NaN or infinite losses too many times in a row."""


def adam(parameters: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam with the fused kernel where available: one kernel for all parameters instead of a
    Python loop over them (+15% flow steps per second at batch 32 on CPU, see bench/).

    Example:
        >>> from torch import nn
        >>> adam(nn.Linear(2, 1).parameters(), lr=1e-3).defaults["lr"]
        0.001
    """
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):  # e.g. a device or dtype without a fused kernel
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)


@dataclass
class Update:
    """One optimizer and the loss it minimizes, over its own parameters.

    Args:
        name: names the optimizer's state in checkpoints.
        optimizer: the optimizer.
        loss: the key of the loss (in ``loss_fn``'s dict) that it minimizes.
        parameters: the parameters it updates (default: the optimizer's); the backward
            pass of this loss reaches only these, so an adversary's loss never changes the
            model it judges.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> critic = nn.Linear(2, 1)
        >>> update = Update("discriminator", adam(critic.parameters(), 1e-3), loss="discriminator")
        >>> len(update.parameters)
        2
    """

    name: str
    optimizer: torch.optim.Optimizer
    loss: str = "loss"
    parameters: list[nn.Parameter] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.parameters:
            self.parameters = [p for group in self.optimizer.param_groups for p in group["params"]]


class Trainer:
    """The loop: batches -> loss + auxiliary losses + regularization -> update(s) -> metrics.

    Args:
        model: the module to train (its ``train``/``eval`` mode is set by the loop).
        optimizer: an optimizer minimizing ``"loss"``, or a list of ``Update``.
        loss_fn: ``loss_fn(model, batch)`` returns a dict with the main ``"loss"``, the loss of
            every other update, any scalars to show, and optionally ``"metric_inputs"`` (the
            arguments given to each streaming metric's ``update``).
        runtime: device and precision (default: the model's device, fp32).
        autocast: run ``loss_fn`` under the runtime's autocast (mixed precision).
        metrics: streaming metrics, reset every epoch.
        stage: the name shown in the status bar and in the records.
        callbacks: ``Callback`` objects, called after each epoch and at the end.
        progress: show a tqdm status bar and a line per epoch.
        grad_clip: clip each update's gradient norm to this value.
        refresh_every: steps between status bar refreshes (the only host syncs for display).
        compile: run the forward and backward passes through ``torch.compile``.
        max_nonfinite: stop with ``NonFiniteLossError`` after this many skipped steps in a row.
        check_every: steps between reading the non-finite count back to the host (default:
            every step on the CPU, where it is free; every ``refresh_every`` steps on a GPU).
        precision_tag: what the status line says after the stage name about how the steps
            compute (default: the autocast precision, e.g. ``[bf16]``, or nothing in fp32).

    Losses a model adds during its forward pass (``AddsLosses.add_loss``) and its
    regularization loss are added to the main loss and shown under their own names. A
    step whose losses are NaN or infinite is skipped (no update) and counted as
    ``skipped_steps``. The skip is decided on the device: optimizers with a fused kernel
    (``adam`` here) take the flag as ``found_inf``, as they do from a ``GradScaler``, so a
    GPU step never waits for the host; other optimizers read the flag back each step.
    With the runtime's fp16 precision, losses are scaled by a ``GradScaler``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(1, 1)
        >>> data = Batches([torch.randn(64, 1), torch.randn(64, 1)], 16)
        >>> loss_fn = lambda m, batch: {"loss": (m(batch[0]) - batch[1]).pow(2).mean()}
        >>> history = Trainer(model, adam(model.parameters(), 1e-2), loss_fn, progress=False).fit(data, 2)
        >>> [record.epoch for record in history]
        [1, 2]
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | Sequence[Update], loss_fn: LossFn, *,
                 runtime: Runtime | None = None, autocast: bool = True, metrics: dict[str, Metric] | None = None,
                 stage: str = "train", callbacks: Sequence[Callback] = (), progress: bool = True,
                 grad_clip: float | None = None, refresh_every: int = 10, compile: bool = False,
                 max_nonfinite: int = 10, check_every: int | None = None, precision_tag: str | None = None):
        self.model, self.loss_fn = model, loss_fn
        self._tag = precision_tag
        self.updates = [Update("optimizer", optimizer)] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer)
        if not self.updates or len({u.name for u in self.updates}) != len(self.updates):
            raise ValueError("give at least one optimizer, and updates with different names")
        self.runtime = runtime or Runtime(_device_of(model))
        model = self.runtime.prepare(model)
        self.model = model
        self.autocast = autocast
        self.metrics = {name: self.runtime.metric(metric) for name, metric in (metrics or {}).items()}
        self.stage, self.callbacks = stage, list(callbacks)
        self.progress = progress and self.runtime.is_main_process
        names = [c.name for c in self.callbacks if hasattr(c, "state")]
        if len(set(names)) != len(names):
            raise ValueError(f"callbacks with saved state need different names, got {names}")
        self.grad_clip, self.refresh_every = grad_clip, refresh_every
        self.max_nonfinite = max_nonfinite
        self.check_every = check_every or (1 if self.runtime.syncs_are_free else refresh_every)
        self.scaler = self.runtime.grad_scaler(autocast)
        self._nonfinite_run = self.runtime.tensor(0)  # skipped steps in a row, counted on the device
        self._skipped = self.runtime.tensor(0)  # skipped steps this epoch
        self._steps = 0
        self.last_step_finite: Tensor | None = None  # a device flag: whether the last step was applied
        self.train_batches: Iterable[tuple[Tensor, ...]] | None = None
        self.history: list[EpochRecord] = []
        self.stop_training = False
        self._step = torch.compile(self._forward_backward) if compile else self._forward_backward

    @property
    def _precision_tag(self) -> str:
        """`` [bf16]`` in the status line where the steps run under autocast (or the stage's own tag)."""
        if self._tag is not None:
            return f" [{self._tag}]" if self._tag else ""
        return f" [{self.runtime.precision}]" if self.autocast and self.runtime.precision != "fp32" else ""

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The first (for a single-optimizer trainer, the only) optimizer."""
        return self.updates[0].optimizer

    def compute_loss(self, batch: tuple[Tensor, ...]) -> tuple[dict[str, Tensor], tuple | None]:
        """All losses of one batch (``"loss"`` is the total of the main update) and the metric inputs."""
        with self.runtime.autocast(self.autocast):
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

    @property
    def nonfinite_in_a_row(self) -> int:
        """Steps skipped in a row up to now (reads the device's count)."""
        return int(self._nonfinite_run)

    def _forward_backward(self, batch: tuple[Tensor, ...]) -> tuple[dict[str, Tensor], tuple | None]:
        losses, metric_inputs = self.compute_loss(batch)
        several = len(self.updates) > 1
        for update in self.updates:
            update.optimizer.zero_grad(set_to_none=True)
        active = self._active(losses)
        for i, update in enumerate(active):
            loss = losses[update.loss]
            # inputs=: each loss reaches only its own update's parameters
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward(
                inputs=update.parameters if several else None, retain_graph=i < len(active) - 1)
        return losses, metric_inputs

    def _active(self, losses: dict[str, Tensor]) -> list[Update]:
        """The updates whose loss this step produced (a term still warming up adds none, and
        its update must not step: Adam with weight decay would shrink idle weights to zero)."""
        active = [update for update in self.updates if update.loss in losses]
        if not active or active[0] is not self.updates[0]:
            raise KeyError(f"the loss function returned no {self.updates[0].loss!r}; it returned {sorted(losses)}")
        return active

    def train_step(self, batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        """One step of every update, and the step's losses (detached).

        A step whose losses are not finite changes no weight (its losses are returned as
        they were, NaN or infinite) and is counted; ``max_nonfinite`` in a row raise
        ``NonFiniteLossError`` at the next check (every ``check_every`` steps).
        """
        losses, metric_inputs = self._step(self.runtime.move(batch))
        active = self._active(losses)
        finite = torch.isfinite(torch.stack([losses[u.loss].detach().float() for u in active])).all()
        finite = self.runtime.all_true(finite)  # several processes skip together
        self._nonfinite_run = torch.where(finite, 0, self._nonfinite_run + 1)
        self._skipped = self._skipped + (~finite).long()
        self.last_step_finite = finite
        on_device = self.scaler is not None or all(skips_on_device(u.optimizer) for u in active)
        if on_device and not (self.metrics and metric_inputs is not None):
            self._apply(active, finite)
        elif bool(finite):  # an optimizer without a device-side skip (or metrics to guard): one host sync
            self._apply(active, None)
            if metric_inputs is not None:
                for metric in self.metrics.values():
                    metric.update(*(t.detach() for t in metric_inputs))
        self._steps += 1
        if self._steps % self.check_every == 0:
            self._check_nonfinite()
        return {name: value.detach() for name, value in losses.items()}

    def _apply(self, active: list[Update], finite: Tensor | None) -> None:
        """Clip and step each update; ``finite`` (a device flag) makes the steps no-ops when false."""
        if finite is not None and self.scaler is not None:
            for update in active:
                poison_gradients(update.parameters, finite)
        for update in active:
            self.runtime.sync_gradients(update.parameters)
            if self.grad_clip:
                if self.scaler is not None:
                    self.scaler.unscale_(update.optimizer)
                nn.utils.clip_grad_norm_(update.parameters, self.grad_clip)
            if self.scaler is not None:
                self.scaler.step(update.optimizer)
            elif finite is None:
                update.optimizer.step()
            else:
                step_unless(update.optimizer, ~finite)
        if self.scaler is not None:
            self.scaler.update()
        apply_constraints(self.model)

    def _check_nonfinite(self) -> None:
        """Raise when too many steps in a row were skipped (one read from the device)."""
        in_a_row = self.nonfinite_in_a_row
        if in_a_row >= self.max_nonfinite:
            raise NonFiniteLossError(
                f"{self.stage}: the loss was NaN or infinite in {in_a_row} steps in a row "
                f"(epoch {len(self.history) + 1}); stopping. Lower the learning rate or pass --grad-clip")

    @torch.no_grad()
    def evaluate(self, batches: Iterable[tuple[Tensor, ...]]) -> dict[str, float]:
        """Losses and metrics over all ``batches``, in eval mode (weighted by batch size)."""
        self.model.eval()
        means: dict[str, MeanMetric] = {}
        metrics = {name: metric.clone() for name, metric in self.metrics.items()}
        for metric in metrics.values():
            metric.reset()
        for batch in self.runtime.shard(batches):
            if len(batch[0]) == 0:  # a process's share of a last, short batch
                continue
            losses, metric_inputs = self.compute_loss(self.runtime.move(batch))
            self._accumulate(means, losses, len(batch[0]))
            if metric_inputs is not None:
                for metric in metrics.values():
                    metric.update(*metric_inputs)
        return self._results(means, metrics)

    def training_state(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        """Everything needed to continue bit-identically: tensors and string metadata."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        metadata = {"nonfinite_in_a_row": str(self.nonfinite_in_a_row), "stop_training": str(self.stop_training)}
        for update in self.updates:
            state = update.optimizer.state_dict()
            for index, values in state["state"].items():
                for name, value in values.items():
                    tensors[f"optimizer.{update.name}.{index}.{name}"] = torch.as_tensor(value)
            metadata[f"param_groups.{update.name}"] = json.dumps(state["param_groups"])
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and self.runtime.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.runtime.device)
        generator = getattr(self.train_batches, "generator", None)
        if generator is not None:
            tensors["rng.batches"] = generator.get_state()
        for callback in self.callbacks:
            if hasattr(callback, "state"):
                extra, extra_metadata = callback.state()
                tensors.update({f"callback.{callback.name}.{k}": v for k, v in extra.items()})
                metadata.update({f"callback.{callback.name}.{k}": v for k, v in extra_metadata.items()})
        return tensors, metadata

    def load_training_state(self, tensors: dict[str, Tensor], metadata: dict[str, str],
                            train_batches: Batches | None = None) -> None:
        """Restore what ``training_state`` saved (call before ``fit(..., start_epoch=...)``)."""
        self.model.load_state_dict(unprefix(tensors, "model."))
        for update in self.updates:
            state: dict[int, dict[str, Tensor]] = {}
            for key, value in unprefix(tensors, f"optimizer.{update.name}.").items():
                index, name = key.split(".", 1)
                state.setdefault(int(index), {})[name] = value
            groups = metadata.get(f"param_groups.{update.name}")
            if groups is None:
                raise LatentflowsError(f"the checkpoint has no state for the optimizer {update.name!r}; "
                                       "it was written by another version or another configuration")
            update.optimizer.load_state_dict({"state": state, "param_groups": json.loads(groups)})
            for parameter, values in update.optimizer.state.items():
                for name, value in values.items():
                    if torch.is_tensor(value) and value.shape == parameter.shape:
                        # saved contiguous; give it the parameter's strides (channels-last convolutions),
                        # which the fused optimizer kernels assume
                        values[name] = torch.empty_like(parameter).copy_(value)
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and self.runtime.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.runtime.device)
        generator = getattr(train_batches, "generator", None)
        if generator is not None and "rng.batches" in tensors:
            generator.set_state(tensors["rng.batches"])
        self._nonfinite_run = self.runtime.tensor(int(metadata.get("nonfinite_in_a_row", 0)))
        self.stop_training = metadata.get("stop_training") == "True"
        for callback in self.callbacks:
            if hasattr(callback, "load_state"):
                prefix = f"callback.{callback.name}."
                callback.load_state(unprefix(tensors, prefix),
                                    {k[len(prefix):]: v for k, v in metadata.items() if k.startswith(prefix)})

    def fit(self, train_batches: Iterable[tuple[Tensor, ...]], epochs: int,
            val_batches: Iterable[tuple[Tensor, ...]] | None = None, start_epoch: int = 1) -> list[EpochRecord]:
        """Train epochs ``start_epoch`` .. ``epochs`` (``start_epoch`` > 1 after a resume).

        Ctrl-C raises ``KeyboardInterrupt`` here, never lost (see ``remembered_interrupts``)."""
        with remembered_interrupts():
            return self._fit(train_batches, epochs, val_batches, start_epoch)

    def _fit(self, train_batches: Iterable[tuple[Tensor, ...]], epochs: int,
             val_batches: Iterable[tuple[Tensor, ...]] | None, start_epoch: int) -> list[EpochRecord]:
        from tqdm.auto import tqdm

        self.train_batches = train_batches
        train_batches = self.runtime.shard(train_batches)
        for epoch in range(start_epoch, epochs + 1):
            if self.stop_training:  # e.g. early stopping had fired before an interruption
                break
            self.model.train()
            started = time.perf_counter()
            means: dict[str, MeanMetric] = {}
            for metric in self.metrics.values():
                metric.reset()  # streaming metrics cover one epoch
            bar = tqdm(train_batches, desc=f"{self.stage}{self._precision_tag} {epoch}/{epochs}", leave=False,
                       disable=not self.progress, file=sys.stderr, dynamic_ncols=True)
            self._skipped = self.runtime.tensor(0)
            for step, batch in enumerate(bar, 1):
                raise_pending_interrupt()
                losses = self.train_step(batch)
                self._accumulate(means, losses, len(batch[0]), counted=self.last_step_finite)
                if self.progress and step % self.refresh_every == 0:  # loss values read only here
                    shown = self._results(means, self.metrics, sync=False)
                    bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()})
            bar.close()
            self._check_nonfinite()
            train = self._results(means, self.metrics)
            skipped = int(self._skipped)
            if skipped:
                train["skipped_steps"] = skipped
            val = self.evaluate(val_batches) if val_batches is not None else {}
            record = EpochRecord(self.stage, epoch, train, val, time.perf_counter() - started)
            self.history.append(record)
            if self.progress:
                line = " ".join(f"{k}={v:.4f}" for k, v in train.items())
                line += "".join(f" val_{k}={v:.4f}" for k, v in val.items())
                print(f"{self.stage}{self._precision_tag} epoch {epoch}/{epochs} {line} ({record.seconds:.1f}s)",
                      file=sys.stderr)
            for callback in self.callbacks:
                callback.on_epoch_end(self, record)
            if self.stop_training:
                break
        for callback in self.callbacks:
            callback.on_train_end(self)
        return self.history

    def _results(self, means: dict[str, MeanMetric], metrics: dict[str, Metric], sync: bool = True) -> dict[str, float]:
        """The epoch's figures; ``sync``: over every process (all must call), else this one's
        running losses alone (the status bar of the main process)."""
        results = {name: float(self.runtime.compute(mean, sync)) for name, mean in means.items()}
        if sync or self.runtime.world_size == 1:  # a user's metric syncs itself when computed
            results.update({name: float(metric.compute()) for name, metric in metrics.items() if metric.update_count})
        return results

    def _accumulate(self, means: dict[str, MeanMetric], losses: dict[str, Tensor], n: int,
                    counted: Tensor | None = None) -> None:
        """Add a batch's losses to the running means (a skipped step, ``counted`` false, adds nothing)."""
        weight = self.runtime.tensor([float(n)])
        if counted is not None:
            weight = weight * counted
        for name, value in losses.items():
            if name not in means:  # synced over processes when the runtime asks, not at every compute
                means[name] = self.runtime.metric(MeanMetric(sync_on_compute=False))
            value = value.detach().float().reshape(1)
            if counted is not None:
                value = torch.where(counted, value, 0.0)
            means[name].update(value, weight)


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")




def supervised(loss: Callable[[Tensor, Tensor], Tensor]) -> LossFn:
    """A ``loss_fn`` for batches ``(*inputs, target)``: ``model(*inputs)`` is compared with target.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from latentflows.losses import MSELoss
        >>> out = supervised(MSELoss())(nn.Identity(), (torch.zeros(2, 1), torch.ones(2, 1)))
        >>> out["loss"].item()
        1.0
    """

    def loss_fn(model: nn.Module, batch: tuple[Tensor, ...]) -> dict[str, Any]:
        *inputs, target = batch
        prediction = model(*inputs)
        return {"loss": loss(target, prediction), "metric_inputs": (prediction, target)}

    return loss_fn
