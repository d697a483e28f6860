"""Walks through the flow's base space between two classes, decoded step by step.

Two base points u0, u1 ~ N(0, I) are joined linearly or spherically, and the class
condition moves from one one-hot vector to the other along the same path. Spherical
interpolation keeps the norm of the point near that of a typical Gaussian sample, where
the straight line's midpoint has a norm about 1/sqrt(2) too small (an atypical, smoother
image); the two rows show the difference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .flows import check_sampling
from .pipeline import LatentFlowPipeline
from .runtime import evaluation_mode

MODES = ("linear", "spherical")


def slerp(start: Tensor, end: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation of two vectors at fractions ``t`` (falls back to linear when
    they are parallel); norms are interpolated linearly."""
    start_norm, end_norm = start.norm(), end.norm()
    cosine = torch.dot(start / start_norm, end / end_norm).clamp(-1, 1)
    angle = torch.arccos(cosine)
    t = t.view(-1, 1)
    if angle < 1e-4:
        return (1 - t) * start + t * end
    direction = (torch.sin((1 - t) * angle) * start / start_norm + torch.sin(t * angle) * end / end_norm)
    return direction / torch.sin(angle) * ((1 - t) * start_norm + t * end_norm)


def interpolation_path(start: Tensor, end: Tensor, steps: int, mode: str = "spherical") -> Tensor:
    """``steps`` points from ``start`` to ``end`` (both included)."""
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 steps, got {steps}")
    if mode not in MODES:
        raise ValueError(f"unknown interpolation mode {mode!r}; use one of {', '.join(MODES)}")
    t = torch.linspace(0, 1, steps, dtype=start.dtype)
    if mode == "linear":
        return (1 - t).view(-1, 1) * start + t.view(-1, 1) * end
    return slerp(start, end, t)


@torch.no_grad()
def interpolate(pipeline: LatentFlowPipeline, start_label: str | int, end_label: str | int, steps: int = 8,
                seed: int = 0, temperature: float = 1.0, modes: tuple[str, ...] = MODES) -> dict[str, Tensor]:
    """Decoded uint8 images (steps, 3, S, S) for each mode, from a ``start_label`` sample to an
    ``end_label`` sample; the same seed gives the same two end points in every mode."""
    check_sampling(temperature=temperature)
    first, last = pipeline.class_index(start_label), pipeline.class_index(end_label)
    generator = torch.Generator().manual_seed(seed)
    ends = torch.randn(2, pipeline.flow.features, generator=generator) * temperature
    t = torch.linspace(0, 1, steps).view(-1, 1)
    context = (1 - t) * pipeline.one_hot(torch.tensor([first])).cpu() + t * pipeline.one_hot(torch.tensor([last])).cpu()
    rows = {}
    with evaluation_mode(pipeline.flow):
        for mode in modes:
            path = interpolation_path(ends[0], ends[1], steps, mode).to(pipeline.device)
            embeddings, _ = pipeline.flow.transform.inverse(path, context.to(pipeline.device))
            rows[mode] = pipeline.decode(embeddings, context)
    return rows
