"""Element-wise bijections: the part of a coupling that transforms each feature.

A coupling layer splits the features in two; a conditioner turns one half (and the
context) into parameters, and an ``ElementwiseBijection`` maps each feature of the other
half with its own parameters. A new kind of coupling (additive, affine, spline) is one
subclass here: it declares how many parameters it needs per feature and implements the
map both ways with its log-determinant.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..autodiff import stable_softplus
from ..registry import Configurable, register


class ElementwiseBijection(nn.Module, Configurable):
    """A monotone map of each feature, parametrized per sample and per feature.

    ``params`` has shape ``(batch, params_per_feature, features)``; ``forward(x, params)``
    returns ``(y, logabsdet)`` with one log-determinant per sample (the sum over features of
    log |dy/dx|), and ``inverse(y, params)`` returns ``(x, logabsdet)`` of the inverse map.
    The conditioner that produces ``params`` ends in a layer initialised at zero, so
    ``identity_params`` (all zeros) should map each feature to itself or close to it.

    A subclass whose constructor takes options defines ``get_config`` returning them (this
    base's returns ``{}``); ``@latentflows.register`` refuses one that does not, since a saved
    run would lose them. For an affine map, subclass ``Affine`` and write ``log_scale`` only.

    Example:
        >>> import torch
        >>> from latentflows.flows import Additive
        >>> shift = torch.full((2, 1, 3), 0.5)
        >>> Additive()(torch.zeros(2, 3), shift)[0].tolist()
        [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
    """

    params_per_feature: int = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {}


class Affine(ElementwiseBijection):
    """``y = x * exp(log_scale(a)) + b``: the easy base, where a subclass only says how the raw
    ``a`` becomes a log-scale (``log_scale(params)``; ``params[:, 0]`` is ``a``, ``params[:, 1]`` is ``b``).

    Takes no arguments; a subclass with options takes them in ``__init__`` and returns them
    from ``get_config``.

    Example:
        >>> import torch, latentflows as lf
        >>> @lf.register(name="docs.ClampedAffine")
        ... class ClampedAffine(lf.flows.Affine):
        ...     def __init__(self, limit: float = 2.0):
        ...         super().__init__()
        ...         self.limit = limit
        ...     def log_scale(self, params):
        ...         return params[:, 0].clamp(-self.limit, self.limit)
        ...     def get_config(self):
        ...         return {"limit": self.limit}
        >>> y, logabsdet = ClampedAffine(1.0)(torch.tensor([[2.0]]), torch.tensor([[[5.0], [1.0]]]))
        >>> round(y.item(), 4), logabsdet.item()            # 2 * e + 1; log-scale clamped to 1
        (6.4366, 1.0)
    """

    params_per_feature = 2

    def log_scale(self, params: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        log_scale = self.log_scale(params)
        return torch.addcmul(params[:, 1], x, log_scale.exp()), log_scale.sum(1)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        log_scale = self.log_scale(params)
        return (y - params[:, 1]) * torch.exp(-log_scale), -log_scale.sum(1)


@register
class TanhAffine(Affine):
    """``y = x * exp(tanh(a)) + b``: an affine map whose log-scale is bounded to (-1, 1).

    Bounding each layer's log-scale keeps a deep stack numerically tame (the ``seed``
    preset's choice). Parameters per feature: ``a`` (raw log-scale) and ``b`` (shift).

    References:
        Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", ICLR 2017,
        arXiv:1605.08803.

    Example:
        >>> import torch
        >>> from latentflows.flows import TanhAffine
        >>> params = torch.tensor([[[100.0], [1.0]]])   # a -> tanh(a) = 1, b = 1
        >>> y, logabsdet = TanhAffine()(torch.tensor([[2.0]]), params)
        >>> round(y.item(), 4), logabsdet.item()
        (6.4366, 1.0)
    """

    def log_scale(self, params: Tensor) -> Tensor:
        return torch.tanh(params[:, 0])


SOFTPLUS_ONE = math.log(math.e - 1)  # softplus(SOFTPLUS_ONE) == 1


@register
class SoftplusAffine(Affine):
    """``y = x * s + b`` with ``s = softplus(a + c) + 1e-3``, where ``c`` makes ``a = 0`` a scale of 1.

    Unbounded above, unlike ``TanhAffine``; the softplus has its own exact backward
    (``autodiff.StableSoftplus``).

    References:
        Dinh et al., "Density estimation using Real NVP", ICLR 2017, arXiv:1605.08803 (the
        affine coupling; a positive scale from a smooth map instead of ``exp`` as in nflows).

    Example:
        >>> import torch
        >>> from latentflows.flows import SoftplusAffine
        >>> y, logabsdet = SoftplusAffine()(torch.tensor([[2.0]]), torch.zeros(1, 2, 1))
        >>> round(y.item(), 3), round(logabsdet.item(), 4)
        (2.002, 0.001)
    """

    def log_scale(self, params: Tensor) -> Tensor:
        return torch.log(stable_softplus(params[:, 0] + SOFTPLUS_ONE) + 1e-3)


@register
class Additive(ElementwiseBijection):
    """``y = x + b``: volume-preserving (log-determinant 0), NICE's coupling.

    References:
        Dinh, Krueger, Bengio, "NICE: Non-linear Independent Components Estimation",
        ICLR 2015 workshop, arXiv:1410.8516.

    Example:
        >>> import torch
        >>> from latentflows.flows import Additive
        >>> y, logabsdet = Additive()(torch.ones(1, 2), torch.ones(1, 1, 2))
        >>> y.tolist(), logabsdet.tolist()
        ([[2.0, 2.0]], [0.0])
    """

    params_per_feature = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params[:, 0], x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return y - params[:, 0], y.new_zeros(y.shape[0])
