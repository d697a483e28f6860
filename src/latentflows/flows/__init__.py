"""Invertible layers (data -> noise) and the conditional RealNVP built from them."""

from .base import Composite, Transform, standard_normal_log_prob
from .batchnorm import InvertibleBatchNorm, held_batch_statistics
from .coupling import MLP, AffineCoupling, coupling_mask
from .permutation import RandomPermutation
from .realnvp import ConditionalRealNVP

__all__ = [
    "Transform", "Composite", "AffineCoupling", "MLP", "coupling_mask", "RandomPermutation",
    "InvertibleBatchNorm", "held_batch_statistics", "ConditionalRealNVP", "standard_normal_log_prob",
]
