"""The run config: training settings plus the specs of the stages and their models.

A run config is plain JSON: top-level settings (seed, validation share, image size,
gradient clipping, compile, and ``sampling``: how ``sample``, ``evaluate`` and the demo draw
images from the trained run unless told otherwise) and ``stages``, an ordered mapping of stage name to the
stage's spec (``{"class": ..., "config": {...}}``), each holding its model's spec and its
objective's terms. Presets are such configs (``latentflows.presets``). The command line's
flags are aliases onto paths in it (``--width`` is ``stages.autoencoder.config.model.config.width``;
``latentflows.cli.options``), and ``--set PATH=JSON`` reaches any path, so a new
component's options need no new flag. Building and dry-running the stages is
``latentflows.training.build``'s job; reading runs of older versions is ``latentflows.compat``'s.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from .errors import LatentflowsError

SAMPLING: dict[str, Any] = {"guidance": 0.0, "candidates": 8}  # default class guidance (latentflows.guidance): none
SETTINGS: dict[str, Any] = {"preset": "quick", "seed": 0, "val_fraction": 0.1, "image_size": 64, "grad_clip": None,
                            "compile": False, "sampling": SAMPLING}

AE = "stages.autoencoder.config"
AE_MODEL = f"{AE}.model.config"
FLOW = "stages.flow.config"
FLOW_MODEL = f"{FLOW}.model.config"
CONDITIONER = f"{FLOW_MODEL}.conditioner.config"


class RunConfig:
    """Settings and component specs of a training run (JSON round trip: ``as_dict`` / ``from_dict``).

    Args:
        data: the nested config; missing top-level settings take their defaults.

    Example:
        >>> config = RunConfig({"seed": 3, "stages": {"flow": {"class": "FlowStage", "config": {"epochs": 10}}}})
        >>> config.seed, config.val_fraction, config.get("stages.flow.config.epochs")
        (3, 0.1, 10)
        >>> config.with_values({"stages.flow.config.epochs": 5}).get("stages.flow.config.epochs")
        5
        >>> RunConfig.from_dict(config.as_dict()) == config
        True
    """

    def __init__(self, data: dict[str, Any]):
        self.data = {**copy.deepcopy(SETTINGS), **copy.deepcopy(data)}
        unknown = sorted(set(self.data) - set(SETTINGS) - {"stages"})
        if unknown:
            raise ValueError(f"unknown run settings {unknown}; known: {sorted(SETTINGS)} and stages")
        if not isinstance(self.data.get("stages"), dict) or not self.data["stages"]:
            raise ValueError("a run config needs stages (e.g. autoencoder and flow)")
        self.data["sampling"] = sampling_settings(self.data["sampling"])

    # ------------------------------------------------------------------ settings
    @property
    def preset(self) -> str:
        return self.data["preset"]

    @property
    def seed(self) -> int:
        return int(self.data["seed"])

    @property
    def val_fraction(self) -> float:
        return float(self.data["val_fraction"])

    @property
    def image_size(self) -> int:
        return int(self.data["image_size"])

    @property
    def grad_clip(self) -> float | None:
        return self.data["grad_clip"]

    @property
    def compile(self) -> bool:
        return bool(self.data["compile"])

    @property
    def sampling(self) -> dict[str, Any]:
        """The run's default class guidance: ``{"guidance": GAMMA, "candidates": K}``."""
        return dict(self.data["sampling"])

    # ------------------------------------------------------------------ paths
    def get(self, path: str, default: Any = None) -> Any:
        """The value at a dotted path (``default`` where a part is missing)."""
        value: Any = self.data
        for key in path.split("."):
            if not isinstance(value, dict) or key not in value:
                return default
            value = value[key]
        return copy.deepcopy(value)

    def with_values(self, values: dict[str, Any]) -> "RunConfig":
        """A copy with each dotted path set (missing dicts on the way are created)."""
        data = copy.deepcopy(self.data)
        for path, value in values.items():
            keys = path.split(".")
            target = data
            for key in keys[:-1]:
                if not isinstance(target.get(key), dict):
                    target[key] = {}
                target = target[key]
            target[keys[-1]] = copy.deepcopy(value)
        return RunConfig(data)

    # ------------------------------------------------------------------ files
    def as_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """A config saved by ``as_dict`` (a run saved by an older version is converted when it is
        read: ``latentflows.compat``)."""
        return cls(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunConfig) and self.data == other.data

    def __repr__(self) -> str:
        return f"RunConfig({json.dumps(self.data)})"


def check_guidance(guidance: float | None, candidates: int | None) -> None:
    """A clear error unless ``guidance`` is a finite number >= 0 and ``candidates`` a whole number >= 1
    (class guidance, ``latentflows.guidance``; one rule for a run's setting and every option).
    ``None`` passes: it stands for a run's own setting, checked where the run is loaded.

    Example:
        >>> check_guidance(64.0, 32)
        >>> check_guidance(-1.0, 32)
        Traceback (most recent call last):
        ...
        latentflows.errors.LatentflowsError: guidance must be a finite number >= 0 (0 = none), got -1.0
    """
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))
                                 or not guidance >= 0 or guidance == float("inf")):
        raise LatentflowsError(f"guidance must be a finite number >= 0 (0 = none), got {guidance!r}")
    if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1):
        raise LatentflowsError(f"candidates (samples drawn per kept sample) must be a whole number >= 1, "
                               f"got {candidates!r}")


def sampling_settings(value: Any) -> dict[str, Any]:
    """A run's ``sampling`` setting with its defaults filled in, or a clear error.

    Example:
        >>> sampling_settings({"guidance": 64})
        {'guidance': 64.0, 'candidates': 8}
    """
    fix = "set it with --set sampling.guidance=GAMMA (0: plain sampling) or sampling.candidates=K"
    if not isinstance(value, dict):
        raise LatentflowsError(f"the run's sampling setting must be a mapping like {SAMPLING}, got {value!r}; {fix}")
    unknown = sorted(set(value) - set(SAMPLING))
    if unknown:
        raise LatentflowsError(f"unknown sampling settings {unknown}; known: {sorted(SAMPLING)} ({fix})")
    merged = {**SAMPLING, **value}
    try:
        check_guidance(merged["guidance"], merged["candidates"])
    except LatentflowsError as error:
        raise LatentflowsError(f"the run's sampling setting {value}: {error}; {fix}") from None
    return {"guidance": float(merged["guidance"]), "candidates": merged["candidates"]}
