"""Density models on the same embeddings: latentflows' RealNVP (affine, spline) against zuko's NSF.

Every model is trained with the same epochs, batch size, learning rate, seed and held-out
split on the same standardized data, and reported by parameter count, training time,
validation NLL (nats per dimension, of the standardized data) and sampling throughput.

    python bench/flow_vs_zuko.py --embeddings emb.npy --labels labels.npy --epochs 50
    python bench/flow_vs_zuko.py --synthetic --epochs 1          # a smoke test, seconds
    python bench/flow_vs_zuko.py --synthetic --models affine,spline --out results.json
    python bench/flow_vs_zuko.py --embeddings emb.npy --labels labels.npy --epochs 100 --patience 15 \
        --noise 0.05 --models affine-whitened,zuko-nsf     # as a run trains: keep the best epoch

The models (``--models``, comma-separated):
    affine             ConditionalRealNVP with its default couplings (TanhAffine), permutations, batch norm
    spline             the same with RationalQuadraticSpline couplings
    spline-lu-actnorm  spline couplings, LULinear mixing and ActNorm instead of permutation and batch norm
    affine-whitened    affine, after a ClassWhitening layer fitted to the training rows (the `quick` preset's flow)
    spline-whitened    spline, after the same ClassWhitening layer
    zuko-nsf           zuko.flows.NSF with a one-hot class context (coupling form with --zuko-passes 2,
                       fully autoregressive with --zuko-passes 0); needs ``pip install zuko``

Differences that remain between the libraries: zuko's NSF uses masked MLPs (its parameter
count includes weights the masks zero out), splines on [-5, 5] (ours: ``--bound``, default
3) and no normalization layers.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from latentflows import ConditionalRealNVP
from latentflows.flows import fit_leading_layers

MODELS = ("affine", "spline", "spline-lu-actnorm", "affine-whitened", "spline-whitened", "zuko-nsf")
ZUKO_MISSING = "zuko is not installed: pip install zuko   (an optional dependency of this benchmark only)"


# ---------------------------------------------------------------------------------------------- data

def synthetic(n: int, features: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A correlated Gaussian mixture per class (3 components each, random full covariances)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    component = rng.integers(0, 3, n)
    means = rng.normal(0, 2.0, (classes, 3, features))
    mixing = rng.normal(0, 1.0, (classes, 3, features, features)) / math.sqrt(features)
    noise = rng.normal(size=(n, features))
    x = means[labels, component] + np.einsum("nij,nj->ni", mixing[labels, component], noise) + 0.05 * rng.normal(
        size=(n, features))
    return x.astype(np.float32), labels


def load_data(args: argparse.Namespace) -> tuple[Tensor, Tensor, int, str]:
    if args.synthetic:
        x, labels = synthetic(args.n, args.dim, args.classes, args.seed)
        source = f"synthetic correlated Gaussian mixture (n={args.n}, dim={args.dim}, classes={args.classes})"
    else:
        if args.embeddings is None or args.labels is None:
            sys.exit("give --embeddings EMB.npy and --labels LABELS.npy, or --synthetic")
        x, labels = np.load(args.embeddings), np.load(args.labels)
        if x.ndim != 2 or labels.shape != (x.shape[0],):
            sys.exit(f"embeddings must be (N, D) and labels (N,); got {x.shape} and {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            sys.exit(f"labels must be integers, got {labels.dtype}")
        source = f"{args.embeddings} (n={x.shape[0]}, dim={x.shape[1]}), labels {args.labels}"
    _, labels = np.unique(labels, return_inverse=True)  # 0 .. classes - 1
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long), int(labels.max()) + 1, source


def split(labels: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Training and validation row indices: ``val_fraction`` of each class held out (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in labels.unique():
        rows = torch.nonzero(labels == label).flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        held = max(1, round(len(rows) * val_fraction))
        val.append(rows[:held])
        train.append(rows[held:])
    return torch.cat(train), torch.cat(val)


# ---------------------------------------------------------------------------------------------- models

@dataclass
class Model:
    """A density model behind the two calls the benchmark needs."""

    module: nn.Module
    log_prob: Callable[[Tensor, Tensor], Tensor]  # (x, one-hot context rows) -> (batch,)
    sample: Callable[[int, Tensor], Tensor]  # (n, one one-hot context vector) -> (n, features)


def latentflows_model(features: int, classes: int, args: argparse.Namespace, bijection: dict | None = None,
                      **options: str) -> Model:
    flow = ConditionalRealNVP(features, classes, couplings=args.couplings, hidden=args.hidden, bijection=bijection,
                              seed=args.seed, **options)
    return Model(flow, flow.log_prob, lambda n, context: flow.sample(n, context))


def zuko_model(features: int, classes: int, args: argparse.Namespace) -> Model:
    try:
        import zuko
    except ImportError:
        raise SystemExit(ZUKO_MISSING) from None
    flow = zuko.flows.NSF(features, context=classes, bins=args.bins, transforms=args.couplings,
                          hidden_features=args.hidden, passes=args.zuko_passes or None)
    return Model(flow, lambda x, context: flow(context).log_prob(x),
                 lambda n, context: flow(context).sample((n,)))


def build(name: str, features: int, classes: int, args: argparse.Namespace) -> Model:
    spline = {"class": "RationalQuadraticSpline", "config": {"bins": args.bins, "bound": args.bound}}
    if name == "affine":
        return latentflows_model(features, classes, args)
    if name == "spline":
        return latentflows_model(features, classes, args, spline)
    if name == "spline-lu-actnorm":
        return latentflows_model(features, classes, args, spline, mixing="lu", normalization="actnorm")
    if name == "affine-whitened":
        return latentflows_model(features, classes, args, class_whitening=True)
    if name == "spline-whitened":
        return latentflows_model(features, classes, args, spline, class_whitening=True)
    if name == "zuko-nsf":
        return zuko_model(features, classes, args)
    raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


# ---------------------------------------------------------------------------------------------- measuring

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Training:
    seconds: float  # training only (validation passes not counted)
    train_nll: float  # mean training NLL of the last epoch (nats/dim)
    epochs: int  # epochs run
    best_epoch: int | None = None  # with --patience: the epoch whose weights were kept
    seconds_to_best: float | None = None


def train(model: Model, x: Tensor, context: Tensor, args: argparse.Namespace, device: torch.device,
          validation: tuple[Tensor, Tensor] | None = None) -> Training:
    """Adam on the mean NLL (with ``--noise``, of noisy rows). With ``--patience`` (and
    ``validation``), the validation NLL is measured after every epoch and the best epoch's
    weights are kept, stopping after ``patience`` epochs without a better one: as a run's flow
    stage trains."""
    with torch.no_grad():  # data-fitted first layers (ClassWhitening) see the training rows once
        fit_leading_layers(getattr(model.module, "transform", model.module), x, context)
    optimizer = torch.optim.Adam(model.module.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    synchronize(device)
    seconds, epoch_nll, epochs = 0.0, float("nan"), 0
    best = (math.inf, None, None, None)  # (val NLL, epoch, seconds, weights)
    for epoch in range(1, args.epochs + 1):
        model.module.train()
        started = time.perf_counter()
        order = torch.randperm(len(x), generator=generator)
        total, rows = 0.0, 0
        for start in range(0, len(x) - 1, args.batch_size):
            batch = order[start : start + args.batch_size]
            if len(batch) < 2:  # batch norm needs two rows
                continue
            rows_x = x[batch]
            if args.noise:
                rows_x = rows_x + args.noise * torch.randn(rows_x.shape, generator=generator).to(device)
            loss = -model.log_prob(rows_x, context[batch]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, rows = total + loss.item() * len(batch), rows + len(batch)
        synchronize(device)
        seconds += time.perf_counter() - started
        epoch_nll, epochs = total / max(rows, 1) / x.shape[1], epoch
        if not math.isfinite(epoch_nll):
            break
        if args.patience and validation is not None:
            val = validation_nll(model, *validation)
            if val < best[0]:
                weights = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
                best = (val, epoch, seconds, weights)
            elif epoch - best[1] >= args.patience:
                break
    if best[3] is not None:
        model.module.load_state_dict(best[3])
        return Training(seconds, epoch_nll, epochs, best[1], best[2])
    return Training(seconds, epoch_nll, epochs)


@torch.no_grad()
def validation_nll(model: Model, x: Tensor, context: Tensor, batch_size: int = 2048) -> float:
    model.module.eval()
    total = sum(-model.log_prob(x[i : i + batch_size], context[i : i + batch_size]).sum().item()
                for i in range(0, len(x), batch_size))
    return total / len(x) / x.shape[1]


@torch.no_grad()
def sampling_rate(model: Model, context: Tensor, n: int, device: torch.device) -> float:
    model.module.eval()
    model.sample(min(n, 1000), context)  # warm-up
    synchronize(device)
    started = time.perf_counter()
    samples = model.sample(n, context)
    synchronize(device)
    seconds = time.perf_counter() - started
    assert samples.shape[0] == n
    return n / seconds


# ---------------------------------------------------------------------------------------------- report

def markdown(results: list[dict]) -> str:
    lines = ["| model | parameters | train s | epochs (best) | s to best | train NLL (nats/dim) | val NLL (nats/dim) "
             "| samples/s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        best = f" ({r['best_epoch']})" if r.get("best_epoch") else ""
        to_best = f"{r['seconds_to_best']:.1f}" if r.get("seconds_to_best") is not None else "-"
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['train_seconds']:.2f} | {r['epochs']}{best} | {to_best} "
                     f"| {r['train_nll']:.4f} | {r['val_nll']:.4f} | {r['samples_per_second']:,.0f} |")
    return "\n".join(lines)


def sizes(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    data = parser.add_argument_group("data")
    data.add_argument("--embeddings", type=Path, help="(N, D) float .npy")
    data.add_argument("--labels", type=Path, help="(N,) integer .npy")
    data.add_argument("--synthetic", action="store_true", help="a correlated Gaussian mixture instead of files")
    data.add_argument("--n", type=int, default=4000, help="synthetic: rows")
    data.add_argument("--dim", type=int, default=16, help="synthetic: features")
    data.add_argument("--classes", type=int, default=2, help="synthetic: classes")
    data.add_argument("--val-fraction", type=float, default=0.1, help="share of each class held out")
    models = parser.add_argument_group("models")
    models.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    models.add_argument("--couplings", type=int, default=6, help="coupling layers (zuko: transforms)")
    models.add_argument("--hidden", type=sizes, default=[256, 256], help="hidden sizes of each conditioner")
    models.add_argument("--bins", type=int, default=8, help="spline bins (ours and zuko's)")
    models.add_argument("--bound", type=float, default=3.0, help="our spline's interval [-bound, bound]")
    models.add_argument("--zuko-passes", type=int, default=2,
                        help="zuko NSF passes: 2 = coupling (like RealNVP), 0 = fully autoregressive")
    run = parser.add_argument_group("training and measuring")
    run.add_argument("--epochs", type=int, default=20)
    run.add_argument("--batch-size", type=int, default=256)
    run.add_argument("--lr", type=float, default=1e-3)
    run.add_argument("--noise", type=float, default=0.0, help="Gaussian noise on the training rows (standardized units)")
    run.add_argument("--patience", type=int, default=None,
                     help="measure the validation NLL every epoch, keep the best epoch's weights and stop after "
                          "this many epochs without a better one (a run's flow stage does this)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--samples", type=int, default=10_000, help="samples drawn to measure throughput")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--device", default="cpu")
    run.add_argument("--out", type=Path, help="also write the settings and results as JSON")
    args = parser.parse_args()

    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        sys.exit(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    if "zuko-nsf" in names:
        try:
            import zuko  # noqa: F401
        except ImportError:
            print(f"{ZUKO_MISSING}; skipping zuko-nsf", file=sys.stderr)
            names.remove("zuko-nsf")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    x, labels, classes, source = load_data(args)
    train_rows, val_rows = split(labels, args.val_fraction, args.seed)
    mean, std = x[train_rows].mean(0), x[train_rows].std(0).clamp_min(1e-6)
    x = ((x - mean) / std).to(device)  # standardized with the training rows' statistics, for every model
    context = torch.nn.functional.one_hot(labels, classes).float().to(device)
    features = x.shape[1]
    print(f"data: {source}; {len(train_rows)} training / {len(val_rows)} validation rows; "
          f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}", file=sys.stderr)

    results = []
    for name in names:
        torch.manual_seed(args.seed)
        model = build(name, features, classes, args)
        model.module.to(device)
        parameters = sum(p.numel() for p in model.module.parameters() if p.requires_grad)
        fit = train(model, x[train_rows], context[train_rows], args, device, (x[val_rows], context[val_rows]))
        val = validation_nll(model, x[val_rows], context[val_rows])
        rate = sampling_rate(model, context[val_rows[0]], args.samples, device)
        results.append({"model": name, "parameters": parameters, "train_seconds": fit.seconds,
                        "train_nll": fit.train_nll, "epochs": fit.epochs, "best_epoch": fit.best_epoch,
                        "seconds_to_best": fit.seconds_to_best, "val_nll": val, "samples_per_second": rate})
        print(f"{name}: {parameters:,} parameters, {fit.seconds:.1f} s, {fit.epochs} epochs (best {fit.best_epoch}), "
              f"val NLL {val:.4f} nats/dim, {rate:,.0f} samples/s", file=sys.stderr)

    print(markdown(results))
    if args.out:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        report = {"data": source, "features": features, "classes": classes, "train_rows": len(train_rows),
                  "val_rows": len(val_rows), "settings": settings, "results": results,
                  "environment": {"python": platform.python_version(), "torch": torch.__version__,
                                  "threads": torch.get_num_threads(), "device": str(device),
                                  "machine": platform.machine(), "processor": platform.processor()}}
        if "zuko-nsf" in names:
            import zuko
            report["environment"]["zuko"] = zuko.__version__
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
