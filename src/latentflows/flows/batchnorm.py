"""Invertible batch normalization (Dinh et al., RealNVP, section 3.7).

Training mode normalizes with the batch's statistics and updates running averages
(without gradient); eval mode uses the running averages. The inverse is defined in
both modes: in training mode it uses the statistics of the last forward batch, so
``inverse(forward(x))`` returns ``x`` exactly, and falls back to the running averages
before any forward pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..registry import register
from .base import Transform, check_features


@register
class InvertibleBatchNorm(Transform):
    """Normalize each feature by batch statistics (training) or running averages (eval), invertibly.

    Between coupling layers it keeps the activations of a deep flow well scaled; a learned
    log-scale and shift follow the normalization, and the log-determinant is exact.

    Args:
        features: number of features.
        momentum: weight of the newest batch in the running averages (PyTorch's convention).
        eps: added to the variance.

    References:
        Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", ICLR 2017,
        arXiv:1605.08803 (section 3.7).

    Example:
        >>> import torch
        >>> norm = InvertibleBatchNorm(2).train()
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
        >>> z, logabsdet = norm(x)
        >>> torch.allclose(norm.inverse(z)[0], x), z.mean(0).abs().max().item() < 1e-6
        (True, True)
    """

    running_mean: Tensor
    running_var: Tensor

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.features = features
        self.momentum = momentum
        self.eps = eps
        self.log_gamma = nn.Parameter(torch.zeros(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))
        self.hold_statistics = False
        self.synchronize = False  # statistics over every process's batch (set by a DistributedRuntime)
        self._last_batch: tuple[torch.Tensor, torch.Tensor] | None = None

    def _statistics(self, x: torch.Tensor | None) -> tuple[Tensor, Tensor]:
        if not self.training:
            return self.running_mean, self.running_var
        if x is None or self.hold_statistics:
            if self._last_batch is not None:
                return self._last_batch
            if self.hold_statistics:
                raise RuntimeError("hold_statistics is set but no forward pass has computed batch statistics yet")
            return self.running_mean, self.running_var
        if x.shape[0] < 2:
            raise ValueError(
                "InvertibleBatchNorm needs at least 2 samples per batch in training mode; "
                "call .eval() to use the running statistics"
            )
        # an unsynchronized training batch is normalized by forward's own _BatchNormalize; this
        # path is a synchronized one (alone, all_reduce_statistics gives this batch's statistics)
        from ..distributed import all_reduce_statistics

        mean, var, count = all_reduce_statistics(x)
        self._remember(mean, var, count)
        return mean, var

    def _remember(self, mean: Tensor, var: Tensor, count: int | Tensor) -> None:
        """Update the running averages (with the unbiased variance) and keep the batch's statistics."""
        with torch.no_grad():  # running averages are bookkeeping, not part of the graph
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * (count / (count - 1)), self.momentum)
        self._last_batch = (mean.detach(), var.detach())

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(x, self.features, "InvertibleBatchNorm")
        if self.training and not self.hold_statistics and not self.synchronize and x.shape[0] >= 2:
            z, logabsdet, mean, var = _BatchNormalize.apply(x, self.log_gamma, self.beta, self.eps)
            self._remember(mean, var, x.shape[0])
            return z, logabsdet.expand(x.shape[0])
        mean, var = self._statistics(x)
        inv_std = torch.rsqrt(var + self.eps)
        scale = inv_std * self.log_gamma.exp()  # per feature: one fused pass over the batch
        z = torch.addcmul(self.beta - mean * scale, x, scale)
        logabsdet = (self.log_gamma + inv_std.log()).sum().expand(x.shape[0])
        return z, logabsdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(z, self.features, "InvertibleBatchNorm")
        mean, var = self._statistics(None)
        std = torch.sqrt(var + self.eps)
        scale = torch.exp(-self.log_gamma) * std
        x = torch.addcmul(mean - self.beta * scale, z, scale)
        logabsdet = (std.log() - self.log_gamma).sum().expand(z.shape[0])
        return x, logabsdet

    def get_config(self) -> dict[str, Any]:
        return {"features": self.features, "momentum": self.momentum, "eps": self.eps}


class _BatchNormalize(torch.autograd.Function):
    """Training-mode batch normalization and its log-determinant as one autograd node, with
    the gradient written out (the batch statistics' own terms included): as separate tensor
    operations it was some forty small operators per layer, a quarter of a RealNVP training
    step on a CPU. Returns ``z``, the log-determinant (a scalar, every sample's), and the
    batch mean and biased variance (no gradient).

    With ``xhat = (x - mean) / sqrt(var + eps)``, ``g = exp(log_gamma)``, ``z = g * xhat + beta``
    and ``S = sum(log_gamma) - sum(log(var + eps)) / 2``, for ``n`` rows: the usual batch-norm
    gradient ``inv/n * (n*dxhat - sum(dxhat) - xhat*sum(dxhat*xhat))`` with ``dxhat = g*dz``,
    plus ``S``'s own term ``-dS * inv * xhat / n``.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, log_gamma: Tensor, beta: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mean = x.mean(0)
        centered = x - mean
        var = centered.square().mean(0)
        inv_std = torch.rsqrt(var + eps)
        xhat = centered * inv_std
        gamma = log_gamma.exp()
        z = torch.addcmul(beta, xhat, gamma)
        logabsdet = (log_gamma + inv_std.log()).sum()
        ctx.save_for_backward(xhat, inv_std, gamma)
        ctx.mark_non_differentiable(mean, var)
        return z, logabsdet, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dz: Tensor, dlogabsdet: Tensor, _dmean: Any, _dvar: Any
                 ) -> tuple[Tensor, Tensor, Tensor, None]:
        xhat, inv_std, gamma = ctx.saved_tensors
        n = xhat.shape[0]
        dz_sum, dz_xhat_sum = dz.sum(0), (dz * xhat).sum(0)
        dbeta = dz_sum
        dlog_gamma = dz_xhat_sum * gamma + dlogabsdet
        # dxhat = g*dz; dx = inv/n * (n*dxhat - sum(dxhat) - xhat*sum(dxhat*xhat)) - dS*inv*xhat/n
        coefficient = inv_std / n
        dx = coefficient * (n * gamma * dz - gamma * dz_sum - xhat * (gamma * dz_xhat_sum + dlogabsdet))
        return dx, dlog_gamma, dbeta, None


@contextmanager
def held_batch_statistics(module: nn.Module) -> Iterator[None]:
    """Inside the block, training-mode batch norms reuse their last batch statistics.

    This makes a training-mode flow a fixed function of each sample, which is what a
    per-sample Jacobian (and so a log-determinant check) needs.

    Args:
        module: a module whose ``InvertibleBatchNorm`` layers (searched recursively) hold.

    Example:
        >>> import torch
        >>> norm = InvertibleBatchNorm(1).train()
        >>> _ = norm(torch.tensor([[0.0], [2.0]]))   # batch mean 1, variance 1
        >>> with held_batch_statistics(norm):
        ...     z, _ = norm(torch.tensor([[1.0], [5.0]]))
        >>> [round(v, 3) for v in z.flatten().tolist()], norm.hold_statistics
        ([0.0, 4.0], False)
    """
    layers = [m for m in module.modules() if isinstance(m, InvertibleBatchNorm)]
    previous = [layer.hold_statistics for layer in layers]
    for layer in layers:
        layer.hold_statistics = True
    try:
        yield
    finally:
        for layer, value in zip(layers, previous):
            layer.hold_statistics = value
