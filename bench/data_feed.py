"""The data feed's speed and peak memory from 6.7k to 670k images: decode cache read from disk
(``MappedImages``) against the whole array in memory.

    python bench/data_feed.py                      # 6.7k, 67k and 670k images: about 9 GB in /tmp, 2 to 3 minutes
    python bench/data_feed.py --max-images 70000   # only the sizes up to 70k (or when /tmp lacks the space)
    python bench/data_feed.py --workdir /data/tmp --keep

The embedded Oxford pets (6,665 images, decoded once by ``load_images``) are repeated 1, 10
and 100 times into decode-cache entries written straight into a temporary cache folder (no
image is decoded again), each keyed to a small stand-in parquet file so that ``load_images``
finds it as it would a decoded source. Then, in a fresh process per size and feed (so that
the peak resident memory, ``ru_maxrss``, is that feed's alone), the feed is what training
does before its first step and during it: ``load_images``, the run's stratified split (10 %
validation), and shuffled batches of 64 cut from the training set by
``latentflows.data.Batches``, read ahead by ``latentflows.data.prefetch``. Each batch is
only summed, so the rate is the feed's own, not a model's.

Feeds:

* ``mapped``: images read from the cache file batch by batch (``$LATENTFLOWS_IN_MEMORY_BYTES=0``);
  ``mapped, cold``: the same after the file is dropped from the page cache (``posix_fadvise``,
  this file only), so every batch is read from the disk.
* ``whole array``: the whole data set in one uint8 tensor, as the seed notebook and latentflows
  before 0.4 fed it (the split copies it into a training and a validation tensor); run only
  where it fits in half of the available memory.

``default`` marks what ``load_images`` picks at that size (in memory up to 512 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PETS = 6665
ROW_BYTES = 3 * 64 * 64


def memory_available() -> int:
    """Bytes of memory available (Linux), else the total."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def peak_rss_mib() -> float:
    """This process's peak resident memory: ``VmHWM`` on Linux, where ``ru_maxrss`` also counts the
    parent's memory at the fork that started this process (it is kept across ``execve``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


# ---------------------------------------------------------------------------- building the caches

def build_entry(workdir: Path, cache: Path, pets, repeat: int) -> tuple[Path, Path]:
    """A stand-in parquet file and, under its cache key, a complete cache entry holding the
    decoded pets ``repeat`` times; returns the parquet file (what ``load_images`` is given)
    and the entry's images file."""
    import numpy as np
    import pyarrow.parquet as pq

    from latentflows.data import cache as decode_cache
    from latentflows.data import sources

    source = workdir / f"pets-x{repeat}.parquet"
    pq.write_table(pq.read_table(sources.embedded_files()[0]).slice(0, 1), source)  # any small parquet file
    kind, files, name = sources._resolve(source)
    key = sources._cache_key(kind, name, files, 64, "image", None)
    entry = decode_cache._CacheEntry(cache, key)
    state = {"format": decode_cache.CACHE_FORMAT, "format_version": decode_cache.CACHE_FORMAT_VERSION, "source": name,
             "image_size": 64, "class_names": pets.class_names, "items": repeat * len(pets), "next_item": 0,
             "rows": 0, "skipped": [], "complete": False}
    rows, labels = pets.images.numpy(), pets.labels.numpy().astype(np.int64)
    cache.mkdir(parents=True, exist_ok=True)
    entry.discard()
    with decode_cache._CacheWriter(entry, state) as writer:
        for copy in range(repeat):
            writer.append(rows, labels, (copy + 1) * len(pets), [])
        writer.finish()
    return source, entry.images


# ---------------------------------------------------------------------------- one measurement (child process)

def measure(source: str, cache: str, batches: int, batch_size: int) -> dict:
    import torch

    from latentflows.data import Batches, load_images, prefetch
    from latentflows.runs import split_dataset

    torch.set_num_threads(1)
    imported = peak_rss_mib()
    started = time.perf_counter()
    dataset = load_images(source, cache_dir=cache)
    train, val = split_dataset(dataset, 0.1, seed=0)
    loaded = time.perf_counter() - started
    feed = Batches([train.images, train.labels], batch_size, shuffle=True, seed=0)
    total, seen = 0, 0
    started = time.perf_counter()
    for images, labels in prefetch(feed, depth=2):
        total += int(images[:, :, ::16, ::16].sum()) + int(labels.sum())
        seen += len(images)
        if seen >= batches * batch_size:
            break
    rate = seen / (time.perf_counter() - started)
    return {"images": len(dataset), "mapped": dataset.mapped, "load_split_s": loaded, "images_per_s": rate,
            "peak_rss_mib": peak_rss_mib(), "imports_rss_mib": imported, "checksum": total}


def run_child(source: Path, cache: Path, args: argparse.Namespace, in_memory_bytes: int) -> dict:
    env = {**os.environ, "LATENTFLOWS_IN_MEMORY_BYTES": str(in_memory_bytes), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--child", str(source), "--cache", str(cache),
               "--batches", str(args.batches), "--batch-size", str(args.batch_size)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"measurement failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def page_cache(path: Path, keep: bool) -> None:
    """Read ``path`` into the page cache (``keep``), or drop it from there (this file only)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        if keep:
            while os.read(descriptor, 64 * 2**20):
                pass
        else:
            os.fsync(descriptor)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", default="1,10,100", help="how many copies of the 6,665 pets, per size")
    parser.add_argument("--max-images", type=int, default=None, help="leave out the sizes above this")
    parser.add_argument("--batches", type=int, default=300, help="batches read per measurement")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None, help="where the caches go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the caches")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.cache, args.batches, args.batch_size)))
        return

    from latentflows import data, load_images

    root = args.workdir or Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="latentflows-feed-", dir=root))
    repeats = sorted(int(r) for r in args.repeats.split(","))
    if args.max_images:
        repeats = [r for r in repeats if r * PETS <= args.max_images]
    free = shutil.disk_usage(workdir).free
    while repeats and sum(repeats) * PETS * (ROW_BYTES + 8) > free - 2**30:
        print(f"{workdir}: {free / 2**30:.1f} GiB free, too little for {repeats[-1] * PETS:,} images; leaving that size out")
        repeats.pop()
    try:
        started = time.perf_counter()
        pets = load_images()
        cache = workdir / "cache"
        sources = {r: build_entry(workdir, cache, pets, r) for r in repeats}
        print(f"caches of {', '.join(f'{r * PETS:,}' for r in repeats)} images written to {cache} "
              f"in {time.perf_counter() - started:.0f} s\n")
        rows = []
        for r in repeats:
            size = r * PETS * ROW_BYTES
            default_in_memory = size <= data.in_memory_bytes()
            feeds = [("mapped", 0, False)]
            if 2.2 * size < memory_available() / 2:
                feeds.append(("whole array", 2**62, False))
            else:
                rows.append((r * PETS, "whole array", "", None, f"not run: needs about {2.2 * size / 2**30:.0f} GiB"))
            feeds.append(("mapped, cold", 0, True))
            source, images = sources[r]
            for name, limit, cold in feeds:
                page_cache(images, keep=not cold)
                result = run_child(source, cache, args, limit)
                default = "yes" if (name == "whole array") == default_in_memory and not cold else ""
                rows.append((r * PETS, name, default, result, ""))
                print(f"{r * PETS:>8,} images, {name:<12}: {result['images_per_s']:8.0f} images/s, "
                      f"peak {result['peak_rss_mib']:6.0f} MiB", flush=True)
        print(f"\n{args.batches} shuffled batches of {args.batch_size} from the training split, read ahead by prefetch; "
              f"one process per row; total {time.perf_counter() - started:.0f} s\n")
        print("| images | feed | default | load + split | feed, images/s | peak RSS | peak RSS less imports |")
        print("|---:|---|---|---:|---:|---:|---:|")
        for images, name, default, result, note in sorted(rows, key=lambda row: (row[1], row[0])):
            if result is None:
                print(f"| {images:,} | {name} | | {note} | | | |")
                continue
            print(f"| {images:,} | {name} | {default} | {result['load_split_s']:.2f} s | {result['images_per_s']:,.0f} | "
                  f"{result['peak_rss_mib']:,.0f} MiB | {result['peak_rss_mib'] - result['imports_rss_mib']:,.0f} MiB |")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
