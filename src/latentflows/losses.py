"""Loss objects: per-sample values, sample weights, a reduction, and saved hyperparameters.

A ``Loss`` subclass implements ``per_sample(target, prediction)`` returning one value per
sample; calling the loss applies ``sample_weight`` and the reduction. Its constructor
arguments come back from ``get_config`` so a model saved with ``HuberLoss(2.0)`` loads with
threshold 2.0.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .errors import LatentflowsError
from .registry import Configurable, register

REDUCTIONS = ("mean", "sum", "none")


class Density(Protocol):
    """What ``FlowNLL`` needs of a flow (a ``flows.Flow`` has it): this low layer does not import flows."""

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor: ...


class Loss(nn.Module, Configurable):
    """A loss with one value per sample, optional sample weights and a reduction; subclasses implement
    ``per_sample(target, prediction)``.

    The base class of the reconstruction losses; its ``reduction`` is saved with the model.

    Args:
        reduction: ``"mean"`` (sum of weighted values over the batch size), ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> class Absolute(Loss):
        ...     def per_sample(self, target, prediction):
        ...         return (target - prediction).abs().mean(1)
        >>> Absolute()(torch.zeros(2, 2), torch.ones(2, 2), sample_weight=torch.tensor([1.0, 0.0])).item()
        0.5
    """

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def per_sample(self, target: Tensor, prediction: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, target: Tensor, prediction: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        values = self.per_sample(target, prediction)
        return reduce(values, sample_weight, self.reduction)

    def get_config(self) -> dict[str, Any]:
        return {"reduction": self.reduction}


def reduce(values: Tensor, sample_weight: Tensor | None, reduction: str) -> Tensor:
    """Weight per-sample values and reduce them: the one reduction every loss uses.

    'mean' is sum(w * v) / n (Keras' sum over batch size), 'sum' is sum(w * v) and 'none'
    returns the weighted values.

    Args:
        values: one value per sample, ``(batch,)``.
        sample_weight: one weight per sample, or None for weights of 1.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> values, weight = torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.0])
        >>> reduce(values, weight, "mean").item(), reduce(values, None, "sum").item()
        (0.5, 4.0)
    """
    if sample_weight is not None:
        values = values * sample_weight.reshape(values.shape)
    if reduction == "none":
        return values
    return values.sum() if reduction == "sum" else values.mean()


def to_bits_per_dim(nats: Any, features: int) -> Any:
    """A negative log-likelihood in nats (per sample) -> bits per dimension.

    The one place this conversion is written: losses, metrics, logs and reports use it.

    Args:
        nats: negative log-likelihood in nats (a number or a tensor).
        features: the number of dimensions of each sample.

    Example:
        >>> round(to_bits_per_dim(256 * math.log(2), 256), 6)
        1.0
    """
    return nats / (features * math.log(2))


def _per_sample_mean(elementwise: Tensor) -> Tensor:
    return elementwise.reshape(elementwise.shape[0], -1).mean(1)


def huber(error: Tensor, threshold: float) -> Tensor:
    """Element-wise Huber function: quadratic below ``threshold``, linear above, continuous
    with continuous slope, so large errors weigh less than in a squared error.

    Args:
        error: the differences, any shape.
        threshold: where the function turns from quadratic to linear.

    References:
        Huber, "Robust Estimation of a Location Parameter", Annals of Mathematical Statistics, 1964.

    Example:
        >>> import torch
        >>> huber(torch.tensor([0.5, -3.0]), 1.0).tolist()
        [0.125, 2.5]
    """
    absolute = error.abs()
    return torch.where(absolute < threshold, 0.5 * error.pow(2), threshold * absolute - 0.5 * threshold**2)


@register
class HuberLoss(Loss):
    """Mean Huber loss per sample: quadratic for small errors, linear for large ones.

    Args:
        threshold: where the loss turns from quadratic to linear.
        reduction: see ``Loss``.

    References:
        Huber, "Robust Estimation of a Location Parameter", Annals of Mathematical Statistics, 1964.

    Example:
        >>> import torch
        >>> HuberLoss(1.0, reduction="none")(torch.zeros(2, 1), torch.tensor([[0.5], [3.0]])).tolist()
        [0.125, 2.5]
    """

    def __init__(self, threshold: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction)
        if threshold <= 0:
            raise ValueError(f"the Huber threshold must be positive, got {threshold}")
        self.threshold = threshold

    def per_sample(self, target: Tensor, prediction: Tensor) -> Tensor:
        return _per_sample_mean(huber(target - prediction, self.threshold))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "threshold": self.threshold}


@register
class L1Loss(Loss):
    """Mean absolute error per sample.

    Squared error prefers the blurry average of the images a code could stand for; the
    absolute error penalises small errors more and large ones less, which keeps edges and
    colour sharper in reconstructions.

    Args:
        reduction: see ``Loss``.

    References:
        Zhao, Gallo, Frosio, Kautz, "Loss Functions for Image Restoration with Neural
        Networks", IEEE TCI 2017, arXiv:1511.08861.

    Example:
        >>> import torch
        >>> L1Loss()(torch.zeros(1, 2), torch.tensor([[1.0, -3.0]])).item()
        2.0
    """

    def per_sample(self, target: Tensor, prediction: Tensor) -> Tensor:
        return _per_sample_mean((target - prediction).abs())


@register
class MSELoss(Loss):
    """Mean squared error per sample.

    Args:
        reduction: see ``Loss``.

    Example:
        >>> import torch
        >>> MSELoss()(torch.zeros(1, 2), torch.tensor([[1.0, 3.0]])).item()
        5.0
    """

    def per_sample(self, target: Tensor, prediction: Tensor) -> Tensor:
        return _per_sample_mean((target - prediction).pow(2))


@register
class FocalFrequencyLoss(Loss):
    """Squared error between the images' 2-D Fourier spectra, each frequency weighted by how
    badly it is reproduced (the weights are not differentiated).

    A pixel loss lets an autoencoder settle for the easy low frequencies: the result is
    blurry. Weighting each frequency by its own error (normalised to at most 1 per image and
    channel) moves the effort to the frequencies it gets wrong, which are the fine details.
    Use it beside a pixel loss (a second ``Reconstruction`` term), not instead of one.

    Args:
        alpha: the weight is ``|error| ** alpha``; 0 gives a plain spectral squared error
            (Parseval: equal to the pixels' squared error).
        reduction: see ``Loss``.

    References:
        Jiang, Dai, Wu, Loy, "Focal Frequency Loss for Image Reconstruction and Synthesis",
        ICCV 2021, arXiv:2012.12821.

    Example:
        >>> import torch
        >>> images = torch.rand(2, 3, 8, 8)
        >>> FocalFrequencyLoss()(images, images).item()
        0.0
        >>> blurred = torch.nn.functional.avg_pool2d(images, 3, 1, 1)
        >>> plain = FocalFrequencyLoss(alpha=0.0)(images, blurred)      # Parseval
        >>> torch.allclose(plain, (images - blurred).pow(2).mean())
        True
    """

    def __init__(self, alpha: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction)
        if alpha < 0:
            raise ValueError(f"alpha must be at least 0, got {alpha}")
        self.alpha = alpha

    def per_sample(self, target: Tensor, prediction: Tensor) -> Tensor:
        if target.dim() != 4:
            raise ValueError(f"FocalFrequencyLoss needs images (batch, channels, height, width), got shape "
                             f"{tuple(target.shape)}")
        # float32 whatever the autocast: an FFT in half precision loses the small frequencies
        error = torch.fft.fft2(prediction.float() - target.float(), norm="ortho")
        distance = error.real.pow(2) + error.imag.pow(2)
        with torch.no_grad():
            weight = distance.sqrt().pow(self.alpha)
            weight = weight / weight.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
        return _per_sample_mean(weight * distance)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha}


@register
class FlowNLL(Loss):
    """Negative log-likelihood of a flow, per sample, in nats or bits per dimension.

    Called as ``loss(flow, x, context)``: it evaluates ``flow.log_prob(x, context)`` itself, so
    anything with that method will do (a ``flows.Flow``: see ``Density``).

    Args:
        unit: ``"nats"`` or ``"bits_per_dim"``.
        reduction: see ``Loss``.

    Example:
        >>> import torch
        >>> from latentflows.flows import ConditionalRealNVP
        >>> flow = ConditionalRealNVP(2, couplings=1, hidden=[4]).eval()   # starts as the identity
        >>> round(FlowNLL()(flow, torch.zeros(1, 2)).item(), 4)           # log(2 pi)
        1.8379
    """

    UNITS = ("nats", "bits_per_dim")

    def __init__(self, unit: str = "nats", reduction: str = "mean"):
        super().__init__(reduction)
        if unit not in self.UNITS:
            raise ValueError(f"unit must be one of {self.UNITS}, got {unit!r}")
        self.unit = unit

    # called as loss(flow, x, context) by design (see above): not Loss's (target, prediction)
    def forward(self, flow: Density, x: Tensor, context: Tensor | None = None,  # type: ignore[override]
                sample_weight: Tensor | None = None) -> Tensor:
        return reduce(self.from_log_prob(flow.log_prob(x, context), x.shape[1]), sample_weight, self.reduction)

    def from_log_prob(self, log_prob: Tensor, features: int) -> Tensor:
        nll = -log_prob
        return to_bits_per_dim(nll, features) if self.unit == "bits_per_dim" else nll

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "unit": self.unit}


LOSSES = {"mse": MSELoss, "l1": L1Loss, "huber": HuberLoss}


def parse_loss(spec: str) -> Loss:
    """"mse", "l1", "huber" or "huber:2.0" (the threshold) -> a loss object.

    The parser of the command line's loss option; a bad spec is a ``LatentflowsError``
    that says what to write instead.

    Args:
        spec: ``"mse"``, ``"l1"``, ``"huber"`` or ``"huber:THRESHOLD"``.

    Example:
        >>> parse_loss("huber:2.0").threshold, type(parse_loss("mse")).__name__
        (2.0, 'MSELoss')
    """
    name, _, argument = spec.partition(":")
    if name not in LOSSES:
        raise LatentflowsError(f"unknown loss {spec!r}; use mse, l1, huber or huber:THRESHOLD (e.g. huber:2.0)")
    if not argument:
        return LOSSES[name]()
    if name != "huber":
        raise LatentflowsError(f"the {name} loss takes no parameter, got {spec!r}")
    try:
        return HuberLoss(float(argument))
    except ValueError:
        raise LatentflowsError(f"the Huber threshold must be a positive number, got {argument!r}") from None
