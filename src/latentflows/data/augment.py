"""Label-preserving augmentations of uint8 image batches: a mirror and a small shift.

Used to give the flow fresh codes: the autoencoder encodes augmented copies of the
training photos, which are new, valid pictures of the same pets, so the flow sees more
than the one code per photo that it otherwise memorises within a few epochs.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def mirror_and_shift(images: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """A copy of each image, mirrored left to right with probability 1/2 and moved by a random
    whole number of pixels in ``[-max_shift, max_shift]`` along each axis; the border that
    comes into view repeats the edge pixels (no black bars for the autoencoder to learn).

    Args:
        images: ``(N, C, H, W)`` uint8 images.
        max_shift: the largest shift in pixels (0: mirror only).
        generator: random generator, for reproducible copies.

    Example:
        >>> import torch
        >>> images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 4, 4)
        >>> copies = mirror_and_shift(images, 1, torch.Generator().manual_seed(0))
        >>> copies.shape, copies.dtype
        (torch.Size([2, 3, 4, 4]), torch.uint8)
        >>> torch.equal(mirror_and_shift(images, 0, torch.Generator().manual_seed(1)).sort(-1).values,
        ...             images.sort(-1).values)  # a mirror keeps each row's pixels
        True
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if max_shift < 0 or 2 * max_shift >= min(images.shape[-2:]):
        raise ValueError(f"max_shift must be in [0, {(min(images.shape[-2:]) - 1) // 2}] for "
                         f"{images.shape[-2]}x{images.shape[-1]} images, got {max_shift}")
    n, height, width = len(images), images.shape[-2], images.shape[-1]
    mirrored = torch.rand(n, generator=generator) < 0.5
    out = torch.where(mirrored[:, None, None, None], images.flip(-1), images)
    if max_shift == 0:
        return out
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    padded = F.pad(out.float(), (max_shift,) * 4, mode="replicate").to(torch.uint8)
    # a window of the padded image per picture: row offset max_shift - dy, column max_shift - dx
    rows = (max_shift - shifts[:, 0])[:, None] + torch.arange(height)[None]
    cols = (max_shift - shifts[:, 1])[:, None] + torch.arange(width)[None]
    index = torch.arange(n)[:, None, None, None]
    channel = torch.arange(images.shape[1])[None, :, None, None]
    return padded[index, channel, rows[:, None, :, None], cols[:, None, None, :]]
