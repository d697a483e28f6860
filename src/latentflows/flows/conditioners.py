"""Conditioners: networks that turn a coupling's identity half (and the context) into the
parameters of its element-wise bijection.

A conditioner class is built by the coupling as
``Conditioner(in_features=..., features=..., params_per_feature=..., **options)`` and
returns ``(batch, params_per_feature, features)``; ``options`` are what a config or a
preset gives (hidden sizes, activation, ...). A new conditioner is one registered class
with that constructor.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..layers import (
    CONSTRAINTS,
    INITIALIZERS,
    REGULARIZERS,
    ResidualBlock,
    WeightHooks,
    from_spec,
    get_activation,
    initialize,
    to_spec,
)
from ..registry import Configurable, register


@register
class MLP(WeightHooks, nn.Sequential, Configurable):
    """Fully connected network whose last layer starts at zero (so a new coupling is the identity).

    Args:
        in_features: input size.
        out_features: output size.
        hidden: hidden layer sizes (at least one).
        activation: activation after each hidden layer (name, registered function or module).
        zero_init_output: start the output layer at zero.
        kernel_initializer, kernel_regularizer, kernel_constraint: hooks on every linear
            layer's weight (see ``latentflows.layers``).
        residual: turn every hidden layer after the first into a two-layer residual block
            (all hidden sizes must then be equal).

    Example:
        >>> import torch
        >>> from latentflows.flows import MLP
        >>> MLP(3, 2, hidden=[8])(torch.ones(4, 3)).abs().sum().item()
        0.0
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (256, 256),
                 activation: Any = "relu", zero_init_output: bool = True, kernel_initializer: Any = None,
                 kernel_regularizer: Any = None, kernel_constraint: Any = None, residual: bool = False):
        self.in_features, self.out_features = in_features, out_features
        self.hidden, self.activation, self.zero_init_output = list(hidden), to_spec(activation), zero_init_output
        self.initializer_spec, self.residual = to_spec(kernel_initializer), residual
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be positive integers (at least one layer), got {self.hidden}")
        if residual and len(set(self.hidden)) != 1:
            raise ValueError(f"residual blocks need equal hidden sizes, got {self.hidden}")
        layers: list[nn.Module] = [nn.Linear(in_features, self.hidden[0]), get_activation(activation)]
        for previous, size in zip(self.hidden, self.hidden[1:]):
            if residual:
                layers += [ResidualBlock(size, 2, activation)]
            else:
                layers += [nn.Linear(previous, size), get_activation(activation)]
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

    def get_config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "hidden": self.hidden,
                "activation": self.activation, "zero_init_output": self.zero_init_output,
                "kernel_initializer": self.initializer_spec, "kernel_regularizer": to_spec(self.kernel_regularizer),
                "kernel_constraint": to_spec(self.kernel_constraint), "residual": self.residual}


@register
class CouplingNet(nn.Module, Configurable):
    """The default conditioner: one MLP for all bijection parameters, or one MLP per parameter.

    Args:
        in_features: identity-half features plus context size (set by the coupling).
        features: number of transformed features (set by the coupling).
        params_per_feature: the bijection's parameters per feature (set by the coupling).
        hidden: hidden layer sizes of each MLP.
        shared: one network for all parameters (half the cost of two for an affine map), or
            one per parameter, as in the original RealNVP's separate scale and shift networks.
        activation, residual, kernel_initializer, kernel_regularizer, kernel_constraint:
            passed to each ``MLP``.

    References:
        Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", ICLR 2017,
        arXiv:1605.08803.

    Example:
        >>> import torch
        >>> from latentflows.flows import CouplingNet
        >>> net = CouplingNet(in_features=5, features=3, params_per_feature=2, hidden=[16])
        >>> net(torch.randn(4, 5)).shape
        torch.Size([4, 2, 3])
    """

    def __init__(self, in_features: int, features: int, params_per_feature: int, hidden: Sequence[int] = (256, 256),
                 shared: bool = True, activation: Any = "relu", residual: bool = False,
                 kernel_initializer: Any = None, kernel_regularizer: Any = None, kernel_constraint: Any = None):
        super().__init__()
        self.in_features, self.features, self.params_per_feature = in_features, features, params_per_feature
        self.shared = shared
        options = {"hidden": list(hidden), "activation": activation, "residual": residual,
                   "kernel_initializer": kernel_initializer, "kernel_regularizer": kernel_regularizer,
                   "kernel_constraint": kernel_constraint}
        if shared:
            self.nets = nn.ModuleList([MLP(in_features, params_per_feature * features, **options)])
        else:
            self.nets = nn.ModuleList([MLP(in_features, features, **options) for _ in range(params_per_feature)])
        first = self.nets[0]
        self.options = {"hidden": first.hidden, "activation": first.activation, "residual": residual,
                        "kernel_initializer": first.initializer_spec,
                        "kernel_regularizer": to_spec(first.kernel_regularizer),
                        "kernel_constraint": to_spec(first.kernel_constraint)}

    def forward(self, x: Tensor) -> Tensor:
        if self.shared:
            output = self.nets[0](x)
        else:
            output = torch.cat([net(x) for net in self.nets], dim=1)
        return output.view(x.shape[0], self.params_per_feature, self.features)

    def get_config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "features": self.features,
                "params_per_feature": self.params_per_feature, "shared": self.shared, **self.options}
