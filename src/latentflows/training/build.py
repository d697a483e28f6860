"""A run config's training stages: built from their specs, and dry-run once at their real sizes.

Here rather than in ``config.py``, because building a stage builds its models and
objective, which sit far above a config that is only settings and specs.
"""

from __future__ import annotations

import math
from typing import Any

from ..config import RunConfig
from ..errors import LatentflowsError
from ..registry import build
from .stages import Stage


def build_stages(config: RunConfig) -> list[tuple[str, Stage]]:
    """The config's stages, built from their specs, in order.

    Example:
        >>> from latentflows.presets import PRESETS
        >>> [(name, type(stage).__name__) for name, stage in build_stages(PRESETS["quick"])]
        [('autoencoder', 'AutoencoderStage'), ('flow', 'FlowStage')]
    """
    built = []
    for name, spec in config.data["stages"].items():
        try:
            stage = build(spec)
        except (ValueError, TypeError) as error:
            raise LatentflowsError(f"stages.{name}: {error}") from None
        if not callable(getattr(stage, "plan", None)):
            raise LatentflowsError(f"stages.{name}: {spec['class']!r} is not a training stage")
        built.append((name, stage))
    return built


def validate_config(config: RunConfig, classes: int = 2) -> RunConfig:
    """Check every setting and build every component once at its real size (for data of
    ``classes`` classes); the config itself, or a ``LatentflowsError`` naming the problem.

    Example:
        >>> from latentflows.presets import PRESETS
        >>> validate_config(PRESETS["seed"]).preset
        'seed'
        >>> validate_config(PRESETS["seed"].with_values({"val_fraction": 2}))
        Traceback (most recent call last):
        ...
        latentflows.errors.LatentflowsError: val-fraction must be between 0 and 1, got 2
    """
    seed, fraction, clip = config.data["seed"], config.data["val_fraction"], config.data["grad_clip"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise LatentflowsError(f"seed must be an integer, got {seed!r}")
    if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise LatentflowsError(f"val-fraction must be between 0 and 1, got {fraction!r}")
    if clip is not None and not (isinstance(clip, (int, float)) and clip > 0 and math.isfinite(clip)):
        raise LatentflowsError(f"grad-clip must be a positive number, got {clip!r}")
    size, compiled = config.data["image_size"], config.data.get("compile", False)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise LatentflowsError(f"image_size must be a whole number of pixels (e.g. 64), got {size!r}")
    if not isinstance(compiled, bool):
        raise LatentflowsError(f"compile must be true or false, got {compiled!r}")
    shapes: dict[str, Any] = {"image_size": config.image_size, "classes": classes}
    for name, stage in build_stages(config):
        try:
            shapes = stage.dry_run(shapes)
        except (ValueError, TypeError, KeyError) as error:
            raise LatentflowsError(f"stages.{name}: {error}") from None
    return config
