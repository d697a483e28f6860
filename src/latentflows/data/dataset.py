"""The data set type every source loads as: uint8 images, integer labels and the class names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .mapped import MappedImages


@dataclass
class ImageDataset:
    """Images as uint8 ``(N, 3, S, S)``, integer labels ``(N,)`` and the class names.

    What every source loads as, and what the run split and the training stages take;
    the shapes are checked on creation. ``images`` is a tensor, or for a data set too big
    to hold in memory a ``MappedImages`` that reads batches from the decode cache (indexing
    either gives a tensor; ``subset`` of mapped images copies nothing).

    Args:
        images: uint8 ``(N, 3, S, S)``: a tensor or ``MappedImages``.
        labels: int64 ``(N,)``.
        class_names: the classes, in label order.
        source: where the images came from.
        skipped: files that could not be read.

    Example:
        >>> import torch
        >>> data = ImageDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 1, 1]), ["cat", "dog"])
        >>> data.class_counts(), data.subset([1, 2]).image_size
        ({'cat': 1, 'dog': 3}, 8)
    """

    images: torch.Tensor | MappedImages
    labels: torch.Tensor
    class_names: list[str]
    source: str = ""
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 of shape (N, 3, S, S), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def mapped(self) -> bool:
        """Whether the images stay on disk (``MappedImages``) rather than in memory."""
        return isinstance(self.images, MappedImages)

    def class_counts(self) -> dict[str, int]:
        """The number of images of each class, by class name."""
        counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
        return dict(zip(self.class_names, counts))

    def subset(self, indices: torch.Tensor | Sequence[int]) -> "ImageDataset":
        """The images at ``indices``, with the same class names and source (mapped images: no copy)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        images = self.images.subset(indices) if isinstance(self.images, MappedImages) else self.images[indices]
        return ImageDataset(images, self.labels[indices], list(self.class_names), self.source)
