"""Extension hooks and small layers: activations, initializers, regularizers, constraints.

Each hook can be a built-in name ("relu", "glorot_normal", ...), a registered function or a
registered ``Configurable`` object (e.g. ``L1(0.01)``), so it is saved by name with the model.
The coupling networks accept all of them; ``regularization_loss(model)`` and
``apply_constraints(model)`` are what the trainer calls each step.
"""

from __future__ import annotations

import math
from typing import Any, Callable, cast

import torch
from torch import Tensor, nn

from .registry import Configurable, deserialize, get_registered, register, reserve, serialize

# ---------------------------------------------------------------------------- specs

def to_spec(hook: Any) -> Any:
    """A JSON-safe description of a hook: None, a name, or a component spec.

    This is how activations, initializers, regularizers and constraints are saved in a
    layer's config; an unregistered function or object is refused.

    Args:
        hook: None, a plain value or spec, a registered function, or a ``Configurable`` object.

    Example:
        >>> to_spec("relu"), to_spec(L1(0.5))
        ('relu', {'class': 'L1', 'config': {'factor': 0.5}})
    """
    if hook is None or isinstance(hook, (str, bool, int, float, dict)):
        return hook  # plain values and specs that are already saved
    if isinstance(hook, Configurable):
        return serialize(hook)
    name = getattr(hook, "registered_name", None)
    if name is not None and get_registered(name) is hook:
        return name
    raise ValueError(f"{hook!r} is not registered, so it cannot be saved with the model: "
                     "decorate it with @latentflows.register")


def from_spec(spec: Any, builtins: dict[str, Any]) -> Any:
    """The hook a spec describes: the inverse of ``to_spec``.

    A name is looked up in ``builtins`` first, then in the registry; a dict is rebuilt
    with ``deserialize``; None stays None and anything else is returned as it is.

    Args:
        spec: None, a name, a component spec, or an already built callable or object.
        builtins: the built-in hooks of this kind by name (e.g. ``ACTIVATIONS``).

    Example:
        >>> from_spec("relu", ACTIVATIONS) is nn.ReLU, from_spec({"class": "L2", "config": {"factor": 1.0}}, {}).factor
        (True, 1.0)
    """
    if spec is None:
        return None
    if isinstance(spec, dict):
        return deserialize(spec)
    if isinstance(spec, str):
        return builtins[spec] if spec in builtins else get_registered(spec)
    return spec  # already a callable or an object


# ---------------------------------------------------------------------------- activations

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "selu": nn.SELU, "silu": nn.SiLU,
    "tanh": nn.Tanh, "softplus": nn.Softplus, "identity": nn.Identity,
}


def get_activation(spec: Any) -> nn.Module:
    """A module for an activation name, a registered function or module class, or a module.

    Args:
        spec: a name from ``ACTIVATIONS``, a registered function or module class, or a module.

    Example:
        >>> import torch
        >>> get_activation("relu")(torch.tensor([-1.0, 2.0])).tolist()
        [0.0, 2.0]
    """
    if isinstance(spec, nn.Module):
        return spec
    hook = from_spec(spec, ACTIVATIONS)
    if isinstance(hook, type) and issubclass(hook, nn.Module):
        return hook()
    if callable(hook):
        return Lambda(hook)
    raise ValueError(f"unknown activation {spec!r}; use one of {sorted(ACTIVATIONS)} or a registered function")


@register
class Lambda(nn.Module, Configurable):
    """A stateless layer around a function; saved by the function's registered name.

    Args:
        function: a registered function (or its registered name).

    Example:
        >>> import torch
        >>> from latentflows.layers import Lambda
        >>> Lambda(torch.square)(torch.tensor([3.0])).item()
        9.0
    """

    def __init__(self, function: Callable | str):
        super().__init__()
        self.function = get_registered(function) if isinstance(function, str) else function

    def forward(self, *inputs: Any) -> Any:
        return self.function(*inputs)

    def get_config(self) -> dict[str, Any]:
        return {"function": to_spec(self.function)}


# ---------------------------------------------------------------------------- initializers

def glorot_normal_(weight: Tensor) -> Tensor:
    """Glorot (Xavier) normal: std = sqrt(2 / (fan_in + fan_out)), in place.

    Args:
        weight: a 2-d weight ``(fan_out, fan_in)``.

    References:
        Glorot, Bengio, "Understanding the difficulty of training deep feedforward neural
        networks", AISTATS 2010.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> round(glorot_normal_(torch.empty(300, 500)).std().item(), 2)   # sqrt(2 / 800) = 0.05
        0.05
    """
    fan_out, fan_in = weight.shape[0], weight.shape[1]
    with torch.no_grad():
        return weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))


def he_normal_(weight: Tensor) -> Tensor:
    """He (Kaiming) normal for ReLU layers: std = sqrt(2 / fan_in), in place.

    Args:
        weight: a 2-d weight ``(fan_out, fan_in)``.

    References:
        He, Zhang, Ren, Sun, "Delving Deep into Rectifiers: Surpassing Human-Level Performance
        on ImageNet Classification", ICCV 2015, arXiv:1502.01852.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> round(he_normal_(torch.empty(400, 200)).std().item(), 2)   # sqrt(2 / 200) = 0.1
        0.1
    """
    return nn.init.kaiming_normal_(weight, nonlinearity="relu")


def lecun_normal_(weight: Tensor) -> Tensor:
    """LeCun normal: std = 1 / sqrt(fan_in), in place (the usual choice before SELU).

    Args:
        weight: a 2-d weight ``(fan_out, fan_in)``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> round(lecun_normal_(torch.empty(400, 100)).std().item(), 2)   # 1 / sqrt(100)
        0.1
    """
    with torch.no_grad():
        return weight.normal_(0.0, 1.0 / math.sqrt(weight.shape[1]))


INITIALIZERS: dict[str, Callable[[Tensor], Tensor]] = {
    "glorot_normal": glorot_normal_, "he_normal": he_normal_, "lecun_normal": lecun_normal_,
    "zeros": nn.init.zeros_,
}


def initialize(weight: Tensor, spec: Any) -> None:
    """Apply an initializer (name, registered function or object) in place; None keeps PyTorch's.

    Args:
        weight: the tensor to fill.
        spec: a name from ``INITIALIZERS``, a registered function or object, or None.

    Example:
        >>> import torch
        >>> weight = torch.ones(2, 2)
        >>> initialize(weight, "zeros"); weight.sum().item()
        0.0
    """
    hook = from_spec(spec, INITIALIZERS)
    if hook is not None:
        with torch.no_grad():
            result = hook(weight)
            if isinstance(result, Tensor) and result is not weight:
                weight.copy_(result)


# ---------------------------------------------------------------------------- regularizers, constraints

@register
class L1(Configurable):
    """L1 weight penalty, factor * sum |w|, added to the loss each step (pushes weights to zero).

    Args:
        factor: the weight of the penalty.

    Example:
        >>> import torch
        >>> L1(0.5)(torch.tensor([1.0, -3.0])).item()
        2.0
    """

    def __init__(self, factor: float = 0.01):
        self.factor = factor

    def __call__(self, weight: Tensor) -> Tensor:
        return self.factor * weight.abs().sum()

    def get_config(self) -> dict[str, Any]:
        return {"factor": self.factor}


@register
class L2(Configurable):
    """L2 weight penalty (weight decay), factor * sum w^2, added to the loss each step.

    Args:
        factor: the weight of the penalty.

    Example:
        >>> import torch
        >>> L2(0.5)(torch.tensor([1.0, -3.0])).item()
        5.0
    """

    def __init__(self, factor: float = 0.01):
        self.factor = factor

    def __call__(self, weight: Tensor) -> Tensor:
        return self.factor * weight.pow(2).sum()

    def get_config(self) -> dict[str, Any]:
        return {"factor": self.factor}


@register
class NonNegative(Configurable):
    """Constraint: negative weights are set to zero after each optimizer step.

    Pass it as a layer's ``kernel_constraint`` (or by its built-in name ``"non_negative"``).
    It takes no arguments.

    Example:
        >>> import torch
        >>> NonNegative()(torch.tensor([-1.0, 2.0])).tolist()
        [0.0, 2.0]
    """

    def __call__(self, weight: Tensor) -> Tensor:
        return weight.clamp_min(0.0)

    def get_config(self) -> dict[str, Any]:
        return {}


REGULARIZERS = {"l1": L1(), "l2": L2()}
CONSTRAINTS = {"non_negative": NonNegative()}
reserve(ACTIVATIONS, "activation")
reserve(INITIALIZERS, "initializer")
reserve(REGULARIZERS, "regularizer")
reserve(CONSTRAINTS, "constraint")


class WeightHooks:
    """Mixin for layers with ``kernel_regularizer`` / ``kernel_constraint`` on their weights.

    The hooks apply to the weight of every ``nn.Linear`` inside the layer; the trainer
    finds such layers through ``regularization_loss(model)`` and ``apply_constraints(model)``.
    It has no constructor arguments: a subclass sets the two attributes.

    Example:
        >>> import torch
        >>> layer = Dense(2, kernel_regularizer=L1(1.0))
        >>> _ = layer(torch.ones(1, 3))
        >>> bool(layer.regularization_loss() > 0)
        True
    """

    kernel_regularizer = None
    kernel_constraint = None

    def hooked_weights(self) -> list[Tensor]:
        assert isinstance(self, nn.Module), "WeightHooks mixes into an nn.Module"
        return [m.weight for m in self.modules() if isinstance(m, nn.Linear)]

    def regularization_loss(self) -> Tensor | None:
        if self.kernel_regularizer is None:
            return None
        return sum(self.kernel_regularizer(w) for w in self.hooked_weights())

    @torch.no_grad()
    def apply_constraints(self) -> None:
        if self.kernel_constraint is not None:
            for weight in self.hooked_weights():
                weight.copy_(self.kernel_constraint(weight))


def regularization_loss(model: nn.Module) -> Tensor | None:
    """Sum of every hooked layer's regularization loss in ``model`` (None if there are none).

    Args:
        model: any module; its ``WeightHooks`` layers are searched recursively.

    Example:
        >>> import torch
        >>> model = nn.Sequential(Dense(1, kernel_initializer="zeros", kernel_regularizer=L2(1.0)))
        >>> _ = model(torch.ones(1, 2))
        >>> regularization_loss(model).item(), regularization_loss(nn.Linear(2, 1))
        (0.0, None)
    """
    found = [m.regularization_loss() for m in model.modules() if isinstance(m, WeightHooks)]
    terms = [t for t in found if t is not None]
    return cast(Tensor, sum(terms)) if terms else None


def apply_constraints(model: nn.Module) -> None:
    """Apply every hooked layer's ``kernel_constraint`` to its weights, in place.

    The trainer calls it after each optimizer step.

    Args:
        model: any module; its ``WeightHooks`` layers are searched recursively.

    Example:
        >>> import torch
        >>> layer = Dense(1, kernel_constraint="non_negative")
        >>> _ = layer(torch.ones(1, 2))
        >>> with torch.no_grad():
        ...     _ = layer.linear.weight.copy_(torch.tensor([[-1.0, 2.0]]))
        >>> apply_constraints(layer); layer.linear.weight.tolist()
        [[0.0, 2.0]]
    """
    for module in model.modules():
        if isinstance(module, WeightHooks):
            module.apply_constraints()


# ---------------------------------------------------------------------------- auxiliary losses

class AddsLosses:
    """Mixin for modules that add losses from inside ``forward`` (e.g. a reconstruction term).

    The trainer pops them after each forward pass, adds them to the main loss and shows
    each under its name. It has no constructor arguments.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Shrinking(AddsLosses, nn.Module):
        ...     def forward(self, x):
        ...         self.add_loss("size", x.pow(2).mean())
        ...         return x
        >>> model = Shrinking()
        >>> _ = model(torch.ones(2))
        >>> {k: v.item() for k, v in pop_auxiliary_losses(model).items()}
        {'size': 1.0}
    """

    def add_loss(self, name: str, value: Tensor) -> None:
        self.__dict__.setdefault("_auxiliary_losses", {})[name] = value


def pop_auxiliary_losses(model: nn.Module) -> dict[str, Tensor]:
    """Remove and return the losses that ``AddsLosses`` modules in ``model`` added, by name.

    A later module's loss replaces an earlier one of the same name.

    Args:
        model: any module; its submodules are searched recursively.

    Example:
        >>> import torch
        >>> class Penalised(AddsLosses, nn.Module):
        ...     def forward(self, x):
        ...         self.add_loss("penalty", x.sum())
        ...         return x
        >>> model = Penalised()
        >>> _ = model(torch.ones(3))
        >>> pop_auxiliary_losses(model)["penalty"].item(), pop_auxiliary_losses(model)
        (3.0, {})
    """
    losses: dict[str, Tensor] = {}
    for module in model.modules():
        added = module.__dict__.pop("_auxiliary_losses", None)
        if added:
            losses.update(added)
    return losses


# ---------------------------------------------------------------------------- layers

@register
class Dense(WeightHooks, nn.Module, Configurable):
    """A fully connected layer that learns its input size on the first call.

    Run one batch through the model before creating the optimizer (as with any lazy
    PyTorch module); loading a state dict also sets the size.

    Args:
        units: output size.
        activation: activation after the linear map (name, registered function or module).
        kernel_initializer: initializer of the weight (name or registered function).
        kernel_regularizer: penalty on the weight added to the loss (e.g. ``L1(0.01)``).
        kernel_constraint: applied to the weight after each step (e.g. ``NonNegative()``).

    References:
        Glorot, Bengio, "Understanding the difficulty of training deep feedforward neural
        networks", AISTATS 2010 (the default ``glorot_normal`` initializer).

    Example:
        >>> import torch
        >>> layer = Dense(4, activation="relu")
        >>> layer(torch.ones(2, 3)).shape, layer.linear.in_features
        (torch.Size([2, 4]), 3)
    """

    def __init__(self, units: int, activation: Any = "identity", kernel_initializer: Any = "glorot_normal",
                 kernel_regularizer: Any = None, kernel_constraint: Any = None):
        super().__init__()
        self.units = units
        self.activation_spec, self.initializer_spec = activation, kernel_initializer
        self.linear = nn.LazyLinear(units)
        self.activation = get_activation(activation)
        self.kernel_regularizer = from_spec(kernel_regularizer, REGULARIZERS)
        self.kernel_constraint = from_spec(kernel_constraint, CONSTRAINTS)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.linear, nn.modules.lazy.LazyModuleMixin) and self.linear.has_uninitialized_params():
            self.linear.initialize_parameters(x)  # the "build" step: now the input size is known
            initialize(self.linear.weight, self.initializer_spec)
            nn.init.zeros_(self.linear.bias)
        return self.activation(self.linear(x))

    def get_config(self) -> dict[str, Any]:
        return {"units": self.units, "activation": to_spec(self.activation_spec),
                "kernel_initializer": to_spec(self.initializer_spec),
                "kernel_regularizer": to_spec(self.kernel_regularizer),
                "kernel_constraint": to_spec(self.kernel_constraint)}


@register
class GaussianNoise(nn.Module, Configurable):
    """Adds N(0, stddev^2) noise in training mode only; the identity in eval mode.

    On the flow's embeddings this is a real regularizer (``--flow-noise``): it smooths the
    learned density around the training points.

    Args:
        stddev: the noise's standard deviation.

    Example:
        >>> import torch
        >>> noise = GaussianNoise(0.1)
        >>> torch.equal(noise.eval()(torch.ones(3)), torch.ones(3))
        True
    """

    def __init__(self, stddev: float):
        super().__init__()
        if stddev < 0:
            raise ValueError(f"stddev must be non-negative, got {stddev}")
        self.stddev = stddev

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.stddev > 0:
            return x + torch.randn_like(x) * self.stddev
        return x

    def get_config(self) -> dict[str, Any]:
        return {"stddev": self.stddev}


@register
class ResidualBlock(nn.Module, Configurable):
    """x + f(x), with f a stack of ``layers`` fully connected layers of width ``units``.

    Args:
        units: width of the block (input and output).
        layers: number of linear layers in ``f``.
        activation: activation after each layer.

    References:
        He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
        arXiv:1512.03385.

    Example:
        >>> import torch
        >>> ResidualBlock(8)(torch.zeros(2, 8)).shape
        torch.Size([2, 8])
    """

    def __init__(self, units: int, layers: int = 2, activation: Any = "relu"):
        super().__init__()
        self.units, self.layers, self.activation_spec = units, layers, activation
        body: list[nn.Module] = []
        for _ in range(layers):
            body += [nn.Linear(units, units), get_activation(activation)]
        self.body = nn.Sequential(*body)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)

    def get_config(self) -> dict[str, Any]:
        return {"units": self.units, "layers": self.layers, "activation": to_spec(self.activation_spec)}
