"""The run folder's figures: loss curves, reconstruction grid, sample grid (PNG)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from .data import ImageDataset
    from .pipeline import LatentFlowPipeline


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).cpu().numpy()


def image_grid(rows: list[torch.Tensor], padding: int = 2, scale: int = 1) -> Image.Image:
    """Tile rows of uint8 (n, 3, S, S) images into one picture (white padding)."""
    size = rows[0].shape[-1]
    columns = max(len(r) for r in rows)
    step = size + padding
    canvas = np.full((len(rows) * step + padding, columns * step + padding, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = padding + r * step, padding + c * step
            canvas[top : top + size, left : left + size] = _hwc(image)
    picture = Image.fromarray(canvas)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    return picture


def loss_curves(rows: list[dict], stage: str, path: Path) -> None:
    rows = [r for r in rows if r["stage"] == stage]
    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(epochs, [r["train_loss"] for r in rows], label="train")
    if "val_loss" in rows[0]:
        axis.plot(epochs, [r["val_loss"] for r in rows], label="validation")
    axis.set_xlabel("epoch")
    axis.set_ylabel("MSE" if stage == "autoencoder" else "negative log-likelihood (nats)")
    axis.set_title(f"{stage} loss")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, labels: list[str], path: Path) -> None:
    n = len(originals)
    figure, axes = plt.subplots(3, n, figsize=(2 * n, 6.4), squeeze=False)
    for i in range(n):
        original = _hwc(originals[i]).astype(np.float32) / 255
        reconstruction = _hwc(reconstructions[i]).astype(np.float32) / 255
        axes[0, i].imshow(original)
        axes[1, i].imshow(reconstruction)
        axes[2, i].imshow(np.abs(original - reconstruction).mean(-1), cmap="hot", vmin=0, vmax=0.5)
        axes[2, i].set_xlabel(labels[i], fontsize=11, fontweight="bold")
    for r, title in enumerate(["original", "reconstruction", "|difference|"]):
        axes[r, 0].set_ylabel(title, fontsize=11)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle("Autoencoder reconstructions (validation images)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def sample_grid(samples: list, path: Path) -> None:
    """One row per class; columns sorted by log-density, highest first."""
    columns = len(samples[0].images)
    figure, axes = plt.subplots(len(samples), columns, figsize=(1.6 * columns, 2.0 * len(samples)), squeeze=False)
    for r, row in enumerate(samples):
        for c in range(columns):
            axes[r, c].imshow(_hwc(row.images[c]))
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            axes[r, c].set_title(f"{row.log_prob[c].item():.0f}", fontsize=8)
        axes[r, 0].set_ylabel(row.label, fontsize=11, rotation=0, labelpad=25)
    figure.suptitle("Generated samples, sorted by log-density (nats, above each image)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_run_figures(pipeline: LatentFlowPipeline, run_dir: Path, val_set: ImageDataset, seed: int = 0, n: int = 8) -> None:
    figures = Path(run_dir) / "figures"
    figures.mkdir(exist_ok=True)
    metrics = Path(run_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    loss_curves(rows, "autoencoder", figures / "autoencoder_loss.png")
    loss_curves(rows, "flow", figures / "flow_loss.png")
    pick = torch.randperm(len(val_set), generator=torch.Generator().manual_seed(seed))[:n]
    originals = val_set.images[pick]
    names = [val_set.class_names[i] for i in val_set.labels[pick].tolist()]
    reconstruction = pipeline.reconstruct(originals, val_set.labels[pick])
    reconstruction_grid(originals, reconstruction, names, figures / "reconstructions.png")
    samples = [pipeline.generate(name, n, seed=seed + k) for k, name in enumerate(pipeline.class_names[:10])]
    sample_grid(samples, figures / "samples.png")


def nearest_neighbour_grid(rows: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]], path: Path) -> None:
    """Per class, generated images (top) over their nearest training images (bottom).

    ``rows`` holds (label, samples, neighbours, distances); the pixel distance is shown
    above each pair, so a copied training image stands out as a near-zero number.
    """
    columns = max(len(r[1]) for r in rows)
    figure, axes = plt.subplots(2 * len(rows), columns, figsize=(1.5 * columns, 3.3 * len(rows)), squeeze=False)
    for r, (label, samples, neighbours, distances) in enumerate(rows):
        for c in range(columns):
            for k, images in enumerate((samples, neighbours)):
                axis = axes[2 * r + k, c]
                axis.set_xticks([])
                axis.set_yticks([])
                if c < len(images):
                    axis.imshow(_hwc(images[c]))
            if c < len(distances):
                axes[2 * r, c].set_title(f"{distances[c]:.3f}", fontsize=8)
        axes[2 * r, 0].set_ylabel(f"{label}\ngenerated", fontsize=10)
        axes[2 * r + 1, 0].set_ylabel("nearest\ntraining", fontsize=10)
    figure.suptitle("Generated images closest to a training image (pixel RMS distance above)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def interpolation_strip(rows: dict[str, torch.Tensor], start: str, end: str, path: Path) -> None:
    """One row per interpolation mode, from ``start`` (left) to ``end`` (right)."""
    columns = max(len(images) for images in rows.values())
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.5 * columns, 1.7 * len(rows)), squeeze=False)
    for r, (mode, images) in enumerate(rows.items()):
        for c in range(columns):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if c < len(images):
                axes[r, c].imshow(_hwc(images[c]))
        axes[r, 0].set_ylabel(mode, fontsize=10)
    axes[0, 0].set_title(start, fontsize=10)
    axes[0, columns - 1].set_title(end, fontsize=10)
    figure.suptitle(f"From {start} to {end} through the flow's base space")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
