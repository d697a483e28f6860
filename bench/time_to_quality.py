"""Time-to-quality: sample and reconstruction figures against training minutes, per setting.

Each point is one run folder, trained with a budget (e.g. 5, 10, 20 autoencoder epochs) and
evaluated with ``latentflows evaluate RUN --no-fid --judge JUDGE --imagenet 0 --guidance 0`` (plain
samples: a run's default guidance differs by preset); runs that
share a label are one setting's curve. The x value is the run's own ``train_seconds``.

    python bench/time_to_quality.py quick=runs/q5 quick=runs/q10 quick=runs/q20 \\
        seed-dcgan=runs/d5 seed-dcgan=runs/d20 --out docs/time-to-quality.png

Prints a Markdown table of every point and writes the figure (matplotlib).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

FIGURES = [  # (title, path in eval.json, better)
    ("ImageNet-L0 FD, generated vs photos", ("imagenet", "efficientnet-lite0", "generated", "overall", "fid"), "lower"),
    ("PSNR of reconstructions (dB)", ("autoencoder", "val", "psnr_db"), "higher"),
    ("judge on reconstructions (balanced)", ("classifier", "reconstruction_balanced_accuracy"), "higher"),
    ("judge: generated as asked (balanced)", ("classifier", "per_class", "*", "generated_share"), "higher"),
]


def lookup(report: dict, path: tuple[str, ...]) -> float | None:
    """The value at ``path``; ``*`` averages over the keys at that level (e.g. the classes)."""
    value: object = report
    for i, key in enumerate(path):
        if key == "*":
            values = [lookup(item, path[i + 1:]) for item in value.values()]  # type: ignore[union-attr]
            values = [v for v in values if v is not None]
            return sum(values) / len(values) if values else None
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, (int, float)) else None


def read_point(run: Path) -> dict:
    report = json.loads((run / "eval.json").read_text())
    summary = json.loads((run / "config.json").read_text()).get("summary", {})
    point = {"run": str(run), "minutes": summary.get("train_seconds", float("nan")) / 60}
    for title, path, _ in FIGURES:
        point[title] = lookup(report, path)
    return point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN", help="a setting's label and one of its run folders")
    parser.add_argument("--out", type=Path, default=Path("time-to-quality.png"), help="figure to write")
    args = parser.parse_args()
    curves: dict[str, list[dict]] = defaultdict(list)
    for item in args.runs:
        label, sep, run = item.partition("=")
        if not sep:
            parser.error(f"{item!r}: give LABEL=RUN")
        curves[label].append(read_point(Path(run)))
    print("| setting | minutes | " + " | ".join(t for t, _, _ in FIGURES) + " |")
    print("|---|---:|" + "---:|" * len(FIGURES))
    for label, points in curves.items():
        points.sort(key=lambda p: p["minutes"])
        for p in points:
            cells = ["-" if p[t] is None else f"{p[t]:.3f}" if p[t] < 10 else f"{p[t]:.1f}" for t, _, _ in FIGURES]
            print(f"| {label} | {p['minutes']:.1f} | " + " | ".join(cells) + " |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FIGURES), figsize=(4.2 * len(FIGURES), 3.6))
    for ax, (title, _, better) in zip(axes, FIGURES):
        for label, points in curves.items():
            xs = [p["minutes"] for p in points if p[title] is not None]
            ys = [p[title] for p in points if p[title] is not None]
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(f"{title}\n({better} is better)", fontsize=9)
        ax.set_xlabel("training minutes (2 CPU cores)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
