"""``latentflows interpolate RUN --from A --to B``: decode a walk between two classes through the base space."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import LatentflowsError
from ..runtime import add_compute_options
from .common import check_png_target, runtime_of
from .options import argument, integer, positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path)
    add_compute_options(parser)
    parser.add_argument("--from", dest="start", required=True, help="class at the left end, e.g. cat")
    parser.add_argument("--to", dest="end", required=True, help="class at the right end, e.g. dog")
    parser.add_argument("--steps", type=argument(positive_int), default=10, help="images per row (default 10)")
    parser.add_argument("--seed", type=argument(integer), default=0, help="picks the two end points (default 0)")
    parser.add_argument("--temperature", type=argument(positive_float), default=1.0, help="scale of the end points")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write (rows: linear, spherical)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")


def run(args: argparse.Namespace) -> None:
    from ..interpolation import interpolate
    from ..pipeline import load
    from ..plots import interpolation_strip

    check_png_target(args.out, args.overwrite)
    if args.steps < 2:
        raise LatentflowsError(f"--steps must be at least 2, got {args.steps}")
    runtime = runtime_of(args)
    pipeline = load(args.run, runtime.device, runtime.precision)
    rows = interpolate(pipeline, args.start, args.end, args.steps, args.seed, args.temperature)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start, end = (pipeline.class_names[pipeline.class_index(label)] for label in (args.start, args.end))
    interpolation_strip(rows, start, end, args.out)
    print(f"wrote {args.out}: {args.steps} steps from {start} to {end}, linear and spherical")
