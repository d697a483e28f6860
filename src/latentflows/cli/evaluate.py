"""``latentflows evaluate RUN``: measure a trained run on its validation split, write eval.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import LatentflowsError
from ..runtime import add_compute_options
from .common import add_guidance_options, runtime_of
from .options import argument, integer, positive_float, positive_int


def imagenet_variants(text: str) -> tuple[int, ...]:
    """``0,2`` -> (0, 2); ``none`` -> ().

    Example:
        >>> imagenet_variants("0,2"), imagenet_variants("none")
        ((0, 2), ())
    """
    if text.strip().lower() == "none":
        return ()
    try:
        variants = tuple(int(part) for part in text.split(","))
    except ValueError:
        variants = (-1,)
    if not variants or any(v not in (0, 1, 2) for v in variants):
        raise ValueError(f"expected EfficientNet-Lite variants among 0, 1, 2 (e.g. 0,2) or none, got {text!r}")
    return variants


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path)
    add_compute_options(parser)
    parser.add_argument("--data", help="data source, when the one in the run's run.json has moved")
    parser.add_argument("--samples", type=argument(positive_int), metavar="N",
                        help="generated images per class (default: as many as the class has validation images)")
    parser.add_argument("--seed", type=argument(integer), default=0, help="seed for the generated images (default 0)")
    parser.add_argument("--temperature", type=argument(positive_float), default=1.0, help="scale of the base noise")
    add_guidance_options(parser)
    fid = parser.add_mutually_exclusive_group()
    fid.add_argument("--fid-weights", type=Path, metavar="PATH",
                     help="Inception weights for FID/KID (.safetensors, or torch-fidelity's .pth); "
                          "default: the cached copy, else a download")
    fid.add_argument("--no-fid", action="store_true", help="skip FID and KID")
    parser.add_argument("--no-download", action="store_true", help="never download the Inception weights")
    parser.add_argument("--imagenet", type=argument(imagenet_variants), default=(0, 2), metavar="VARIANTS",
                        help="EfficientNet-Lite variants (0, 1, 2) whose ImageNet features and classes measure "
                             "the samples, e.g. 0,2 (the default), or none")
    parser.add_argument("--classifier-epochs", type=argument(positive_int), default=12,
                        help="epochs for the judge classifier, when the run has none yet (default 12)")
    parser.add_argument("--judge", type=Path, metavar="FOLDER",
                        help="judge by another run's classifier (e.g. runs/a/classifier), to compare runs "
                             "on the same data by one judge")
    parser.add_argument("--out", type=Path, help="report to write (default RUN/eval.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.add_argument("--no-progress", action="store_true", help="no progress messages")


def run(args: argparse.Namespace) -> None:
    from ..evaluation import evaluate_run, format_report

    classifier_dir = None
    if getattr(args, "hub_id", None):  # never write into the Hugging Face cache
        if args.out is None:
            raise LatentflowsError(f"{args.hub_id} is a Hub model: evaluate writes its report and judge beside "
                                   "--out; pass --out FILE.json")
        classifier_dir = args.out.with_name(args.out.stem + "-classifier")
    report = evaluate_run(args.run, source=args.data, out=args.out, overwrite=args.overwrite,
                          classifier_dir=classifier_dir,
                          fid_weights=args.fid_weights, fid=not args.no_fid, download=not args.no_download,
                          samples_per_class=args.samples, seed=args.seed, temperature=args.temperature,
                          guidance=args.guidance, candidates=args.candidates,
                          classifier_epochs=args.classifier_epochs, judge=args.judge, imagenet=args.imagenet,
                          progress=not args.no_progress, device=runtime_of(args))
    print(format_report(report))
    print(f"wrote {args.out or args.run / 'eval.json'} in {report['seconds']:.0f}s")
