"""Linear flow layers: ActNorm (per-feature scale and shift) and an LU-parametrized invertible linear map.

``ActNorm`` is Glow's alternative to batch norm: an affine map per feature whose scale and
shift are set from the first training batch and then trained like any weight, so it
behaves the same in training and eval mode. ``LULinear`` is a learned mixing of all
features, a generalisation of a fixed permutation, whose determinant is the product of
its LU factors' diagonal.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..registry import register
from .base import Transform, check_features, class_labels, per_class_matmul

LU_INITS = ("orthogonal", "identity")


@register
class ActNorm(Transform):
    """``z = (x - loc) * exp(log_scale)`` per feature, initialised from the first training batch.

    The first forward pass in training mode sets ``loc`` to the batch mean and
    ``log_scale`` to ``-log(std + eps)``, so that the output of that batch has zero mean
    and unit variance per feature; both are then ordinary trainable parameters. The
    ``initialized`` buffer is saved with the weights, so a loaded model never re-initialises.
    Before initialisation (or in eval mode without it) the layer is the identity.

    Args:
        features: number of features.
        eps: added to the standard deviation at initialisation.

    References:
        Kingma, Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
        NeurIPS 2018, arXiv:1807.03039 (section 3.1).

    Example:
        >>> import torch
        >>> from latentflows.flows import ActNorm
        >>> norm = ActNorm(2).train()
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
        >>> z, logabsdet = norm(x)                       # the first batch initialises it
        >>> [[round(v, 4) for v in row] for row in z.tolist()], bool(norm.initialized)
        ([[-1.0, -1.0], [1.0, 1.0]], True)
        >>> z, _ = norm(x + 1)                           # ... and only the first
        >>> torch.allclose(norm.inverse(z)[0], x + 1), round(logabsdet[0].item(), 4)
        (True, -0.6931)
    """

    initialized: Tensor

    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.features, self.eps = features, eps
        self.loc = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))
        self._known_initialized = False  # a Python copy of the buffer, so steady-state steps need no device sync
        self.synchronize = False  # set by a DistributedRuntime

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # read the loaded buffer on the next forward pass

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``loc`` and ``log_scale`` so that ``x`` comes out with zero mean and unit variance per feature."""
        if x.shape[0] < 2:
            raise ValueError("ActNorm initialises from its first training batch, which needs at least 2 samples")
        self.loc.copy_(x.mean(0))
        self.log_scale.copy_(-torch.log(x.std(0, unbiased=False) + self.eps))
        self.initialized.fill_(True)
        if self.synchronize:  # several processes: all start from the main process's first batch
            from ..distributed import broadcast_from_main

            broadcast_from_main(self.loc, self.log_scale)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(x, self.features, "ActNorm")
        if self.training and not self._known_initialized:
            if not bool(self.initialized):
                self.initialize(x)
            self._known_initialized = True
        z = (x - self.loc) * self.log_scale.exp()
        return z, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(z, self.features, "ActNorm")
        x = z * torch.exp(-self.log_scale) + self.loc
        return x, (-self.log_scale.sum()).expand(z.shape[0])

    def get_config(self) -> dict[str, Any]:
        return {"features": self.features, "eps": self.eps}


def _is_one_hot(context: Tensor) -> bool:
    return bool(((context == 0) | (context == 1)).all() and (context.sum(1) == 1).all())


@register
class LULinear(Transform):
    """An invertible linear map ``z = W x + bias`` with ``W = P L U`` stored as its LU factors.

    ``P`` is a fixed permutation, ``L`` is lower triangular with a unit diagonal and ``U``
    upper triangular with diagonal ``sign * exp(log_diag)`` (the sign fixed, so ``W`` stays
    invertible). The log-determinant is ``sum(log_diag)``; the inverse is two triangular
    solves. Starting from a random orthogonal matrix (the default) the layer mixes all
    features from the first step, like a random rotation; starting from the identity it is
    a no-op until trained.

    Args:
        features: number of features.
        init: ``"orthogonal"`` (the LU factors of a seeded random orthogonal matrix) or
            ``"identity"``.
        seed: seeds the orthogonal matrix.
        bias: learn a bias (starts at zero).

    References:
        Kingma, Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
        NeurIPS 2018, arXiv:1807.03039 (section 3.2, LU decomposition); Durkan et al.,
        "Neural Spline Flows", NeurIPS 2019, arXiv:1906.04032 (LU linear layers between couplings).

    Example:
        >>> import torch
        >>> from latentflows.flows import LULinear
        >>> layer = LULinear(3, seed=0)
        >>> x = torch.randn(4, 3)
        >>> z, logabsdet = layer(x)
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5), logabsdet.abs().max().item() < 1e-5
        (True, True)
        >>> torch.allclose(layer.weight() @ layer.weight().T, torch.eye(3), atol=1e-5)   # orthogonal at init
        True
    """

    lower_index: Tensor
    upper_index: Tensor
    permutation: Tensor
    inverse_permutation: Tensor
    sign: Tensor
    bias: Tensor | None

    def __init__(self, features: int, init: str = "orthogonal", seed: int = 0, bias: bool = True):
        super().__init__()
        if init not in LU_INITS:
            raise ValueError(f"init must be one of {LU_INITS}, got {init!r}")
        self.features, self.init, self.seed, self.has_bias = features, init, seed, bias
        rows, columns = torch.tril_indices(features, features, -1)
        self.register_buffer("lower_index", rows * features + columns, persistent=False)  # flat indices
        self.register_buffer("upper_index", columns * features + rows, persistent=False)
        if init == "identity":
            permutation = torch.arange(features)
            lower = torch.zeros(len(rows))
            upper = torch.zeros(len(rows))
            log_diag, sign = torch.zeros(features), torch.ones(features)
        else:
            generator = torch.Generator().manual_seed(seed)
            q, r = torch.linalg.qr(torch.randn(features, features, generator=generator, dtype=torch.float64))
            q = q * torch.sign(torch.diagonal(r))  # Haar-distributed
            p, l_factor, u_factor = torch.linalg.lu(q)
            permutation = p.argmax(1)  # (P M)[i] = M[permutation[i]]
            lower = l_factor.flatten()[rows * features + columns].float()
            upper = u_factor.flatten()[columns * features + rows].float()
            diagonal = torch.diagonal(u_factor)
            log_diag, sign = diagonal.abs().log().float(), torch.sign(diagonal).float()
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))
        self.register_buffer("sign", sign)
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(upper)
        self.log_diag = nn.Parameter(log_diag)
        self.register_parameter("bias", nn.Parameter(torch.zeros(features)) if bias else None)

    def factors(self) -> tuple[Tensor, Tensor]:
        """``L`` (unit lower triangular) and ``U`` (upper triangular), as (features, features) matrices."""
        d = self.features
        eye = torch.eye(d, dtype=self.lower.dtype, device=self.lower.device)
        lower = eye.flatten().index_put((self.lower_index,), self.lower).view(d, d)
        upper = (eye * (self.sign * self.log_diag.exp())).flatten().index_put((self.upper_index,), self.upper).view(d, d)
        return lower, upper

    def weight(self) -> Tensor:
        """The matrix ``W = P L U`` (``z = W x + bias``)."""
        lower, upper = self.factors()
        return (lower @ upper)[self.permutation]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(x, self.features, "LULinear")
        z = F.linear(x, self.weight(), self.bias)
        return z, self.log_diag.sum().expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(z, self.features, "LULinear")
        lower, upper = self.factors()
        y = (z - self.bias if self.bias is not None else z)[:, self.inverse_permutation]  # y = x (L U)^T
        w = torch.linalg.solve_triangular(lower.T, y, upper=True, left=False, unitriangular=True)  # w = x U^T
        x = torch.linalg.solve_triangular(upper.T, w, upper=False, left=False)
        return x, (-self.log_diag.sum()).expand(z.shape[0])

    def get_config(self) -> dict[str, Any]:
        return {"features": self.features, "init": self.init, "seed": self.seed, "bias": self.has_bias}


@register
class ContextAffine(Transform):
    """``z = (x - shift(c)) * exp(log_scale(c))`` per feature, ``shift`` and ``log_scale`` linear in the context.

    With a one-hot class as the context this is a mean and a scale per class and feature,
    set like ActNorm's from the first training batch (each class's mean and spread there:
    a least-squares fit in the context for other contexts) and then trained. Put first in a
    flow, it standardizes each class on its own, so that the class moves every sample
    directly on the way back, instead of only through the couplings' conditioners (which
    learn to ignore it on small data: the flow stops early, after a few dozen steps). The
    ``initialized`` buffer is saved with the weights; before initialisation the layer is
    the identity.

    Args:
        features: number of features.
        context_size: size of the context vector (0: no context, one learned affine map).
        eps: added to the spread at initialisation.

    References:
        Kingma, Dhariwal, "Glow", NeurIPS 2018, arXiv:1807.03039 (ActNorm's data-dependent
        initialisation); Winkler et al., "Learning Likelihoods with Conditional Normalizing
        Flows", 2019, arXiv:1912.00042 (class-conditional base distributions).

    Example:
        >>> import torch
        >>> from latentflows.flows import ContextAffine
        >>> layer = ContextAffine(1, context_size=2).train()
        >>> x, context = torch.tensor([[0.0], [2.0], [10.0], [14.0]]), torch.eye(2)[[0, 0, 1, 1]]
        >>> z, logabsdet = layer(x, context)           # the first batch: each class to mean 0, spread 1
        >>> [round(v, 4) for v in z.flatten().tolist()], torch.allclose(layer.inverse(z, context)[0], x, atol=1e-6)
        ([-1.0, 1.0, -1.0, 1.0], True)
    """

    initialized: Tensor

    def __init__(self, features: int, context_size: int = 0, eps: float = 1e-6):
        super().__init__()
        self.features, self.context_size, self.eps = features, context_size, eps
        self.shift = nn.Linear(max(context_size, 1), features, bias=False)  # no context: a constant 1 as input
        self.log_scale = nn.Linear(max(context_size, 1), features, bias=False)
        for linear in (self.shift, self.log_scale):
            nn.init.zeros_(linear.weight)
        self.register_buffer("initialized", torch.tensor(False))
        self._known_initialized = False  # a Python copy of the buffer: no device sync per step
        self.synchronize = False  # set by a DistributedRuntime

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False

    def _context(self, x: Tensor, context: Tensor | None) -> Tensor:
        if not self.context_size:
            return x.new_ones(x.shape[0], 1)
        if context is None or context.shape != (x.shape[0], self.context_size):
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"ContextAffine needs a context of shape (batch, {self.context_size}), got {got}")
        return context

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor) -> None:
        """Fit ``shift`` to ``x`` and ``log_scale`` to its spread: each class's own mean and spread
        for a one-hot context, least squares in the context otherwise."""
        if x.shape[0] < 2:
            raise ValueError("ContextAffine initialises from its first training batch, which needs at least 2 samples")
        if _is_one_hot(context):  # per-class mean and spread: the same bits on every run, which
            # LAPACK's least squares does not give (its result moves with the memory alignment)
            rows = [x[context[:, c] > 0] for c in range(context.shape[1])]
            mean = torch.stack([r.mean(0) if len(r) else x.new_zeros(x.shape[1]) for r in rows])
            variance = torch.stack([r.var(0, unbiased=False) if len(r) else x.new_zeros(x.shape[1]) for r in rows])
        else:
            mean = torch.linalg.lstsq(context, x).solution                  # (context, features)
            variance = torch.linalg.lstsq(context, (x - context @ mean).pow(2)).solution
        variance = torch.where(variance > self.eps, variance, torch.ones_like(variance))  # no spread seen: scale 1
        self.shift.weight.copy_(mean.T)
        self.log_scale.weight.copy_(-0.5 * torch.log(variance).T)
        self.initialized.fill_(True)
        if self.synchronize:  # several processes: all start from the main process's first batch
            from ..distributed import broadcast_from_main

            broadcast_from_main(self.shift.weight, self.log_scale.weight)

    def _maps(self, x: Tensor, context: Tensor | None, may_initialize: bool = False) -> tuple[Tensor, Tensor]:
        context = self._context(x, context)
        if may_initialize and self.training and not self._known_initialized:
            if not bool(self.initialized):
                self.initialize(x, context)
            self._known_initialized = True
        return self.shift(context), self.log_scale(context)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(x, self.features, "ContextAffine")
        shift, log_scale = self._maps(x, context, may_initialize=True)
        return (x - shift) * log_scale.exp(), log_scale.sum(1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(z, self.features, "ContextAffine")
        shift, log_scale = self._maps(z, context)
        return z * torch.exp(-log_scale) + shift, -log_scale.sum(1)

    def get_config(self) -> dict[str, Any]:
        return {"features": self.features, "context_size": self.context_size, "eps": self.eps}


@register
class ContextLinear(Transform):
    """``z = L(c) x + b(c)``: a learned lower-triangular linear map and offset per class.

    Put last in a flow (on the noise side), it makes the base distribution a full-covariance
    Gaussian per class, learned with the couplings: the class then shapes the correlations
    of every sample, as ``ClassWhitening`` does at the data side of an MLP flow, without
    scrambling the spatial layout that convolutional couplings rely on. ``L(c)`` has a
    positive diagonal (``exp`` of a parameter), so ``log|det| = sum of that parameter``; it
    starts as the identity, with zero offsets.

    Args:
        features: number of features.
        classes: number of classes (the one-hot context's size; 0: one map for all).

    References:
        Kingma, Dhariwal, "Glow", NeurIPS 2018, arXiv:1807.03039 (learned linear flow layers);
        Winkler et al., "Learning Likelihoods with Conditional Normalizing Flows", 2019,
        arXiv:1912.00042 (class-conditional base distributions).

    Example:
        >>> import torch
        >>> layer = ContextLinear(3, classes=2)
        >>> with torch.no_grad():
        ...     _ = layer.lower.normal_(), layer.log_diagonal.normal_(), layer.offset.normal_()
        >>> x, context = torch.randn(4, 3), torch.eye(2)[[0, 1, 1, 0]]
        >>> z, logabsdet = layer(x, context)
        >>> x_back, inverse_logabsdet = layer.inverse(z, context)
        >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(logabsdet + inverse_logabsdet, torch.zeros(4))
        (True, True)
    """

    def __init__(self, features: int, classes: int = 0):
        super().__init__()
        self.features, self.classes = features, classes
        maps = max(classes, 1)
        self.lower = nn.Parameter(torch.zeros(maps, features, features))  # its strictly lower part is used
        self.log_diagonal = nn.Parameter(torch.zeros(maps, features))
        self.offset = nn.Parameter(torch.zeros(maps, features))

    def _labels(self, x: Tensor, context: Tensor | None) -> Tensor:
        if not self.classes:
            return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return class_labels(x, context, self.classes, "ContextLinear")

    def _matrices(self) -> Tensor:
        return self.lower.tril(-1) + torch.diag_embed(self.log_diagonal.exp())

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(x, self.features, "ContextLinear")
        labels = self._labels(x, context)
        # index_select, not self.offset[labels]: the backward of advanced indexing accumulates
        # with several threads in no fixed order, and training would not repeat bit for bit
        z = per_class_matmul(self._matrices(), x, labels) + self.offset.index_select(0, labels)
        return z, self.log_diagonal.sum(1).index_select(0, labels)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(z, self.features, "ContextLinear")
        labels, rows = self._labels(z, context), torch.arange(z.shape[0], device=z.device)
        shifted = (z.unsqueeze(0) - self.offset.unsqueeze(1)).transpose(1, 2)  # (classes, features, batch)
        x = torch.linalg.solve_triangular(self._matrices(), shifted, upper=False).transpose(1, 2)[labels, rows]
        return x, -self.log_diagonal.sum(1).index_select(0, labels)

    def get_config(self) -> dict[str, Any]:
        return {"features": self.features, "classes": self.classes}
