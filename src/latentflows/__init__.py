"""latentflows: class-conditional image generation with a latent normalizing flow.

An autoencoder compresses images to embeddings, a conditional RealNVP learns their
distribution per class, and sampling decodes new embeddings ranked by log-density.
"""

from ._version import __version__
from .autoencoder import ConvAutoencoder
from .config import PRESETS, TrainConfig
from .data import ImageDataset, load_images
from .errors import DataError, LatentflowsError, ModelFileError
from .flows import AffineCoupling, Composite, ConditionalRealNVP, InvertibleBatchNorm, RandomPermutation, Transform
from .pipeline import LatentFlowPipeline, Samples, load, train
from .registry import Configurable, deserialize, register, serialize

__all__ = [
    "__version__", "ConvAutoencoder", "PRESETS", "TrainConfig", "ImageDataset", "load_images",
    "DataError", "LatentflowsError", "ModelFileError", "AffineCoupling", "Composite", "ConditionalRealNVP",
    "InvertibleBatchNorm", "RandomPermutation", "Transform", "LatentFlowPipeline", "Samples", "load", "train",
    "Configurable", "deserialize", "register", "serialize",
]
