"""Invertible layers (data -> noise), flows as distributions, and the conditional RealNVP.

Where each kind of component goes: element-wise maps in ``bijections``, networks that
parametrize them in ``conditioners``, layers in their own modules (``coupling``,
``permutation``, ``batchnorm``, ``linear``, ``standardize``), base distributions in ``distributions``,
and assembled flows in ``flow`` / ``realnvp`` / ``spatial`` (for latents on a grid).
"""

from .base import Composite, Transform, check_features
from .batchnorm import InvertibleBatchNorm, held_batch_statistics
from .bijections import Additive, Affine, ElementwiseBijection, SoftplusAffine, TanhAffine
from .checks import jacobian_logabsdet
from .conditioners import MLP, CouplingNet
from .coupling import Coupling, conditioners_in, coupling_mask
from .distributions import BaseDistribution, FlowDistribution, StandardNormal, check_sampling
from .flow import Flow, StandardizedFlow
from .linear import ActNorm, ContextAffine, ContextLinear, LULinear
from .permutation import RandomPermutation
from .realnvp import ConditionalRealNVP
from .spatial import ConvConditioner, SpatialRealNVP, spatial_mask
from .spline import RationalQuadraticSpline
from .standardize import ClassWhitening, Standardize, fit_leading_layers

__all__ = [
    "Transform", "Composite", "check_features", "InvertibleBatchNorm", "held_batch_statistics",
    "ElementwiseBijection", "Affine", "TanhAffine", "SoftplusAffine", "Additive", "MLP", "CouplingNet", "Coupling",
    "coupling_mask", "BaseDistribution", "StandardNormal", "FlowDistribution", "Flow", "RandomPermutation",
    "ConditionalRealNVP", "Standardize", "jacobian_logabsdet", "RationalQuadraticSpline", "ActNorm", "LULinear",
    "ContextAffine", "ContextLinear", "ClassWhitening", "fit_leading_layers", "StandardizedFlow", "SpatialRealNVP",
    "ConvConditioner", "spatial_mask", "check_sampling", "conditioners_in",
]
