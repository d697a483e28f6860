"""DCGAN-style convolutional autoencoder: images (3, S, S) in [-1, 1] <-> embeddings.

The default (``ConvAutoencoder``, the ``seed`` preset's) is a DCGAN-style network: five stride-2 conv blocks (batch norm,
LeakyReLU 0.2) with widths w, 2w, 4w, 8w, 8w; a fully connected bottleneck with dropout;
a mirrored transposed-conv decoder with ReLU and a tanh output; N(0, 0.02) weight init.
``width`` scales every conv layer (compute grows with its square). ``SpatialAutoencoder``
keeps an 8x8 latent at any image size (32 to 256 pixels) and is the better choice for
large images (see the two classes' notes on size).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from .registry import Configurable, register
from .runtime import evaluation_mode

if TYPE_CHECKING:  # pragma: no cover
    from .data import MappedImages


def to_signed_unit(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1].

    Example:
        >>> import torch
        >>> to_signed_unit(torch.tensor([0, 255], dtype=torch.uint8)).tolist()
        [-1.0, 1.0]
    """
    return images.float().mul_(2 / 255).sub_(1)


def to_uint8(images: Tensor) -> Tensor:
    """float [-1, 1] -> uint8 [0, 255], clamped and rounded.

    Example:
        >>> import torch
        >>> to_uint8(torch.tensor([-2.0, 0.0, 1.0])).tolist()
        [0, 128, 255]
    """
    return ((images.detach().clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


def _down(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True)]


def _up(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


@register
class ConvAutoencoder(nn.Module, Configurable):
    """A DCGAN-style autoencoder (the ``seed`` preset's): images in [-1, 1] <-> embedding vectors.

    Args:
        embedding_dim: size of the embedding.
        width: channels of the first conv block (then 2w, 4w, 8w, 8w).
        image_size: input side in pixels, a multiple of 32 (32, 64, 128 or 256 from the
            command line).
        fc_dim: width of the fully connected bottleneck layers.
        dropout: dropout in the bottleneck.

    Image size: the network is the same five blocks at every size, so the last block's
    map is ``S/32`` a side and the dense layers into and out of the bottleneck grow with
    the pixel count. At the default width 64 and ``fc_dim`` 1024, per image (forward pass;
    a training step costs about three times as much):

    ========  ==========  ===========================  ================
    size      compute     weights (of them dense)      last conv map
    ========  ==========  ===========================  ================
    32        0.03 GMAC   15.5M (1.6M)                 512 x 1 x 1
    64        0.12 GMAC   18.6M (4.7M)                 512 x 2 x 2
    128       0.49 GMAC   31.2M (17.3M)                512 x 4 x 4
    256       1.96 GMAC   81.6M (67.7M)                512 x 8 x 8
    ========  ==========  ===========================  ================

    Compute grows with the pixel count (x4 per doubling of the side); at 256 pixels the two
    dense layers hold 83% of the weights (32768 x 1024 each way: with their gradients and
    Adam's state, about 1 GB in fp32): it trains, but for large images ``SpatialAutoencoder`` is far
    lighter. The 64-pixel network is exactly the reference notebook's that the ``seed`` preset reproduces.

    References:
        Radford, Metz, Chintala, "Unsupervised Representation Learning with Deep Convolutional
        Generative Adversarial Networks", ICLR 2016, arXiv:1511.06434.

    Example:
        >>> import torch
        >>> model = ConvAutoencoder(embedding_dim=16, width=4, fc_dim=32).eval()
        >>> reconstruction, embedding = model(torch.zeros(2, 3, 64, 64))
        >>> tuple(reconstruction.shape), tuple(embedding.shape)
        ((2, 3, 64, 64), (2, 16))
    """

    def __init__(self, embedding_dim: int = 256, width: int = 64, image_size: int = 64,
                 fc_dim: int = 1024, dropout: float = 0.2):
        super().__init__()
        if image_size % 32 or image_size < 32:
            raise ValueError(f"image_size must be a multiple of 32 (five stride-2 blocks), got {image_size}")
        if embedding_dim < 2 or width < 1:
            raise ValueError("embedding_dim must be at least 2 and width at least 1")
        self.embedding_dim, self.width, self.image_size = embedding_dim, width, image_size
        self.fc_dim, self.dropout = fc_dim, dropout
        channels = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        self.bottom = (channels[-1], image_size // 32, image_size // 32)
        flat = channels[-1] * (image_size // 32) ** 2

        down = _down(3, channels[0])
        for c_in, c_out in zip(channels, channels[1:]):
            down += _down(c_in, c_out)
        self.encoder = nn.Sequential(*down)
        self.fc_encode = nn.Sequential(
            nn.Linear(flat, fc_dim), nn.BatchNorm1d(fc_dim), nn.LeakyReLU(0.2, inplace=True),
            nn.Dropout(dropout), nn.Linear(fc_dim, embedding_dim))
        self.fc_decode = nn.Sequential(
            nn.Linear(embedding_dim, fc_dim), nn.BatchNorm1d(fc_dim), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(fc_dim, flat), nn.BatchNorm1d(flat), nn.ReLU(inplace=True))
        up: list[nn.Module] = []
        reversed_channels = channels[::-1]
        for c_in, c_out in zip(reversed_channels, reversed_channels[1:]):
            up += _up(c_in, c_out)
        up += [nn.ConvTranspose2d(channels[0], 3, 4, 2, 1), nn.Tanh()]
        self.decoder = nn.Sequential(*up)
        self.apply(_init_weights)
        # channels_last runs the convolutions about 15% faster on CPU (see bench/).
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit memory_format

    @property
    def last_layer(self) -> Tensor:
        """The weight of the output layer (where an adaptive adversarial weight is measured)."""
        return cast(nn.ConvTranspose2d, self.decoder[-2]).weight

    def encode(self, x: Tensor) -> Tensor:
        features = self.encoder(x.contiguous(memory_format=torch.channels_last))
        return self.fc_encode(features.flatten(1))

    def decode(self, embedding: Tensor, context: Tensor | None = None) -> Tensor:
        """Embeddings -> images; ``context`` (one-hot classes) is accepted and unused: the decoder
        is not class-conditional."""
        features = self.fc_decode(embedding).view(-1, *self.bottom)
        return self.decoder(features.contiguous(memory_format=torch.channels_last))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        embedding = self.encode(x)
        return self.decode(embedding, context), embedding

    def get_config(self) -> dict[str, Any]:
        return {"embedding_dim": self.embedding_dim, "width": self.width, "image_size": self.image_size,
                "fc_dim": self.fc_dim, "dropout": self.dropout}


class ResidualBlock(nn.Module):
    """``x + conv(act(norm(conv(act(norm(x))))))``: two 3x3 convolutions with GroupNorm and SiLU.

    The second convolution starts at zero, so a new block is the identity.

    Args:
        channels: input and output channels.
        groups: GroupNorm groups (must divide ``channels``).

    References:
        He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016, arXiv:1603.05027;
        Wu & He, "Group Normalization", ECCV 2018, arXiv:1803.08494.

    Example:
        >>> import torch
        >>> block = ResidualBlock(8, groups=4)
        >>> x = torch.randn(1, 8, 4, 4)
        >>> torch.equal(block(x), x)
        True
    """

    def __init__(self, channels: int, groups: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))
        output = cast(nn.Conv2d, self.body[-1])
        nn.init.zeros_(output.weight)
        nn.init.zeros_(cast(Tensor, output.bias))  # Conv2d has a bias unless told otherwise

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ClassConditionalNorm(nn.Module):
    """GroupNorm whose scale and shift depend on the class: ``norm(x) * (1 + g(c)) + b(c)``.

    ``g`` and ``b`` are linear maps of the one-hot class (so a mixture of two classes, as in
    an interpolation, gives the mixture of their scales and shifts); they start at zero, so
    a new layer is a plain GroupNorm. This is how a decoder learns what a class looks like
    beyond what the code holds.

    Args:
        groups: GroupNorm groups (must divide ``channels``).
        channels: the features' channels.
        classes: the size of the one-hot context.

    References:
        de Vries et al., "Modulating early visual processing by language", NeurIPS 2017,
        arXiv:1707.00683 (conditional normalization); Brock, Donahue, Simonyan, "Large Scale
        GAN Training for High Fidelity Natural Image Synthesis", ICLR 2019, arXiv:1809.11096.

    Example:
        >>> import torch
        >>> norm = ClassConditionalNorm(2, 4, classes=3)
        >>> x, context = torch.randn(2, 4, 5, 5), torch.eye(3)[[0, 2]]
        >>> torch.allclose(norm(x, context), nn.GroupNorm(2, 4)(x), atol=1e-6)   # a new layer
        True
    """

    def __init__(self, groups: int, channels: int, classes: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.modulation = nn.Linear(classes, 2 * channels, bias=False)
        nn.init.zeros_(self.modulation.weight)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        scale, shift = self.modulation(context.to(x.dtype)).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return self.norm(x) * (1 + scale) + shift


LATENT_SIDE = 8  # SpatialAutoencoder's latent side with downsample="auto", whatever the image size


@register
class SpatialAutoencoder(nn.Module, Configurable):
    """A convolutional autoencoder whose embedding is a small image: (C, S/f, S/f) flattened.

    Where ``ConvAutoencoder``'s fully connected bottleneck has to squeeze the whole picture through
    one dense layer (layout and colour are the first to go), a spatial latent keeps each
    region of the image in its own few numbers: 256 numbers as 8x8 positions x 4 channels.
    The encoder halves the resolution ``log2(f)`` times with strided 4x4 convolutions; the
    decoder doubles it with nearest-neighbour resizing then a 3x3 convolution (no
    checkerboard artefacts). Residual blocks run at the latent's resolution only, where
    they are cheap: the whole network costs about what ``ConvAutoencoder`` does at the same width.

    Args:
        embedding_dim: numbers per image; ``channels = embedding_dim / (S/f)^2`` must be whole.
        width: channels after the first halving; each further one doubles them, up to ``4 * width``.
        image_size: input side in pixels, a multiple of ``downsample`` (32, 64, 128 or 256
            from the command line).
        downsample: the factor f between the image and the latent side (a power of 2), or
            ``"auto"``: ``image_size // 8``, an 8x8 latent at every size (32 px: 4, 64 px: 8,
            128 px: 16, 256 px: 32). ``get_config`` saves the resolved number.
        blocks: residual blocks at the latent resolution, in the encoder and in the decoder.
        groups: GroupNorm groups.
        classes: 0 (the default) for a decoder that sees only the code; a number of classes
            for a class-conditional decoder (its upsampling norms are ``ClassConditionalNorm``),
            which then needs the one-hot class as ``context`` to decode; ``"auto"`` in a run's
            config: the training stage puts in the data's number of classes.

    Image size: with ``downsample="auto"`` the embedding keeps its size and layout (8x8
    positions) at every size; each doubling of the side adds one halving to the encoder
    and one doubling to the decoder, at ``4 * width`` channels next to the latent, while
    the layers already there run on four times the pixels. So the weights grow a little
    and the compute with the pixel count. Per image (forward pass; a training step costs
    about three times as much), at the presets' settings (embedding_dim 256):

    ========  ==========================  ==========================
    size      quick (width 32, blocks 1)  best (width 64, blocks 2)
    ========  ==========================  ==========================
    32        0.009 GMAC, 0.21M weights   0.05 GMAC, 1.4M weights
    64        0.05 GMAC, 0.86M weights    0.27 GMAC, 5.8M weights
    128       0.17 GMAC, 1.27M weights    0.72 GMAC, 7.4M weights
    256       0.63 GMAC, 1.68M weights    2.5 GMAC, 9.1M weights
    ========  ==========================  ==========================

    At 32 pixels the latent is reached after two halvings, so the residual blocks run at
    ``2 * width`` channels (not ``4 * width``): a lighter network. Every 8x8 position
    stands for an (S/8)-pixel square, so at 256 pixels the same 256 numbers describe 16
    times as many pixels as at 64: expect blurrier reconstructions unless
    ``embedding_dim`` grows with the image (a multiple of 64).

    References:
        Esser, Rombach, Ommer, "Taming Transformers for High-Resolution Image Synthesis",
        CVPR 2021, arXiv:2012.09841 (spatial latents); Odena, Dumoulin, Olah, "Deconvolution
        and Checkerboard Artifacts", Distill 2016 (resize-then-convolve).

    Example:
        >>> import torch
        >>> model = SpatialAutoencoder(embedding_dim=64, width=8, image_size=32).eval()
        >>> reconstruction, embedding = model(torch.zeros(2, 3, 32, 32))
        >>> tuple(reconstruction.shape), tuple(embedding.shape), model.latent_shape, model.downsample
        ((2, 3, 32, 32), (2, 64), (1, 8, 8), 4)
        >>> SpatialAutoencoder(embedding_dim=64, width=8, image_size=32, downsample=8).latent_shape
        (4, 4, 4)
        >>> conditional = SpatialAutoencoder(embedding_dim=64, width=8, image_size=32, classes=2).eval()
        >>> tuple(conditional.decode(torch.zeros(2, 64), torch.eye(2)).shape)
        (2, 3, 32, 32)
    """

    def __init__(self, embedding_dim: int = 256, width: int = 32, image_size: int = 64,
                 downsample: int | str = "auto", blocks: int = 1, groups: int = 8, classes: int | str = 0):
        super().__init__()
        if classes == "auto":
            raise ValueError("classes='auto' is filled in by the training stage from the data; "
                             "give the number of classes (or 0 for a decoder without them)")
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0 or classes == 1:
            raise ValueError(f"classes must be 0 (no class input) or a number of classes >= 2, got {classes!r}")
        if downsample == "auto":
            downsample = self.auto_downsample(image_size)
        if not isinstance(downsample, int) or isinstance(downsample, bool):
            raise ValueError(f"downsample must be 'auto' or a power of 2 (e.g. 8), got {downsample!r}")
        levels = downsample.bit_length() - 1
        if downsample < 2 or 2 ** levels != downsample:
            raise ValueError(f"downsample must be 'auto' or a power of 2 (e.g. 8), got {downsample}")
        if image_size % downsample:
            raise ValueError(f"image_size must be a multiple of downsample={downsample}, got {image_size}")
        side = image_size // downsample
        if embedding_dim % (side * side):
            raise ValueError(f"embedding_dim={embedding_dim} is not a whole number of {side}x{side} latent "
                             f"channels; use a multiple of {side * side}")
        if width < 1 or width % groups:
            raise ValueError(f"width must be a positive multiple of groups={groups}, got {width}")
        self.embedding_dim, self.width, self.image_size = embedding_dim, width, image_size
        self.downsample, self.blocks, self.groups, self.classes = downsample, blocks, groups, classes
        self.latent_shape = (embedding_dim // (side * side), side, side)
        # channels after each halving: w, 2w, 4w, 4w, ...; no convolution runs at full resolution
        channels = [width * min(2 ** i, 4) for i in range(levels)]

        down: list[nn.Module] = [nn.Conv2d(3, channels[0], 4, 2, 1)]
        for c_in, c_out in zip(channels, channels[1:]):
            down += [nn.GroupNorm(groups, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 4, 2, 1)]
        down += [ResidualBlock(channels[-1], groups) for _ in range(blocks)]
        down += [nn.GroupNorm(groups, channels[-1]), nn.SiLU(), nn.Conv2d(channels[-1], self.latent_shape[0], 3, padding=1)]
        self.encoder = nn.Sequential(*down)

        up: list[nn.Module] = [nn.Conv2d(self.latent_shape[0], channels[-1], 3, padding=1)]
        up += [ResidualBlock(channels[-1], groups) for _ in range(blocks)]
        for c_in, c_out in zip(channels[::-1], channels[-2::-1] + [3]):
            norm = ClassConditionalNorm(groups, c_in, classes) if classes else nn.GroupNorm(groups, c_in)
            up += [norm, nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1)]
        up += [nn.Tanh()]
        self.decoder = nn.Sequential(*up)
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit memory_format

    @staticmethod
    def auto_downsample(image_size: int) -> int:
        """The factor that keeps the latent 8x8: ``image_size // 8``, which must be a power of 2.

        Example:
            >>> [SpatialAutoencoder.auto_downsample(size) for size in (32, 64, 128, 256)]
            [4, 8, 16, 32]
        """
        factor, rest = divmod(image_size, LATENT_SIDE)
        if rest or factor < 2 or factor & (factor - 1):
            raise ValueError(f"downsample='auto' keeps an {LATENT_SIDE}x{LATENT_SIDE} latent, so image_size must be "
                             f"{LATENT_SIDE} times a power of 2 (32, 64, 128 or 256), got {image_size}; "
                             f"or give downsample explicitly")
        return factor

    @property
    def last_layer(self) -> Tensor:
        """The weight of the output convolution (where an adaptive adversarial weight is measured)."""
        return cast(nn.Conv2d, self.decoder[-2]).weight

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x.contiguous(memory_format=torch.channels_last)).flatten(1)

    def decode(self, embedding: Tensor, context: Tensor | None = None) -> Tensor:
        """Embeddings -> images in [-1, 1]; ``context``, the one-hot classes (batch, classes), is
        required by a class-conditional decoder and unused otherwise."""
        x = embedding.reshape(-1, *self.latent_shape).contiguous(memory_format=torch.channels_last)
        if not self.classes:
            return self.decoder(x)
        if context is None or context.shape != (len(embedding), self.classes):
            raise ValueError(f"this decoder is class-conditional: pass the one-hot classes as context, shape "
                             f"({len(embedding)}, {self.classes}); got "
                             f"{None if context is None else tuple(context.shape)}")
        for layer in self.decoder:
            x = layer(x, context) if isinstance(layer, ClassConditionalNorm) else layer(x)
        return x

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        embedding = self.encode(x)
        return self.decode(embedding, context), embedding

    def get_config(self) -> dict[str, Any]:
        config = {"embedding_dim": self.embedding_dim, "width": self.width, "image_size": self.image_size,
                  "downsample": self.downsample, "blocks": self.blocks, "groups": self.groups}
        return {**config, "classes": self.classes} if self.classes else config


@torch.no_grad()
def encode_images(autoencoder: nn.Module, images: Tensor | MappedImages, batch_size: int = 256) -> Tensor:
    """uint8 images -> embeddings, in batches, in eval mode (the mode found is restored).

    Images are moved to the autoencoder's device batch by batch, so a data set on the CPU
    never has to fit on the GPU.
    """
    device = next(autoencoder.parameters()).device
    model: Any = autoencoder  # any registered autoencoder: encode and embedding_dim, duck-typed
    with evaluation_mode(autoencoder):
        parts = [model.encode(to_signed_unit(images[i : i + batch_size].to(device)))
                 for i in range(0, len(images), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, model.embedding_dim, device=device)


@torch.no_grad()
def decode_embeddings(autoencoder: nn.Module, embeddings: Tensor, batch_size: int = 256,
                      context: Tensor | None = None) -> Tensor:
    """Embeddings (and, for a class-conditional decoder, their one-hot classes) -> uint8 images
    on the CPU, in batches, in eval mode (the mode found is restored)."""
    model: Any = autoencoder  # any registered autoencoder: decode, duck-typed
    with evaluation_mode(autoencoder):
        parts = [to_uint8(model.decode(embeddings[i : i + batch_size],
                                             None if context is None else context[i : i + batch_size]).float()).cpu()
                 for i in range(0, len(embeddings), batch_size)]
    return torch.cat(parts)


def is_class_conditional(autoencoder: nn.Module) -> bool:
    """Whether the autoencoder's decoder needs the class (``classes`` > 0)."""
    return bool(getattr(autoencoder, "classes", 0))


def class_context(autoencoder: nn.Module, labels: Tensor) -> Tensor | None:
    """What the autoencoder's ``decode`` takes as ``context`` for images of these labels: their
    one-hot rows for a class-conditional decoder, None for any other."""
    if not is_class_conditional(autoencoder):
        return None
    return nn.functional.one_hot(labels, int(getattr(autoencoder, "classes"))).float()


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
