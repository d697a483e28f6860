"""Affine coupling: half of the features pass unchanged and parametrize an affine map of the rest.

With ``x_a`` the identity part and ``x_b`` the transformed part,
``z_b = x_b * exp(s) + t`` where ``(s, t) = net(x_a, context)`` and ``s = tanh(raw)``:
bounding the log-scale to (-1, 1) per layer keeps deep flows numerically tame.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..autodiff import stable_softplus
from ..layers import (CONSTRAINTS, INITIALIZERS, REGULARIZERS, ResidualBlock, WeightHooks, from_spec,
                      get_activation, initialize, to_spec)
from ..registry import Configurable, register
from .base import Transform, check_features

MASKS = ("alternate", "half")
SCALE_FUNCTIONS = ("tanh", "softplus")
SOFTPLUS_ONE = math.log(math.e - 1)  # softplus(SOFTPLUS_ONE) == 1


@register
class MLP(WeightHooks, nn.Sequential, Configurable):
    """Fully connected network; the last layer starts at zero so a new coupling is the identity.

    ``residual=True`` turns every hidden layer after the first into a two-layer residual
    block (all hidden sizes must then be equal). The kernel hooks act on every linear layer.
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (256, 256),
                 activation="relu", zero_init_output: bool = True, kernel_initializer=None,
                 kernel_regularizer=None, kernel_constraint=None, residual: bool = False):
        self.in_features, self.out_features = in_features, out_features
        self.hidden, self.activation, self.zero_init_output = list(hidden), to_spec(activation), zero_init_output
        self.initializer_spec, self.residual = to_spec(kernel_initializer), residual
        if not self.hidden:
            raise ValueError("an MLP needs at least one hidden layer")
        if residual and len(set(self.hidden)) != 1:
            raise ValueError(f"residual blocks need equal hidden sizes, got {self.hidden}")
        layers: list[nn.Module] = [nn.Linear(in_features, self.hidden[0]), get_activation(activation)]
        for previous, size in zip(self.hidden, self.hidden[1:]):
            layers += [ResidualBlock(size, 2, activation)] if residual else [nn.Linear(previous, size), get_activation(activation)]
        for layer in layers:
            for linear in [m for m in layer.modules() if isinstance(m, nn.Linear)]:
                initialize(linear.weight, from_spec(kernel_initializer, INITIALIZERS))
        output = nn.Linear(self.hidden[-1], out_features)
        if zero_init_output:
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)
        super().__init__(*layers, output)
        self.kernel_regularizer = from_spec(kernel_regularizer, REGULARIZERS)
        self.kernel_constraint = from_spec(kernel_constraint, CONSTRAINTS)

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "hidden": self.hidden,
                "activation": self.activation, "zero_init_output": self.zero_init_output,
                "kernel_initializer": self.initializer_spec, "kernel_regularizer": to_spec(self.kernel_regularizer),
                "kernel_constraint": to_spec(self.kernel_constraint), "residual": self.residual}


def coupling_mask(features: int, kind: str, flip: bool = False) -> torch.Tensor:
    """Boolean mask, True where a feature is transformed; ``flip`` swaps the two parts."""
    if kind == "alternate":
        transformed = torch.arange(features) % 2 == 0
    elif kind == "half":
        transformed = torch.arange(features) >= features // 2
    else:
        raise ValueError(f"unknown mask {kind!r}; choose one of {MASKS}")
    return ~transformed if flip else transformed


@register
class AffineCoupling(Transform):
    """Affine coupling layer with optional context (e.g. a one-hot class label).

    ``shared_network=True`` uses one network that outputs both s and t (half the cost);
    ``False`` uses two separate networks, as in the original RealNVP. ``scale_fn`` is
    ``"tanh"`` (log-scale bounded to (-1, 1)) or ``"softplus"`` (scale = softplus(raw + c) with
    c chosen so a zero output is scale 1; unbounded above). ``network`` holds further MLP
    options: kernel_initializer, kernel_regularizer, kernel_constraint, residual.
    """

    def __init__(self, features: int, mask: str = "alternate", hidden: Sequence[int] = (256, 256),
                 context_size: int = 0, shared_network: bool = True, flip: bool = False,
                 activation="relu", scale_fn: str = "tanh", network: dict | None = None):
        super().__init__()
        if features < 2:
            raise ValueError(f"a coupling needs at least 2 features, got {features}")
        self.features, self.mask, self.hidden = features, mask, list(hidden)
        self.context_size, self.shared_network, self.flip = context_size, shared_network, flip
        if scale_fn not in SCALE_FUNCTIONS:
            raise ValueError(f"unknown scale_fn {scale_fn!r}; choose one of {SCALE_FUNCTIONS}")
        self.activation, self.scale_fn = to_spec(activation), scale_fn
        self.network = {k: to_spec(v) for k, v in (network or {}).items()}
        transformed = coupling_mask(features, mask, flip)
        identity_index = torch.nonzero(~transformed).flatten()
        transformed_index = torch.nonzero(transformed).flatten()
        # Outputs are assembled as cat([identity, transformed]) and then put back in place.
        self.register_buffer("identity_index", identity_index)
        self.register_buffer("transformed_index", transformed_index)
        self.register_buffer("restore_order", torch.argsort(torch.cat([identity_index, transformed_index])))
        n_in, n_out = len(identity_index) + context_size, len(transformed_index)
        if shared_network:
            self.net = MLP(n_in, 2 * n_out, hidden, activation, **self.network)
        else:
            self.scale_net = MLP(n_in, n_out, hidden, activation, **self.network)
            self.shift_net = MLP(n_in, n_out, hidden, activation, **self.network)

    def _scale_shift(self, x_identity, context):
        if self.context_size:
            if context is None:
                raise ValueError(f"this coupling was built with context_size={self.context_size}; pass a context")
            if context.shape != (x_identity.shape[0], self.context_size):
                raise ValueError(f"context must have shape (batch, {self.context_size}), got {tuple(context.shape)}")
            x_identity = torch.cat([x_identity, context], dim=1)
        if self.shared_network:
            raw_scale, shift = self.net(x_identity).chunk(2, dim=1)
        else:
            raw_scale, shift = self.scale_net(x_identity), self.shift_net(x_identity)
        if self.scale_fn == "tanh":
            return torch.tanh(raw_scale), shift
        return torch.log(stable_softplus(raw_scale + SOFTPLUS_ONE) + 1e-3), shift

    def forward(self, x, context=None):
        check_features(x, self.features, "AffineCoupling")
        x_identity = x[:, self.identity_index]
        scale, shift = self._scale_shift(x_identity, context)
        z_transformed = x[:, self.transformed_index] * scale.exp() + shift
        z = torch.cat([x_identity, z_transformed], dim=1)[:, self.restore_order]
        return z, scale.sum(1)

    def inverse(self, z, context=None):
        check_features(z, self.features, "AffineCoupling")
        z_identity = z[:, self.identity_index]
        scale, shift = self._scale_shift(z_identity, context)
        x_transformed = (z[:, self.transformed_index] - shift) * torch.exp(-scale)
        x = torch.cat([z_identity, x_transformed], dim=1)[:, self.restore_order]
        return x, -scale.sum(1)

    def get_config(self):
        return {"features": self.features, "mask": self.mask, "hidden": self.hidden,
                "context_size": self.context_size, "shared_network": self.shared_network,
                "flip": self.flip, "activation": self.activation, "scale_fn": self.scale_fn,
                "network": self.network}
