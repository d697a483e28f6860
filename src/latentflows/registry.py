"""Components by name: config round trips and a registry.

Every layer, flow, loss, stage and model of latentflows is ``Configurable``:
``get_config()`` returns the JSON-safe keyword arguments of its constructor and
``from_config(cfg)`` rebuilds it. ``@register`` files a class under a name, so a saved
model (JSON config + safetensors weights) can be rebuilt by name without unpickling
anything; a user's own component only needs the decorator to be saved, loaded and named
in a run config.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar, cast

from .errors import UnknownComponentError

T = TypeVar("T", bound=Callable[..., Any])  # a class or a function

_REGISTRY: dict[str, Any] = {}
_RESERVED: dict[str, str] = {}  # built-in hook names ("relu", "l2", ...) -> what they are


def register(component: T | None = None, *, name: str | None = None) -> Any:
    """Make a class (or function) loadable by ``name`` (default: its ``__name__``).

    A name can be registered once: a second, different component under a taken name (or
    under a built-in hook name such as ``"relu"``) is refused with an error that says how
    to choose another, so a user's component never silently replaces the library's. A class
    whose constructor takes options that its inherited ``get_config`` cannot know (as
    ``ElementwiseBijection``'s, which returns ``{}``) is refused too: saving it would lose them.

    Example:
        >>> import latentflows as lf
        >>> @lf.register(name="docs.Twice")
        ... class Twice(lf.Configurable):
        ...     def __init__(self, factor: float = 2.0):
        ...         self.factor = factor
        ...     def get_config(self):
        ...         return {"factor": self.factor}
        >>> lf.deserialize(lf.serialize(Twice(3.0))).factor
        3.0
    """

    def decorate(item: T) -> T:
        key = name or item.__name__
        if key in _RESERVED:
            raise ValueError(f"{key!r} is the built-in {_RESERVED[key]}; register {_qualified(item)} "
                             f"under another name with @register(name=...)")
        known = _REGISTRY.get(key)
        if known is not None and _qualified(known) != _qualified(item):
            raise ValueError(
                f"a component named {key!r} is already registered ({_qualified(known)}); "
                f"register {_qualified(item)} under another name with @register(name=...)"
            )
        _check_saves_its_options(item)
        _REGISTRY[key] = item
        setattr(item, "registered_name", key)  # read back by serialize
        return item

    return decorate(component) if component is not None else decorate


def _options(klass: type) -> set[str]:
    """The named parameters of ``klass``'s constructor (``*args`` and ``**kwargs`` aside)."""
    init = getattr(klass, "__init__")  # the class's own constructor (mypy flags klass.__init__ on a type)
    parameters = list(inspect.signature(init).parameters.values())[1:]  # self aside
    return {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _check_saves_its_options(item: Any) -> None:
    """Refuse a class whose constructor takes options its inherited ``get_config`` does not save."""
    if not isinstance(item, type) or "get_config" in vars(item) or not hasattr(item, "get_config"):
        return
    owner = next(klass for klass in item.__mro__ if "get_config" in vars(klass))
    lost = sorted(_options(item) - _options(owner))
    if lost:
        raise TypeError(f"{_qualified(item)} takes options ({', '.join(lost)}) that the get_config it inherits "
                        f"from {owner.__name__} does not save; define get_config() returning them, e.g. "
                        f"{{{lost[0]!r}: self.{lost[0]}}}")


def reserve(names: dict[str, Any], kind: str) -> None:
    """Mark built-in names (e.g. activation names) so no component can be registered under them."""
    for key in names:
        if key in _REGISTRY:
            raise ValueError(f"{key!r} is registered ({_qualified(_REGISTRY[key])}) and cannot be a built-in {kind}")
        _RESERVED[key] = kind


def _qualified(item: Any) -> str:
    return f"{item.__module__}.{item.__qualname__}"


def registered_names() -> list[str]:
    """Every registered name, sorted."""
    return sorted(_REGISTRY)


def get_registered(name: str) -> Any:
    """The class registered as ``name``, or an error that says how to register it."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownComponentError(
            f"no component named {name!r} is registered: import the module that defines it (on the command "
            f"line: --import MODULE) and decorate its class with @latentflows.register", component=name
        ) from None


def defining_modules(value: Any) -> dict[str, list[str]]:
    """The modules outside latentflows that registered the components ``value`` names: module -> names.

    ``value`` is any JSON value (a saved config): every string in it that is a registered
    name counts (the ``"class"`` of each spec, a hook named by a string). What a saved run
    records, so that loading it without its modules can say which to import.

    Example:
        >>> import latentflows as lf
        >>> defining_modules(lf.serialize(lf.flows.Additive()))   # the library's own
        {}
    """
    found: dict[str, set[str]] = {}

    def visit(item: Any) -> None:
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, (list, tuple)):
            for part in item:
                visit(part)
        elif isinstance(item, str) and item in _REGISTRY:
            module = getattr(_REGISTRY[item], "__module__", None) or "__main__"
            if module != "__main__" and module.partition(".")[0] != "latentflows":  # a script cannot be imported
                found.setdefault(module, set()).add(item)

    visit(value)
    return {module: sorted(names) for module, names in sorted(found.items())}


def recorded_module(imports: Any, name: str | None) -> str | None:
    """The module that ``defining_modules``' record ``imports`` gives for the component ``name``, if any."""
    if not isinstance(imports, dict) or name is None:
        return None
    return next((str(module) for module, names in imports.items() if isinstance(names, list) and name in names), None)


class Configurable:
    """Mixin: ``get_config`` / ``from_config`` round trip through plain JSON values.

    Example:
        >>> from latentflows.losses import HuberLoss
        >>> HuberLoss.from_config(HuberLoss(2.0).get_config()).threshold
        2.0
    """

    registered_name: str

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement get_config()")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        return cls(**config)


def serialize(component: object) -> dict[str, Any]:
    """``{"class": name, "config": {...}}`` for a registered component."""
    klass = type(component)
    name = getattr(klass, "registered_name", None)
    if name is None or _REGISTRY.get(name) is not klass:
        raise UnknownComponentError(
            f"{_qualified(klass)} is not registered, so it cannot be saved by name: "
            "decorate it with @latentflows.register"
        )
    return {"class": name, "config": cast(Configurable, component).get_config()}


def is_spec(value: Any) -> bool:
    """True for ``{"class": ..., "config": {...}}`` dicts."""
    return isinstance(value, dict) and isinstance(value.get("class"), str) and set(value) <= {"class", "config"}


def build(spec: dict[str, Any], expected: type | None = None, **inject: Any) -> Any:
    """Build a component from its spec, adding ``inject`` (sizes known only at build time).

    ``expected`` is the base class the component must have; another kind of component
    gives an error naming both.
    """
    if not is_spec(spec):
        raise UnknownComponentError(f"not a component spec (expected {{'class': ..., 'config': {{...}}}}): {spec!r}")
    klass = get_registered(spec["class"])
    if expected is not None and not (isinstance(klass, type) and issubclass(klass, expected)):
        raise UnknownComponentError(f"{spec['class']!r} is not a {expected.__name__}; "
                                    f"choose a registered {expected.__name__} class")
    config = dict(spec.get("config") or {})
    try:
        return klass.from_config({**config, **inject})
    except TypeError as error:  # an option the class does not take
        raise ValueError(f"{spec['class']}: {error}") from None


def deserialize(spec: dict[str, Any], expected: type | None = None) -> Any:
    """Rebuild a component from ``serialize``'s output."""
    return build(spec, expected)

