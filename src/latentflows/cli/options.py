"""The flags that change a run config, and the value parsers behind every command's options.

Each flag of ``latentflows train`` (``--width``, ``--bijection``, ...) is an ``Option``: an
alias onto one path of the run config, with the parser of its value and its help. One flag
per path: ``--set PATH=JSON`` reaches every other path. ``with_options`` is the same table
from Python. A flag that was removed (``REMOVED``) is refused with the one that replaced it,
and two flags that set one path in one command are refused too, rather than one silently
winning.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..config import AE, AE_MODEL, CONDITIONER, FLOW, FLOW_MODEL, RunConfig
from ..errors import LatentflowsError
from ..flows import ElementwiseBijection
from ..losses import parse_loss
from ..presets import FLOWS, flow_spec
from ..registry import get_registered, is_spec, serialize

# ---------------------------------------------------------------------- values


def integer(text: Any) -> int:
    if isinstance(text, bool):
        raise ValueError(f"not an integer: {text!r}")
    if isinstance(text, int):
        return text
    try:
        return int(str(text))
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None


def positive_int(text: Any) -> int:
    value = integer(text)
    if value < 1:
        raise ValueError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: Any) -> int:
    value = integer(text)
    if value < 0:
        raise ValueError(f"must be an integer >= 0, got {text!r}")
    return value


def number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {text!r}") from None


def positive_float(text: Any) -> float:
    value = number(text)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"must be a positive finite number, got {text!r}")
    return value


def non_negative_float(text: Any) -> float:
    value = number(text)
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(f"must be a finite number >= 0, got {text!r}")
    return value


def fraction(text: Any) -> float:
    value = positive_float(text)
    if value >= 1:
        raise ValueError(f"must be between 0 and 1, got {text!r}")
    return value


def sizes(text: Any) -> list[int]:
    if isinstance(text, (list, tuple)):
        values = list(text)
    else:
        try:
            values = [int(part) for part in str(text).split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"expected comma-separated integers like 256,256, got {text!r}") from None
    if not values or any(not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"hidden sizes must be positive integers, got {text!r}")
    return values


IMAGE_SIZES = (32, 64, 128, 256)


def image_side(text: Any) -> int:
    """An image side the command line offers: 32, 64, 128 or 256 pixels.

    Example:
        >>> image_side("128")
        128
        >>> image_side(100)
        Traceback (most recent call last):
        ...
        ValueError: choose 32, 64, 128 or 256 pixels, got 100
    """
    try:
        value = integer(text)
    except ValueError:
        value = None
    if value not in IMAGE_SIZES:
        raise ValueError(f"choose {', '.join(map(str, IMAGE_SIZES[:-1]))} or {IMAGE_SIZES[-1]} pixels, got {text!r}")
    return value


def on_off(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    if str(text).lower() in ("on", "yes", "true", "1"):
        return True
    if str(text).lower() in ("off", "no", "false", "0"):
        return False
    raise ValueError(f"expected on or off, got {text!r}")


def choice(*names: str) -> Callable[[Any], str]:
    def parse(text: Any) -> str:
        if text not in names:
            raise ValueError(f"choose one of {', '.join(names)}, got {text!r}")
        return text

    return parse


def name_or_spec(value: Any) -> Any:
    """A name from the command line (a string), or a ``{"class", "config"}`` spec from Python, unchanged."""
    return value if is_spec(value) else str(value)


def loss_spec(text: Any) -> dict:
    """``mse``, ``huber`` or ``huber:THRESHOLD`` -> a loss spec (a spec passes through)."""
    if is_spec(text):
        return text
    try:
        return serialize(parse_loss(str(text)))
    except LatentflowsError as error:
        raise ValueError(str(error)) from None


def bijection_spec(text: Any) -> dict:
    """``NAME`` or ``NAME:JSON`` (a registered ``ElementwiseBijection`` and a JSON object of its
    constructor's options) -> its spec; a spec passes through.

    Example:
        >>> bijection_spec('RationalQuadraticSpline:{"bins": 4}')
        {'class': 'RationalQuadraticSpline', 'config': {'bins': 4}}
    """
    if is_spec(text):
        return text
    name, _, options_text = str(text).partition(":")
    klass = get_registered(name)
    if not (isinstance(klass, type) and issubclass(klass, ElementwiseBijection)):
        raise ValueError(f"{name!r} is not an element-wise bijection (e.g. TanhAffine, SoftplusAffine, Additive)")
    try:
        options = json.loads(options_text) if options_text.strip() else {}
    except json.JSONDecodeError:
        options = None
    if not isinstance(options, dict):
        raise ValueError(f"the options after {name}: must be a JSON object, e.g. "
                         f"RationalQuadraticSpline:{{\"bins\": 4}}; got {options_text}")
    parameters = list(inspect.signature(klass).parameters.values())
    known = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{name} has no option {', '.join(unknown)}; its options: {', '.join(known) or 'none'}")
    return {"class": name, "config": options}


def parse_set(text: str) -> tuple[str, Any]:
    """``PATH=VALUE`` (VALUE as JSON, else a plain string) -> (path, value).

    Example:
        >>> parse_set("stages.flow.config.epochs=50"), parse_set("preset=mine")
        (('stages.flow.config.epochs', 50), ('preset', 'mine'))
    """
    path, separator, raw = text.partition("=")
    if not separator or not path.strip():
        raise ValueError(f"expected PATH=VALUE (e.g. stages.flow.config.epochs=50), got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return path.strip(), value


def argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` from a value parser: its ValueError becomes a usage error.

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser()
        >>> _ = parser.add_argument("-n", type=argument(positive_int))
        >>> parser.parse_args(["-n", "3"]).n
        3
    """

    def wrapped(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    wrapped.__name__ = getattr(parse, "__name__", "value")
    return wrapped


# ---------------------------------------------------------------------- the config flags

@dataclass(frozen=True)
class Option:
    """A command-line alias onto a config path: the value's parser and the flag's help.

    Args:
        path: the dotted config path the flag sets.
        parse: the value's parser (text or a Python value -> a checked value; ValueError if bad).
        help: the flag's help text.
        convert: the parsed value -> the config value (e.g. a name -> a spec), if they differ.
        flow: the flow class whose option this is (None: any flow's, or not a flow option);
            given for a run with another flow, it is refused (``refuse_other_flows_options``).

    Example:
        >>> OPTIONS["bijection"].path, OPTIONS["bijection"].to_config("SoftplusAffine")
        ('stages.flow.config.model.config.bijection', {'class': 'SoftplusAffine', 'config': {}})
    """

    path: str
    parse: Callable[[Any], Any]
    help: str
    convert: Callable[[Any], Any] | None = None  # parsed value -> config value (e.g. a name -> a spec)
    flow: str | None = None

    def to_config(self, value: Any) -> Any:
        value = self.parse(value)
        return self.convert(value) if self.convert else value


REALNVP: str = str(FLOWS["realnvp"]["class"])
SPATIAL: str = str(FLOWS["spatial"]["class"])

OPTIONS: dict[str, Option] = {
    "seed": Option("seed", integer, "random seed: same seed, same weights and samples on CPU"),
    "val-fraction": Option("val_fraction", fraction, "share of each class held out for validation"),
    "image-size": Option("image_size", image_side,
                         "image side in pixels: 32, 64, 128 or 256 (default 64); images are centre-cropped and "
                         "resized to it (the embedded pets are 64 px)"),
    "embedding-dim": Option(f"{AE_MODEL}.embedding_dim", positive_int,
                            "autoencoder embedding size (e.g. 128, 256, 512)"),
    "width": Option(f"{AE_MODEL}.width", positive_int, "autoencoder base width (64 = the notebook's)"),
    "ae-epochs": Option(f"{AE}.epochs", positive_int, "autoencoder epochs"),
    "ae-batch-size": Option(f"{AE}.batch_size", positive_int, "autoencoder batch size"),
    "ae-lr": Option(f"{AE}.lr", fraction, "autoencoder Adam learning rate"),
    "ae-loss": Option(f"{AE}.terms.reconstruction.config.loss", name_or_spec,
                      "autoencoder reconstruction loss: mse, l1, huber or huber:THRESHOLD", loss_spec),
    "ae-schedule": Option(f"{AE}.schedule", choice("constant", "cosine"),
                          "autoencoder learning rate: constant, or cosine annealing to 1%% of --ae-lr"),
    "flip": Option(f"{AE}.flip", on_off, "mirror a random half of each autoencoder batch (on/off)"),
    "latent-noise": Option(f"{AE}.latent_noise", non_negative_float,
                           "noise on the codes the decoder sees while training, in units of each code's spread"),
    "flow": Option(f"{FLOW}.model", choice(*FLOWS),
                   "the flow: spatial (SpatialRealNVP, quick's and best's: convolutional checkerboard/channel "
                   "couplings on the code's grid, a full-covariance Gaussian per class at the base; the flags "
                   "marked spatial) or realnvp (the seed notebook's MLP couplings on the flat code, after one "
                   "Gaussian per class; the flags marked realnvp)",
                   flow_spec),
    "couplings": Option(f"{FLOW_MODEL}.couplings", positive_int, "number of coupling layers"),
    "channels": Option(f"{FLOW_MODEL}.hidden", positive_int,
                       "spatial: channels of each coupling's convolutional network (quick: 32)", flow=SPATIAL),
    "hidden": Option(f"{CONDITIONER}.hidden", sizes, "realnvp: hidden sizes of each coupling network, e.g. 256,256",
                     flow=REALNVP),
    "mask": Option(f"{FLOW_MODEL}.mask", choice("alternate", "half"), "realnvp: coupling mask: alternate or half",
                   flow=REALNVP),
    "shared-network": Option(f"{CONDITIONER}.shared", on_off,
                             "realnvp: one network for all coupling parameters (on) or one per parameter (off)",
                             flow=REALNVP),
    "residual": Option(f"{CONDITIONER}.residual", on_off,
                       "realnvp: residual blocks in the coupling networks (on/off; hidden sizes must be equal)",
                       flow=REALNVP),
    "bijection": Option(f"{FLOW_MODEL}.bijection", name_or_spec,
                        "element-wise bijection of the couplings, by registered name (TanhAffine, "
                        "SoftplusAffine, Additive, RationalQuadraticSpline, or your own), with options as "
                        "NAME:JSON, e.g. 'RationalQuadraticSpline:{\"bins\": 4}'", bijection_spec),
    "mixing": Option(f"{FLOW_MODEL}.mixing", choice("permutation", "lu", "none"),
                     "realnvp: layer between couplings: a random permutation, a learned LU-linear map (Glow), "
                     "or none", flow=REALNVP),
    "normalization": Option(f"{FLOW_MODEL}.normalization", choice("batchnorm", "actnorm", "none"),
                            "normalization after each coupling: invertible batch norm, ActNorm (Glow), or none"),
    "class-whitening": Option(f"{FLOW_MODEL}.class_whitening", on_off,
                              "realnvp: begin the flow with one Gaussian per class, fitted to the training codes "
                              "(on/off)", flow=REALNVP),
    "flow-noise": Option(f"{FLOW}.noise", non_negative_float,
                         "std of Gaussian noise on the standardized embeddings while the flow trains"),
    "flow-augment": Option(f"{FLOW}.augment", non_negative_int,
                           "also train the flow on the codes of this many mirrored and shifted copies of each "
                           "training photo (fresh codes it cannot memorise; 0: the photos' codes only)"),
    "flow-epochs": Option(f"{FLOW}.epochs", positive_int, "flow epochs"),
    "flow-batch-size": Option(f"{FLOW}.batch_size", positive_int, "flow batch size"),
    "flow-lr": Option(f"{FLOW}.lr", fraction, "flow Adam learning rate"),
    "flow-patience": Option(f"{FLOW}.patience", positive_int,
                            "stop the flow after this many epochs without a better validation NLL, "
                            "keeping the best weights"),
    "grad-clip": Option("grad_clip", positive_float, "clip gradient norm to this value"),
}


@dataclass(frozen=True)
class Removed:
    """A flag that was removed because another one sets the same path: the error names that one.

    Args:
        replacement: the flag to use instead (a key of ``OPTIONS``).
        values: the removed flag's values -> the replacement's, where they map one to one.
        parse: reads the removed flag's value before it is looked up in ``values``.

    Example:
        >>> REMOVED["scale-fn"].message("scale-fn", "softplus")
        '--scale-fn was removed; use --bijection SoftplusAffine'
        >>> REMOVED["scale-fn"].message("scale-fn")
        '--scale-fn was removed; use --bijection TanhAffine (or SoftplusAffine)'
    """

    replacement: str
    values: dict[Any, str] = field(default_factory=dict)
    parse: Callable[[Any], Any] = str

    def message(self, name: str, value: Any = None) -> str:
        try:
            given = self.values.get(self.parse(value)) if value is not None else None
        except ValueError:
            given = None
        instead = given or " (or ".join(self.values.values()) + ")" * (len(self.values) > 1)
        return f"--{name} was removed; use --{self.replacement} {instead}"


REMOVED = {
    "scale-fn": Removed("bijection", {"tanh": "TanhAffine", "softplus": "SoftplusAffine"}),
    "permute": Removed("mixing", {True: "permutation", False: "none"}, on_off),
    "batch-norm": Removed("normalization", {True: "batchnorm", False: "none"}, on_off),
}


def with_options(config: RunConfig, **options: Any) -> RunConfig:
    """A copy of ``config`` with options set by the Python names of their flags (``ae_epochs=40``
    is ``--ae-epochs 40``; see ``OPTIONS``). A name may also take a spec where its flag takes a
    name (``bijection={"class": ..., "config": {...}}``).

    Example:
        >>> from latentflows import PRESETS
        >>> config = with_options(PRESETS["quick"], width=48, ae_epochs=40)
        >>> config.get("stages.autoencoder.config.model.config.width"), config.get("stages.autoencoder.config.epochs")
        (48, 40)
        >>> with_options(PRESETS["quick"], scale_fn="tanh")
        Traceback (most recent call last):
        ...
        ValueError: --scale-fn was removed; use --bijection TanhAffine
    """
    given = {}
    for name, value in options.items():
        flag = name.replace("_", "-")
        if flag in REMOVED:
            raise ValueError(REMOVED[flag].message(flag, value))
        if flag not in OPTIONS:
            raise ValueError(f"unknown option {name!r}; known: {', '.join(sorted(OPTIONS))}")
        given[flag] = value
    # in the table's order, as on the command line: --flow replaces the model before --couplings edits it
    config = config.with_values({OPTIONS[flag].path: OPTIONS[flag].to_config(given[flag])
                                 for flag in OPTIONS if flag in given})
    refuse_other_flows_options(config, given)
    return config


def refuse_other_flows_options(config: RunConfig, flags: Iterable[str]) -> None:
    """Raise ``ValueError`` for a flag of one flow given for a run with another, naming the fix.

    Example:
        >>> from latentflows import PRESETS
        >>> refuse_other_flows_options(with_options(PRESETS["quick"], flow="spatial"), ["hidden"])
        Traceback (most recent call last):
        ...
        ValueError: --hidden is an option of --flow realnvp, and this run's flow is SpatialRealNVP: add --flow realnvp, ...
    """
    flow = config.get(f"{FLOW}.model.class")
    for flag in flags:
        owner = OPTIONS[flag].flow
        if owner is not None and owner != flow:
            name = next(name for name, spec in FLOWS.items() if spec["class"] == owner)
            raise ValueError(f"--{flag} is an option of --flow {name}, and this run's flow is {flow}: add --flow "
                             f"{name}, or set {flow}'s own options with --set {FLOW_MODEL}.NAME=VALUE")


# ---------------------------------------------------------------------- on the command line

def _dest(name: str) -> str:
    return name.replace("-", "_")


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """``--set PATH=VALUE``: any config path, repeatable."""
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", type=argument(parse_set),
                        help="set any config path, VALUE as JSON, e.g. stages.flow.config.epochs=50 or "
                             "stages.flow.config.model.config.bijection='{\"class\": \"Additive\"}' (repeatable)")


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``OPTIONS`` entry (its value is parsed by ``config_values``, so that a bad one
    is a one-line error), and the removed flags, hidden (``refuse_removed_flags`` names their
    replacements)."""
    for name, option in OPTIONS.items():
        parser.add_argument(f"--{name}", metavar=_dest(name).upper(), help=option.help)
    for name in REMOVED:
        parser.add_argument(f"--{name}", dest=f"removed_{_dest(name)}", help=argparse.SUPPRESS)


def refuse_removed_flags(args: argparse.Namespace) -> None:
    """A removed flag -> a ``LatentflowsError`` naming the flag that replaced it."""
    for name, removed in REMOVED.items():
        value = getattr(args, f"removed_{_dest(name)}", None)
        if value is not None:
            raise LatentflowsError(removed.message(name, value))


def given_flags(args: argparse.Namespace) -> list[str]:
    """The config flags given on the command line (``--set`` once however often), in table order."""
    given = [f"--{name}" for name in OPTIONS if getattr(args, _dest(name)) is not None]
    return given + ["--set"] * bool(args.set)


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config paths the flags set (``--set`` after the aliases), each value checked.

    Raises ``ValueError`` for a bad value (naming its flag) and ``LatentflowsError`` for two
    flags that set the same path.
    """
    values: dict[str, Any] = {}
    setters: dict[str, str] = {}

    def claim(path: str, flag: str) -> None:
        if path in setters:
            raise LatentflowsError(f"{setters[path]} and {flag} both set {path}; give only one of them")
        setters[path] = flag

    for name, option in OPTIONS.items():
        value = getattr(args, _dest(name))
        if value is not None:
            claim(option.path, f"--{name}")
            try:
                values[option.path] = option.to_config(value)
            except ValueError as error:
                raise ValueError(f"--{name}: {error}") from None
    for path, value in args.set:
        claim(path, "--set")
        values[path] = value
    if getattr(args, "compile", None):
        claim("compile", "--compile")
        values["compile"] = True
    return values
