"""Base distributions, and the distribution a flow defines given a context.

``Flow.__call__(context)`` returns a ``FlowDistribution``: a ``torch.distributions``
object with ``log_prob``, ``sample``, ``rsample`` and ``sample_and_log_prob``, as zuko's
flows do. The base distribution is an object too, so another base (a mixture, a learned
diagonal Gaussian) is one class.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution, constraints

from ..errors import ArgumentError
from ..registry import Configurable, register

if TYPE_CHECKING:
    from .base import Transform


def check_sampling(n: int | None = None, temperature: float | None = None) -> None:
    """The one check of a sample count (a whole number >= 1) and a sampling temperature (a
    finite number > 0), wherever samples are drawn; either may be left out.

    Raises:
        ArgumentError: a ``ValueError`` and a ``LatentflowsError``, naming the value.

    Example:
        >>> check_sampling(16, 0.8)
        >>> try:
        ...     check_sampling(temperature=0)
        ... except ValueError as error:
        ...     print(error)
        temperature must be a finite number > 0, got 0
    """
    if n is not None and (isinstance(n, bool) or not _as_number(n, operator.index) >= 1):
        raise ArgumentError(f"the number of samples must be a whole number of at least 1, got {n!r}")
    if temperature is not None and not 0 < _as_number(temperature, float) < math.inf:
        raise ArgumentError(f"temperature must be a finite number > 0, got {temperature!r}")


def _as_number(value: Any, convert: Any) -> float:
    """``convert(value)``, or NaN for a value that is not such a number (it fails every range check)."""
    try:
        return convert(value)
    except (TypeError, ValueError):
        return math.nan


class BaseDistribution(nn.Module, Configurable):
    """The noise end of a flow: ``log_prob(z)`` summed over features, and ``sample``.

    Subclasses set ``features`` and implement ``log_prob(z)`` and
    ``sample(shape, generator, temperature)`` (draws of shape ``shape + (features,)``).

    Example:
        >>> import torch
        >>> from latentflows.flows import StandardNormal
        >>> StandardNormal(3).sample((2,), torch.Generator().manual_seed(0)).shape
        torch.Size([2, 3])
    """

    features: int

    def log_prob(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
               temperature: float = 1.0) -> Tensor:
        raise NotImplementedError


@register
class StandardNormal(BaseDistribution):
    """N(0, I) over ``features`` dimensions.

    Args:
        features: number of dimensions.

    Example:
        >>> import torch
        >>> from latentflows.flows import StandardNormal
        >>> round(StandardNormal(2).log_prob(torch.zeros(1, 2)).item(), 4)   # -log(2 pi)
        -1.8379
    """

    _reference: Tensor

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.register_buffer("_reference", torch.zeros(()), persistent=False)  # follows .to(device/dtype)

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * math.log(2 * math.pi))

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
               temperature: float = 1.0) -> Tensor:
        """Draws of shape ``shape + (features,)``, on the generator's device, scaled by ``temperature``."""
        device = generator.device if generator is not None else self._reference.device
        z = torch.randn(*shape, self.features, generator=generator, dtype=self._reference.dtype, device=device)
        return (z * temperature).to(self._reference.device)

    def get_config(self) -> dict[str, Any]:
        return {"features": self.features}


class FlowDistribution(Distribution):
    """p(x | context) of a flow: ``log_prob(x) = log base(z) + log|det dz/dx|`` with ``z = transform(x)``.

    ``batch_shape`` is the context's leading shape (``()`` for one context vector), and the
    event is one feature vector. Sampling draws base noise (scaled by ``temperature``: below
    1 gives more typical samples) and inverts the transform; the log-density returned with
    samples is always the model's own, whatever the temperature.

    Args:
        transform: the flow's transform (data -> noise).
        base: the base distribution.
        context: a context vector or a batch of them, or None for an unconditional flow.
        temperature: scale of the base noise when sampling.

    Example:
        >>> import torch
        >>> from latentflows.flows import ConditionalRealNVP
        >>> flow = ConditionalRealNVP(4, context_size=2, couplings=2, hidden=[8]).eval()
        >>> dog = flow(torch.tensor([0.0, 1.0]))
        >>> x = dog.sample((5,))
        >>> x.shape, dog.log_prob(x).shape
        (torch.Size([5, 4]), torch.Size([5]))
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, transform: Transform, base: BaseDistribution, context: Tensor | None = None,
                 temperature: float = 1.0):
        check_sampling(temperature=temperature)
        self.transform, self.base, self.context, self.temperature = transform, base, context, temperature
        batch_shape = context.shape[:-1] if context is not None else Size()
        super().__init__(batch_shape, Size([base.features]), validate_args=False)

    def _contexts(self, leading: Size) -> Tensor | None:
        """The context for each of ``leading`` rows, flattened to (rows, context_size)."""
        if self.context is None:
            return None
        return self.context.expand(*leading, self.context.shape[-1]).reshape(-1, self.context.shape[-1])

    def log_prob(self, x: Tensor) -> Tensor:
        leading = x.shape[:-1]
        z, logabsdet = self.transform(x.reshape(-1, x.shape[-1]), self._contexts(leading))
        return (self.base.log_prob(z) + logabsdet).reshape(leading)

    def rsample_and_log_prob(self, sample_shape: Size | list[int] | tuple[int, ...] = (), generator: torch.Generator | None = None
                             ) -> tuple[Tensor, Tensor]:
        leading = Size(sample_shape) + self.batch_shape
        z = self.base.sample((leading.numel(),), generator, self.temperature)
        x, logabsdet = self.transform.inverse(z, self._contexts(leading))
        return x.reshape(*leading, -1), (self.base.log_prob(z) - logabsdet).reshape(leading)

    def rsample(self, sample_shape: Size | list[int] | tuple[int, ...] = (), generator: torch.Generator | None = None) -> Tensor:
        return self.rsample_and_log_prob(sample_shape, generator)[0]

    @torch.no_grad()
    def sample(self, sample_shape: Size | list[int] | tuple[int, ...] = (), generator: torch.Generator | None = None) -> Tensor:
        return self.rsample(sample_shape, generator)

    @torch.no_grad()
    def sample_and_log_prob(self, sample_shape: Size | list[int] | tuple[int, ...] = (), generator: torch.Generator | None = None
                            ) -> tuple[Tensor, Tensor]:
        return self.rsample_and_log_prob(sample_shape, generator)
