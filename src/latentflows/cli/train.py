"""``latentflows train``: train the autoencoder and the flow of a run config, write a run folder.

The config is a preset (``--preset``) changed by the config flags and ``--set``
(``options.py``); ``--resume`` continues an interrupted run with the settings in its run.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LatentflowsError
from ..presets import PRESETS
from ..runtime import Runtime, add_compute_options
from .common import add_import_option, import_modules, runtime_of, say
from .options import (
    add_option_flags,
    add_set_option,
    argument,
    config_values,
    given_flags,
    positive_int,
    refuse_other_flows_options,
    refuse_removed_flags,
)

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ..config import RunConfig
    from ..data import ImageDataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="hub id, parquet file or image folder (default: embedded Oxford pets)")
    parser.add_argument("--label-field", help="field giving the class for parquet/hub data (default: dog, else label)")
    parser.add_argument("--image-field", default="image", help="field holding the image (default: image)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="starting settings (default: quick)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--out", type=Path, help="run folder to create")
    target.add_argument("--resume", type=Path, metavar="RUN",
                        help="continue an interrupted run from its last checkpoint (same settings and data)")
    parser.add_argument("--overwrite", action="store_true", help="replace the run files in an existing --out folder")
    parser.add_argument("--autoencoder-from", type=Path, metavar="RUN",
                        help="train only the flow, on the autoencoder of a finished run (its weights, settings, "
                             "data and split, unchanged): flow flags and --set stages.flow.* apply to its settings "
                             "(--data: where that run's data is now)")
    parser.add_argument("--limit", type=argument(positive_int),
                        help="use only this many images (a stratified subset), for trials")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--checkpoint-every", type=argument(positive_int), default=1, metavar="EPOCHS",
                        help="save a resumable checkpoint every this many epochs (default 1)")
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the training steps")
    add_compute_options(parser, training=True)
    add_set_option(parser)
    add_import_option(parser, "its @latentflows.register components can then be named")
    parser.add_argument("--show-config", action="store_true", help="print the resulting run config and exit")
    parser.add_argument("--log", choices=["tensorboard"], action="append", default=[],
                        help="also log to TensorBoard (RUN/tensorboard: scalars of both stages, image grids, "
                             "the hyperparameters); metrics.jsonl is always written")
    parser.add_argument("--log-images-every", type=argument(positive_int), default=5, metavar="EPOCHS",
                        help="epochs between TensorBoard image grids (default 5)")
    add_option_flags(parser)


def run(args: argparse.Namespace) -> None:
    from ..data import load_images
    from ..runs import RunFolder, apply_limit

    refuse_removed_flags(args)
    runtime = runtime_of(args)  # an unavailable device fails before the slow steps
    if "tensorboard" in args.log:  # so does a missing extra
        from ..training.tensorboard import summary_writer

        summary_writer()
    if args.resume is not None:
        if args.autoencoder_from is not None:
            raise LatentflowsError("--resume continues a run as it started (its run.json says which autoencoder it "
                                   "reuses); drop --autoencoder-from")
        _resume(args, runtime)
        return
    if args.autoencoder_from is not None:
        _train_flow_only(args, runtime)
        return
    config = _checked_config(PRESETS[args.preset], _flag_values(args), args)
    if config is None:
        return
    if runtime.is_main_process:
        RunFolder(args.out).prepare(args.overwrite)  # fail before the slow steps
    with runtime.main_process_first():  # one process decodes into the cache, the others read it
        dataset = load_images(args.data, label_field=args.label_field, image_field=args.image_field,
                              image_size=config.image_size, progress=not args.no_progress)
    data = {"source": str(Path(args.data).resolve()) if args.data and Path(args.data).exists() else args.data,
            "label_field": args.label_field, "image_field": args.image_field, "limit": args.limit,
            "imports": args.imports}
    _train_on(apply_limit(dataset, args.limit, config.seed), config, args.out, data, args, runtime, resume=False)


def _flag_values(args: argparse.Namespace) -> dict:
    """The config paths the flags set; a bad value is a one-line error."""
    try:
        return config_values(args)
    except ValueError as error:
        raise LatentflowsError(str(error)) from None


def _checked_config(base: RunConfig, values: dict, args: argparse.Namespace) -> RunConfig | None:
    """``base`` with the flags' values, checked before anything slow runs; None when
    ``--show-config`` printed it (nothing to train)."""
    from ..training import validate_config

    try:
        config = base.with_values(values)
        refuse_other_flows_options(config, [flag[2:] for flag in given_flags(args) if flag != "--set"])
        validate_config(config)
    except ValueError as error:
        raise LatentflowsError(str(error)) from None
    if args.show_config:
        print(json.dumps(config.as_dict(), indent=2))
        return None
    if args.out is None:
        raise LatentflowsError("train needs --out RUN (or --resume RUN)")
    return config


# config paths a run that reuses an autoencoder keeps from it: its stage, and what fixes the data split
KEPT_WITH_THE_AUTOENCODER = ("stages.autoencoder", "seed", "val_fraction", "image_size")


def _keeps(path: str) -> bool:
    """Whether setting ``path`` would change something a reused autoencoder fixes (``stages`` and
    the whole config, which hold such paths, included)."""
    return any(path == kept or path.startswith(kept + ".") or kept.startswith(path + ".") or not path
               for kept in KEPT_WITH_THE_AUTOENCODER)


def _train_flow_only(args: argparse.Namespace, runtime: Runtime) -> None:
    """``--autoencoder-from SOURCE``: the source run's settings with the flow flags applied, its
    data and split, its trained autoencoder as it is; only the flow stage trains."""
    from ..runs import RunFolder

    source = RunFolder(args.autoencoder_from)
    refused = ["--preset"] * (args.preset != "quick") + ["--limit"] * (args.limit is not None)
    refused += ["--label-field"] * (args.label_field is not None) + ["--image-field"] * (args.image_field != "image")
    values = _flag_values(args)
    refused += [_flag_of(path, args) for path in values if _keeps(path)]
    if refused:
        raise LatentflowsError(f"--autoencoder-from keeps {source.path}'s autoencoder, data and split; drop "
                               f"{', '.join(refused)} (or train a new autoencoder without --autoencoder-from)")
    if not source.path.is_dir():
        raise LatentflowsError(f"--autoencoder-from {source.path}: no such run folder (it takes a local run folder)")
    if not source.weights_file.is_file() or not source.config_file.is_file():
        unfinished = (source / source.CHECKPOINTS).is_dir() and source.settings_file.is_file()
        raise LatentflowsError(f"--autoencoder-from {source.path}: not a finished run (it needs {source.CONFIG} and "
                               f"{source.WEIGHTS})" + (f"; finish it with latentflows train --resume {source.path}"
                                                       if unfinished else ""))
    if not source.settings_file.is_file():
        raise LatentflowsError(f"--autoencoder-from {source.path}: it has no {source.SETTINGS}, which says which data "
                               f"and split its autoencoder was trained on; train the flow with its autoencoder "
                               f"in Python (latentflows.train(..., reuse=...)) or train a new run")
    try:
        settings, data = source.read_settings()
    except ValueError as error:
        raise LatentflowsError(f"{source.settings_file}: {error}") from None
    import_modules(data.get("imports") or [])  # the source's own components, before its config is read
    config = _checked_config(settings, values, args)
    if config is None:
        return
    if args.out.resolve() == source.path.resolve():
        raise LatentflowsError("--out must be a new folder, not the run given to --autoencoder-from")
    data = {**data, "imports": list(dict.fromkeys([*(data.get("imports") or []), *args.imports])),
            "autoencoder_from": str(source.path.resolve()), "autoencoder_sha256": source.weights_digest()}
    if args.data is not None:
        data["source"] = str(Path(args.data).resolve()) if Path(args.data).exists() else args.data
    # the autoencoder and the data load before --out is touched: a failure leaves an existing --out as it was
    autoencoder = _reused_autoencoder(source.path, runtime)
    with runtime.main_process_first():  # one process decodes into the cache, the others read it
        dataset = source.dataset(args.data, progress=not args.no_progress)
    if runtime.is_main_process:
        RunFolder(args.out).prepare(args.overwrite)
    say(runtime, f"training only the flow, on the autoencoder of {source.path}")
    _train_on(dataset, config, args.out, data, args, runtime, resume=False, autoencoder=autoencoder)


def _flag_of(path: str, args: argparse.Namespace) -> str:
    """The flag that set a config path on this command line."""
    from .options import OPTIONS

    named = [f"--{name}" for name, option in OPTIONS.items()
             if option.path == path and getattr(args, name.replace("-", "_")) is not None]
    return named[0] if named else f"--set {path}"


def _reused_autoencoder(path: Path, runtime: Runtime) -> nn.Module:
    """The trained autoencoder of the run at ``path``, on the runtime's device."""
    from ..pipeline import load

    return load(path, device=runtime.device, precision="fp32").autoencoder


def _recorded_autoencoder(run: Path, data: dict, runtime: Runtime) -> nn.Module | None:
    """For ``--resume``: the autoencoder a flow-only run started on, checked to be unchanged."""
    from ..runs import RunFolder

    if not data.get("autoencoder_from"):
        return None
    source = RunFolder(data["autoencoder_from"])
    if not source.weights_file.is_file():
        raise LatentflowsError(f"{run} trains a flow on the autoencoder of {source.path}, which is no longer there; "
                               f"put that run back to resume")
    if data.get("autoencoder_sha256") not in (None, source.weights_digest()):
        raise LatentflowsError(f"{run} trains a flow on the autoencoder of {source.path}, whose weights have changed "
                               f"since (its {source.WEIGHTS} was replaced); the flow cannot be resumed on them: "
                               f"train it again with latentflows train --autoencoder-from {source.path} --out NEW")
    return _reused_autoencoder(source.path, runtime)


def _resume(args: argparse.Namespace, runtime: Runtime) -> None:
    from ..runs import RunFolder
    from ..training.runner import compute_as_started

    given = given_flags(args) + ["--preset"] * (args.preset != "quick") + ["--compile"] * bool(args.compile)
    if given:
        raise LatentflowsError(f"--resume continues a run with the settings in its run.json; drop "
                               f"{', '.join(given)} (or start a new run with --out)")
    run = RunFolder(args.resume).prepare(resume=True)
    try:
        config, data = run.read_settings()
    except ValueError as error:
        raise LatentflowsError(f"{run.settings_file}: {error}") from None
    compute_as_started(runtime, run)  # the precision the run started with, before it is shown
    say(runtime, f"resuming {args.resume} (settings and data from its run.json)")
    import_modules(data.get("imports") or [])
    autoencoder = _recorded_autoencoder(args.resume, data, runtime)
    with runtime.main_process_first():  # one process decodes into the cache, the others read it
        dataset = run.dataset(progress=not args.no_progress)
    _train_on(dataset, config, args.resume, data, args, runtime, resume=True, autoencoder=autoencoder)


def _train_on(dataset: ImageDataset, config: RunConfig, run_dir: Path, data: dict, args: argparse.Namespace,
              runtime: Runtime, resume: bool, autoencoder: nn.Module | None = None) -> None:
    from ..training import train

    if resume:
        import_modules(data.get("imports") or [])
    counts = ", ".join(f"{k} {v}" for k, v in dataset.class_counts().items())
    say(runtime, f"data: {len(dataset)} images, {dataset.num_classes} classes ({counts}); "
                 f"{runtime.precision} ({runtime.precision_reason})"
                 + (f"; {runtime.world_size} processes" if runtime.world_size > 1 else ""))
    try:
        pipeline = train(dataset, config, run_dir, overwrite=getattr(args, "overwrite", False), resume=resume,
                         data_spec=data, progress=not args.no_progress, checkpoint_every=args.checkpoint_every,
                         device=runtime, tensorboard=args.log_images_every if "tensorboard" in args.log else False,
                         reuse={"autoencoder": autoencoder} if autoencoder is not None else None)
    except KeyboardInterrupt:
        print(f"latentflows: interrupted; the last completed epoch is saved: continue with "
              f"latentflows train --resume {run_dir}", file=sys.stderr)
        raise SystemExit(130) from None
    if runtime.is_main_process:
        print(f"wrote {run_dir} in {pipeline.summary['train_seconds']:.0f}s "
              f"(try: latentflows sample {run_dir} --class {dataset.class_names[-1]} -n 16 --out grid.png)")
