"""latentflows: class-conditional image generation with a latent normalizing flow.

An autoencoder compresses images to embeddings, a conditional RealNVP learns their
distribution per class, and sampling decodes new embeddings ranked by log-density.
The data's path, top to bottom: ``data`` (sources -> uint8 tensors) -> ``runs`` (the
run folder and its split) -> ``training`` (stages: autoencoder, then flow) ->
``pipeline`` (generate, save, load) -> ``evaluation``. See docs/architecture.md.
"""

from . import layers, losses, metrics  # noqa: F401  (register their components)
from ._version import __version__
from .autoencoder import ConvAutoencoder, SpatialAutoencoder
from .config import RunConfig
from .data import ImageDataset, load_images
from .errors import DataError, LatentflowsError, ModelFileError
from .flows import (
                    ActNorm,
                    Affine,
                    BaseDistribution,
                    Composite,
                    ConditionalRealNVP,
                    Coupling,
                    ElementwiseBijection,
                    Flow,
                    InvertibleBatchNorm,
                    LULinear,
                    RandomPermutation,
                    Standardize,
                    Transform,
)
from .pipeline import LatentFlowPipeline, Samples, load
from .presets import PRESETS
from .registry import Configurable, deserialize, register, serialize
from .runs import RunFolder
from .runtime import Runtime
from .training import train

__all__ = [
    "__version__", "ConvAutoencoder", "SpatialAutoencoder", "PRESETS", "RunConfig", "ImageDataset", "load_images",
    "DataError", "LatentflowsError", "ModelFileError", "Composite", "ConditionalRealNVP", "Coupling", "Flow",
    "InvertibleBatchNorm", "ActNorm", "LULinear", "RandomPermutation", "Standardize", "Transform",
    "ElementwiseBijection", "Affine", "BaseDistribution", "LatentFlowPipeline", "Samples", "load",
    "Configurable", "deserialize", "register", "serialize", "RunFolder", "Runtime", "train",
]
