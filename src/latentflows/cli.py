"""Command line: ``latentflows train | sample | evaluate | compare | interpolate | info | cache``.

Every user error (bad option, missing file, unknown class) ends with one line on stderr
and exit code 2; nothing existing is overwritten without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from .config import PRESETS, TrainConfig
from .errors import LatentflowsError

EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    if text.strip() in ("0", "0.0"):
        return 0.0
    return _positive_float(text)


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 256,256, got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"hidden sizes must be positive integers, got {text!r}")
    return sizes


def _on_off(text: str) -> bool:
    if text.lower() in ("on", "yes", "true", "1"):
        return True
    if text.lower() in ("off", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


# option name -> (TrainConfig field, type, help)
TRAIN_OPTIONS = {
    "--seed": ("seed", _int, "random seed: same seed, same weights and samples on CPU"),
    "--val-fraction": ("val_fraction", _fraction, "share of each class held out for validation"),
    "--embedding-dim": ("embedding_dim", _positive_int, "autoencoder embedding size (e.g. 128, 256, 512)"),
    "--width": ("width", _positive_int, "autoencoder base width (64 = the notebook's)"),
    "--ae-epochs": ("ae_epochs", _positive_int, "autoencoder epochs"),
    "--ae-batch-size": ("ae_batch_size", _positive_int, "autoencoder batch size"),
    "--ae-lr": ("ae_lr", _positive_float, "autoencoder Adam learning rate"),
    "--ae-loss": ("ae_loss", str, "autoencoder reconstruction loss: mse, huber or huber:THRESHOLD"),
    "--couplings": ("couplings", _positive_int, "number of affine coupling layers"),
    "--hidden": ("hidden", _sizes, "hidden sizes of each coupling network, e.g. 256,256"),
    "--batch-norm": ("batch_norm", _on_off, "invertible batch norm after each coupling (on/off)"),
    "--permute": ("permute", _on_off, "random permutation after each coupling (on/off)"),
    "--mask": ("mask", str, "coupling mask: alternate or half"),
    "--shared-network": ("shared_network", _on_off, "one network for scale and shift (on) or two (off)"),
    "--residual": ("residual", _on_off, "residual blocks in the coupling networks (on/off; hidden sizes must be equal)"),
    "--scale-fn": ("scale_fn", str, "coupling scale function: tanh (bounded log-scale) or softplus"),
    "--flow-noise": ("flow_noise", _non_negative_float, "std of Gaussian noise on the embeddings while the flow trains"),
    "--flow-epochs": ("flow_epochs", _positive_int, "flow epochs"),
    "--flow-batch-size": ("flow_batch_size", _positive_int, "flow batch size"),
    "--flow-lr": ("flow_lr", _positive_float, "flow Adam learning rate"),
    "--flow-patience": ("flow_patience", _positive_int, "stop the flow after this many epochs without a better "
                        "validation NLL, keeping the best weights"),
    "--grad-clip": ("grad_clip", _positive_float, "clip gradient norm to this value"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentflows", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train autoencoder and flow, write a run folder")
    train.add_argument("--data", help="hub id, parquet file or image folder (default: embedded Oxford pets)")
    train.add_argument("--label-field", help="field giving the class for parquet/hub data (default: dog, else label)")
    train.add_argument("--image-field", default="image", help="field holding the image (default: image)")
    train.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="starting settings (default: quick)")
    target = train.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="run folder to create")
    target.add_argument("--resume", type=Path, metavar="RUN",
                        help="continue an interrupted run from its last checkpoint (same settings and data)")
    train.add_argument("--overwrite", action="store_true", help="replace the run files in an existing --out folder")
    train.add_argument("--limit", type=_positive_int, help="use only this many images (a stratified subset), for trials")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--checkpoint-every", type=_positive_int, default=1, metavar="EPOCHS",
                       help="save a resumable checkpoint every this many epochs (default 1)")
    train.add_argument("--compile", action="store_true", default=None, help="torch.compile the training steps")
    for option, (_, kind, help_text) in TRAIN_OPTIONS.items():
        train.add_argument(option, type=kind, help=help_text)

    sample = commands.add_parser("sample", help="generate images of one class from a trained run")
    sample.add_argument("run", type=Path)
    sample.add_argument("--class", dest="label", required=True, help="class name, e.g. cat or dog")
    sample.add_argument("-n", type=_positive_int, default=16, help="number of images (default 16)")
    sample.add_argument("--temperature", type=_positive_float, default=1.0, help="scale of the base noise (default 1)")
    sample.add_argument("--seed", type=_int, default=0)
    sample.add_argument("--out", type=Path, required=True, help="PNG grid to write, highest log-density first")
    sample.add_argument("--npy", type=Path, help="also write the uint8 images (n, 64, 64, 3) as .npy")
    sample.add_argument("--overwrite", action="store_true", help="replace existing output files")

    evaluate = commands.add_parser("evaluate", help="measure a trained run on its validation split, write eval.json")
    evaluate.add_argument("run", type=Path)
    evaluate.add_argument("--data", help="data source, when the one in the run's run.json has moved")
    evaluate.add_argument("--samples", type=_positive_int, metavar="N",
                          help="generated images per class (default: as many as the class has validation images)")
    evaluate.add_argument("--seed", type=_int, default=0, help="seed for the generated images (default 0)")
    evaluate.add_argument("--temperature", type=_positive_float, default=1.0, help="scale of the base noise")
    fid = evaluate.add_mutually_exclusive_group()
    fid.add_argument("--fid-weights", type=Path, metavar="PATH",
                     help="Inception weights for FID/KID (.safetensors, or torch-fidelity's .pth); "
                          "default: the cached copy, else a download")
    fid.add_argument("--no-fid", action="store_true", help="skip FID and KID")
    evaluate.add_argument("--no-download", action="store_true", help="never download the Inception weights")
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
    interpolate.add_argument("--from", dest="start", required=True, help="class at the left end, e.g. cat")
    interpolate.add_argument("--to", dest="end", required=True, help="class at the right end, e.g. dog")
    interpolate.add_argument("--steps", type=_positive_int, default=10, help="images per row (default 10)")
    interpolate.add_argument("--seed", type=_int, default=0, help="picks the two end points (default 0)")
    interpolate.add_argument("--temperature", type=_positive_float, default=1.0, help="scale of the end points")
    interpolate.add_argument("--out", type=Path, required=True, help="PNG to write (rows: linear, spherical)")
    interpolate.add_argument("--overwrite", action="store_true", help="replace an existing file")

    info = commands.add_parser("info", help="describe a trained run")
    info.add_argument("run", type=Path)

    cache = commands.add_parser("cache", help="show or empty the decoded-image cache")
    cache.add_argument("action", choices=["info", "clear"])
    return parser


def run_cache(args) -> None:
    from .data import cache_entries, clear_cache, default_cache_dir

    if args.action == "clear":
        files, size = clear_cache()
        print(f"removed {files} file(s), {size / 2**20:.1f} MiB, from {default_cache_dir()}")
        return
    entries = cache_entries()
    total = sum(e.stat().st_size for e in entries)
    print(f"{default_cache_dir()}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {total / 2**20:.1f} MiB")


def run_train(args) -> None:
    from .data import load_images
    from .losses import parse_loss
    from .pipeline import apply_limit, prepare_run_dir, read_run_settings, run_dataset

    if args.resume is not None:
        prepare_run_dir(args.resume, overwrite=False, resume=True)
        settings = read_run_settings(args.resume)
        config, data = TrainConfig.from_dict(settings["train_config"]), settings["data"]
        print(f"resuming {args.resume} (settings and data from its run.json)", file=sys.stderr)
        _train_on(run_dataset(args.resume, progress=not args.no_progress), config, args.resume, data, args,
                  resume=True)
        return
    config = PRESETS[args.preset]
    for option, (name, _, _) in TRAIN_OPTIONS.items():
        value = getattr(args, option.lstrip("-").replace("-", "_"))
        if value is not None:
            config = replace(config, **{name: value})
    if args.compile:
        config = replace(config, compile=True)
    try:
        parse_loss(config.ae_loss)
        config.validate()
    except ValueError as error:
        raise LatentflowsError(str(error)) from None
    prepare_run_dir(args.out, args.overwrite)  # fail before the slow steps
    dataset = load_images(args.data, label_field=args.label_field, image_field=args.image_field,
                          image_size=config.image_size, progress=not args.no_progress)
    data = {"source": str(Path(args.data).resolve()) if args.data and Path(args.data).exists() else args.data,
            "label_field": args.label_field, "image_field": args.image_field, "limit": args.limit}
    _train_on(apply_limit(dataset, args.limit, config.seed), config, args.out, data, args, resume=False)


def _train_on(dataset, config: TrainConfig, run_dir: Path, data: dict, args, resume: bool) -> None:
    from .pipeline import train

    counts = ", ".join(f"{k} {v}" for k, v in dataset.class_counts().items())
    print(f"data: {len(dataset)} images, {dataset.num_classes} classes ({counts})", file=sys.stderr)
    try:
        pipeline = train(dataset, config, run_dir, overwrite=getattr(args, "overwrite", False), resume=resume,
                         data_spec=data,
                         progress=not args.no_progress, checkpoint_every=args.checkpoint_every)
    except KeyboardInterrupt:
        print(f"latentflows: interrupted; the last completed epoch is saved: continue with "
              f"latentflows train --resume {run_dir}", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"wrote {run_dir} in {pipeline.train_config['train_seconds']:.0f}s "
          f"(try: latentflows sample {run_dir} --class {dataset.class_names[-1]} -n 16 --out grid.png)")


def run_sample(args) -> None:
    import numpy as np

    from .pipeline import load
    from .plots import image_grid

    _check_png_target(args.out, args.overwrite)
    if args.npy is not None and args.npy.exists() and not args.overwrite:
        raise LatentflowsError(f"{args.npy} already exists; choose another name or pass --overwrite")
    pipeline = load(args.run)
    samples = pipeline.generate(args.label, args.n, args.temperature, args.seed)
    columns = min(8, args.n)
    rows = [samples.images[i : i + columns] for i in range(0, args.n, columns)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows, scale=2).save(args.out)
    if args.npy is not None:
        np.save(args.npy, samples.images.permute(0, 2, 3, 1).numpy())
    print(f"wrote {args.n} {samples.label} image(s) to {args.out}"
          f" (log-density {samples.log_prob[0]:.1f} .. {samples.log_prob[-1]:.1f} nats)")


def run_evaluate(args) -> None:
    from .evaluation import evaluate_run, format_report

    report = evaluate_run(args.run, source=args.data, out=args.out, overwrite=args.overwrite,
                          fid_weights=args.fid_weights, fid=not args.no_fid, download=not args.no_download,
                          samples_per_class=args.samples, seed=args.seed, temperature=args.temperature,
                          classifier_epochs=args.classifier_epochs, judge=args.judge,
                          progress=not args.no_progress)
    print(format_report(report))
    print(f"wrote {args.out or args.run / 'eval.json'} in {report['seconds']:.0f}s")


def run_compare(args) -> None:
    from .evaluation import compare, read_report

    print(compare([read_report(path) for path in args.runs], [path.name or str(path) for path in args.runs]))


def run_interpolate(args) -> None:
    from .interpolation import interpolate
    from .pipeline import load
    from .plots import interpolation_strip

    _check_png_target(args.out, args.overwrite)
    if args.steps < 2:
        raise LatentflowsError(f"--steps must be at least 2, got {args.steps}")
    pipeline = load(args.run)
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


def run_info(args) -> None:
    from .pipeline import load

    pipeline = load(args.run)
    flow_parameters = sum(p.numel() for p in pipeline.flow.parameters())
    ae_parameters = sum(p.numel() for p in pipeline.autoencoder.parameters())
    info = {"run": str(args.run), "classes": pipeline.class_names,
            "autoencoder": {**pipeline.autoencoder.get_config(), "parameters": ae_parameters},
            "flow": {**pipeline.flow.get_config(), "parameters": flow_parameters},
            "train_config": pipeline.train_config}
    metrics = Path(args.run) / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        for stage in ("autoencoder", "flow"):
            last = [r for r in rows if r["stage"] == stage]
            if last:
                info[f"final_{stage}"] = {k: v for k, v in last[-1].items() if k != "stage"}
    print(json.dumps(info, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        {"train": run_train, "sample": run_sample, "evaluate": run_evaluate, "compare": run_compare,
         "interpolate": run_interpolate, "info": run_info, "cache": run_cache}[args.command](args)
    except LatentflowsError as error:
        print(f"latentflows: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("latentflows: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
