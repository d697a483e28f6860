"""Command line: ``latentflows train | sample | evaluate | compare | interpolate | info | cache | push |
export | demo``.

Every user error (bad option, missing file, unknown class) ends with one line on stderr
and exit code 2; nothing existing is overwritten without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

from .config import OPTIONS, PRESETS, integer, non_negative_float, parse_set, positive_float, positive_int
from .distributed import as_runtime
from .errors import LatentflowsError, MissingModuleError
from .extras import require
from .runtime import Runtime, add_compute_options

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunConfig
    from .data import ImageDataset

EXIT_USAGE = 2


def _variants(text: str) -> tuple[int, ...]:
    """``0,2`` -> (0, 2); ``none`` -> ()."""
    if text.strip().lower() == "none":
        return ()
    try:
        variants = tuple(int(part) for part in text.split(","))
    except ValueError:
        variants = (-1,)
    if not variants or any(v not in (0, 1, 2) for v in variants):
        raise ValueError(f"expected EfficientNet-Lite variants among 0, 1, 2 (e.g. 0,2) or none, got {text!r}")
    return variants


def _argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` from a config value parser: its ValueError becomes a usage error."""

    def wrapped(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    wrapped.__name__ = getattr(parse, "__name__", "value")
    return wrapped


_positive_int = _argument(positive_int)
_int = _argument(integer)
_positive_float = _argument(positive_float)
_non_negative_float = _argument(non_negative_float)


def add_guidance_options(parser: argparse.ArgumentParser) -> None:
    """``--guidance`` and ``--candidates``: resample by the flow's class posterior (``latentflows.guidance``)."""
    parser.add_argument("--guidance", type=_non_negative_float, default=0.0, metavar="GAMMA",
                        help="keep samples with probability proportional to p(class | embedding)^GAMMA, the "
                             "flow's own class posterior: more class, less variety (default 0: plain sampling)")
    parser.add_argument("--candidates", type=_positive_int, default=8, metavar="K",
                        help="with --guidance: embeddings drawn per image kept (default 8)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentflows", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train autoencoder and flow, write a run folder")
    train.add_argument("--data", help="hub id, parquet file or image folder (default: embedded Oxford pets)")
    train.add_argument("--label-field", help="field giving the class for parquet/hub data (default: dog, else label)")
    train.add_argument("--image-field", default="image", help="field holding the image (default: image)")
    train.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="starting settings (default: quick)")
    target = train.add_mutually_exclusive_group()
    target.add_argument("--out", type=Path, help="run folder to create")
    target.add_argument("--resume", type=Path, metavar="RUN",
                        help="continue an interrupted run from its last checkpoint (same settings and data)")
    train.add_argument("--overwrite", action="store_true", help="replace the run files in an existing --out folder")
    train.add_argument("--limit", type=_positive_int, help="use only this many images (a stratified subset), for trials")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--checkpoint-every", type=_positive_int, default=1, metavar="EPOCHS",
                       help="save a resumable checkpoint every this many epochs (default 1)")
    train.add_argument("--compile", action="store_true", default=None, help="torch.compile the training steps")
    add_compute_options(train, training=True)
    train.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", type=_argument(parse_set),
                       help="set any config path, VALUE as JSON, e.g. stages.flow.config.epochs=50 or "
                            "stages.flow.config.model.config.bijection='{\"class\": \"Additive\"}' (repeatable)")
    add_import_option(train, "its @latentflows.register components can then be named")
    train.add_argument("--show-config", action="store_true", help="print the resulting run config and exit")
    train.add_argument("--log", choices=["tensorboard"], action="append", default=[],
                       help="also log to TensorBoard (RUN/tensorboard: scalars of both stages, image grids, "
                            "the hyperparameters); metrics.jsonl is always written")
    train.add_argument("--log-images-every", type=_positive_int, default=5, metavar="EPOCHS",
                       help="epochs between TensorBoard image grids (default 5)")
    for name, option in OPTIONS.items():  # parsed in run_train: a bad value is a one-line error
        train.add_argument(f"--{name}", metavar=name.replace("-", "_").upper(), help=option.help)

    sample = commands.add_parser("sample", help="generate images of one class from a trained run")
    sample.add_argument("run", type=Path)
    add_compute_options(sample)
    sample.add_argument("--class", dest="label", required=True, help="class name, e.g. cat or dog")
    sample.add_argument("-n", type=_positive_int, default=16, help="number of images (default 16)")
    sample.add_argument("--temperature", type=_positive_float, default=1.0, help="scale of the base noise (default 1)")
    sample.add_argument("--seed", type=_int, default=0)
    add_guidance_options(sample)
    sample.add_argument("--out", type=Path, help="PNG grid to write, highest log-density first")
    sample.add_argument("--npy", type=Path, help="the uint8 images (n, S, S, 3) as .npy (with or without --out)")
    sample.add_argument("--overwrite", action="store_true", help="replace existing output files")

    evaluate = commands.add_parser("evaluate", help="measure a trained run on its validation split, write eval.json")
    evaluate.add_argument("run", type=Path)
    add_compute_options(evaluate)
    evaluate.add_argument("--data", help="data source, when the one in the run's run.json has moved")
    evaluate.add_argument("--samples", type=_positive_int, metavar="N",
                          help="generated images per class (default: as many as the class has validation images)")
    evaluate.add_argument("--seed", type=_int, default=0, help="seed for the generated images (default 0)")
    evaluate.add_argument("--temperature", type=_positive_float, default=1.0, help="scale of the base noise")
    add_guidance_options(evaluate)
    fid = evaluate.add_mutually_exclusive_group()
    fid.add_argument("--fid-weights", type=Path, metavar="PATH",
                     help="Inception weights for FID/KID (.safetensors, or torch-fidelity's .pth); "
                          "default: the cached copy, else a download")
    fid.add_argument("--no-fid", action="store_true", help="skip FID and KID")
    evaluate.add_argument("--no-download", action="store_true", help="never download the Inception weights")
    evaluate.add_argument("--imagenet", type=_argument(_variants), default=(0, 2), metavar="VARIANTS",
                          help="EfficientNet-Lite variants (0, 1, 2) whose ImageNet features and classes measure "
                               "the samples, e.g. 0,2 (the default), or none")
    evaluate.add_argument("--classifier-epochs", type=_positive_int, default=12,
                          help="epochs for the judge classifier, when the run has none yet (default 12)")
    evaluate.add_argument("--judge", type=Path, metavar="FOLDER",
                          help="judge by another run's classifier (e.g. runs/a/classifier), to compare runs "
                               "on the same data by one judge")
    evaluate.add_argument("--out", type=Path, help="report to write (default RUN/eval.json)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing report")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress messages")

    compare = commands.add_parser("compare", help="the figures of evaluated runs side by side")
    compare.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run folders (with eval.json) or reports")

    interpolate = commands.add_parser("interpolate", help="decode a walk between two classes through the base space")
    interpolate.add_argument("run", type=Path)
    add_compute_options(interpolate)
    interpolate.add_argument("--from", dest="start", required=True, help="class at the left end, e.g. cat")
    interpolate.add_argument("--to", dest="end", required=True, help="class at the right end, e.g. dog")
    interpolate.add_argument("--steps", type=_positive_int, default=10, help="images per row (default 10)")
    interpolate.add_argument("--seed", type=_int, default=0, help="picks the two end points (default 0)")
    interpolate.add_argument("--temperature", type=_positive_float, default=1.0, help="scale of the end points")
    interpolate.add_argument("--out", type=Path, required=True, help="PNG to write (rows: linear, spherical)")
    interpolate.add_argument("--overwrite", action="store_true", help="replace an existing file")

    info = commands.add_parser("info", help="describe a trained run")
    info.add_argument("run", type=Path)

    from . import demo, export, hub

    hub.add_push_arguments(commands.add_parser("push", help="upload a run to the Hugging Face Hub, with a model card"))
    export.add_arguments(commands.add_parser("export", help="the generator as ONNX (noise and class in; image and "
                                                            "log-density out), checked with onnxruntime"))
    demo.add_arguments(commands.add_parser("demo", help="a web page (Gradio) to generate and interpolate"))

    cache = commands.add_parser("cache", help="show or empty the decoded-image cache")
    cache.add_argument("action", choices=["info", "clear"])
    for name in LOADS_A_RUN:
        add_import_option(commands.choices[name], "one that registered the run's own components (its config.json "
                                                  "lists them under imports); never imported for you")
    return parser


def add_import_option(parser: argparse.ArgumentParser, why: str) -> None:
    """``--import MODULE`` (repeatable): modules imported before the command runs (see ``main``)."""
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help=f"import a module first: {why} (repeatable)")


def _runtime(args: argparse.Namespace) -> Runtime:
    """The runtime the options ask for; a device that is not there is a one-line error."""
    try:
        return as_runtime(args.device, getattr(args, "precision", "auto"), getattr(args, "deterministic", False))
    except ValueError as error:
        raise LatentflowsError(f"--device {args.device}: {error}") from None


def run_cache(args: argparse.Namespace) -> None:
    from .data import cache_entries, clear_cache, default_cache_dir

    if args.action == "clear":
        files, size = clear_cache()
        print(f"removed {files} file(s), {size / 2**20:.1f} MiB, from {default_cache_dir()}")
        return
    entries = cache_entries()
    total = sum(e.stat().st_size for e in entries)
    print(f"{default_cache_dir()}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {total / 2**20:.1f} MiB")


def run_train(args: argparse.Namespace) -> None:
    from .data import load_images
    from .runs import RunFolder, apply_limit

    runtime = _runtime(args)  # an unavailable device fails before the slow steps
    if "tensorboard" in args.log:  # so does a missing extra
        from .training.tensorboard import summary_writer

        summary_writer()
    if args.resume is not None:
        given = [f"--{name}" for name in OPTIONS if getattr(args, name.replace("-", "_")) is not None]
        given += ["--set"] * bool(args.set) + ["--preset"] * (args.preset != "quick") + ["--compile"] * bool(args.compile)
        if given:
            raise LatentflowsError(f"--resume continues a run with the settings in its run.json; drop "
                                   f"{', '.join(given)} (or start a new run with --out)")
        run = RunFolder(args.resume).prepare(resume=True)
        try:
            config, data = run.read_settings()
        except ValueError as error:
            raise LatentflowsError(f"{run.settings_file}: {error}") from None
        from .training.runner import compute_as_started

        compute_as_started(runtime, run)  # the precision the run started with, before it is shown
        _say(runtime, f"resuming {args.resume} (settings and data from its run.json)")
        with runtime.main_process_first():  # one process decodes into the cache, the others read it
            dataset = run.dataset(progress=not args.no_progress)
        _train_on(dataset, config, args.resume, data, args, runtime, resume=True)
        return
    config = PRESETS[args.preset]
    try:
        values = {}
        for name, option in OPTIONS.items():
            value = getattr(args, name.replace("-", "_"))
            if value is not None:
                try:
                    values[option.path] = option.to_config(value)
                except ValueError as error:
                    raise ValueError(f"--{name}: {error}") from None
        values.update(dict(args.set))
        if args.compile:
            values["compile"] = True
        config = config.with_values(values)
        config.validate()
    except ValueError as error:
        raise LatentflowsError(str(error)) from None
    if args.show_config:
        print(json.dumps(config.as_dict(), indent=2))
        return
    if args.out is None:
        raise LatentflowsError("train needs --out RUN (or --resume RUN)")
    if runtime.is_main_process:
        RunFolder(args.out).prepare(args.overwrite)  # fail before the slow steps
    with runtime.main_process_first():  # one process decodes into the cache, the others read it
        dataset = load_images(args.data, label_field=args.label_field, image_field=args.image_field,
                              image_size=config.image_size, progress=not args.no_progress)
    data = {"source": str(Path(args.data).resolve()) if args.data and Path(args.data).exists() else args.data,
            "label_field": args.label_field, "image_field": args.image_field, "limit": args.limit,
            "imports": args.imports}
    _train_on(apply_limit(dataset, args.limit, config.seed), config, args.out, data, args, runtime, resume=False)


def _import_modules(names: list[str]) -> None:
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise LatentflowsError(f"--import {name}: {error}; is it on PYTHONPATH?") from None
        except Exception as error:  # the user's module failed while it ran
            raise LatentflowsError(f"--import {name}: the module raised {type(error).__name__}: {error}") from None


def _say(runtime: Runtime, message: str) -> None:
    """A progress line on stderr, from the main process only."""
    if runtime.is_main_process:
        print(message, file=sys.stderr)


def _train_on(dataset: ImageDataset, config: RunConfig, run_dir: Path, data: dict, args: argparse.Namespace,
              runtime: Runtime, resume: bool) -> None:
    from .training import train

    if resume:
        _import_modules(data.get("imports") or [])
    counts = ", ".join(f"{k} {v}" for k, v in dataset.class_counts().items())
    _say(runtime, f"data: {len(dataset)} images, {dataset.num_classes} classes ({counts}); "
                  f"{runtime.precision} ({runtime.precision_reason})"
                  + (f"; {runtime.world_size} processes" if runtime.world_size > 1 else ""))
    try:
        pipeline = train(dataset, config, run_dir, overwrite=getattr(args, "overwrite", False), resume=resume,
                         data_spec=data, progress=not args.no_progress, checkpoint_every=args.checkpoint_every,
                         device=runtime, tensorboard=args.log_images_every if "tensorboard" in args.log else False)
    except KeyboardInterrupt:
        print(f"latentflows: interrupted; the last completed epoch is saved: continue with "
              f"latentflows train --resume {run_dir}", file=sys.stderr)
        raise SystemExit(130) from None
    if runtime.is_main_process:
        print(f"wrote {run_dir} in {pipeline.summary['train_seconds']:.0f}s "
              f"(try: latentflows sample {run_dir} --class {dataset.class_names[-1]} -n 16 --out grid.png)")


def run_sample(args: argparse.Namespace) -> None:
    import numpy as np

    from .pipeline import load
    from .plots import image_grid

    if args.out is None and args.npy is None:
        raise LatentflowsError("sample writes --out GRID.png, --npy IMAGES.npy or both; pass at least one")
    if args.out is not None:
        _check_png_target(args.out, args.overwrite)
    if args.npy is not None and args.npy.suffix != ".npy":
        raise LatentflowsError(f"--npy {args.npy}: the file name must end in .npy (numpy would add it silently)")
    if args.npy is not None and args.npy.exists() and not args.overwrite:
        raise LatentflowsError(f"{args.npy} already exists; choose another name or pass --overwrite")
    runtime = _runtime(args)
    pipeline = load(args.run, runtime.device, runtime.precision)
    samples = pipeline.generate(args.label, args.n, args.temperature, args.seed, args.guidance, args.candidates)
    if args.out is not None:
        columns = min(8, args.n)
        rows = [samples.images[i : i + columns] for i in range(0, args.n, columns)]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        image_grid(rows, scale=2).save(args.out)
    if args.npy is not None:
        args.npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.npy, samples.images.permute(0, 2, 3, 1).numpy())
    posterior = "" if samples.class_prob is None else \
        f", p({samples.label} | image) {samples.class_prob.mean():.2f} on average"
    written = " and ".join(str(path) for path in (args.out, args.npy) if path is not None)
    print(f"wrote {args.n} {samples.label} image(s) to {written}"
          f" (log-density {samples.log_prob[0]:.1f} .. {samples.log_prob[-1]:.1f} nats{posterior})")


def run_evaluate(args: argparse.Namespace) -> None:
    from .evaluation import evaluate_run, format_report

    classifier_dir = None
    if getattr(args, "hub_id", None):  # never write into the Hugging Face cache
        if args.out is None:
            raise LatentflowsError(f"{args.hub_id} is a Hub model: evaluate writes its report and judge beside "
                                   "--out; pass --out FILE.json")
        classifier_dir = args.out.with_name(args.out.stem + "-classifier")
    report = evaluate_run(args.run, source=args.data, out=args.out, overwrite=args.overwrite,
                          classifier_dir=classifier_dir,
                          fid_weights=args.fid_weights, fid=not args.no_fid, download=not args.no_download,
                          samples_per_class=args.samples, seed=args.seed, temperature=args.temperature,
                          guidance=args.guidance, candidates=args.candidates,
                          classifier_epochs=args.classifier_epochs, judge=args.judge, imagenet=args.imagenet,
                          progress=not args.no_progress, device=_runtime(args))
    print(format_report(report))
    print(f"wrote {args.out or args.run / 'eval.json'} in {report['seconds']:.0f}s")


def run_compare(args: argparse.Namespace) -> None:
    from .evaluation import compare, read_report

    print(compare([read_report(path) for path in args.runs], [path.name or str(path) for path in args.runs]))


def run_interpolate(args: argparse.Namespace) -> None:
    from .interpolation import interpolate
    from .pipeline import load
    from .plots import interpolation_strip

    _check_png_target(args.out, args.overwrite)
    if args.steps < 2:
        raise LatentflowsError(f"--steps must be at least 2, got {args.steps}")
    runtime = _runtime(args)
    pipeline = load(args.run, runtime.device, runtime.precision)
    rows = interpolate(pipeline, args.start, args.end, args.steps, args.seed, args.temperature)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start, end = (pipeline.class_names[pipeline.class_index(label)] for label in (args.start, args.end))
    interpolation_strip(rows, start, end, args.out)
    print(f"wrote {args.out}: {args.steps} steps from {start} to {end}, linear and spherical")


def _check_png_target(path: Path, overwrite: bool) -> None:
    if path.suffix.lower() != ".png":
        raise LatentflowsError(f"--out must end in .png, got {path}")
    if path.exists() and not overwrite:
        raise LatentflowsError(f"{path} already exists; choose another name or pass --overwrite")


def run_info(args: argparse.Namespace) -> None:
    from .pipeline import load
    from .registry import Configurable
    from .runs import RunFolder

    pipeline = load(args.run, "cpu")
    flow_parameters = sum(p.numel() for p in pipeline.flow.parameters())
    ae_parameters = sum(p.numel() for p in pipeline.autoencoder.parameters())
    info = {"run": str(args.run), "classes": pipeline.class_names,
            "autoencoder": {**cast(Configurable, pipeline.autoencoder).get_config(), "parameters": ae_parameters},
            "flow": {**pipeline.flow.get_config(), "parameters": flow_parameters},
            "summary": pipeline.summary, "config": pipeline.config}
    rows = RunFolder(args.run).metrics()
    for stage in dict.fromkeys(r["stage"] for r in rows):
        last = [r for r in rows if r["stage"] == stage][-1]
        info[f"final_{stage}"] = {k: v for k, v in last.items() if k != "stage"}
    print(json.dumps(info, indent=2))


# commands whose RUN may also be a Hugging Face Hub id (owner/name), downloaded to the HF cache
TAKES_A_RUN = ("sample", "evaluate", "interpolate", "info", "export", "demo")
# commands that load a run's model, so take --import for the modules that registered its components
LOADS_A_RUN = (*TAKES_A_RUN, "push")
# the optional modules a command needs: (module, extra)
NEEDS = {"export": [("onnx", "export"), ("onnxruntime", "export")], "demo": [("gradio", "demo")]}


def _resolve_run(args: argparse.Namespace) -> None:
    from .hub import is_hub_id, resolve_run

    args.hub_id = str(args.run) if is_hub_id(args.run) and not Path(args.run).exists() else None
    args.run = Path(resolve_run(args.run))


def _run_push(args: argparse.Namespace) -> None:
    from .hub import run_push

    run_push(args)


def _run_export(args: argparse.Namespace) -> None:
    from .export import run

    run(args)


def _run_demo(args: argparse.Namespace) -> None:
    from .demo import run

    run(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for module, extra in NEEDS.get(args.command, ()):  # a missing extra before any download
            require(module, extra)
        _import_modules(getattr(args, "imports", []))  # a bad module fails before any download
        if args.command in TAKES_A_RUN:
            _resolve_run(args)
        {"train": run_train, "sample": run_sample, "evaluate": run_evaluate, "compare": run_compare,
         "interpolate": run_interpolate, "info": run_info, "cache": run_cache, "push": _run_push,
         "export": _run_export, "demo": _run_demo}[args.command](args)
    except MissingModuleError as error:  # name this command's --import
        print(f"latentflows: error: {error.for_command(args.command)}", file=sys.stderr)
        return EXIT_USAGE
    except LatentflowsError as error:
        print(f"latentflows: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("latentflows: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
