"""``latentflows sample RUN --class C``: generate images of one class from a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import LatentflowsError
from ..runtime import add_compute_options
from .common import add_guidance_options, check_png_target, runtime_of
from .options import argument, integer, positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path)
    add_compute_options(parser)
    parser.add_argument("--class", dest="label", required=True, help="class name, e.g. cat or dog")
    parser.add_argument("-n", type=argument(positive_int), default=16, help="number of images (default 16)")
    parser.add_argument("--temperature", type=argument(positive_float), default=1.0,
                        help="scale of the base noise (default 1)")
    parser.add_argument("--seed", type=argument(integer), default=0)
    add_guidance_options(parser)
    parser.add_argument("--out", type=Path, help="PNG grid to write, highest log-density first")
    parser.add_argument("--npy", type=Path, help="the uint8 images (n, S, S, 3) as .npy (with or without --out)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def run(args: argparse.Namespace) -> None:
    import numpy as np

    from ..pipeline import load
    from ..plots import image_grid

    if args.out is None and args.npy is None:
        raise LatentflowsError("sample writes --out GRID.png, --npy IMAGES.npy or both; pass at least one")
    if args.out is not None:
        check_png_target(args.out, args.overwrite)
    if args.npy is not None and args.npy.suffix != ".npy":
        raise LatentflowsError(f"--npy {args.npy}: the file name must end in .npy (numpy would add it silently)")
    if args.npy is not None and args.npy.exists() and not args.overwrite:
        raise LatentflowsError(f"{args.npy} already exists; choose another name or pass --overwrite")
    runtime = runtime_of(args)
    pipeline = load(args.run, runtime.device, runtime.precision)
    samples = pipeline.generate(args.label, args.n, args.temperature, args.seed, args.guidance, args.candidates)
    if args.out is not None:
        columns = min(8, args.n)
        rows = [samples.images[i : i + columns] for i in range(0, args.n, columns)]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        image_grid(rows, scale=2).save(args.out)
    if args.npy is not None:
        args.npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.npy, samples.images.permute(0, 2, 3, 1).numpy())
    posterior = "" if samples.class_prob is None else \
        f", p({samples.label} | image) {samples.class_prob.mean():.2f} on average"
    written = " and ".join(str(path) for path in (args.out, args.npy) if path is not None)
    print(f"wrote {args.n} {samples.label} image(s) to {written}"
          f" (log-density {samples.log_prob[0]:.1f} .. {samples.log_prob[-1]:.1f} nats{posterior})")
