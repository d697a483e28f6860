"""A flow for spatial latents: couplings whose masks and networks know the 8x8 grid.

A ``SpatialAutoencoder`` codes an image as a small image, ``C`` channels on an ``H x W`` grid,
flattened channel-major. The MLP couplings of ``ConditionalRealNVP`` see 256 unrelated numbers
and must learn from a few thousand codes which of them are neighbours. Here each coupling
splits the grid with a checkerboard or a channel mask and computes its scales and shifts with
a small convolutional network over the grid (the identity half, the mask, and the class as
constant maps), as the image flows of Dinh et al. (RealNVP, arXiv:1605.08803, section 3.3)
do, with Glow's data-initialised ActNorm between couplings (Kingma & Dhariwal,
arXiv:1807.03039). Every layer keeps the ``(batch, features)`` contract of ``Transform``: the
grid is a view inside the conditioner.
"""

from __future__ import annotations

from typing import Any, Sequence, cast

import torch
from torch import Tensor, nn

from ..registry import Configurable, register
from .base import Composite, Transform
from .batchnorm import InvertibleBatchNorm
from .coupling import Coupling
from .distributions import StandardNormal
from .flow import StandardizedFlow
from .linear import ActNorm, ContextAffine, ContextLinear
from .standardize import Standardize

SPATIAL_MASKS = ("checkerboard", "channel")
SPATIAL_NORMALIZATIONS = ("actnorm", "classnorm", "batchnorm", "none")


def spatial_mask(shape: Sequence[int], kind: str, flip: bool = False) -> list[bool]:
    """The coupling mask (True = transformed) of a ``(C, H, W)`` grid flattened channel-major:
    ``"checkerboard"`` alternates positions like a chessboard (every channel alike),
    ``"channel"`` transforms the second half of the channels; ``flip`` swaps the two parts.

    Example:
        >>> spatial_mask((1, 2, 2), "checkerboard"), spatial_mask((2, 1, 2), "channel", flip=True)
        ([False, True, True, False], [True, True, False, False])
    """
    channels, height, width = (int(v) for v in shape)
    if kind == "checkerboard":
        rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        transformed = ((rows + columns) % 2 == 1).expand(channels, height, width)
    elif kind == "channel":
        if channels < 2:
            raise ValueError(f"a channel mask needs at least 2 channels, got shape {tuple(shape)}")
        transformed = (torch.arange(channels) >= channels // 2).view(channels, 1, 1).expand(channels, height, width)
    else:
        raise ValueError(f"unknown spatial mask {kind!r}; choose one of {SPATIAL_MASKS}")
    transformed = ~transformed if flip else transformed
    return transformed.flatten().tolist()


def grid_shape(features: int, shape: Sequence[int] | None) -> tuple[int, int, int]:
    """``shape`` checked against ``features``, or, when None, an 8x8 grid of ``features / 64``
    channels (the ``SpatialAutoencoder``'s latent at every image size)."""
    if shape is None:
        if features % 64:
            raise ValueError(f"cannot guess the grid of {features} features (not a multiple of 64 = 8x8); "
                             f"give latent_shape=[C, H, W]")
        shape = (features // 64, 8, 8)
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3 or shape[0] * shape[1] * shape[2] != features or min(shape) < 1:
        raise ValueError(f"latent_shape {list(shape)} does not hold {features} features as [C, H, W]")
    return shape


class _ConvResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.body(x))


@register
class ConvConditioner(nn.Module, Configurable):
    """A coupling's conditioner that sees the identity half on its grid: a small CNN.

    The coupling passes the identity features (then the context, if any) as one row; this
    network puts them back on the ``(C, H, W)`` grid (zeros where features are transformed),
    adds the mask and each context entry as constant maps, and returns the bijection's
    parameters at the transformed positions. Its last convolution starts at zero, so a new
    coupling is the identity.

    Args:
        in_features, features, params_per_feature: set by the coupling.
        shape: the grid ``[C, H, W]``.
        mask: ``"checkerboard"`` or ``"channel"`` (see ``spatial_mask``), as the coupling's.
        flip: as the coupling's.
        hidden: channels of the hidden convolutions.
        blocks: residual blocks of two 3x3 convolutions after the first convolution.

    References:
        Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", ICLR 2017,
        arXiv:1605.08803 (section 3.3: masked convolutions, checkerboard and channel masks).

    Example:
        >>> import torch
        >>> net = ConvConditioner(in_features=8 + 2, features=8, params_per_feature=2, shape=[1, 4, 4],
        ...                       mask="checkerboard", hidden=8)
        >>> net(torch.randn(3, 10)).shape
        torch.Size([3, 2, 8])
    """

    identity_index: Tensor
    transformed_index: Tensor
    mask_map: Tensor

    def __init__(self, in_features: int, features: int, params_per_feature: int, shape: Sequence[int],
                 mask: str = "checkerboard", flip: bool = False, hidden: int = 64, blocks: int = 1):
        super().__init__()
        self.shape = list(grid_shape(int(torch.tensor(shape).prod()), shape))
        self.mask, self.flip, self.hidden, self.blocks = mask, flip, int(hidden), int(blocks)
        self.params_per_feature = params_per_feature
        transformed = torch.tensor(spatial_mask(self.shape, mask, flip))
        if int(transformed.sum()) != features:
            raise ValueError(f"the {mask} mask of shape {self.shape} transforms {int(transformed.sum())} features, "
                             f"the coupling {features}")
        self.register_buffer("identity_index", torch.nonzero(~transformed).flatten(), persistent=False)
        self.register_buffer("transformed_index", torch.nonzero(transformed).flatten(), persistent=False)
        self.register_buffer("mask_map", (~transformed).float().view(self.shape)[:1].clone(), persistent=False)
        self.context_size = in_features - len(self.identity_index)
        if self.context_size < 0 or self.hidden < 1 or self.blocks < 0:
            raise ValueError(f"ConvConditioner: bad sizes (in_features {in_features}, hidden {hidden}, "
                             f"blocks {blocks})")
        channels = self.shape[0]
        layers: list[nn.Module] = [nn.Conv2d(channels + 1 + self.context_size, self.hidden, 3, padding=1), nn.ReLU()]
        layers += [_ConvResidualBlock(self.hidden) for _ in range(self.blocks)]
        output = nn.Conv2d(self.hidden, params_per_feature * channels, 3, padding=1)
        nn.init.zeros_(output.weight)
        nn.init.zeros_(cast(Tensor, output.bias))  # Conv2d has a bias unless told otherwise
        self.net = nn.Sequential(*layers, output)

    def forward(self, inputs: Tensor) -> Tensor:
        batch, (channels, height, width) = inputs.shape[0], self.shape
        k = len(self.identity_index)
        identity, context = inputs[:, :k], inputs[:, k:]
        grid = identity.new_zeros(batch, channels * height * width).index_copy(1, self.identity_index, identity)
        maps = [grid.view(batch, channels, height, width), self.mask_map.expand(batch, 1, height, width)]
        if self.context_size:
            maps.append(context[:, :, None, None].expand(batch, self.context_size, height, width))
        params = self.net(torch.cat(maps, dim=1)).view(batch, self.params_per_feature, channels * height * width)
        return params.index_select(2, self.transformed_index)

    def get_config(self) -> dict[str, Any]:
        return {"shape": self.shape, "mask": self.mask, "flip": self.flip, "hidden": self.hidden,
                "blocks": self.blocks}


@register
class SpatialRealNVP(StandardizedFlow):
    """A conditional RealNVP for spatial latents: checkerboard and channel couplings with
    convolutional conditioners, ActNorm between them, the class as constant input maps.

    Coupling ``i`` uses, in turn, a checkerboard mask, the flipped checkerboard, a channel
    mask and the flipped channel mask (only the checkerboards for a one-channel grid), so
    every feature is transformed every two couplings, by neighbours in space and in channels.

    Args:
        features: number of features (``C * H * W``).
        context_size: size of the one-hot class context (0: unconditional).
        couplings: number of coupling layers.
        latent_shape: the grid ``[C, H, W]``; default an 8x8 grid of ``features / 64`` channels.
        hidden: channels of each conditioner's convolutions.
        blocks: residual blocks per conditioner.
        bijection: spec of each coupling's element-wise bijection (default ``TanhAffine``).
        normalization: after each coupling, ``"actnorm"`` (default); ``"classnorm"``, a
            ``ContextAffine`` (ActNorm with a shift and scale per class, so the class moves every
            sample at every depth, not only through the conditioners); ``"batchnorm"``; or ``"none"``.
        class_affine: begin (after the standardization) with a ``ContextAffine`` layer: a mean
            and scale per class and feature, which keeps the grid's layout.
        class_linear: end with a ``ContextLinear`` layer: a learned lower-triangular map and
            offset per class, so the base is a full-covariance Gaussian per class.
        seed: unused (no random layers); accepted as every flow is built with it.
        standardize: begin with a fixed ``Standardize`` layer (statistics from ``mean``/``std``).
        mean, std: the standardization statistics (weights, not config).

    References:
        Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", ICLR 2017,
        arXiv:1605.08803; Kingma, Dhariwal, "Glow", NeurIPS 2018, arXiv:1807.03039.

    Example:
        >>> import torch
        >>> flow = SpatialRealNVP(2 * 4 * 4, context_size=2, couplings=4, latent_shape=[2, 4, 4], hidden=8).eval()
        >>> x, log_prob = flow.sample_and_log_prob(3, torch.tensor([0.0, 1.0]))
        >>> x.shape, torch.allclose(flow.log_prob(x, torch.tensor([0.0, 1.0])), log_prob, atol=1e-4)
        (torch.Size([3, 32]), True)
    """

    def __init__(self, features: int, context_size: int = 0, couplings: int = 8,
                 latent_shape: Sequence[int] | None = None, hidden: int = 64, blocks: int = 1,
                 bijection: dict | None = None, normalization: str = "actnorm", class_affine: bool = True,
                 class_linear: bool = False, seed: int = 0, standardize: bool = False, *,
                 mean: Tensor | None = None, std: Tensor | None = None):
        if couplings < 1:
            raise ValueError(f"couplings must be at least 1, got {couplings}")
        if normalization not in SPATIAL_NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {SPATIAL_NORMALIZATIONS}, got {normalization!r}")
        shape = grid_shape(features, latent_shape)
        bijection = dict(bijection or {"class": "TanhAffine", "config": {}})
        masks = [("checkerboard", False), ("checkerboard", True)]
        if shape[0] > 1:
            masks += [("channel", False), ("channel", True)]
        layers: list[Transform] = [Standardize(features, mean, std)] if standardize else []
        if class_affine and context_size:
            layers.append(ContextAffine(features, context_size))
        for i in range(couplings):
            kind, flip = masks[i % len(masks)]
            conditioner = {"class": "ConvConditioner",
                           "config": {"shape": list(shape), "mask": kind, "flip": flip, "hidden": hidden,
                                      "blocks": blocks}}
            layers.append(Coupling(features, spatial_mask(shape, kind, flip), bijection, conditioner, context_size))
            if normalization == "actnorm" or (normalization == "classnorm" and not context_size):
                layers.append(ActNorm(features))
            elif normalization == "classnorm":
                layers.append(ContextAffine(features, context_size))
            elif normalization == "batchnorm":
                layers.append(InvertibleBatchNorm(features))
        if class_linear:
            layers.append(ContextLinear(features, context_size))
        super().__init__(Composite(layers), StandardNormal(features), context_size)
        self.couplings, self.latent_shape, self.hidden, self.blocks = couplings, list(shape), int(hidden), int(blocks)
        self.bijection_spec, self.normalization, self.class_affine = bijection, normalization, class_affine
        self.class_linear = class_linear
        self.seed, self.standardize = seed, standardize

    def get_config(self) -> dict[str, Any]:
        return {"features": self.features, "context_size": self.context_size, "couplings": self.couplings,
                "latent_shape": self.latent_shape, "hidden": self.hidden, "blocks": self.blocks,
                "bijection": self.bijection_spec, "normalization": self.normalization,
                "class_affine": self.class_affine, "class_linear": self.class_linear, "seed": self.seed,
                "standardize": self.standardize}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SpatialRealNVP":
        return cls(**config)
