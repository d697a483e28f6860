"""Coupling layer: split the features, condition one half on the other, merge.

With ``x_a`` the identity part and ``x_b`` the transformed part,
``z_b = bijection(x_b; params)`` where ``params = conditioner(x_a, context)``. The coupling
knows nothing about the map itself: an affine, additive or spline coupling is the same
class with another ``ElementwiseBijection``.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from ..registry import build, deserialize, register, serialize
from .base import Transform, check_features
from .bijections import ElementwiseBijection, TanhAffine
from .permutation import permute_columns

MASKS = ("alternate", "half")
INJECTED = ("in_features", "features", "params_per_feature")  # set by the coupling, not by the config
_CONDITIONER_DTYPE: ContextVar[torch.dtype | None] = ContextVar("conditioner_dtype", default=None)


@contextmanager
def conditioners_in(dtype: torch.dtype | None) -> Iterator[None]:
    """Run every coupling's conditioner network under autocast to ``dtype`` (None: unchanged).

    Only the networks: their outputs come back in the inputs' dtype before the bijection, so
    the map, its log-determinant and everything around the couplings stay in float32 (and the
    inverse stays exact: it feeds the conditioner the same identity half). The flow stage
    trains so in bf16 on hardware with bf16 matrix units, where the networks hold nearly all
    of the flow's arithmetic.

    Example:
        >>> import torch
        >>> from latentflows.flows import Coupling
        >>> layer = Coupling(4, conditioner={"class": "CouplingNet", "config": {"hidden": [8]}})
        >>> x = torch.randn(3, 4)
        >>> with conditioners_in(torch.bfloat16):
        ...     z, logabsdet = layer(x)
        ...     x_again, _ = layer.inverse(z)
        >>> z.dtype, logabsdet.dtype, torch.allclose(x_again, x, atol=1e-6)
        (torch.float32, torch.float32, True)
    """
    token = _CONDITIONER_DTYPE.set(dtype)
    try:
        yield
    finally:
        _CONDITIONER_DTYPE.reset(token)


def coupling_mask(features: int, kind: str | Sequence[bool], flip: bool = False) -> Tensor:
    """Boolean mask, True where a feature is transformed; ``flip`` swaps the two parts.

    ``kind`` is ``"alternate"`` (even features), ``"half"`` (the second half) or an explicit
    list of booleans.

    Example:
        >>> coupling_mask(4, "alternate").tolist(), coupling_mask(4, "half", flip=True).tolist()
        ([True, False, True, False], [True, True, False, False])
    """
    if isinstance(kind, str):
        if kind == "alternate":
            transformed = torch.arange(features) % 2 == 0
        elif kind == "half":
            transformed = torch.arange(features) >= features // 2
        else:
            raise ValueError(f"unknown mask {kind!r}; choose one of {MASKS} or give a list of booleans")
    else:
        transformed = torch.as_tensor([bool(v) for v in kind])
        if transformed.shape != (features,):
            raise ValueError(f"a mask for {features} features needs {features} booleans, got {len(transformed)}")
    transformed = ~transformed if flip else transformed
    if transformed.all() or not transformed.any():
        raise ValueError("a coupling mask must leave at least one feature unchanged and transform at least one")
    return transformed


DEFAULT_CONDITIONER = {"class": "CouplingNet", "config": {}}


def _layout(identity_index: Tensor, transformed_index: Tensor) -> str:
    """How a coupling cuts its two parts out of the features without copying where it can:
    ``"interleaved"`` (one at the even features, the other at the odd: the ``alternate`` mask),
    ``"identity first"`` / ``"transformed first"`` (two contiguous blocks: the ``half`` mask),
    else ``"permuted"`` (a gather into identity-then-transformed order, and one back).

    Example:
        >>> _layout(torch.tensor([1, 3]), torch.tensor([0, 2])), _layout(torch.tensor([2, 3]), torch.tensor([0, 1]))
        ('interleaved', 'transformed first')
    """
    features, k = len(identity_index) + len(transformed_index), len(identity_index)
    if features % 2 == 0 and k == features // 2:
        for start in (0, 1):
            if torch.equal(identity_index, torch.arange(start, features, 2)):
                return "interleaved"
    if torch.equal(identity_index, torch.arange(k)):
        return "identity first"
    if torch.equal(identity_index, torch.arange(features - k, features)):
        return "transformed first"
    return "permuted"


@register
class Coupling(Transform):
    """A coupling layer with any element-wise bijection and conditioner, optionally conditional.

    Args:
        features: number of features.
        mask: ``"alternate"``, ``"half"`` or a list of booleans (True = transformed).
        bijection: an ``ElementwiseBijection`` or its spec; default ``TanhAffine``.
        conditioner: spec of the conditioner, without the sizes the coupling sets
            (``in_features``, ``features``, ``params_per_feature``); default ``CouplingNet``.
        context_size: size of the context vector (e.g. a one-hot class); 0 for none.
        flip: swap the identity and the transformed half.

    References:
        Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", ICLR 2017,
        arXiv:1605.08803.

    Example:
        >>> import torch
        >>> from latentflows.flows import Coupling
        >>> layer = Coupling(4, bijection={"class": "Additive"},
        ...                  conditioner={"class": "CouplingNet", "config": {"hidden": [8]}}, context_size=2)
        >>> x, context = torch.randn(3, 4), torch.eye(2)[[0, 1, 1]]
        >>> z, logabsdet = layer(x, context)
        >>> torch.allclose(layer.inverse(z, context)[0], x)
        True
    """

    identity_index: Tensor
    transformed_index: Tensor
    restore_order: Tensor
    split_order: Tensor

    def __init__(self, features: int, mask: str | Sequence[bool] = "alternate",
                 bijection: ElementwiseBijection | dict | None = None, conditioner: dict | None = None,
                 context_size: int = 0, flip: bool = False):
        super().__init__()
        if features < 2:
            raise ValueError(f"a coupling needs at least 2 features, got {features}")
        self.features, self.context_size, self.flip = features, context_size, flip
        self.mask = mask if isinstance(mask, str) else [bool(v) for v in mask]
        if bijection is None:
            bijection = TanhAffine()
        self.bijection = bijection if isinstance(bijection, ElementwiseBijection) \
            else deserialize(bijection, ElementwiseBijection)
        transformed = coupling_mask(features, mask, flip)
        identity_index = torch.nonzero(~transformed).flatten()
        transformed_index = torch.nonzero(transformed).flatten()
        # Outputs are assembled as cat([identity, transformed]) and then put back in place.
        self.register_buffer("identity_index", identity_index)
        self.register_buffer("transformed_index", transformed_index)
        self.register_buffer("restore_order", torch.argsort(torch.cat([identity_index, transformed_index])))
        self.register_buffer("split_order", torch.cat([identity_index, transformed_index]), persistent=False)
        self._layout = _layout(identity_index, transformed_index)
        self._identity_even = bool(identity_index[0] == 0)  # for "interleaved": which of each pair it is
        spec = conditioner if conditioner is not None else DEFAULT_CONDITIONER
        self.conditioner = build(spec, in_features=len(identity_index) + context_size,
                                 features=len(transformed_index),
                                 params_per_feature=self.bijection.params_per_feature)

    def _params(self, x_identity: Tensor, context: Tensor | None) -> Tensor:
        if self.context_size:
            if context is None:
                raise ValueError(f"this coupling was built with context_size={self.context_size}; pass a context")
            if context.shape != (x_identity.shape[0], self.context_size):
                raise ValueError(f"context must have shape (batch, {self.context_size}), got {tuple(context.shape)}")
            x_identity = torch.cat([x_identity, context], dim=1)
        dtype = _CONDITIONER_DTYPE.get()
        if dtype is None:
            return self.conditioner(x_identity)
        with torch.autocast(x_identity.device.type, dtype=dtype):
            params = self.conditioner(x_identity)
        return params.to(x_identity.dtype)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(identity part, transformed part) of ``x``: views where the mask allows (see ``_layout``)."""
        # unbind and split: one autograd node each, whose backward is one stack or cat
        k = len(self.identity_index)
        if self._layout == "interleaved":
            # reshape with -1: the batch stays a dynamic size in an exported graph
            even, odd = x.reshape(-1, self.features // 2, 2).unbind(2)
            return (even, odd) if self._identity_even else (odd, even)
        if self._layout == "identity first":
            identity, transformed = x.split([k, self.features - k], dim=1)
            return identity, transformed
        if self._layout == "transformed first":
            transformed, identity = x.split([self.features - k, k], dim=1)
            return identity, transformed
        return permute_columns(x, self.split_order, self.restore_order).split([k, self.features - k], dim=1)

    def _merge(self, identity: Tensor, transformed: Tensor) -> Tensor:
        """The inverse of ``_split``."""
        if self._layout == "interleaved":
            parts = (identity, transformed) if self._identity_even else (transformed, identity)
            return torch.stack(parts, dim=2).flatten(1)
        if self._layout == "identity first":
            return torch.cat([identity, transformed], dim=1)
        if self._layout == "transformed first":
            return torch.cat([transformed, identity], dim=1)
        return permute_columns(torch.cat([identity, transformed], dim=1), self.restore_order, self.split_order)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(x, self.features, "Coupling")
        x_identity, x_transformed = self._split(x)
        z_transformed, logabsdet = self.bijection(x_transformed, self._params(x_identity, context))
        return self._merge(x_identity, z_transformed), logabsdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(z, self.features, "Coupling")
        z_identity, z_transformed = self._split(z)
        x_transformed, logabsdet = self.bijection.inverse(z_transformed, self._params(z_identity, context))
        return self._merge(z_identity, x_transformed), logabsdet

    def get_config(self) -> dict[str, Any]:
        conditioner = serialize(self.conditioner)
        conditioner["config"] = {k: v for k, v in conditioner["config"].items() if k not in INJECTED}
        return {"features": self.features, "mask": self.mask, "bijection": serialize(self.bijection),
                "conditioner": conditioner, "context_size": self.context_size, "flip": self.flip}
