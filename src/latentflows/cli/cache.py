"""``latentflows cache info | clear``: the decoded-image cache."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["info", "clear"])


def run(args: argparse.Namespace) -> None:
    from ..data import cache_entries, clear_cache, default_cache_dir

    if args.action == "clear":
        files, size = clear_cache()
        print(f"removed {files} file(s), {size / 2**20:.1f} MiB, from {default_cache_dir()}")
        return
    entries = cache_entries()
    total = sum(e.stat().st_size for e in entries)
    print(f"{default_cache_dir()}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {total / 2**20:.1f} MiB")
