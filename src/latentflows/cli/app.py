"""The ``latentflows`` program: one table of commands, from which the parser and the dispatch are built.

Every user error (bad option, missing file, unknown class) ends with one line on stderr
and exit code 2; nothing existing is overwritten without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable

from .. import demo, export, hub
from ..errors import LatentflowsError, MissingModuleError
from ..extras import require
from . import cache, compare, evaluate, info, interpolate, sample, train
from .common import add_import_option, import_modules, resolve_run

EXIT_USAGE = 2


@dataclass(frozen=True)
class Command:
    """One subcommand of ``latentflows``: its name, its help, and the two functions behind it.

    Args:
        name: the subcommand, e.g. ``"sample"``.
        help: its one line in ``latentflows --help``.
        add_arguments: adds its options to its parser.
        run: does the work, given the parsed options; a user error is a ``LatentflowsError``.
        takes_a_run: its ``run`` argument may also be a Hugging Face Hub id (owner/name),
            downloaded to the HF cache before ``run`` is called.
        loads_a_run: it loads a run's model, so it takes ``--import`` for the modules that
            registered the run's own components (added after its own options).
        needs: the optional modules it needs, as (module, extra), checked before anything else.

    Example:
        >>> import argparse
        >>> hello = Command("hello", "say hello", lambda parser: parser.add_argument("--name"),
        ...                 lambda args: print(f"hello {args.name}"))
        >>> hello.run(argparse.Namespace(name="cat"))
        hello cat
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], Any]
    run: Callable[[argparse.Namespace], None]
    takes_a_run: bool = False
    loads_a_run: bool = False
    needs: tuple[tuple[str, str], ...] = ()


COMMANDS = (
    Command("train", "train autoencoder and flow, write a run folder", train.add_arguments, train.run),
    Command("sample", "generate images of one class from a trained run", sample.add_arguments, sample.run,
            takes_a_run=True, loads_a_run=True),
    Command("evaluate", "measure a trained run on its validation split, write eval.json", evaluate.add_arguments,
            evaluate.run, takes_a_run=True, loads_a_run=True),
    Command("compare", "the figures of evaluated runs side by side", compare.add_arguments, compare.run),
    Command("interpolate", "decode a walk between two classes through the base space", interpolate.add_arguments,
            interpolate.run, takes_a_run=True, loads_a_run=True),
    Command("info", "describe a trained run", info.add_arguments, info.run, takes_a_run=True, loads_a_run=True),
    Command("push", "upload a run to the Hugging Face Hub, with a model card", hub.add_push_arguments, hub.run_push,
            loads_a_run=True),
    Command("export", "the generator as ONNX (noise and class in; image and log-density out), checked with "
            "onnxruntime", export.add_arguments, export.run, takes_a_run=True, loads_a_run=True,
            needs=(("onnx", "export"), ("onnxruntime", "export"))),
    Command("demo", "a web page (Gradio) to generate and interpolate", demo.add_arguments, demo.run,
            takes_a_run=True, loads_a_run=True, needs=(("gradio", "demo"),)),
    Command("cache", "show or empty the decoded-image cache", cache.add_arguments, cache.run),
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="latentflows", description=f"Command line: latentflows {' | '.join(c.name for c in COMMANDS)}")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        subparser = commands.add_parser(command.name, help=command.help)
        command.add_arguments(subparser)
        if command.loads_a_run:
            add_import_option(subparser, "one that registered the run's own components (its config.json "
                                         "lists them under imports); never imported for you")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command line (``sys.argv[1:]`` by default); the exit code."""
    args = build_parser().parse_args(argv)
    command = next(command for command in COMMANDS if command.name == args.command)
    try:
        for module, extra in command.needs:  # a missing extra before any download
            require(module, extra)
        import_modules(getattr(args, "imports", []))  # a bad module fails before any download
        if command.takes_a_run:
            resolve_run(args)
        command.run(args)
    except MissingModuleError as error:  # name this command's --import
        print(f"latentflows: error: {error.for_command(args.command)}", file=sys.stderr)
        return EXIT_USAGE
    except LatentflowsError as error:
        print(f"latentflows: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("latentflows: interrupted", file=sys.stderr)
        return 130
    return 0
