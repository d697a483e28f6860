"""Reading runs written by older versions: each is converted once, in memory, as it is read.

Everything latentflows knows about its older files is here; the rest of the library sees
today's configs and weight names only. The files themselves are never changed.

Format 1 (release 0.1) kept the embedding statistics beside the flow (``embedding_mean``,
``embedding_std``), described the flow by flat options (``hidden``, ``scale_fn``,
``shared_network``, ``network``), named coupling networks ``net`` / ``scale_net`` /
``shift_net``, and kept the run's settings as one flat ``train_config``. Format 2 puts the
statistics in the flow's ``Standardize`` head, builds couplings from a bijection and a
conditioner, and keeps a nested run config. Until release 0.3, format 2 switched the layers
between couplings on and off (``permute``, ``batch_norm``); today ``mixing`` and
``normalization`` name their kind.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from .config import AE, AE_MODEL, CONDITIONER, FLOW, FLOW_MODEL, SETTINGS, RunConfig
from .errors import LatentflowsError, ModelFileError
from .losses import parse_loss
from .presets import SEED
from .registry import serialize

SCALE_FUNCTIONS = {"tanh": "TanhAffine", "softplus": "SoftplusAffine"}  # format 1's scale_fn -> bijection
# the on/off switches of 0.1 to 0.3 -> the layer kind they stood for: (switch, kind, kind when on)
LAYER_SWITCHES = (("permute", "mixing", "permutation"), ("batch_norm", "normalization", "batchnorm"))


# ---------------------------------------------------------------------- what the library calls

def saved_fields(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's ``config.json`` of any format -> today's fields (``autoencoder``, ``flow``,
    ``class_names``, ``config``, ``summary``), as ``LatentFlowPipeline.load`` reads them.

    Example:
        >>> old = {"format_version": 2, "class_names": ["cat"], "autoencoder": {"class": "ConvAutoencoder"},
        ...        "flow": {"class": "ConditionalRealNVP", "config": {"features": 4, "permute": False}}}
        >>> saved_fields(old)["flow"]["config"]
        {'features': 4, 'mixing': 'none'}
    """
    if _version(saved) < 2:
        return pipeline_config_from_v1(saved)
    return current_specs(saved)


def saved_weights(saved: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The weights of a run whose ``config.json`` is ``saved``, under today's names."""
    return weights_from_v1(tensors) if _version(saved) < 2 else tensors


def saved_run_config(saved: dict[str, Any]) -> RunConfig:
    """The run config in a run's ``config.json`` of any format."""
    if _version(saved) < 2:
        return run_config_from_v1(saved.get("train_config") or {})
    return RunConfig.from_dict(current_specs(saved["config"]))


def settings_run_config(settings: dict[str, Any]) -> RunConfig:
    """The run config in a run's ``run.json`` of any format."""
    if "config" in settings:
        return RunConfig.from_dict(current_specs(settings["config"]))
    return run_config_from_v1(settings.get("train_config") or {})


def check_resumable(settings: dict[str, Any], run: str | Path) -> None:
    """Refuse, saying why, to resume a run started by 0.1: its checkpoints do not fit today's stages."""
    if int(settings.get("format_version", 1)) < 2:
        raise ModelFileError(f"{run} was started by latentflows 0.1; its checkpoints cannot be resumed by this "
                             f"version: start the run again with --out")


def _version(saved: dict[str, Any]) -> int:
    return int(saved.get("format_version", 0))


# ---------------------------------------------------------------------- 0.2 and 0.3: on/off layer switches

def current_specs(value: Any) -> Any:
    """A copy of ``value`` in which every ``ConditionalRealNVP`` spec that still says ``permute``
    or ``batch_norm`` says ``mixing`` and ``normalization`` instead (``layer_kinds``); anything
    else is unchanged.

    Example:
        >>> current_specs({"model": {"class": "ConditionalRealNVP", "config": {"batch_norm": False}}})
        {'model': {'class': 'ConditionalRealNVP', 'config': {'normalization': 'none'}}}
    """
    if isinstance(value, list):
        return [current_specs(item) for item in value]
    if not isinstance(value, dict):
        return value
    converted = {key: current_specs(item) for key, item in value.items()}
    if converted.get("class") == "ConditionalRealNVP" and isinstance(converted.get("config"), dict):
        converted["config"] = layer_kinds(converted["config"])
    return converted


def layer_kinds(config: dict[str, Any]) -> dict[str, Any]:
    """A ``ConditionalRealNVP`` config with ``permute`` / ``batch_norm`` (on/off) -> the same flow
    with ``mixing`` / ``normalization``; a switch that is off while its kind names a layer is refused.

    Example:
        >>> layer_kinds({"couplings": 2, "permute": True, "batch_norm": False, "mixing": "lu"})
        {'couplings': 2, 'mixing': 'lu', 'normalization': 'none'}
        >>> layer_kinds({"permute": False, "mixing": "lu"})
        Traceback (most recent call last):
        ...
        ValueError: permute=False contradicts mixing='lu'; drop permute or set mixing='none'
    """
    config = dict(config)
    for switch, kind, kind_when_on in LAYER_SWITCHES:
        if switch not in config:
            continue
        on = config.pop(switch)
        if config.get(kind) is None:
            config[kind] = kind_when_on if on else "none"
        elif not on and config[kind] != "none":
            raise ValueError(f"{switch}=False contradicts {kind}={config[kind]!r}; drop {switch} or set {kind}='none'")
    return config


# ---------------------------------------------------------------------- format 1 (0.1)

def flow_spec_from_v1(spec: dict[str, Any]) -> dict[str, Any]:
    """A format-1 ``ConditionalRealNVP`` spec -> today's spec (with a standardization head)."""
    old = dict(spec.get("config", {}))
    network = dict(old.get("network") or {})
    conditioner = {"hidden": list(old.get("hidden", [256, 256])), "shared": bool(old.get("shared_network", True)),
                   "activation": old.get("activation", "relu"), "residual": bool(network.pop("residual", False))}
    conditioner.update(network)  # kernel_initializer / regularizer / constraint
    return {"class": "ConditionalRealNVP", "config": {
        "features": old["features"], "context_size": old.get("context_size", 0),
        "couplings": old.get("couplings", 12), "mask": old.get("mask", "alternate"),
        "mixing": "permutation" if old.get("permute", True) else "none",
        "normalization": "batchnorm" if old.get("batch_norm", True) else "none",
        "bijection": {"class": SCALE_FUNCTIONS[old.get("scale_fn", "tanh")], "config": {}},
        "conditioner": {"class": "CouplingNet", "config": conditioner},
        "seed": old.get("seed", 0), "standardize": True}}


_COUPLING_NETWORK = re.compile(r"^flow\.transform\.transforms\.(\d+)\.(net|scale_net|shift_net)\.(.*)$")
_FLOW_LAYER = re.compile(r"^flow\.transform\.transforms\.(\d+)\.(.*)$")


def weights_from_v1(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Format-1 weight names -> today's names (layers shift by one behind the new head)."""
    converted = {}
    for key, value in tensors.items():
        if key == "embedding_mean":
            converted["flow.transform.transforms.0.mean"] = value
        elif key == "embedding_std":
            converted["flow.transform.transforms.0.std"] = value
        elif match := _COUPLING_NETWORK.match(key):
            index, network, rest = match.groups()
            slot = {"net": 0, "scale_net": 0, "shift_net": 1}[network]
            converted[f"flow.transform.transforms.{int(index) + 1}.conditioner.nets.{slot}.{rest}"] = value
        elif match := _FLOW_LAYER.match(key):
            index, rest = match.groups()
            converted[f"flow.transform.transforms.{int(index) + 1}.{rest}"] = value
        else:
            converted[key] = value
    return converted


def _loss(text: str) -> dict[str, Any]:
    try:
        return serialize(parse_loss(str(text)))
    except LatentflowsError as error:
        raise ValueError(str(error)) from None


def _same(value: Any) -> Any:
    return value


# format-1 TrainConfig field -> its path today, and its value's conversion
V1_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "embedding_dim": (f"{AE_MODEL}.embedding_dim", int), "width": (f"{AE_MODEL}.width", int),
    "ae_epochs": (f"{AE}.epochs", int), "ae_batch_size": (f"{AE}.batch_size", int), "ae_lr": (f"{AE}.lr", float),
    "ae_loss": (f"{AE}.terms.reconstruction.config.loss", _loss), "couplings": (f"{FLOW_MODEL}.couplings", int),
    "hidden": (f"{CONDITIONER}.hidden", list),
    "batch_norm": (f"{FLOW_MODEL}.normalization", lambda on: "batchnorm" if on else "none"),
    "permute": (f"{FLOW_MODEL}.mixing", lambda on: "permutation" if on else "none"),
    "mask": (f"{FLOW_MODEL}.mask", str), "shared_network": (f"{CONDITIONER}.shared", bool),
    "residual": (f"{CONDITIONER}.residual", bool),
    "scale_fn": (f"{FLOW_MODEL}.bijection", lambda name: {"class": SCALE_FUNCTIONS[name], "config": {}}),
    "flow_noise": (f"{FLOW}.noise", float), "flow_epochs": (f"{FLOW}.epochs", int),
    "flow_batch_size": (f"{FLOW}.batch_size", int), "flow_lr": (f"{FLOW}.lr", float),
    "flow_patience": (f"{FLOW}.patience", int),
    "fc_dim": (f"{AE_MODEL}.fc_dim", _same), "dropout": (f"{AE_MODEL}.dropout", _same),
    "ae_weight_decay": (f"{AE}.weight_decay", _same), "flow_weight_decay": (f"{FLOW}.weight_decay", _same),
}


def run_config_from_v1(flat: dict[str, Any]) -> RunConfig:
    """The flat ``TrainConfig`` of format-1 runs -> a run config (the ``seed`` preset, changed by each field).

    Example:
        >>> config = run_config_from_v1({"preset": "quick", "couplings": 2, "scale_fn": "softplus", "permute": False})
        >>> config.get("stages.flow.config.model.config.bijection"), config.get("stages.flow.config.model.config.mixing")
        ({'class': 'SoftplusAffine', 'config': {}}, 'none')
    """
    values = {key: flat[key] for key in SETTINGS if key in flat}
    for name, (path, convert) in V1_FIELDS.items():
        if name in flat:
            values[path] = None if flat[name] is None else convert(flat[name])
    return SEED.with_values(values)


def pipeline_config_from_v1(saved: dict[str, Any]) -> dict[str, Any]:
    """A format-1 ``config.json`` -> today's fields ``LatentFlowPipeline.load`` reads."""
    flat = dict(saved.get("train_config") or {})
    summary = {key: flat.pop(key) for key in ("flow_best_epoch", "train_seconds") if key in flat}
    config = run_config_from_v1(flat)
    if "autoencoder_loss" in saved:
        config = config.with_values({f"{AE}.terms.reconstruction.config.loss": saved["autoencoder_loss"]})
    return {"autoencoder": saved["autoencoder"], "flow": flow_spec_from_v1(saved["flow"]),
            "class_names": saved["class_names"], "config": config.as_dict(), "summary": summary}
