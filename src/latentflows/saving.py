"""Save and load any registered model, with named components such as its loss.

The document's ``load_model(..., custom_objects=...)`` becomes: register your classes with
``@latentflows.register`` and call ``load_model(directory)``; their hyperparameters (a
loss's threshold, a regularizer's factor) come back from ``get_config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .errors import ModelFileError
from .registry import deserialize, serialize
from .storage import load_weights_into, read_json, save_safetensors, write_json

MODEL_FORMAT = "latentflows-model"


def save_model(directory: str | Path, model: nn.Module, **components: Any) -> None:
    """Write ``model.json`` (configs) and ``weights.safetensors`` into ``directory``.

    The model and each component are saved by registered name and config, the weights as
    tagged safetensors: nothing is pickled.

    Args:
        directory: the folder to write (created if missing).
        model: a registered ``Configurable`` module.
        **components: registered components to save beside it by name (e.g. ``loss=HuberLoss(2.0)``).

    Example:
        >>> import tempfile
        >>> from latentflows.layers import ResidualBlock
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     save_model(folder, ResidualBlock(4))
        ...     print(sorted(p.name for p in Path(folder).iterdir()))
        ['model.json', 'weights.safetensors']
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(directory / "weights.safetensors", model.state_dict(), MODEL_FORMAT)
    write_json(directory / "model.json", {
        "format": MODEL_FORMAT, "format_version": 1, "model": serialize(model),
        "components": {name: serialize(component) for name, component in components.items()},
    })


def load_model(directory: str | Path) -> tuple[nn.Module, dict]:
    """The model and its components, rebuilt by registered name; weights from safetensors.

    The classes must be registered (import the module that defines them first); a missing
    or foreign file gives a ``ModelFileError``.

    Args:
        directory: a folder written by ``save_model``.

    Example:
        >>> import tempfile, torch
        >>> from latentflows.layers import ResidualBlock
        >>> from latentflows.losses import HuberLoss
        >>> block = ResidualBlock(4)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     save_model(folder, block, loss=HuberLoss(2.0))
        ...     model, components = load_model(folder)
        >>> torch.equal(model(torch.ones(1, 4)), block(torch.ones(1, 4))), components["loss"].threshold
        (True, 2.0)
    """
    directory = Path(directory)
    config = read_json(directory / "model.json")
    if config.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{directory / 'model.json'}: not a latentflows model file")
    model = deserialize(config["model"])
    load_weights_into(model, directory / "weights.safetensors", MODEL_FORMAT)
    components = {name: deserialize(spec) for name, spec in config.get("components", {}).items()}
    return model, components
