"""``latentflows info RUN``: a trained run's classes, components, sizes, config and final losses, as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import cast


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path)


def run(args: argparse.Namespace) -> None:
    from ..pipeline import load
    from ..registry import Configurable
    from ..runs import RunFolder

    pipeline = load(args.run, "cpu")
    flow_parameters = sum(p.numel() for p in pipeline.flow.parameters())
    ae_parameters = sum(p.numel() for p in pipeline.autoencoder.parameters())
    info = {"run": str(args.run), "classes": pipeline.class_names,
            "autoencoder": {**cast(Configurable, pipeline.autoencoder).get_config(), "parameters": ae_parameters},
            "flow": {**pipeline.flow.get_config(), "parameters": flow_parameters},
            "summary": pipeline.summary, "config": pipeline.config}
    rows = RunFolder(args.run).metrics()
    for stage in dict.fromkeys(r["stage"] for r in rows):
        last = [r for r in rows if r["stage"] == stage][-1]
        info[f"final_{stage}"] = {k: v for k, v in last.items() if k != "stage"}
    print(json.dumps(info, indent=2))
