"""What several commands share: the runtime their options ask for, a run given as a folder
or a Hub id, modules to import first, output files, status lines and guidance options."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from ..distributed import as_runtime
from ..errors import LatentflowsError
from ..runtime import Runtime
from .options import argument, non_negative_float, positive_int


def runtime_of(args: argparse.Namespace) -> Runtime:
    """The runtime the options ask for; a device that is not there is a one-line error."""
    try:
        return as_runtime(args.device, getattr(args, "precision", "auto"), getattr(args, "deterministic", False))
    except ValueError as error:
        raise LatentflowsError(f"--device {args.device}: {error}") from None


def resolve_run(args: argparse.Namespace) -> None:
    """``args.run`` as a local folder; a Hub id (owner/name) is downloaded to the HF cache and
    kept as ``args.hub_id``."""
    from ..hub import is_hub_id, resolve_run

    args.hub_id = str(args.run) if is_hub_id(args.run) and not Path(args.run).exists() else None
    args.run = Path(resolve_run(args.run))


def add_import_option(parser: argparse.ArgumentParser, why: str) -> None:
    """``--import MODULE`` (repeatable): modules imported before the command runs (see ``app.main``)."""
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help=f"import a module first: {why} (repeatable)")


def import_modules(names: list[str]) -> None:
    """Import each module (``--import``), so that its registered components can be named."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise LatentflowsError(f"--import {name}: {error}; is it on PYTHONPATH?") from None
        except Exception as error:  # the user's module failed while it ran
            raise LatentflowsError(f"--import {name}: the module raised {type(error).__name__}: {error}") from None


def say(runtime: Runtime, message: str) -> None:
    """A progress line on stderr, from the main process only."""
    if runtime.is_main_process:
        print(message, file=sys.stderr)


def check_png_target(path: Path, overwrite: bool) -> None:
    """``--out`` must be a .png that does not exist yet (unless ``--overwrite``)."""
    if path.suffix.lower() != ".png":
        raise LatentflowsError(f"--out must end in .png, got {path}")
    if path.exists() and not overwrite:
        raise LatentflowsError(f"{path} already exists; choose another name or pass --overwrite")


def add_guidance_options(parser: argparse.ArgumentParser) -> None:
    """``--guidance`` and ``--candidates``: resample by the flow's class posterior (``latentflows.guidance``)."""
    parser.add_argument("--guidance", type=argument(non_negative_float), metavar="GAMMA",
                        help="keep samples with probability proportional to p(class | embedding)^GAMMA, the "
                             "flow's own class posterior: more class (0: plain sampling; default the run's "
                             "own: 64 for quick and best, 0 for seed and runs of earlier versions)")
    parser.add_argument("--candidates", type=argument(positive_int), metavar="K",
                        help="with guidance: embeddings drawn per image kept (default the run's own: 32 for "
                             "quick and best)")
