"""Components by name: config round trips and a registry.

Every layer, flow, loss and model of latentflows is ``Configurable``: ``get_config()``
returns the JSON-safe keyword arguments of its constructor and ``from_config(cfg)``
rebuilds it. ``@register`` files a class under a name, so a saved model (JSON config +
safetensors weights) can be rebuilt by name without unpickling anything; a user's own
component only needs the decorator to be saved and loaded the same way.
"""

from __future__ import annotations

from typing import Any, TypeVar

from .errors import UnknownComponentError

T = TypeVar("T", bound=type)

_REGISTRY: dict[str, type] = {}


def register(cls: T | None = None, *, name: str | None = None):
    """Class decorator: make ``cls`` loadable by ``name`` (default: the class name)."""

    def decorate(klass: T) -> T:
        key = name or klass.__name__
        known = _REGISTRY.get(key)
        if known is not None and _qualified(known) != _qualified(klass):
            raise ValueError(
                f"a component named {key!r} is already registered ({_qualified(known)}); "
                f"register {_qualified(klass)} under another name with @register(name=...)"
            )
        _REGISTRY[key] = klass
        klass.registered_name = key
        return klass

    return decorate(cls) if cls is not None else decorate


def _qualified(klass: type) -> str:
    return f"{klass.__module__}.{klass.__qualname__}"


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def get_registered(name: str) -> type:
    """The class registered as ``name``, or an error that says how to register it."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownComponentError(
            f"no component named {name!r} is registered: import the module that defines it "
            f"and decorate its class with @latentflows.register (or @register(name={name!r}))"
        ) from None


class Configurable:
    """Mixin: ``get_config`` / ``from_config`` round trip through plain JSON values."""

    registered_name: str

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement get_config()")

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        return cls(**config)


def serialize(component: Configurable) -> dict[str, Any]:
    """``{"class": name, "config": {...}}`` for a registered component."""
    klass = type(component)
    name = getattr(klass, "registered_name", None)
    if name is None or _REGISTRY.get(name) is not klass:
        raise UnknownComponentError(
            f"{_qualified(klass)} is not registered, so it cannot be saved by name: "
            "decorate it with @latentflows.register"
        )
    return {"class": name, "config": component.get_config()}


def deserialize(spec: dict[str, Any]):
    """Rebuild a component from ``serialize``'s output."""
    if not isinstance(spec, dict) or "class" not in spec:
        raise UnknownComponentError(f"not a component spec (expected {{'class': ..., 'config': ...}}): {spec!r}")
    return get_registered(spec["class"]).from_config(dict(spec.get("config", {})))
