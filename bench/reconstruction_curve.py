"""How a long autoencoder run improves as it trains: reconstruction figures of its snapshots.

One long run (e.g. ``--preset best``) gives the whole curve: while it trains, ``watch`` copies
its autoencoder checkpoint every N epochs; afterwards ``evaluate`` measures each copy on the
run's validation split with the yardsticks of ``latentflows evaluate`` (PSNR and SSIM,
EfficientNet-Lite0/Lite2 Fréchet distance to the photos and ImageNet species share, and a
judge's recall per class). The minutes are the run's own epoch times (``metrics.jsonl``).

    latentflows train --preset best --out runs/best &
    python bench/reconstruction_curve.py watch runs/best snapshots --every 10
    python bench/reconstruction_curve.py evaluate runs/best snapshots/*.safetensors \\
        --judge runs/quick/classifier --out best-curve.json

A snapshot is the weights at that epoch of the whole run, so its learning rate had not yet
decayed as a run of that length would have: the curve bounds from below what a shorter run
reaches. Prints a Markdown table; needs ``latentflows[eval]`` (the ImageNet networks).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def checkpoint_epoch(path: Path) -> tuple[str, int] | None:
    """(stage, epoch) in a checkpoint's header, or None while it is missing or being replaced."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            header = handle.metadata()
        return header["stage"], int(header["epoch"])
    except (OSError, KeyError, ValueError, RuntimeError):
        return None


def watch(run: Path, out: Path, every: int, stage: str, poll: float) -> None:
    """Copy ``run``'s checkpoint of ``stage`` each time it reaches a multiple of ``every`` epochs;
    return when the run has written its final model (``config.json``)."""
    checkpoint = run / "checkpoints" / f"{stage}.safetensors"
    out.mkdir(parents=True, exist_ok=True)
    while True:
        found = checkpoint_epoch(checkpoint)
        if found is not None and found[0] == stage and found[1] % every == 0:
            target = out / f"{stage}-{found[1]:03d}.safetensors"
            if not target.exists():
                partial = target.with_suffix(".partial")
                shutil.copyfile(checkpoint, partial)
                if checkpoint_epoch(partial) == found:  # not replaced while copying
                    partial.rename(target)
                    print(f"{time.strftime('%H:%M:%S')} kept {target}", flush=True)
        if (run / "config.json").exists():
            return
        time.sleep(poll)


def epoch_minutes(run: Path, stage: str) -> dict[int, float]:
    """Training minutes at the end of each epoch of ``stage``."""
    total, minutes = 0.0, {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("stage") == stage:
            total += record["seconds"]
            minutes[record["epoch"]] = total / 60
    return minutes


def evaluate(run: Path, snapshots: list[Path], judge: Path, variants: tuple[int, ...]) -> list[dict]:
    """Reconstruction figures of each snapshot and of the run's final autoencoder."""
    import torch

    import latentflows as lf
    from latentflows.evaluation import measures
    from latentflows.evaluation.efficientnet import ImageNetYardstick, species_share
    from latentflows.runs import RunFolder, run_split
    from latentflows.saving import load_model
    from latentflows.training.callbacks import read_checkpoint, unprefix

    pipeline = lf.load(run, device="cpu")
    folder = RunFolder(run)
    train_set, val_set = run_split(folder.dataset(None, progress=False), folder.config())
    classifier, _ = load_model(judge)
    names = list(val_set.class_names)
    yardsticks = {v: ImageNetYardstick.load(v) for v in variants}
    photos = {v: y.embed(val_set.images) for v, y in yardsticks.items()}
    minutes = epoch_minutes(run, "autoencoder")
    final = {k: v.clone() for k, v in pipeline.autoencoder.state_dict().items()}
    rows = []
    for snapshot in [*snapshots, None]:
        if snapshot is None:
            pipeline.autoencoder.load_state_dict(final)
            epoch = max(minutes)
        else:
            tensors, header = read_checkpoint(snapshot)
            pipeline.autoencoder.load_state_dict(unprefix(tensors, "model.autoencoder."))
            epoch = int(header["epoch"])
        with torch.no_grad():
            decoded = pipeline.reconstruct(val_set.images, val_set.labels)
        quality = measures.reconstruction_quality(val_set.images, decoded)
        row = {"epoch": epoch, "minutes": minutes[epoch], "final": snapshot is None,
               "psnr_db": quality["psnr_db"], "ssim": quality["ssim"]}
        for v, yardstick in yardsticks.items():
            features, probs = yardstick.embed(decoded)
            row[f"lite{v}_fd"] = measures.feature_distances(photos[v][0].double(), features.double())["fid"]
            row[f"lite{v}_species"] = species_share(probs, val_set.labels, names)["balanced"]
        predicted = classifier.predict(decoded)
        for c, name in enumerate(names):
            row[f"judge_{name}"] = float((predicted[val_set.labels == c] == c).float().mean())
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    keep = commands.add_parser("watch", help="copy the checkpoint every N epochs while the run trains")
    keep.add_argument("run", type=Path)
    keep.add_argument("out", type=Path, help="folder for the snapshots")
    keep.add_argument("--every", type=int, default=10)
    keep.add_argument("--stage", default="autoencoder")
    keep.add_argument("--poll", type=float, default=5.0, help="seconds between looks")
    measure = commands.add_parser("evaluate", help="reconstruction figures of the snapshots and the final model")
    measure.add_argument("run", type=Path)
    measure.add_argument("snapshots", type=Path, nargs="*")
    measure.add_argument("--judge", type=Path, required=True, help="a classifier folder (RUN/classifier)")
    measure.add_argument("--imagenet", default="0,2", help="EfficientNet-Lite variants")
    measure.add_argument("--out", type=Path, help="write the rows as JSON")
    args = parser.parse_args()
    if not args.run.is_dir():  # checked first: watch would otherwise wait for it forever
        parser.error(f"{args.run}: no such run folder (give the --out of latentflows train)")
    if args.command == "evaluate" and args.out and args.out.exists():  # checked before minutes of work
        parser.error(f"{args.out} exists: remove it or choose another --out")
    if args.command == "watch":
        watch(args.run, args.out, args.every, args.stage, args.poll)
        return
    rows = evaluate(args.run, sorted(args.snapshots), args.judge, tuple(int(v) for v in args.imagenet.split(",")))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    columns = [k for k in rows[0] if k not in ("epoch", "minutes", "final")]
    print("| epoch | minutes | " + " | ".join(columns) + " |")
    print("|---:|---:|" + "---:|" * len(columns))
    for row in rows:
        cells = [f"{row[c]:.3f}" if row[c] < 10 else f"{row[c]:.1f}" for c in columns]
        print(f"| {row['epoch']}{' (final)' if row['final'] else ''} | {row['minutes']:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
