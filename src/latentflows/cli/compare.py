"""``latentflows compare RUN...``: the figures of evaluated runs side by side."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run folders (with eval.json) or reports")


def run(args: argparse.Namespace) -> None:
    from ..evaluation import compare, read_report

    print(compare([read_report(path) for path in args.runs], [path.name or str(path) for path in args.runs]))
