"""Monotone rational-quadratic splines: a flexible element-wise bijection for couplings.

Inside ``[-bound, bound]`` each feature is mapped by a monotone piecewise
rational-quadratic function through ``bins + 1`` knots; outside, by the identity (linear
tails). The knots' spacings in x and y and the derivatives at the interior knots are the
parameters a coupling's conditioner produces; the derivatives at ``+-bound`` are fixed at 1
so that the spline meets the tails with matching value and slope.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..autodiff import stable_softplus
from ..registry import register
from .bijections import ElementwiseBijection


def _knots(raw: Tensor, minimum: float, bound: float) -> tuple[Tensor, Tensor]:
    """Bin sizes (batch, bins, features), each at least ``minimum`` of the whole, and the knots
    (batch, bins + 1, features) from -bound to bound."""
    bins = raw.shape[1]
    fractions = minimum + (1 - minimum * bins) * torch.softmax(raw, dim=1)  # along dim 1: the fast layout
    inner = torch.cumsum(fractions[:, :-1], dim=1) * (2 * bound) - bound
    ends = inner.new_full((inner.shape[0], 1, inner.shape[2]), bound)
    knots = torch.cat([-ends, inner, ends], dim=1)  # exact ends despite rounding
    return knots[:, 1:] - knots[:, :-1], knots


def _gather(values: Tensor, index: Tensor) -> Tensor:
    """``values[b, index[b, f], f]``."""
    return torch.gather(values, 1, index.unsqueeze(1)).squeeze(1)


@register
class RationalQuadraticSpline(ElementwiseBijection):
    """Monotone rational-quadratic spline on ``[-bound, bound]`` with identity tails outside.

    Per feature the parameters are ``bins`` unnormalized bin widths, ``bins`` unnormalized
    bin heights (each through a softmax, with a floor) and ``bins - 1`` unconstrained
    derivatives at the interior knots (through a softplus with an offset, so 0 gives a
    derivative of 1). The two boundary derivatives are 1, so the map and its slope are
    continuous where the spline meets the identity tails. All-zero parameters give equal
    bins and unit slopes: the identity (up to rounding), which is where a zero-initialised
    conditioner starts. The inverse solves the bin's quadratic in its numerically stable form.

    Args:
        bins: number of bins (at least 2).
        bound: the spline acts on ``[-bound, bound]`` (in x and y); standardized inputs
            mostly fall inside the default 3.
        min_bin_width: smallest bin width, as a fraction of ``2 * bound``.
        min_bin_height: smallest bin height, as a fraction of ``2 * bound``.
        min_derivative: smallest derivative at an interior knot.

    References:
        Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", NeurIPS 2019,
        arXiv:1906.04032; Gregory & Delbourgo, "Piecewise rational quadratic interpolation
        to monotonic data", IMA Journal of Numerical Analysis 2(2), 1982.

    Example:
        >>> import torch
        >>> from latentflows.flows import RationalQuadraticSpline
        >>> spline = RationalQuadraticSpline(bins=4)
        >>> spline.params_per_feature
        11
        >>> x = torch.tensor([[-5.0, -1.0, 0.5, 2.9]])
        >>> y, logabsdet = spline(x, torch.zeros(1, 11, 4))      # zero params: the identity
        >>> torch.allclose(y, x), logabsdet.abs().item() < 1e-5
        (True, True)
        >>> params = torch.randn(1, 11, 4, generator=torch.Generator().manual_seed(0))
        >>> y, logabsdet = spline(x, params)
        >>> x_back, inverse_logabsdet = spline.inverse(y, params)
        >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(logabsdet, -inverse_logabsdet, atol=1e-5)
        (True, True)
        >>> y[0, 0].item()                                    # the tail is the identity
        -5.0
    """

    def __init__(self, bins: int = 8, bound: float = 3.0, min_bin_width: float = 1e-3, min_bin_height: float = 1e-3,
                 min_derivative: float = 1e-3):
        super().__init__()
        if int(bins) != bins or bins < 2:
            raise ValueError(f"bins must be an integer of at least 2, got {bins!r}")
        if not bound > 0:
            raise ValueError(f"bound must be positive, got {bound!r}")
        for name, value in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
            if not 0 <= value * bins < 1:
                raise ValueError(f"{name} must be in [0, 1/bins) = [0, {1 / bins:g}), got {value!r}")
        if not 0 < min_derivative < 1:
            raise ValueError(f"min_derivative must be in (0, 1) so that a zero parameter gives a slope of 1, "
                             f"got {min_derivative!r}")
        self.bins, self.bound = int(bins), float(bound)
        self.min_bin_width, self.min_bin_height = float(min_bin_width), float(min_bin_height)
        self.min_derivative = float(min_derivative)
        self.params_per_feature = 3 * self.bins - 1
        # softplus(0 + offset) + min_derivative == 1: a zero parameter is a unit slope
        self._derivative_offset = math.log(math.expm1(1 - self.min_derivative))

    def _spline(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Bin widths, x-knots, bin heights, y-knots and knot derivatives, each (batch, bins [+ 1], features)."""
        k = self.bins
        widths, x_knots = _knots(params[:, :k], self.min_bin_width, self.bound)
        heights, y_knots = _knots(params[:, k : 2 * k], self.min_bin_height, self.bound)
        interior = self.min_derivative + stable_softplus(params[:, 2 * k :] + self._derivative_offset)
        ones = interior.new_ones(interior.shape[0], 1, interior.shape[2])
        return widths, x_knots, heights, y_knots, torch.cat([ones, interior, ones], dim=1)

    def _check(self, values: Tensor, params: Tensor) -> None:
        if values.dim() != 2 or params.shape != (values.shape[0], self.params_per_feature, values.shape[1]):
            raise ValueError(f"RationalQuadraticSpline(bins={self.bins}) needs params of shape (batch, "
                             f"{self.params_per_feature}, features) for inputs of shape (batch, features); got "
                             f"{tuple(params.shape)} and {tuple(values.shape)}")

    @staticmethod
    def _bin(knots: Tensor, values: Tensor) -> Tensor:
        """The bin of each value: how many interior knots are at or below it."""
        return (values.unsqueeze(1) >= knots[:, 1:-1]).sum(1)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x, params)
        widths, x_knots, heights, y_knots, derivatives = self._spline(params)
        inside = x.abs() < self.bound  # at +-bound the spline and the tail agree in value and slope
        x_in = x.clamp(-self.bound, self.bound)  # the spline branch stays finite (and so do its gradients) everywhere
        index = self._bin(x_knots, x_in)
        width, height = _gather(widths, index), _gather(heights, index)
        x_k, y_k = _gather(x_knots, index), _gather(y_knots, index)
        d_k, d_k1 = _gather(derivatives, index), _gather(derivatives, index + 1)
        slope = height / width
        xi = (x_in - x_k) / width
        between = xi * (1 - xi)
        denominator = slope + (d_k1 + d_k - 2 * slope) * between
        y = y_k + height * (slope * xi.square() + d_k * between) / denominator
        derivative = slope.square() * (d_k1 * xi.square() + 2 * slope * between + d_k * (1 - xi).square())
        log_derivative = torch.log(derivative) - 2 * torch.log(denominator)
        y = torch.where(inside, y, x)
        return y, torch.where(inside, log_derivative, torch.zeros_like(log_derivative)).sum(1)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        self._check(y, params)
        widths, x_knots, heights, y_knots, derivatives = self._spline(params)
        inside = y.abs() < self.bound
        y_in = y.clamp(-self.bound, self.bound)
        index = self._bin(y_knots, y_in)
        width, height = _gather(widths, index), _gather(heights, index)
        x_k, y_k = _gather(x_knots, index), _gather(y_knots, index)
        d_k, d_k1 = _gather(derivatives, index), _gather(derivatives, index + 1)
        slope = height / width
        offset = y_in - y_k
        curvature = d_k1 + d_k - 2 * slope
        # xi in [0, 1] solves a xi^2 + b xi + c = 0; that root, written 2c / (-b - sqrt(b^2 - 4ac)),
        # does not cancel catastrophically as (-b + sqrt(b^2 - 4ac)) / 2a does when a is small
        a = height * (slope - d_k) + offset * curvature
        b = height * d_k - offset * curvature
        c = -slope * offset
        discriminant = (b.square() - 4 * a * c).clamp_min(0)
        xi = 2 * c / (-b - discriminant.sqrt())
        x = x_k + xi * width
        between = xi * (1 - xi)
        denominator = slope + curvature * between
        derivative = slope.square() * (d_k1 * xi.square() + 2 * slope * between + d_k * (1 - xi).square())
        log_derivative = 2 * torch.log(denominator) - torch.log(derivative)
        x = torch.where(inside, x, y)
        return x, torch.where(inside, log_derivative, torch.zeros_like(log_derivative)).sum(1)

    def get_config(self) -> dict[str, Any]:
        return {"bins": self.bins, "bound": self.bound, "min_bin_width": self.min_bin_width,
                "min_bin_height": self.min_bin_height, "min_derivative": self.min_derivative}
