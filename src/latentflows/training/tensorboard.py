"""Watching training in TensorBoard (``latentflows train --log tensorboard``; the ``tensorboard`` extra).

``TensorBoardLogger`` writes ``RUN/tensorboard/``: every epoch's training and validation
figures, a grid of images every few epochs, and the run config as hyperparameters. Open it
with ``tensorboard --logdir RUN/tensorboard``.

Tags (``{stage}`` is ``autoencoder`` or ``flow``, or the name of a custom stage):

- ``{stage}/train/{name}``, ``{stage}/val/{name}``: the epoch's figures, as in ``metrics.jsonl``;
- ``{stage}/seconds``: the epoch's duration;
- ``{stage}/reconstructions``: fixed validation images (top row) over their reconstructions
  (a stage whose model has an ``autoencoder``);
- ``{stage}/samples``: generated images, one row per class (up to 10), highest log-density
  first, from a fixed seed (a stage whose model has a ``flow``, decoded by the autoencoder
  that an earlier stage trained);
- the hparams plugin's ``_hparams_/...`` summaries: the run config flattened to the paths
  that ``--set`` takes (``stages.flow.config.lr``), with each stage's ``{stage}/val/loss``
  as a metric (the dashboard shows its last value: the final validation loss).

The steps run across the stages on one axis: epoch ``e`` of a stage is step ``e`` plus the
epochs of the stages before it (autoencoder 1..A, flow A+1..A+F), so a resumed run can
purge what an interrupted one wrote after its last checkpoint by step alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, cast

import numpy as np
import torch
from torch import Tensor, nn

from ..extras import require
from ..runs import RunFolder
from .build import build_stages
from .callbacks import Callback, EpochRecord, Loop

if TYPE_CHECKING:  # pragma: no cover
    from ..config import RunConfig
    from ..flows import Flow
    from .stages import StageContext

FOLDER = RunFolder.TENSORBOARD  # in the run folder
IMAGES_EVERY = 5  # epochs between image grids, by default


def summary_writer() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line error naming the pip command."""
    require("tensorboard", "tensorboard")
    return require("torch.utils.tensorboard", "tensorboard").SummaryWriter


def flatten_hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as TensorBoard hyperparameters: ``a.b.c`` paths to numbers, strings or
    booleans (None as ``"none"``, lists as JSON).

    Example:
        >>> flatten_hparams({"seed": 0, "grad_clip": None, "stages": {"flow": {"hidden": [32, 32]}}})
        {'seed': 0, 'grad_clip': 'none', 'stages.flow.hidden': '[32, 32]'}
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, path + "."))
        elif value is None:
            flat[path] = "none"
        elif isinstance(value, (bool, int, float, str)):
            flat[path] = value
        else:
            flat[path] = json.dumps(value)
    return flat


class TensorBoardLogger(Callback):
    """Write each epoch's figures, image grids and the hyperparameters for TensorBoard.

    One logger watches every stage of a run (give it to each stage's ``Trainer``, after the
    stage's own callbacks); the tags and steps are described in this module's docstring.
    Images are drawn in eval mode without gradients (each module's mode is restored) and
    samples from their own seeded generator, so logging changes no weight and no random
    state of training. Events are flushed every epoch; the writer is closed after the last
    stage of ``stage_epochs``, or by ``close()``.

    Args:
        log_dir: the folder of event files (a run's is ``RUN/tensorboard``).
        stage_epochs: each stage's epochs, in training order (sets the steps and each
            stage's last epoch, which always gets images); a stage not in it is logged at
            step = epoch.
        context: the run's ``StageContext``: validation images, class names, seed and the
            earlier stages' models, for the image grids (None: no images).
        images_every: epochs between image grids.
        hparams: the run config (``RunConfig.as_dict()``), written once as hyperparameters.
        completed: continue the event files of an interrupted run whose stages' checkpoints
            cover these epochs (``RunFolder.completed_epochs``): what it wrote after the last
            checkpoint is purged (``purge_step``), epochs before it are not written again
            (an earlier process of the run that did not log leaves them out), and the hyperparameters
            are not repeated.

    Example:
        >>> import tempfile
        >>> logger = TensorBoardLogger(tempfile.mkdtemp(), {"autoencoder": 3, "flow": 2})
        >>> logger.step("autoencoder", 2), logger.step("flow", 1)
        (2, 4)
        >>> logger.on_epoch_end(None, EpochRecord("flow", 1, {"loss": 2.5}, {"loss": 2.7}))
        >>> logger.close()
    """

    columns = 8  # images per grid row
    max_classes = 10  # rows of a sample grid

    def __init__(self, log_dir: str | Path, stage_epochs: Mapping[str, int] | None = None, *,
                 context: StageContext | None = None, images_every: int = IMAGES_EVERY,
                 hparams: Mapping[str, Any] | None = None, completed: Mapping[str, int] | None = None):
        if not isinstance(images_every, int) or isinstance(images_every, bool) or images_every < 1:
            raise ValueError(f"images_every must be a positive number of epochs, got {images_every!r}")
        self.stage_epochs = dict(stage_epochs or {})
        self.offsets, total = {}, 0
        for stage, epochs in self.stage_epochs.items():
            self.offsets[stage], total = total, total + epochs
        self.context, self.images_every = context, images_every
        self.first_step = 1  # steps before it were written by an earlier, interrupted session
        if completed is not None:
            self.first_step = 1 + max((self.step(stage, epoch) for stage, epoch in completed.items()), default=0)
        self.log_dir = Path(log_dir)
        self.writer = summary_writer()(str(self.log_dir), purge_step=self.first_step if completed is not None else None)
        self._validation: Tensor | None = None
        self._validation_labels: Tensor | None = None
        if hparams is not None and completed is None:
            self._write_hparams(hparams)
        self.writer.flush()

    @classmethod
    def for_run(cls, run: RunFolder, config: RunConfig, context: StageContext | None = None,
                images_every: int = IMAGES_EVERY, resume: bool = False) -> "TensorBoardLogger":
        """The logger of a run folder: ``RUN/tensorboard``, the config's stages and hyperparameters.

        ``resume``: continue an interrupted run (its checkpoints still in place); otherwise
        the folder starts empty (an overwritten run's events are removed).
        """
        stage_epochs = {name: stage.epochs for name, stage in build_stages(config)}
        if not resume:
            shutil.rmtree(run / FOLDER, ignore_errors=True)
        completed = run.completed_epochs(list(stage_epochs)) if resume else None
        return cls(run / FOLDER, stage_epochs, context=context, images_every=images_every,
                   hparams=config.as_dict(), completed=completed)

    def step(self, stage: str, epoch: int) -> int:
        """The global step of a stage's epoch (1-based)."""
        return self.offsets.get(stage, 0) + epoch

    # ------------------------------------------------------------------ callbacks
    def on_epoch_end(self, trainer: Loop, record: EpochRecord) -> None:
        step = self.step(record.stage, record.epoch)
        if step < self.first_step:  # logged before the interruption
            return
        for part, figures in (("train", record.train), ("val", record.val)):
            for name, value in figures.items():
                self.writer.add_scalar(f"{record.stage}/{part}/{name}", float(value), step)
        self.writer.add_scalar(f"{record.stage}/seconds", float(record.seconds), step)
        last = record.epoch == self.stage_epochs.get(record.stage) or bool(getattr(trainer, "stop_training", False))
        if trainer is not None and self.context is not None and (record.epoch % self.images_every == 0 or last):
            self._write_images(record.stage, trainer.model, step)
        self.writer.flush()

    def on_train_end(self, trainer: Loop) -> None:
        stages = list(self.stage_epochs)
        if stages and trainer is not None and trainer.stage == stages[-1]:
            self._end_session()
            self.close()
        else:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()

    # ------------------------------------------------------------------ images
    @torch.no_grad()
    def _write_images(self, stage: str, model: nn.Module, step: int) -> None:
        from ..plots import image_grid

        rows = None
        flow, autoencoder = getattr(model, "flow", None), getattr(model, "autoencoder", None)
        if isinstance(flow, nn.Module):
            rows = self._samples(flow)
            tag = f"{stage}/samples"
        elif isinstance(autoencoder, nn.Module):
            rows = self._reconstructions(autoencoder)
            tag = f"{stage}/reconstructions"
        if rows:
            grid = np.asarray(image_grid(rows))
            self.writer.add_image(tag, grid, step, dataformats="HWC")

    def _reconstructions(self, autoencoder: nn.Module) -> list[Tensor]:
        from ..autoencoder import class_context, decode_embeddings, encode_images

        assert self.context is not None  # images are written only with a stage context (see on_epoch_end)
        if self._validation is None:  # the same images every time, as in the run's figures
            val_set = self.context.val_set
            pick = torch.randperm(len(val_set), generator=torch.Generator().manual_seed(self.context.seed))
            self._validation = val_set.images[pick[: self.columns]].cpu()
            self._validation_labels = val_set.labels[pick[: self.columns]].cpu()
        assert self._validation_labels is not None  # set with self._validation
        context = class_context(autoencoder, self._validation_labels.to(next(autoencoder.parameters()).device))
        # each restores the autoencoder's mode; decoded as the trained pipeline will decode
        embeddings = encode_images(autoencoder, self._validation)
        with self.context.runtime.autocast():
            reconstructions = decode_embeddings(autoencoder, embeddings, context=context)
        return [self._validation, reconstructions]

    def _samples(self, flow: nn.Module) -> list[Tensor] | None:
        from ..pipeline import LatentFlowPipeline

        assert self.context is not None  # images are written only with a stage context (see on_epoch_end)
        autoencoder = self.context.models.get("autoencoder")
        if autoencoder is None:
            return None
        # generate restores the modes; it decodes as the trained pipeline will, and samples plainly (no
        # guidance: the posterior temperature that calibrates it is fitted only after training)
        pipeline = LatentFlowPipeline(autoencoder, cast("Flow", flow), self.context.class_names,
                                      precision=self.context.runtime.precision)
        return [pipeline.generate(name, self.columns, seed=self.context.seed + k, guidance=0.0).images
                for k, name in enumerate(self.context.class_names[: self.max_classes])]

    # ------------------------------------------------------------------ hyperparameters
    def _write_hparams(self, hparams: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams as summaries

        metrics = {f"{stage}/val/loss": 0.0 for stage in self.stage_epochs}  # names only: the values are the scalars
        experiment, start, _ = summaries(flatten_hparams(hparams), metrics)
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start)

    def _end_session(self) -> None:
        """Mark the run done (the hparams dashboard shows its status)."""
        from torch.utils.tensorboard.summary import hparams as summaries

        self.writer.file_writer.add_summary(summaries({}, {})[2])
