"""The decoded-image cache on disk: each source is decoded once, resumably, by one process at a time.

The cache folder (``default_cache_dir()``) keeps each source, keyed by the source and the
image size, as three files: ``<key>.images`` (one row of ``3 * S * S`` bytes per image),
``<key>.labels`` (int64) and ``<key>.json`` (the rows committed so far, the class names, the
skipped files, and ``complete`` at the end). Images are decoded in chunks of
``CHUNK_IMAGES``, never the whole source at once: each chunk is appended to the files and
then committed by replacing the JSON atomically, so a crash or Ctrl-C loses at most the
chunk being decoded and the next load of the same source resumes where it stopped. A lock
file lets one process decode a source while the others wait for it. A decoded data set of
at most ``$LATENTFLOWS_IN_MEMORY_BYTES`` (512 MiB) is read into one tensor; a bigger one
stays on disk as ``MappedImages``, read batch by batch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import DataError
from ..storage import write_json
from .dataset import ImageDataset
from .decode import DECODE_ERRORS
from .mapped import MappedImages

try:
    import fcntl
except ImportError:  # Windows: decoding the same source from two processes at once is not guarded
    fcntl = None  # type: ignore[assignment]  # mypy types the name as the module, which is missing here

CACHE_ENTRIES = 8  # most recently used decoded sources kept on disk ($LATENTFLOWS_CACHE_ENTRIES)
CACHE_FORMAT, CACHE_FORMAT_VERSION = "latentflows-image-cache", 2
CHUNK_IMAGES = 256  # images decoded between two commits of the cache entry
IN_MEMORY_BYTES = 512 * 2**20  # decoded data sets up to this size are read into memory ($LATENTFLOWS_IN_MEMORY_BYTES)
_KEY = re.compile(r"[0-9a-f]{24}")


def default_cache_dir() -> Path:
    """The latentflows cache folder: ``$LATENTFLOWS_CACHE``, else ``~/.cache/latentflows``.

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"LATENTFLOWS_CACHE": "/tmp/lf-cache"}):
        ...     print(default_cache_dir())
        /tmp/lf-cache
    """
    return Path(os.environ.get("LATENTFLOWS_CACHE", Path.home() / ".cache" / "latentflows"))


def weights_cache_dir() -> Path:
    """Where pretrained network weights are kept (Inception, EfficientNet-Lite): ``weights`` in
    the latentflows cache.

    Example:
        >>> weights_cache_dir().name
        'weights'
    """
    return default_cache_dir() / "weights"


def in_memory_bytes() -> int:
    """Decoded data sets up to this many bytes are read into memory, bigger ones read from
    disk by batches: ``$LATENTFLOWS_IN_MEMORY_BYTES``, else ``IN_MEMORY_BYTES`` (512 MiB).

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"LATENTFLOWS_IN_MEMORY_BYTES": "0"}):
        ...     print(in_memory_bytes())
        0
    """
    return int(os.environ.get("LATENTFLOWS_IN_MEMORY_BYTES", IN_MEMORY_BYTES))


class _DamagedEntry(Exception):
    """A cache entry that cannot be read: it is decoded again."""


@dataclass
class DecodePlan:
    """What to decode from one source: its items, their labels, and how to read one item.

    What each source (``sources.py``) hands the cache: ``load_or_decode`` decodes the items
    ``CHUNK_IMAGES`` at a time, from the first one its entry has not committed.

    Args:
        name: the source, as its cache entry records it.
        class_names: the classes, in label order.
        labels: one label per item, readable or not.
        chunks: ``(first, count)`` -> the items from ``first`` on, in lists of ``count``.
        decode: ``(item, size)`` -> a ``(size, size, 3)`` uint8 array; an unreadable item raises
            one of ``DECODE_ERRORS`` and is skipped.
        describe: an item's position -> how the item is listed when skipped.
        empty_message: the error when no item is readable.

    Example:
        >>> import tempfile
        >>> values = [10, 20, 30]
        >>> grey = DecodePlan("grey", ["a", "b"], [0, 1, 1],
        ...                   lambda first, count: (values[i : i + count] for i in range(first, len(values), count)),
        ...                   lambda item, size: np.full((size, size, 3), item, np.uint8), str, "no images")
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     data, decoded = load_or_decode("0" * 24, lambda: grey, 8, cache_dir=folder)
        >>> decoded, data.images[:, 0, 0, 0].tolist(), data.class_counts()
        (True, [10, 20, 30], {'a': 1, 'b': 2})
    """

    name: str
    class_names: list[str]
    labels: list[int]
    chunks: Callable[[int, int], Iterator[list]]
    decode: Callable[[Any, int], np.ndarray]
    describe: Callable[[int], str]
    empty_message: str


def load_or_decode(key: str, plan: Callable[[], DecodePlan], image_size: int, *,
                   cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                   progress: bool = False) -> tuple[ImageDataset, bool]:
    """The data set of cache entry ``key``, after decoding from ``plan()`` what the entry lacks:
    (data set, whether anything was decoded now).

    ``plan`` is called only when something is decoded (making it can be slow: ``datasets``
    reads the source's table). Two processes asking for one key take turns; after decoding,
    the least recently used entries beyond ``$LATENTFLOWS_CACHE_ENTRIES`` (8) are removed.

    Args:
        key: the entry's name: 24 hex digits that identify the source and the image size.
        plan: makes the source's ``DecodePlan``.
        image_size: the side of the square images.
        cache_dir: the cache folder; default ``default_cache_dir()``.
        use_cache: read and write the cache (without it the images are decoded into a
            temporary file, deleted once read).
        progress: show a progress bar while decoding.
    """
    directory = Path(cache_dir or default_cache_dir()) if use_cache else Path(tempfile.mkdtemp(prefix="latentflows-"))
    entry = _CacheEntry(directory, key)
    try:
        if use_cache:
            cached = entry.load_complete()
            if cached is not None:
                return cached, False
        with entry.locked():  # another process decoding this source finishes first
            dataset, decoded = entry.fill(plan, image_size, progress)
    finally:
        if not use_cache:  # what was read stays readable: an open file outlives its name (POSIX)
            shutil.rmtree(directory, ignore_errors=True)
    if use_cache and decoded:
        limit = int(os.environ.get("LATENTFLOWS_CACHE_ENTRIES", CACHE_ENTRIES))
        for stale in cache_entries(directory)[limit:]:  # least recently used beyond the limit
            _remove_entry(directory, stale.stem)
    return dataset, decoded


class _CacheEntry:
    """The files of one decode-cache entry, and the decoding that fills them."""

    def __init__(self, directory: Path, key: str):
        self.directory, self.key = directory, key
        self.images, self.labels = directory / f"{key}.images", directory / f"{key}.labels"
        self.state_file, self.lock_file = directory / f"{key}.json", directory / f".{key}.lock"

    # ------------------------------------------------------------------ reading
    def read_state(self) -> dict | None:
        """The committed state (None: nothing committed); ``_DamagedEntry`` if it is unusable."""
        if not self.state_file.exists():
            return None
        try:
            state = json.loads(self.state_file.read_text())
            if state.get("format") != CACHE_FORMAT or state.get("format_version") != CACHE_FORMAT_VERSION:
                raise ValueError("not a latentflows image cache of this version")
            rows, size, next_item = int(state["rows"]), int(state["image_size"]), int(state["next_item"])
            if not (0 <= rows <= next_item <= int(state["items"]) and size >= 1):
                raise ValueError("inconsistent counts")
            if not (isinstance(state["class_names"], list) and isinstance(state["skipped"], list)):
                raise ValueError("bad class names or skipped list")
            bool(state["complete"]), str(state["source"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise _DamagedEntry(f"{self.state_file.name}: {error}") from None
        for path, width in ((self.images, 3 * size * size), (self.labels, 8)):
            held = path.stat().st_size if path.exists() else 0
            if held < rows * width:
                raise _DamagedEntry(f"{path.name} holds {held // width} of the {rows} rows its entry records")
        return state

    def open(self, state: dict) -> ImageDataset:
        """The committed rows as an ``ImageDataset`` (in memory or mapped, by size)."""
        rows, size, classes = int(state["rows"]), int(state["image_size"]), list(state["class_names"])
        labels = torch.from_numpy(np.fromfile(self.labels, dtype="<i8", count=rows).astype(np.int64, copy=False))
        if len(labels) != rows or (rows and not (0 <= int(labels.min()) and int(labels.max()) < len(classes))):
            raise _DamagedEntry(f"{self.labels.name}: labels out of range")
        try:
            mapped = MappedImages(self.images, rows, size)
        except (OSError, DataError) as error:
            raise _DamagedEntry(str(error)) from None
        images: torch.Tensor | MappedImages = mapped
        if mapped.nbytes <= in_memory_bytes():
            images = mapped[:]
        return ImageDataset(images, labels, classes, state["source"], list(state["skipped"]))

    def load_complete(self) -> ImageDataset | None:
        """The data set when the entry is complete and readable (marked as recently used), else None."""
        try:
            state = self.read_state()
            if state is None or not state["complete"]:
                return None
            dataset = self.open(state)
        except _DamagedEntry:
            return None  # decoded again, with a warning, under the lock
        os.utime(self.images)
        return dataset

    # ------------------------------------------------------------------ writing
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the entry's lock file (one process decodes a source at a time)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            yield
            return
        while True:
            handle = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
                current = os.path.samestat(os.fstat(handle), os.stat(self.lock_file))
            except FileNotFoundError:
                current = False
            except BaseException:
                os.close(handle)
                raise
            if current:  # not removed by the process that held it before
                break
            os.close(handle)
        try:
            yield
        finally:
            self.lock_file.unlink(missing_ok=True)  # whoever waits on this file takes a new one
            os.close(handle)

    def fill(self, plan: Callable[[], DecodePlan], size: int, progress: bool) -> tuple[ImageDataset, bool]:
        """Decode what the entry lacks (all, the rest after an interruption, or nothing) and
        open it: (data set, whether anything was decoded). Call it holding ``locked()``."""
        try:
            state = self.read_state()
            if state is not None and state["complete"]:
                dataset = self.open(state)
                os.utime(self.images)
                return dataset, False
        except _DamagedEntry as error:  # a damaged cache entry is rebuilt, never fatal
            warnings.warn(f"ignoring unreadable cache entry {self.images} ({error}); decoding again", stacklevel=4)
            state = None
        source = plan()
        if state is None or not self._continues(state, source, size):
            self.discard()
            state = {"format": CACHE_FORMAT, "format_version": CACHE_FORMAT_VERSION, "source": source.name,
                     "image_size": size, "class_names": source.class_names, "items": len(source.labels),
                     "next_item": 0, "rows": 0, "skipped": [], "complete": False}
        with _CacheWriter(self, state) as writer:
            _decode(source, writer, size, progress)
            if writer.state["rows"] == 0:
                writer.close()
                self.discard()
                raise DataError(source.empty_message)
            state = writer.finish()
        try:
            return self.open(state), True
        except _DamagedEntry as error:
            raise DataError(f"the decoded images of {source.name} cannot be read back: {error}") from None

    @staticmethod
    def _continues(state: dict, source: DecodePlan, size: int) -> bool:
        return (state["source"] == source.name and state["image_size"] == size
                and state["class_names"] == source.class_names and state["items"] == len(source.labels))

    def discard(self) -> None:
        """Remove the entry's files (an open ``MappedImages`` keeps reading its old file)."""
        _remove_entry(self.directory, self.key)


class _CacheWriter:
    """Appends decoded rows to an entry's files; each ``append`` is committed in its JSON."""

    def __init__(self, entry: _CacheEntry, state: dict):
        self.entry, self.state = entry, dict(state)
        self.row_bytes = 3 * state["image_size"] ** 2
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0)
        self.images = os.open(entry.images, flags, 0o666)
        self.labels = os.open(entry.labels, flags, 0o666)
        # bytes after the committed rows belong to a chunk that was never committed
        os.ftruncate(self.images, state["rows"] * self.row_bytes)
        os.ftruncate(self.labels, state["rows"] * 8)

    def __enter__(self) -> "_CacheWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def append(self, rows: np.ndarray, labels: Sequence[int], next_item: int, skipped: Sequence[str]) -> None:
        """Write ``rows`` (uint8 ``(k, 3, S, S)``) and their labels after the committed rows, then
        commit them with ``next_item`` (the first item not yet looked at) and the new skipped items."""
        done = self.state["rows"]
        if len(rows):
            _write_all(self.images, np.ascontiguousarray(rows), done * self.row_bytes)
            _write_all(self.labels, np.asarray(labels, dtype="<i8"), done * 8)
            os.fsync(self.images)  # the rows reach the disk before the JSON that counts them
            os.fsync(self.labels)
        self.state = {**self.state, "rows": done + len(rows), "next_item": next_item,
                      "skipped": [*self.state["skipped"], *skipped]}
        write_json(self.entry.state_file, self.state)

    def finish(self) -> dict:
        self.state = {**self.state, "complete": True}
        write_json(self.entry.state_file, self.state)
        return self.state

    def close(self) -> None:
        for name in ("images", "labels"):
            handle = getattr(self, name)
            if handle is not None:
                os.close(handle)
                setattr(self, name, None)


def _write_all(handle: int, array: np.ndarray, offset: int) -> None:
    view = array.reshape(-1).data.cast("B")  # ndarray.data: the array's memoryview
    while view.nbytes:
        if hasattr(os, "pwrite"):
            written = os.pwrite(handle, view, offset)
        else:
            os.lseek(handle, offset, os.SEEK_SET)
            written = os.write(handle, view)
        view, offset = view[written:], offset + written


def _decode(source: DecodePlan, writer: _CacheWriter, size: int, progress: bool) -> None:
    """Decode the items from the writer's ``next_item`` on, committing every chunk; what was
    decoded before an interruption (Ctrl-C, an error) is committed before it propagates."""
    position = writer.state["next_item"]
    rows: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[str] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(source.labels), initial=position, desc="decoding images", leave=False)
    try:
        for chunk in source.chunks(position, CHUNK_IMAGES):
            for item in chunk:
                try:
                    rows.append(source.decode(item, size))
                    labels.append(source.labels[position])
                except DECODE_ERRORS:
                    skipped.append(source.describe(position))
                position += 1
                if bar is not None:
                    bar.update()
            writer.append(_chw(rows, size), labels, position, skipped)
            rows, labels, skipped = [], [], []
    except BaseException:
        if position > writer.state["next_item"]:
            try:
                writer.append(_chw(rows, size), labels, position, skipped)
            except Exception:
                pass  # the interruption is what the caller needs to see
        raise
    finally:
        if bar is not None:
            bar.close()


def _chw(arrays: list[np.ndarray], size: int) -> np.ndarray:
    """(size, size, 3) arrays -> one (k, 3, size, size) array: the cache's row layout."""
    if not arrays:
        return np.empty((0, 3, size, size), dtype=np.uint8)
    return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))


def _remove_entry(directory: Path, key: str) -> None:
    for suffix in (".images", ".labels", ".json", ".safetensors"):
        (directory / f"{key}{suffix}").unlink(missing_ok=True)


def cache_entries(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """Decoded-image cache entries, most recently used first: each one's ``.images`` file
    (or ``.safetensors``, the single file of an entry written by latentflows 0.3 and before).

    Args:
        cache_dir: the cache folder; default ``default_cache_dir()``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = (Path(folder) / "a.images").write_bytes(b"")
        ...     print([p.name for p in cache_entries(folder)], cache_entries(Path(folder) / "none"))
        ['a.images'] []
    """
    directory = Path(cache_dir or default_cache_dir())
    if not directory.is_dir():
        return []
    files = [*directory.glob("*.images"), *directory.glob("*.safetensors")]
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


def clear_cache(cache_dir: str | os.PathLike | None = None) -> tuple[int, int]:
    """Delete every cache entry (and leftovers of interrupted writes); (files, bytes) removed.

    Args:
        cache_dir: the cache folder; default ``default_cache_dir()``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = (Path(folder) / "a.images").write_bytes(b"1234")
        ...     print(clear_cache(folder), cache_entries(folder))
        (1, 4) []
    """
    directory = Path(cache_dir or default_cache_dir())
    if not directory.is_dir():
        return 0, 0
    files = [*directory.glob("*.images"), *directory.glob("*.labels"), *directory.glob("*.safetensors"),
             *(f for f in directory.glob("*.json") if _KEY.fullmatch(f.stem)),
             *directory.glob(".*.tmp"), *directory.glob(".*.lock")]
    size = sum(f.stat().st_size for f in files)
    for f in files:
        f.unlink(missing_ok=True)
    return len(files), size
