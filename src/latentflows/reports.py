"""``eval.json`` as text: read a report, show its figures as a table, lay several side by side.

Plain dicts in, strings out: what shows a report (the CLI's ``evaluate`` and ``compare``,
the model card of ``latentflows.modelcard``, below the pipeline) does not import what
computes one (``latentflows.evaluation``, above the pipeline).

Example:
    >>> print(format_report({"flow": {"val": {"nats_per_dim": 0.5}}}).splitlines()[5])
    flow val NLL (nats/dim)                     0.5000
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ModelFileError
from .storage import read_json

EVAL_FORMAT = "latentflows-eval"


def read_report(path: str | Path) -> dict:
    """The report in ``path`` (an ``eval.json``, or a run folder holding one), checked by its format tag."""
    path = Path(path)
    if path.is_dir():
        path = path / "eval.json"
        if not path.is_file():
            raise ModelFileError(f"{path.parent}: no eval.json; run latentflows evaluate {path.parent} first")
    report = read_json(path)
    if report.get("format") != EVAL_FORMAT:
        raise ModelFileError(f"{path}: not a latentflows evaluation (no format tag {EVAL_FORMAT!r})")
    return report


# (label, path into the report, format) for the text views
FIGURES = [
    ("autoencoder val MSE [-1,1]", ("autoencoder", "val", "mse"), "{:.4f}"),
    ("autoencoder val PSNR (dB)", ("autoencoder", "val", "psnr_db"), "{:.2f}"),
    ("autoencoder val SSIM", ("autoencoder", "val", "ssim"), "{:.3f}"),
    ("latent linear probe, balanced acc.", ("autoencoder", "latent_probe", "balanced_accuracy"), "{:.3f}"),
    ("flow train NLL (nats/dim)", ("flow", "train", "nats_per_dim"), "{:.4f}"),
    ("flow val NLL (nats/dim)", ("flow", "val", "nats_per_dim"), "{:.4f}"),
    ("flow val NLL (bits/dim)", ("flow", "val", "bits_per_dim"), "{:.4f}"),
    ("flow val-train gap (nats/dim)", ("flow", "gap_nats_per_dim"), "{:+.4f}"),
    ("val NLL of a Gaussian per class (nats/dim)", ("flow", "gaussian_baseline", "nats_per_dim"), "{:.4f}"),
    ("FID (all classes)", ("fid", "overall", "fid"), "{:.1f}"),
    ("KID x1000 (all classes)", ("fid", "overall", "kid_mean"), "x1000"),
    ("judge FD (all classes)", ("judge_fd", "overall", "fid"), "{:.2f}"),
    ("ImageNet-L0 FD generated (all)", ("imagenet", "efficientnet-lite0", "generated", "overall", "fid"), "{:.2f}"),
    ("ImageNet-L0 FD reconstructions", ("imagenet", "efficientnet-lite0", "reconstruction", "fid"), "{:.2f}"),
    ("ImageNet-L0 species generated", ("imagenet", "efficientnet-lite0", "species", "generated", "balanced"),
     "{:.3f}"),
    ("ImageNet-L0 species reconstructions", ("imagenet", "efficientnet-lite0", "species", "reconstruction", "balanced"),
     "{:.3f}"),
    ("ImageNet-L0 species real val", ("imagenet", "efficientnet-lite0", "species", "real", "balanced"), "{:.3f}"),
    ("ImageNet-L0 pet mass generated", ("imagenet", "efficientnet-lite0", "species", "generated", "pet_mass"),
     "{:.3f}"),
    ("ImageNet-L2 FD generated (all)", ("imagenet", "efficientnet-lite2", "generated", "overall", "fid"), "{:.2f}"),
    ("ImageNet-L2 FD reconstructions", ("imagenet", "efficientnet-lite2", "reconstruction", "fid"), "{:.2f}"),
    ("ImageNet-L2 species generated", ("imagenet", "efficientnet-lite2", "species", "generated", "balanced"),
     "{:.3f}"),
    ("ImageNet-L2 species reconstructions", ("imagenet", "efficientnet-lite2", "species", "reconstruction", "balanced"),
     "{:.3f}"),
    ("classifier val accuracy", ("classifier", "val_accuracy"), "{:.3f}"),
    ("classifier on reconstructions", ("classifier", "reconstruction_accuracy"), "{:.3f}"),
    ("  balanced (mean recall)", ("classifier", "reconstruction_balanced_accuracy"), "{:.3f}"),
    ("generated classified as asked", ("classifier", "generated_accuracy"), "{:.3f}"),
    # how the generated images were drawn: a run's default differs by preset (quick, best: 64; seed: 0)
    ("generated with class guidance (gamma)", ("settings", "guidance"), "{:g}"),
    ("  candidates per generated image", ("settings", "candidates"), "{}"),
]


def _lookup(report: dict, path: tuple) -> object:
    value = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _format(value: Any, pattern: str) -> str:
    if value is None:
        return "-"
    if pattern == "x1000":
        return f"{value * 1000:.2f}"
    return pattern.format(value)


def _class_rows(report: dict) -> list[tuple[str, str]]:
    rows = []
    for name, entry in report.get("flow", {}).get("per_class", {}).items():
        rows.append((f"{name}: flow val NLL (nats/dim)", _format(_lookup(entry, ("val", "nats_per_dim")), "{:.4f}")))
        rows.append((f"{name}: FID", _format(_lookup(report, ("fid", "per_class", name, "fid")), "{:.1f}")))
        rows.append((f"{name}: judge FD", _format(_lookup(report, ("judge_fd", "per_class", name, "fid")), "{:.2f}")))
        for network in ("efficientnet-lite0", "efficientnet-lite2"):
            short = network.replace("efficientnet-lite", "ImageNet-L")
            rows.append((f"{name}: {short} FD", _format(_lookup(report, (
                "imagenet", network, "generated", "per_class", name, "fid")), "{:.2f}")))
            rows.append((f"{name}: {short} generated called {name}", _format(_lookup(report, (
                "imagenet", network, "species", "generated", name)), "{:.3f}")))
        rows.append((f"{name}: generated classified as {name}",
                     _format(_lookup(report, ("classifier", "per_class", name, "generated_share")), "{:.3f}")))
        rows.append((f"{name}: reconstructions classified as {name}",
                     _format(_lookup(report, ("classifier", "per_class", name, "reconstruction_recall")), "{:.3f}")))
        spread = [_lookup(report, ("diversity", name, key)) for key in ("generated", "val_reconstruction", "real")]
        rows.append((f"{name}: diversity generated / decoded val / val",
                     " / ".join(_format(value, "{:.3f}") for value in spread)))
        nearest = [_lookup(report, ("memorisation", name, key, "mean"))
                   for key in ("generated_to_train", "val_reconstruction_to_train")]
        rows.append((f"{name}: nearest train, generated / decoded val",
                     " / ".join(_format(value, "{:.3f}") for value in nearest)))
    return rows


def format_report(report: dict) -> str:
    """One line per figure (``-`` where the report has none), then one block per class."""
    rows = [(label, _format(_lookup(report, path), pattern)) for label, path, pattern in FIGURES]
    rows += _class_rows(report)
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    fid = report.get("fid", {})
    if not fid.get("available"):
        lines.append(f"FID/KID not computed: {fid.get('reason', 'unknown')}")
    imagenet = report.get("imagenet", {})
    if not imagenet.get("available", True):
        lines.append(f"ImageNet figures not computed: {imagenet.get('reason', 'unknown')}")
    return "\n".join(lines)


def compare(reports: list[dict], names: list[str]) -> str:
    """The figures of several evaluations side by side (one column per run).

    Flow NLLs compare flows on the same autoencoder only (each run's flow models its own
    embeddings); judge figures compare runs judged by the same classifier (``--judge``).
    """
    rows = [[label] + [_format(_lookup(r, path), pattern) for r in reports] for label, path, pattern in FIGURES]
    per_run = [dict(_class_rows(r)) for r in reports]
    for label in dict.fromkeys(label for rows_ in per_run for label in rows_):
        rows.append([label] + [rows_.get(label, "-") for rows_ in per_run])
    samples = [str(_lookup(r, ("settings", "generated_per_class")) or "-") for r in reports]
    rows.append(["generated per class"] + samples)
    judges = {_lookup(r, ("classifier", "judge")) for r in reports}
    if len(judges) > 1:
        rows.append(["judge"] + [str(_lookup(r, ("classifier", "judge")) or "-") for r in reports])
    header = ["figure"] + names
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    line = lambda row: "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([line(header)] + [line(row) for row in rows])
