"""An adversarial objective term: a patch discriminator that makes reconstructions sharp.

A pixel loss (L1 or MSE) is minimised by the average of the images a code could stand
for, which is blurry. A discriminator that judges small patches as real or reconstructed
penalises exactly that blur. ``Adversarial`` is one objective term that owns its
discriminator and adds to two losses: the autoencoder's (``"loss"``: fool the
discriminator) and the discriminator's own (``"discriminator"``: tell them apart), which
the stage trains with a second optimizer over the discriminator's weights only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register
from .objective import ScheduledTerm


class PatchDiscriminator(nn.Module):
    """A PatchGAN: strided convolutions to a grid of real/fake scores, one per image patch.

    Args:
        width: channels of the first layer (doubled at each halving, up to 8x).
        layers: strided layers; each halves the side (3 on 64x64 images: a 7x7 score grid).

    References:
        Isola, Zhu, Zhou, Efros, "Image-to-Image Translation with Conditional Adversarial
        Networks", CVPR 2017, arXiv:1611.07004.

    Example:
        >>> import torch
        >>> PatchDiscriminator(width=8)(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 1, 7, 7])
    """

    def __init__(self, width: int = 32, layers: int = 3):
        super().__init__()
        channels = [3] + [width * min(2**i, 8) for i in range(layers)]
        modules: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(channels, channels[1:])):
            modules.append(nn.Conv2d(c_in, c_out, 4, 2, 1))
            if i > 0:
                modules.append(nn.GroupNorm(min(8, c_out), c_out))
            modules.append(nn.LeakyReLU(0.2))
        modules += [nn.Conv2d(channels[-1], channels[-1], 3, 1, 1), nn.LeakyReLU(0.2),
                    nn.Conv2d(channels[-1], 1, 4, 1, 1)]
        self.net = nn.Sequential(*modules)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


def diff_augment(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The same random colour, translation and cutout for real and fake batches alike.

    Applied to everything the discriminator sees (real images and reconstructions), it keeps
    a discriminator from memorising a small data set, while staying differentiable so the
    autoencoder still gets its gradient. Images in [-1, 1], shape (N, 3, H, W).

    References:
        Zhao, Liu, Lin, Zhu, Han, "Differentiable Augmentation for Data-Efficient GAN
        Training", NeurIPS 2020, arXiv:2006.10738.

    Example:
        >>> import torch
        >>> diff_augment(torch.zeros(4, 3, 16, 16)).shape
        torch.Size([4, 3, 16, 16])
    """
    n, _, h, w = images.shape

    def uniform(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device="cpu").to(images.device)

    x = images + (uniform(n, 1, 1, 1) - 0.5)  # brightness
    mean = x.mean(1, keepdim=True)
    x = (x - mean) * (uniform(n, 1, 1, 1) * 2) + mean  # saturation
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * (uniform(n, 1, 1, 1) + 0.5) + mean  # contrast
    # translation by up to 1/8 of the side, zero padded
    shift = (h // 8, w // 8)
    padded = F.pad(x, (shift[1], shift[1], shift[0], shift[0]))
    dy = (uniform(n) * (2 * shift[0] + 1)).long()
    dx = (uniform(n) * (2 * shift[1] + 1)).long()
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None].expand(n, 3, h, w + 2 * shift[1])
    x = padded.gather(2, rows)
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :].expand(n, 3, h, w)
    x = x.gather(3, cols)
    # cutout: one square of half the side set to zero
    size = (h // 2, w // 2)
    cy = (uniform(n) * (h + 1 - size[0] % 2)).long()
    cx = (uniform(n) * (w + 1 - size[1] % 2)).long()
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    keep = ((ys - cy[:, None, None]).abs() >= size[0] // 2) | ((xs - cx[:, None, None]).abs() >= size[1] // 2)
    return x * keep[:, None].to(x.dtype)


def adaptive_weight(reconstruction_loss: Tensor, generator_loss: Tensor, last_layer: Tensor,
                    maximum: float = 1e4) -> Tensor:
    """VQGAN's balance: ``|grad L_rec| / (|grad L_G| + 1e-4)`` at the decoder's last layer, detached.

    It scales the adversarial loss so its gradient at the output is as large as the
    reconstruction loss's, whatever the two losses' units.

    References:
        Esser, Rombach, Ommer, "Taming Transformers for High-Resolution Image Synthesis",
        CVPR 2021, arXiv:2012.09841 (eq. 7).

    Example:
        >>> import torch
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> adaptive_weight((3 * w).sum(), (w**2).sum(), w).item()  # |(3, 3)| / |(2, 4)|
        0.9486...
    """
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gen_grad = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gen_grad.norm() + 1e-4)).clamp(0.0, maximum).detach()


@register
class Adversarial(ScheduledTerm):
    """A hinge-loss patch discriminator against the reconstructions, switched on after a warm-up.

    Adds ``weight * w_adapt * L_G`` to the autoencoder's loss (``L_G = -mean D(aug(x_hat))``,
    ``w_adapt`` from ``adaptive_weight``) and the hinge loss
    ``mean relu(1 - D(aug(x))) + mean relu(1 + D(aug(x_hat)))`` to the discriminator's.
    Place it after the reconstruction (and perceptual) terms: the adaptive weight balances
    against their total. The autoencoder must expose its output layer as ``last_layer``.

    Args:
        weight: the factor on the adaptive weight (VQGAN: 0.8 at most; 0.1 to 0.5 here).
        start: training steps (or epochs, see ``unit``) before the term switches on (the
            autoencoder first learns to reconstruct; the count is saved in checkpoints).
        width, layers: the discriminator's (see ``PatchDiscriminator``).
        augment: DiffAugment every image the discriminator sees.
        adaptive: use the adaptive weight (else ``weight`` alone).
        lecam: weight of the LeCam regulariser on the discriminator (0: off), made for GANs
            trained on little data, where the discriminator otherwise wins outright: it adds
            ``mean relu(D(x) - a_fake)^2 + mean relu(a_real - D(x_hat))^2``, where ``a_real``
            and ``a_fake`` are moving averages of the discriminator's mean scores (saved in
            checkpoints), which keeps its scores of real and reconstructed images close.
        lecam_decay: the moving averages' decay per step.
        target: the update that trains the discriminator.
        stop: training steps (or epochs) after which the term is off again (None: never).
        unit: ``"steps"`` or ``"epochs"``, what ``start`` and ``stop`` count (see ``ScheduledTerm``).

    References:
        Esser et al., arXiv:2012.09841; Lim & Ye, "Geometric GAN", arXiv:1705.02894 (hinge
        loss); Zhao et al., arXiv:2006.10738 (DiffAugment); Tseng et al., "Regularizing
        Generative Adversarial Networks under Limited Data", CVPR 2021, arXiv:2104.03310 (LeCam).

    Example:
        >>> import torch
        >>> from latentflows.training import Objective
        >>> objective = Objective({"pixels": {"class": "Reconstruction"},
        ...                        "adversarial": Adversarial(weight=0.5, start=0, width=8)})
        >>> objective.targets
        ['loss', 'discriminator']
    """

    score_averages: Tensor

    def __init__(self, weight: float = 0.1, start: int = 2000, width: int = 32, layers: int = 3,
                 augment: bool = True, adaptive: bool = True, lecam: float = 0.0, lecam_decay: float = 0.99,
                 target: str = "discriminator", stop: int | None = None, unit: str = "steps"):
        super().__init__(weight, target, int(start), stop, unit)
        if target == "loss":
            raise ValueError("the discriminator needs its own update: give Adversarial a target other than 'loss'")
        if not lecam >= 0:
            raise ValueError(f"lecam must be a weight >= 0, got {lecam}")
        if not 0 <= lecam_decay < 1:
            raise ValueError(f"lecam_decay must be in [0, 1), got {lecam_decay}")
        self.width, self.layers = width, layers
        self.augment, self.adaptive, self.lecam, self.lecam_decay = augment, adaptive, float(lecam), float(lecam_decay)
        self.discriminator = PatchDiscriminator(width, layers)
        self.register_buffer("score_averages", torch.zeros(2))  # LeCam's a_real, a_fake

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        state_dict.setdefault(prefix + "score_averages", torch.zeros(2))  # a checkpoint from before LeCam
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, outputs: dict[str, Any]) -> dict[str, Tensor]:
        real, fake = outputs["images"], outputs["reconstruction"]
        if not self.switched_on() or not self.training:
            # off: no discriminator loss at all, so its update does not step (an Adam step on a
            # zero loss with weight decay would shrink the idle discriminator to zero)
            return {"loss": fake.sum() * 0.0}
        seed = int(torch.randint(0, 2**31 - 1, ()))
        augment = self._augmenter(seed)
        generator_loss = -self.discriminator(augment(fake)).mean()
        scale = torch.ones((), device=fake.device)
        if self.adaptive:
            last_layer = outputs["autoencoder"].last_layer
            scale = adaptive_weight(outputs["totals"]["loss"], generator_loss, last_layer)
        real_scores = self.discriminator(augment(real))
        fake_scores = self.discriminator(augment(fake.detach()))
        discriminator_loss = F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
        if self.lecam:
            discriminator_loss = discriminator_loss + self.lecam * self.lecam_penalty(real_scores, fake_scores)
        return {"loss": self.weight * scale * generator_loss, self.target: discriminator_loss}

    def lecam_penalty(self, real_scores: Tensor, fake_scores: Tensor) -> Tensor:
        """LeCam's regulariser against the moving averages, which this (training) step then updates."""
        real_average, fake_average = self.score_averages.unbind()
        penalty = F.relu(real_scores - fake_average).square().mean() + F.relu(real_average - fake_scores).square().mean()
        with torch.no_grad():  # on the device: no host sync
            means = torch.stack([real_scores.mean(), fake_scores.mean()]).float()
            self.score_averages.lerp_(means, 1 - self.lecam_decay)
        return penalty

    def _augmenter(self, seed: int) -> Any:
        if not self.augment:
            return lambda images: images
        return lambda images: diff_augment(images, torch.Generator().manual_seed(seed))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "width": self.width, "layers": self.layers,
                "augment": self.augment, "adaptive": self.adaptive, "lecam": self.lecam,
                "lecam_decay": self.lecam_decay}
