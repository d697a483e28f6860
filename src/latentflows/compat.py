"""Reading runs written by latentflows' format 1 (release 0.1).

Format 1 kept the embedding statistics beside the flow (``embedding_mean``,
``embedding_std``), described the flow by flat options (``hidden``, ``scale_fn``,
``shared_network``, ``network``) and named coupling networks ``net`` / ``scale_net`` /
``shift_net``. Format 2 puts the statistics in the flow's ``Standardize`` head and builds
couplings from a bijection and a conditioner. These functions convert a format-1 config
and its weights in memory; the files are never changed.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from .config import SCALE_FUNCTIONS, RunConfig


def flow_spec_from_v1(spec: dict[str, Any]) -> dict[str, Any]:
    """A format-1 ``ConditionalRealNVP`` spec -> the format-2 spec (with a standardization head)."""
    old = dict(spec.get("config", {}))
    network = dict(old.get("network") or {})
    conditioner = {"hidden": list(old.get("hidden", [256, 256])), "shared": bool(old.get("shared_network", True)),
                   "activation": old.get("activation", "relu"), "residual": bool(network.pop("residual", False))}
    conditioner.update(network)  # kernel_initializer / regularizer / constraint
    return {"class": "ConditionalRealNVP", "config": {
        "features": old["features"], "context_size": old.get("context_size", 0),
        "couplings": old.get("couplings", 12), "mask": old.get("mask", "alternate"),
        "permute": old.get("permute", True), "batch_norm": old.get("batch_norm", True),
        "bijection": {"class": SCALE_FUNCTIONS[old.get("scale_fn", "tanh")], "config": {}},
        "conditioner": {"class": "CouplingNet", "config": conditioner},
        "seed": old.get("seed", 0), "standardize": True}}


_COUPLING_NETWORK = re.compile(r"^flow\.transform\.transforms\.(\d+)\.(net|scale_net|shift_net)\.(.*)$")
_FLOW_LAYER = re.compile(r"^flow\.transform\.transforms\.(\d+)\.(.*)$")


def weights_from_v1(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Format-1 weight names -> format-2 names (layers shift by one behind the new head)."""
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


def pipeline_config_from_v1(saved: dict[str, Any]) -> dict[str, Any]:
    """A format-1 ``config.json`` -> the format-2 fields ``LatentFlowPipeline.load`` reads."""
    flat = dict(saved.get("train_config") or {})
    summary = {key: flat.pop(key) for key in ("flow_best_epoch", "train_seconds") if key in flat}
    config = RunConfig.from_v1(flat)
    if "autoencoder_loss" in saved:
        config = config.with_values({"stages.autoencoder.config.terms.reconstruction.config.loss":
                                     saved["autoencoder_loss"]})
    return {"autoencoder": saved["autoencoder"], "flow": flow_spec_from_v1(saved["flow"]),
            "class_names": saved["class_names"], "config": config.as_dict(), "summary": summary}
