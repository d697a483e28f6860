"""``train``: run the config's stages in order and write the run folder.

Each stage plans its models, optimizers and objective (``stages.py``), the ``Trainer``
fits them with logging and checkpoints, and the stage's product (the autoencoder, the
flow) is handed to the stages after it. The result is a ``LatentFlowPipeline``.
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, cast

import torch
from torch import nn

from ..autoencoder import encode_images
from ..config import RunConfig
from ..data import ImageDataset
from ..distributed import as_runtime
from ..errors import LatentflowsError
from ..guidance import fit_posterior_temperature
from ..pipeline import LatentFlowPipeline
from ..runs import RunFolder, run_split
from ..runtime import Runtime, evaluation_mode
from .build import build_stages, validate_config
from .callbacks import Checkpoint, EarlyStopping, JsonlLogger, read_checkpoint
from .stages import StageContext
from .tensorboard import IMAGES_EVERY, TensorBoardLogger, summary_writer
from .trainer import Trainer

if TYPE_CHECKING:  # pragma: no cover
    from ..flows import Flow


def train(dataset: ImageDataset, config: RunConfig, run_dir: str | Path | None = None, *,
          overwrite: bool = False, progress: bool = True, figures: bool = True, resume: bool = False,
          data_spec: dict[str, Any] | None = None, checkpoint_every: int = 1,
          device: str | torch.device | Runtime = "auto", precision: str = "auto",
          deterministic: bool = False, tensorboard: bool | int = False,
          reuse: Mapping[str, nn.Module] | None = None) -> LatentFlowPipeline:
    """Train every stage of ``config`` on ``dataset``; with ``run_dir``, write the run folder.

    With a run folder, each stage is checkpointed every ``checkpoint_every`` epochs and
    ``resume=True`` continues an interrupted run from its last checkpoint, ending with the
    same weights as an uninterrupted run. Checkpoints are removed once the run is complete.

    Args:
        dataset: the images and labels (split here into training and validation).
        config: the run config (e.g. ``PRESETS["quick"]``).
        run_dir: the run folder to write, or None to train in memory.
        overwrite: replace the run files of an existing folder.
        progress: status bars and a line per epoch.
        figures: write the run's figures.
        resume: continue the run in ``run_dir`` from its checkpoints.
        data_spec: where the data came from, recorded in ``run.json`` for ``--resume``.
        checkpoint_every: epochs between checkpoints.
        device: ``"auto"`` (a GPU when there is one), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``,
            or a ``Runtime`` (which then also gives the precision and determinism).
        precision: ``"auto"`` (bf16 where the device has native bf16 matrix math, else fp32;
            see ``resolve_precision``), ``"fp32"``, ``"bf16"`` or ``"fp16"``: autocast for the
            autoencoder; the flow trains in fp32. The pipeline's ``summary["precision"]`` records
            the one used.
        deterministic: deterministic kernels only (see ``Runtime.session``).
        tensorboard: also log for TensorBoard into ``RUN/tensorboard`` (``TensorBoardLogger``;
            needs ``run_dir`` and the ``tensorboard`` extra): True for image grids every 5
            epochs and at each stage's last, or a number of epochs between grids.
        reuse: trained products to use instead of training their stages, by stage name:
            ``{"autoencoder": module}`` trains only the flow, on ``module``'s codes. The
            pipeline gets a copy (``module`` itself is not moved or changed). ``config`` should
            be the one ``module`` was trained with (its seed, split and autoencoder settings):
            it is saved with the run. ``summary["reused"]`` lists the stages not trained here.

    The returned pipeline is on the device it was trained on.
    """
    if dataset.num_classes < 1:
        raise LatentflowsError("the data has no classes")
    if dataset.image_size != config.image_size:
        raise LatentflowsError(f"images are {dataset.image_size}px but the config expects {config.image_size}px")
    validate_config(config, classes=dataset.num_classes)
    images_every = _images_every(tensorboard, run_dir)
    runtime = as_runtime(device, precision, deterministic)
    stages = build_stages(config)
    reuse = dict(reuse or {})
    unknown = sorted(set(reuse) - {name for name, _ in stages})
    if unknown:
        raise LatentflowsError(f"reuse names no stage of this config: {', '.join(unknown)}; "
                               f"its stages are {', '.join(name for name, _ in stages)}")
    run, logger = None, []
    if run_dir is not None and runtime.is_main_process:  # in several processes, the main one writes
        run = RunFolder(run_dir).prepare(overwrite, resume)
        run.checkpoint("any").parent.mkdir(exist_ok=True)
        if resume:
            run.truncate_metrics(run.completed_epochs([name for name, _ in stages]))
        else:
            run.write_settings(config, data_spec, runtime.compute_settings())
        logger = [JsonlLogger(run.metrics_file)]
    elif run_dir is not None:
        run = RunFolder(run_dir)  # read (checkpoints to resume from), never written
    if resume and run is not None:
        compute_as_started(runtime, run)
    runtime.barrier()
    with runtime.session():
        return _train_stages(dataset, config, run, stages, logger, runtime, resume, progress, figures,
                             checkpoint_every, images_every, reuse)


def compute_as_started(runtime: Runtime, run: RunFolder) -> None:
    """Make ``runtime`` compute as the run being resumed did (its precision and CPU threads, from
    ``run.json``), so that it ends with the same bits; one clear error for an explicitly asked
    other precision, a warning for other CPU kernels. Calling it again changes nothing."""
    try:
        for warning in runtime.match(run.read_compute()):
            warnings.warn(warning, stacklevel=3)
    except ValueError as error:
        raise LatentflowsError(f"{run.settings_file}: {error}") from None


def _images_every(tensorboard: bool | int, run_dir: str | Path | None) -> int:
    """``train``'s ``tensorboard`` as epochs between image grids (0: no TensorBoard); checks
    that it can be done before anything is trained or written."""
    if isinstance(tensorboard, bool):
        every = IMAGES_EVERY if tensorboard else 0
    elif isinstance(tensorboard, int) and tensorboard >= 1:
        every = tensorboard
    else:
        raise LatentflowsError(f"tensorboard must be true, false or a positive number of epochs, got {tensorboard!r}")
    if every and run_dir is None:
        raise LatentflowsError("TensorBoard logging writes into the run folder: give a run folder (--out)")
    if every:
        summary_writer()  # a missing extra: one line naming the pip command
    return every


def _train_stages(dataset: ImageDataset, config: RunConfig, run: RunFolder | None, stages: list, logger: list,
                  runtime: Runtime, resume: bool, progress: bool, figures: bool,
                  checkpoint_every: int, images_every: int, reuse: dict[str, nn.Module]) -> LatentFlowPipeline:
    torch.manual_seed(config.seed)
    if runtime.device.type == "cuda":
        torch.cuda.manual_seed_all(config.seed)
    train_set, val_set = run_split(dataset, config)
    context = StageContext(train_set, val_set, runtime, seed=config.seed, image_size=config.image_size)
    watch = []  # TensorBoard: after the stage's callbacks (it sees their stop), before the checkpoint
    if images_every and run is not None and runtime.is_main_process:
        watch = [TensorBoardLogger.for_run(run, config, context, images_every, resume)]
    started = time.perf_counter()
    for name, stage in stages:
        if name in reuse:  # trained elsewhere: handed on as it was given
            context.models[name] = copy.deepcopy(reuse[name]).to(runtime.device)
            context.summary.setdefault("reused", []).append(name)
            continue
        plan = stage.plan(context)
        saving = [Checkpoint(run.checkpoint(name), checkpoint_every)] if run and runtime.is_main_process else []
        trainer = Trainer(plan.model, plan.updates, plan.loss_fn, runtime=runtime, autocast=plan.autocast,
                          stage=name, callbacks=logger + plan.callbacks + watch + saving,  # the checkpoint last
                          progress=progress, grad_clip=config.grad_clip, compile=config.compile,
                          precision_tag=plan.precision_tag)
        start = 1
        if resume and run is not None and run.checkpoint(name).exists():
            tensors, metadata = read_checkpoint(run.checkpoint(name))
            trainer.load_training_state(tensors, metadata, plan.train_batches)
            start = int(metadata["epoch"]) + 1
        trainer.fit(plan.train_batches, plan.epochs, plan.val_batches, start_epoch=start)
        context.models[name] = plan.product()
        for callback in plan.callbacks:
            if isinstance(callback, EarlyStopping):
                context.summary[f"{name}_best_epoch"] = callback.best_epoch
    context.summary["train_seconds"] = round(time.perf_counter() - started, 1)
    context.summary["precision"] = runtime.precision  # the autoencoder's precision (the flow: its coupling networks only)
    flow = cast("Flow", context.models["flow"])  # what the flow stage trained
    if len(dataset.class_names) > 1 and len(val_set):  # calibrates class guidance (latentflows.guidance)
        with evaluation_mode(flow):
            context.summary["posterior_temperature"] = fit_posterior_temperature(
                flow, encode_images(context.models["autoencoder"], val_set.images),
                val_set.labels.to(runtime.device), len(dataset.class_names))
    pipeline = LatentFlowPipeline(context.models["autoencoder"], flow, dataset.class_names,
                                  config.as_dict(), context.summary, precision=runtime.precision).eval()
    runtime.barrier()  # every process is done with the checkpoints
    if run is not None and runtime.is_main_process:
        pipeline.save(run.path)
        run.remove_checkpoints()  # the run is complete: model.safetensors has it all
        if figures:
            from ..plots import write_run_figures

            write_run_figures(pipeline, run.path, val_set, seed=config.seed)
    return pipeline
