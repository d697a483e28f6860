"""The run folder: its files, its ``run.json``, the train/validation split, and resuming.

Everything that knows where a run's files are, or which images a run trained and
validated on, is here: training, evaluation and the CLI all ask this module, so the split
is computed in exactly one place.

A run folder holds ``config.json`` and ``model.safetensors`` (the trained pipeline),
``run.json`` (the settings and data source it started with), ``metrics.jsonl`` (one line
per epoch and stage), ``figures/``, ``checkpoints/`` while training, and after
``latentflows evaluate`` ``eval.json``, ``eval-nearest.png`` and ``classifier/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .compat import check_resumable, saved_run_config, settings_run_config
from .config import RunConfig
from .data import ImageDataset
from .errors import DataError, ModelFileError, RunExistsError
from .storage import read_json, write_json, write_text_atomically

SETTINGS_FORMAT = "latentflows-run-settings"
SETTINGS_VERSION = 2
# the format tags of config.json and model.safetensors (LatentFlowPipeline.save writes them)
RUN_FORMAT = "latentflows-run"
RUN_FORMAT_VERSION = 2
WEIGHTS_FORMAT = "latentflows-weights"


def stratified_split(labels: torch.Tensor, classes: int, val_fraction: float, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation indices, seeded and stratified by class (both keep the class proportions).

    Each class with at least 2 members gives at least one validation and one training index.

    Example:
        >>> import torch
        >>> train, val = stratified_split(torch.tensor([0] * 8 + [1] * 2), 2, 0.25, seed=0)
        >>> len(train), len(val)
        (7, 3)
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in range(classes):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_val = int(round(len(members) * val_fraction))
        n_val = min(max(n_val, 1), len(members) - 1) if len(members) > 1 else 0
        val.append(members[:n_val])
        train.append(members[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def split_dataset(dataset: ImageDataset, val_fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """The run's training and validation images (``stratified_split`` of the labels)."""
    train_index, val_index = stratified_split(dataset.labels, dataset.num_classes, val_fraction, seed)
    if len(val_index) == 0:
        raise DataError("too few images to hold out a validation set: add images or lower --val-fraction")
    return dataset.subset(train_index), dataset.subset(val_index)


def run_split(dataset: ImageDataset, config: RunConfig) -> tuple[ImageDataset, ImageDataset]:
    """The split a run with ``config`` trains and validates on."""
    return split_dataset(dataset, config.val_fraction, config.seed)


def apply_limit(dataset: ImageDataset, limit: int | None, seed: int) -> ImageDataset:
    """A stratified subset of ``limit`` images (``--limit``), the same one for the same seed."""
    if limit and limit < len(dataset):
        keep, _ = stratified_split(dataset.labels, dataset.num_classes, 1 - limit / len(dataset), seed)
        dataset = dataset.subset(keep)
    return dataset


class RunFolder:
    """Paths and bookkeeping of one run folder.

    Args:
        path: the folder.

    Example:
        >>> RunFolder("runs/quick").checkpoint("flow").as_posix()
        'runs/quick/checkpoints/flow.safetensors'
    """

    CONFIG, WEIGHTS, METRICS, SETTINGS = "config.json", "model.safetensors", "metrics.jsonl", "run.json"
    CHECKPOINTS, FIGURES, CLASSIFIER, EVAL = "checkpoints", "figures", "classifier", "eval.json"
    TENSORBOARD = "tensorboard"  # event files of train --log tensorboard
    MODEL_FILES = (CONFIG, WEIGHTS)  # the trained pipeline: all that loading it reads

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def weights_file(self) -> Path:
        return self.path / self.WEIGHTS

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def settings_file(self) -> Path:
        return self.path / self.SETTINGS

    @property
    def figures(self) -> Path:
        return self.path / self.FIGURES

    def checkpoint(self, stage: str) -> Path:
        return self.path / self.CHECKPOINTS / f"{stage}.safetensors"

    # ------------------------------------------------------------------ starting and resuming
    def prepare(self, overwrite: bool = False, resume: bool = False) -> "RunFolder":
        """Create the folder; refuse to touch a non-empty one unless ``overwrite`` (then only run files go)."""
        if resume:
            if not self.settings_file.is_file():
                raise ModelFileError(f"{self.path}: nothing to resume (no {self.SETTINGS}); start it with --out")
            if self.weights_file.is_file() and not (self.path / self.CHECKPOINTS).is_dir():
                raise RunExistsError(f"{self.path} is complete (it has {self.WEIGHTS} and no checkpoints); "
                                     f"nothing to resume. Train again with --out and another folder")
            check_resumable(read_json(self.settings_file), self.path)
            return self
        if self.path.exists() and not self.path.is_dir():
            raise RunExistsError(f"{self.path} exists and is not a folder; choose another --out")
        if self.path.is_dir() and any(self.path.iterdir()):
            if not overwrite:
                raise RunExistsError(f"{self.path} already exists and is not empty; choose another --out "
                                     f"or pass --overwrite")
            # the evaluation and its judge describe the old weights: they go with them
            for name in (self.CONFIG, self.WEIGHTS, self.METRICS, self.SETTINGS, self.EVAL,
                         Path(self.EVAL).stem + "-nearest.png"):
                (self.path / name).unlink(missing_ok=True)
            for folder in (self.FIGURES, self.CHECKPOINTS, self.CLASSIFIER, self.TENSORBOARD):
                shutil.rmtree(self.path / folder, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_settings(self, config: RunConfig, data: dict[str, Any] | None,
                       compute: dict[str, Any] | None = None) -> None:
        """``run.json``: the config, data source and compute settings (precision, threads, CPU
        kernels) the run starts with: what ``--resume`` reuses."""
        write_json(self.settings_file, {"format": SETTINGS_FORMAT, "format_version": SETTINGS_VERSION,
                                        "config": config.as_dict(), "data": data or {}, "compute": compute or {}})

    def read_compute(self) -> dict[str, Any]:
        """The compute settings the run started with (empty for runs that did not record them)."""
        return dict(read_json(self.settings_file).get("compute") or {})

    def read_settings(self) -> tuple[RunConfig, dict[str, Any]]:
        """The config and data source from ``run.json`` (older runs' are converted: ``compat``)."""
        settings = read_json(self.settings_file)
        if settings.get("format") != SETTINGS_FORMAT:
            raise ModelFileError(f"{self.settings_file}: not a latentflows run settings file")
        if int(settings.get("format_version", 1)) > SETTINGS_VERSION:
            raise ModelFileError(f"{self.settings_file}: written by a newer latentflows; upgrade to use it")
        return settings_run_config(settings), settings.get("data", {})

    def config(self) -> RunConfig:
        """The run config, from ``run.json``, or from ``config.json`` for a run without one."""
        if self.settings_file.is_file():
            return self.read_settings()[0]
        return saved_run_config(read_json(self.config_file))

    def dataset(self, source: str | None = None, *, progress: bool = True) -> ImageDataset:
        """The images the run was trained on, as its ``run.json`` records them (``--limit`` applied).

        ``source`` replaces the recorded data source (e.g. a parquet file that has moved).
        """
        from .data import load_images

        if self.settings_file.is_file():
            config, data = self.read_settings()
        elif source is not None:
            config, data = self.config(), {}
        else:
            raise ModelFileError(f"{self.path}: no {self.SETTINGS} says which data it was trained on; pass --data")
        dataset = load_images(source if source is not None else data.get("source"), label_field=data.get("label_field"),
                              image_field=data.get("image_field") or "image", image_size=config.image_size,
                              progress=progress)
        return apply_limit(dataset, data.get("limit"), config.seed)

    def completed_epochs(self, stages: list[str]) -> dict[str, int]:
        """The last epoch each stage's checkpoint covers."""
        done = {}
        for stage in stages:
            path = self.checkpoint(stage)
            if path.exists():
                try:
                    with safe_open(str(path), framework="pt") as reader:
                        done[stage] = int((reader.metadata() or {})["epoch"])
                except Exception as error:
                    raise ModelFileError(f"{path}: unreadable checkpoint ({error}); remove it to restart that stage") from None
        return done

    def truncate_metrics(self, completed: dict[str, int]) -> None:
        """Keep the metric lines of epochs that a checkpoint covers; drop the rest."""
        if not self.metrics_file.exists():
            return
        kept = []
        for line in self.metrics_file.read_text().splitlines():
            row = json.loads(line) if line.strip() else None
            if row is not None and row["epoch"] <= completed.get(row["stage"], 0):
                kept.append(line + "\n")
        write_text_atomically(self.metrics_file, "".join(kept))

    def metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` (empty if there is none)."""
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def weights_digest(self) -> str:
        """SHA-256 of ``model.safetensors``: says whether the trained weights changed (a run that
        reuses this one's autoencoder records it, and its ``--resume`` checks it)."""
        digest = hashlib.sha256()
        with open(self.weights_file, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def remove_checkpoints(self) -> None:
        shutil.rmtree(self.path / self.CHECKPOINTS, ignore_errors=True)
