"""Image sources -> uint8 images, decoded once into an on-disk cache and read back in batches.

``load_images`` accepts a Hugging Face hub id, a parquet file (or a folder of parquet
shards), an image folder with one subfolder per class, or nothing (the embedded Oxford
pets). Hub ids and parquet files go through the same ``datasets`` code path. Every image
is converted to RGB, centre-cropped to a square and resized with Pillow's LANCZOS filter,
then kept as a row of a ``(N, 3, S, S)`` uint8 array.

The decode cache (``default_cache_dir()``) keeps each source, keyed by the source and the
image size, as three files: ``<key>.images`` (one row of ``3 * S * S`` bytes per image),
``<key>.labels`` (int64) and ``<key>.json`` (the rows committed so far, the class names, the
skipped files, and ``complete`` at the end). Images are decoded in chunks of
``CHUNK_IMAGES``, never the whole source at once: each chunk is appended to the files and
then committed by replacing the JSON atomically, so a crash or Ctrl-C loses at most the
chunk being decoded and the next ``load_images`` of the same source resumes where it
stopped. A decoded data set of at most ``$LATENTFLOWS_IN_MEMORY_BYTES`` (512 MiB) is read
into one tensor; a bigger one stays on disk as ``MappedImages``, read batch by batch, so
memory does not grow with the number of images. ``prefetch`` reads the next batches in a
background thread.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import operator
import os
import queue
import re
import shutil
import tempfile
import threading
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError
from .storage import write_json

try:
    import fcntl
except ImportError:  # Windows: decoding the same source from two processes at once is not guarded
    fcntl = None

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
LOADER_VERSION = 2  # bump when decoding or the cache layout changes, so old cache entries are not reused
CACHE_ENTRIES = 8  # most recently used decoded sources kept on disk ($LATENTFLOWS_CACHE_ENTRIES)
CACHE_FORMAT, CACHE_FORMAT_VERSION = "latentflows-image-cache", 2
CHUNK_IMAGES = 256  # images decoded between two commits of the cache entry
IN_MEMORY_BYTES = 512 * 2**20  # decoded data sets up to this size are read into memory ($LATENTFLOWS_IN_MEMORY_BYTES)
READ_CHUNK_BYTES = 64 * 2**20  # what MappedImages reads at once when it reads everything
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, TypeError)
_IOV_MAX = 512  # rows per preadv call (POSIX guarantees at least 1024 buffers)
_KEY = re.compile(r"[0-9a-f]{24}")
T = TypeVar("T")


@dataclass
class ImageDataset:
    """Images as uint8 ``(N, 3, S, S)``, integer labels ``(N,)`` and the class names.

    What every source loads as, and what the run split and the training stages take;
    the shapes are checked on creation. ``images`` is a tensor, or for a data set too big
    to hold in memory a ``MappedImages`` that reads batches from the decode cache (indexing
    either gives a tensor; ``subset`` of mapped images copies nothing).

    Args:
        images: uint8 ``(N, 3, S, S)``: a tensor or ``MappedImages``.
        labels: int64 ``(N,)``.
        class_names: the classes, in label order.
        source: where the images came from.
        skipped: files that could not be read.

    Example:
        >>> import torch
        >>> data = ImageDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 1, 1]), ["cat", "dog"])
        >>> data.class_counts(), data.subset([1, 2]).image_size
        ({'cat': 1, 'dog': 3}, 8)
    """

    images: torch.Tensor | MappedImages
    labels: torch.Tensor
    class_names: list[str]
    source: str = ""
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 of shape (N, 3, S, S), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def mapped(self) -> bool:
        """Whether the images stay on disk (``MappedImages``) rather than in memory."""
        return isinstance(self.images, MappedImages)

    def class_counts(self) -> dict[str, int]:
        """The number of images of each class, by class name."""
        counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
        return dict(zip(self.class_names, counts))

    def subset(self, indices: torch.Tensor | Sequence[int]) -> "ImageDataset":
        """The images at ``indices``, with the same class names and source (mapped images: no copy)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        images = self.images.subset(indices) if isinstance(self.images, MappedImages) else self.images[indices]
        return ImageDataset(images, self.labels[indices], list(self.class_names), self.source)


# ---------------------------------------------------------------------------- images on disk

class MappedImages:
    """uint8 images ``(N, 3, S, S)`` kept in a decode-cache file and read when indexed.

    What ``load_images`` gives for a data set bigger than ``$LATENTFLOWS_IN_MEMORY_BYTES``.
    It answers what the training and evaluation loops ask of an image tensor (``len``,
    ``shape``, ``dtype``, ``device``, ``dim``, ``numel``, ``element_size``), and indexing it
    with an int, a slice, or a list, array or tensor of indices (or a bool mask) returns an
    ordinary uint8 tensor. The rows are read with positioned reads (``os.preadv``) straight
    into that tensor, in file order, a run of consecutive rows in one call, so the process
    holds only the batches asked for: the file stays in the operating system's page cache,
    which is not counted in the process's memory (a memory map would count every page read
    until unmapped). Reads are safe from several threads (see ``prefetch``).

    ``subset`` composes indices without reading; ``pin_memory`` makes every batch come back
    in page-locked memory; ``to``, ``contiguous``, ``clone``, ``cpu`` and ``numpy`` read all the
    images into one tensor (``to`` chunk by chunk, so ``images.to("cuda")`` needs no host copy).

    Args:
        path: the file, ``count`` rows of ``3 * image_size ** 2`` bytes (more bytes after them are ignored).
        count: the number of images.
        image_size: the side of the square images.

    Example:
        >>> import tempfile
        >>> rows = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = (Path(folder) / "a.images").write_bytes(rows.numpy().tobytes())
        ...     images = MappedImages(Path(folder) / "a.images", 5, 8)
        ...     print(images.shape, torch.equal(images[[4, 0, 4]], rows[[4, 0, 4]]),
        ...           torch.equal(images.subset([3, 1, 2])[1:], rows[[1, 2]]), torch.equal(images.to("cpu"), rows))
        torch.Size([5, 3, 8, 8]) True True True
    """

    dtype = torch.uint8
    device = torch.device("cpu")
    is_cuda = False
    ndim = 4

    def __init__(self, path: str | os.PathLike, count: int, image_size: int):
        self._file = _RowFile(Path(path), int(count), int(image_size))
        self._index: np.ndarray | None = None  # rows of the file, in order; None: all of them
        self._pinned = False

    @classmethod
    def _view(cls, file: "_RowFile", index: np.ndarray | None, pinned: bool) -> "MappedImages":
        view = cls.__new__(cls)
        view._file, view._index, view._pinned = file, index, pinned
        return view

    @property
    def path(self) -> Path:
        return self._file.path

    @property
    def shape(self) -> torch.Size:
        side = self._file.image_size
        return torch.Size((len(self), 3, side, side))

    def size(self, dim: int | None = None) -> torch.Size | int:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return 4

    def numel(self) -> int:
        return len(self) * self._file.row_bytes

    def element_size(self) -> int:
        return 1

    @property
    def nbytes(self) -> int:
        return self.numel()

    def is_pinned(self) -> bool:
        return self._pinned

    def __len__(self) -> int:
        return self._file.count if self._index is None else len(self._index)

    def __repr__(self) -> str:
        return f"MappedImages({str(self.path)!r}, shape={tuple(self.shape)})"

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, tuple):  # images[rows, channel, ...]: the rows first, then the rest on the tensor
            if not key:
                return self[:]
            rows = self[key[0]]
            rest = key[1:]
            if not rest:
                return rows
            return rows[rest] if _is_integer(key[0]) else rows[(slice(None), *rest)]
        if key is Ellipsis:
            return self[:]
        if _is_integer(key):
            position, count = operator.index(key), len(self)
            if not -count <= position < count:
                raise IndexError(f"index {position} is out of bounds for {count} images")
            return self._file.gather(self._rows(np.array([position % count])), self._pinned)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if self._index is None and step == 1:
                return self._file.read_range(start, max(start, stop), self._pinned)
            return self._file.gather(self._rows(np.arange(start, stop, step, dtype=np.int64)), self._pinned)
        positions = self._positions(key)
        rows = self._file.gather(self._rows(positions.reshape(-1)), self._pinned)
        return rows.reshape(*positions.shape, *rows.shape[1:])

    def __iter__(self) -> Iterator[torch.Tensor]:
        step = self._chunk_rows()
        for start in range(0, len(self), step):
            yield from self[start : start + step]

    def subset(self, indices: Any) -> "MappedImages":
        """The images at ``indices`` (anything that indexes a tensor's first dimension), read later."""
        rows = self._rows(self._positions(indices).reshape(-1))
        if self._index is None:
            rows = rows.copy()  # not a view of the caller's indices, which may change later
        return MappedImages._view(self._file, rows, self._pinned)

    def pin_memory(self) -> "MappedImages":
        """These images, with every batch read into page-locked memory (fast, asynchronous copies
        to a GPU); nothing is read now, so the data set still need not fit in memory."""
        return MappedImages._view(self._file, self._index, True)

    def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """All the images as one tensor; ``Tensor.to``'s arguments (device, dtype, ...). Read
        ``READ_CHUNK_BYTES`` at a time, so host memory holds one chunk besides the result."""
        probe = torch.empty(0, 3, 1, 1, dtype=torch.uint8).to(*args, **kwargs)
        out = torch.empty(tuple(self.shape), dtype=probe.dtype, device=probe.device)
        memory_format = kwargs.get("memory_format", torch.preserve_format)
        if memory_format != torch.preserve_format:
            out = torch.empty_like(out, memory_format=memory_format)
        step = self._chunk_rows()
        for start in range(0, len(self), step):
            out[start : start + step].copy_(self[start : start + step])
        return out

    def contiguous(self, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        return self.to(memory_format=memory_format)

    def clone(self, memory_format: torch.memory_format = torch.preserve_format) -> torch.Tensor:
        return self.to(memory_format=memory_format)

    def cpu(self) -> torch.Tensor:
        return self.to("cpu")

    def numpy(self) -> np.ndarray:
        return self.to("cpu").numpy()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def __getstate__(self) -> dict:
        file = self._file
        return {"path": str(file.path), "count": file.count, "image_size": file.image_size,
                "index": self._index, "pinned": self._pinned}

    def __setstate__(self, state: dict) -> None:
        self._file = _RowFile(Path(state["path"]), state["count"], state["image_size"])
        self._index, self._pinned = state["index"], state["pinned"]

    def _chunk_rows(self) -> int:
        return max(1, READ_CHUNK_BYTES // self._file.row_bytes)

    def _rows(self, positions: np.ndarray) -> np.ndarray:
        return positions if self._index is None else self._index[positions]

    def _positions(self, key: Any) -> np.ndarray:
        """Integer positions in ``[0, len)`` from an index list, array or tensor, or a bool mask."""
        count = len(self)
        if isinstance(key, torch.Tensor):
            index = key.detach().cpu().numpy()
        elif isinstance(key, slice):
            index = np.arange(*key.indices(count), dtype=np.int64)
        else:
            index = np.asarray(key)
            if index.size == 0:
                index = index.astype(np.int64)
        if index.dtype == np.bool_:
            if index.shape != (count,):
                raise IndexError(f"a mask must have one entry per image ({count}), got shape {index.shape}")
            return np.flatnonzero(index)
        if not np.issubdtype(index.dtype, np.integer):
            raise IndexError(f"images are indexed by integers, slices or bool masks, not {index.dtype}")
        positions = index.astype(np.int64, copy=False)
        if positions.size and (positions.min() < -count or positions.max() >= count):
            raise IndexError(f"index out of bounds for {count} images")
        if positions.size and positions.min() < 0:
            positions = np.where(positions < 0, positions + count, positions)
        return positions


def _is_integer(key: Any) -> bool:
    if isinstance(key, torch.Tensor):
        return key.dim() == 0 and not key.is_floating_point() and key.dtype != torch.bool
    return isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_))


class _RowFile:
    """An open file of equal rows of uint8 images, read with positioned reads (no shared offset)."""

    def __init__(self, path: Path, count: int, image_size: int):
        self.path, self.count, self.image_size = path, count, image_size
        self.row_bytes = 3 * image_size * image_size
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        weakref.finalize(self, os.close, self.fd)
        self._lock = threading.Lock()  # only for the fallback without os.preadv
        size = os.fstat(self.fd).st_size
        if size < count * self.row_bytes:
            raise DataError(f"{path} holds {size // self.row_bytes} images, not {count}")

    def _new(self, rows: int, pinned: bool) -> torch.Tensor:
        side = self.image_size
        return torch.empty((rows, 3, side, side), dtype=torch.uint8, pin_memory=pinned)

    def read_range(self, start: int, stop: int, pinned: bool = False) -> torch.Tensor:
        """Rows ``start`` to ``stop`` in one read."""
        out = self._new(stop - start, pinned)
        if stop > start:
            self._read_into([out.numpy().reshape(-1)], start * self.row_bytes)
        return out

    def gather(self, rows: np.ndarray, pinned: bool = False) -> torch.Tensor:
        """The given rows, in the order given: read in file order, each into its place."""
        count = len(rows)
        out = self._new(count, pinned)
        if count == 0:
            return out
        flat = out.numpy().reshape(count, self.row_bytes)
        order = np.argsort(rows, kind="stable")
        ordered, places = rows[order].tolist(), order.tolist()
        i = 0
        while i < count:  # a run of consecutive rows is one read
            j = i + 1
            while j < count and ordered[j] == ordered[j - 1] + 1 and j - i < _IOV_MAX:
                j += 1
            first = places[i]
            if places[i:j] == list(range(first, first + j - i)):
                buffers = [flat[first : first + j - i].reshape(-1)]
            else:
                buffers = [flat[place] for place in places[i:j]]
            self._read_into(buffers, ordered[i] * self.row_bytes)
            i = j
        return out

    def _read_into(self, buffers: list[np.ndarray], offset: int) -> None:
        views = [memoryview(b).cast("B") for b in buffers]
        done = os.preadv(self.fd, views, offset) if hasattr(os, "preadv") else 0
        if done == sum(v.nbytes for v in views):
            return
        # a short read (a signal, or over 2 GiB in one call) or no preadv: finish buffer by buffer
        position = offset
        for view in views:
            start = min(done, view.nbytes)
            done -= start
            while start < view.nbytes:
                got = self._pread(view[start:], position + start)
                if got == 0:
                    raise DataError(f"{self.path} ended early: it holds fewer images than its cache entry records")
                start += got
            position += view.nbytes

    def _pread(self, view: memoryview, offset: int) -> int:
        if hasattr(os, "preadv"):
            return os.preadv(self.fd, [view], offset)
        with self._lock:
            os.lseek(self.fd, offset, os.SEEK_SET)
            data = os.read(self.fd, view.nbytes)
        view[: len(data)] = data
        return len(data)


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate over ``items`` while a background thread gets up to ``depth`` next items ready.

    For batches read from disk (``MappedImages``) or cut from big tensors: reading the next
    batch overlaps with the work on this one (the reads and most torch operations release
    the GIL). The order is kept; an exception raised by ``items`` is raised here, after the
    items before it; when the loop stops early (``break``, an exception, or the iterator
    being closed or collected) the thread stops too, after the item it is getting, and
    ``items``'s iterator is closed. ``depth`` 0 iterates in this thread.

    Args:
        items: any iterable, e.g. ``Batches``.
        depth: how many items may wait, ready.

    Example:
        >>> list(prefetch(range(5)))
        [0, 1, 2, 3, 4]
        >>> for batch in prefetch(iter(range(10**9)), depth=4):
        ...     if batch == 2:
        ...         break
    """
    if depth < 0:
        raise ValueError(f"depth must be at least 0, got {depth}")
    if depth == 0:
        yield from items
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = None
        try:
            iterator = iter(items)
            for item in iterator:
                if not put((True, item)):
                    return
            put((True, end))
        except BaseException as error:  # handed to the consumer, raised there
            put((False, error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="latentflows-prefetch", daemon=True)
    _PREFETCHING[thread] = stop
    thread.start()
    try:
        while True:
            ok, item = ready.get()
            if not ok:
                raise item
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()
        _PREFETCHING.pop(thread, None)


_PREFETCHING: dict[threading.Thread, threading.Event] = {}  # the running prefetch threads and their stop signals


@atexit.register
def _stop_prefetching() -> None:
    """Stop the threads of prefetches left unfinished (and unclosed) before the interpreter exits:
    a thread still in torch code then aborts the process."""
    for thread, stop in list(_PREFETCHING.items()):
        stop.set()
        thread.join(timeout=10)


# ---------------------------------------------------------------------------- decoding

def to_rgb_array(image: Image.Image, size: int) -> np.ndarray:
    """Any Pillow image -> (size, size, 3) uint8: orientation fixed, RGB, centre crop, LANCZOS.

    The one decoding path of every source, so that all images are prepared alike;
    transparency is composited on white and 16-bit or float greyscale is rescaled.

    Args:
        image: an open Pillow image.
        size: the side of the square output.

    Example:
        >>> image = Image.new("L", (8, 4), 128)
        >>> array = to_rgb_array(image, 2)
        >>> array.shape, array.dtype.name, array[0, 0].tolist()
        ((2, 2, 3), 'uint8', [128, 128, 128])
    """
    if image.format == "JPEG" and max(image.size) > 4 * size:
        image.draft("RGB", (2 * size, 2 * size))  # let libjpeg decode a downscaled image
    image = ImageOps.exif_transpose(image)
    image = _as_rgb(image)
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))
    return np.asarray(image, dtype=np.uint8)


def _as_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit or float greyscale: Pillow's convert("RGB") clips, so rescale to 8 bits first.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes | str | Path, size: int) -> np.ndarray:
    """Decode an encoded image (bytes or a file path) with ``to_rgb_array``.

    Args:
        data: the encoded image's bytes, or the path of an image file.
        size: the side of the square output.

    Example:
        >>> buffer = io.BytesIO()
        >>> Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(buffer, "PNG")
        >>> decode_image(buffer.getvalue(), 2)[0, 0].tolist()   # fully transparent -> white
        [255, 255, 255]
    """
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with Image.open(source) as image:
        return to_rgb_array(image, size)


# ---------------------------------------------------------------------------- sources

def embedded_files() -> list[Path]:
    """The parquet shards of the embedded Oxford pets data, sorted; an error if they are missing.

    Example:
        >>> all(f.suffix == ".parquet" and f.parent == EMBEDDED_DIR for f in embedded_files())
        True
    """
    files = sorted(EMBEDDED_DIR.glob("*.parquet"))
    if not files:
        raise DataError(f"the embedded data is missing from {EMBEDDED_DIR}: reinstall latentflows")
    return files


def load_images(source: str | os.PathLike | None = None, *, label_field: str | None = None,
                image_field: str = "image", image_size: int = 64, cache_dir: str | os.PathLike | None = None,
                use_cache: bool = True, progress: bool = False) -> ImageDataset:
    """Load any supported source as an ``ImageDataset`` (see the module docstring).

    ``label_field`` picks the column that gives the class for parquet and hub data; by
    default ``dog`` (cat/dog, as in the seed notebook) when present, else ``label``.
    Unreadable images are skipped with a warning and listed in ``skipped``. The images
    are a tensor when they take at most ``$LATENTFLOWS_IN_MEMORY_BYTES`` (512 MiB), else
    ``MappedImages`` read from the cache file batch by batch. An interrupted decoding
    resumes where it stopped; two processes decoding the same source take turns.

    Args:
        source: a hub id, a parquet file or folder of shards, an image folder, or None (embedded).
        label_field: the column with the class (parquet and hub data).
        image_field: the column with the images (parquet and hub data).
        image_size: the side of the square images, at least 8.
        cache_dir: the decoded-image cache; default ``default_cache_dir()``.
        use_cache: read and write the cache (without it the images are decoded into a
            temporary file, deleted once read).
        progress: show a progress bar while decoding.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     for name, grey in (("cat", 0), ("dog", 255)):
        ...         (Path(folder) / name).mkdir()
        ...         Image.new("RGB", (10, 10), (grey,) * 3).save(Path(folder) / name / "a.png")
        ...     data = load_images(folder, image_size=8, use_cache=False)
        >>> data.images.shape, data.class_names, data.labels.tolist()
        (torch.Size([2, 3, 8, 8]), ['cat', 'dog'], [0, 1])
    """
    if image_size < 8:
        raise DataError(f"image size must be at least 8 pixels, got {image_size}")
    kind, files, name = _resolve(source)
    key = _cache_key(kind, name, files, image_size, image_field, label_field)
    directory = Path(cache_dir or default_cache_dir()) if use_cache else Path(tempfile.mkdtemp(prefix="latentflows-"))
    entry = _CacheEntry(directory, key)
    try:
        if use_cache:
            cached = entry.load_complete()
            if cached is not None:
                return cached

        def plan() -> _Plan:
            if kind == "folder":
                return _folder_plan(Path(name))
            return _hf_plan(kind, name, files, image_field, label_field)

        with entry.locked():  # another process decoding this source finishes first
            dataset, decoded = entry.fill(plan, image_size, progress)
    finally:
        if not use_cache:  # what was read stays readable: an open file outlives its name (POSIX)
            shutil.rmtree(directory, ignore_errors=True)
    if decoded and dataset.skipped:
        shown = ", ".join(dataset.skipped[:5]) + (" ..." if len(dataset.skipped) > 5 else "")
        warnings.warn(f"skipped {len(dataset.skipped)} unreadable image(s): {shown}", stacklevel=2)
    if use_cache and decoded:
        limit = int(os.environ.get("LATENTFLOWS_CACHE_ENTRIES", CACHE_ENTRIES))
        for stale in cache_entries(directory)[limit:]:  # least recently used beyond the limit
            _remove_entry(directory, stale.stem)
    return dataset


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


def _resolve(source: str | os.PathLike | None) -> tuple[str, list[Path], str]:
    """(kind, files, name): kind is 'parquet', 'folder' or 'hub'."""
    if source is None:
        return "parquet", embedded_files(), "embedded:oxford-pets-64"
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".parquet":
            raise DataError(f"{path}: a data file must be .parquet; for images, pass the folder that holds "
                            "one subfolder per class")
        return "parquet", [path.resolve()], str(path.resolve())
    if path.is_dir():
        shards = sorted(path.glob("*.parquet"))
        if shards:
            return "parquet", [p.resolve() for p in shards], str(path.resolve())
        return "folder", [], str(path.resolve())
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.suffix:
        return "hub", [], text
    raise DataError(f"data source {text!r} is neither an existing file or folder nor a hub id like 'owner/name'")


def _cache_key(kind: str, name: str, files: list[Path], image_size: int, image_field: str,
               label_field: str | None) -> str:
    identity: list = [LOADER_VERSION, kind, name, image_size, image_field, label_field]
    if kind == "folder":
        files = sorted(p for p in Path(name).rglob("*") if p.is_file())
    identity += [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------- the cache

class _DamagedEntry(Exception):
    """A cache entry that cannot be read: it is decoded again."""


@dataclass
class _Plan:
    """What to decode: the items of a source, their labels, and how to read one."""

    name: str
    class_names: list[str]
    labels: list[int]  # one per item, readable or not
    chunks: Callable[[int], Iterator[list]]  # the items from a given one on, CHUNK_IMAGES at a time
    decode: Callable[[Any, int], np.ndarray]  # (item, size) -> (size, size, 3) uint8
    describe: Callable[[int], str]  # how a skipped item is listed
    empty_message: str  # the error when no item is readable


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
            images = mapped._file.read_range(0, rows)
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

    def fill(self, plan: Callable[[], _Plan], size: int, progress: bool) -> tuple[ImageDataset, bool]:
        """Decode what the entry lacks (all, the rest after an interruption, or nothing) and
        open it: (data set, whether anything was decoded). Call it holding ``locked()``."""
        try:
            state = self.read_state()
            if state is not None and state["complete"]:
                dataset = self.open(state)
                os.utime(self.images)
                return dataset, False
        except _DamagedEntry as error:  # a damaged cache entry is rebuilt, never fatal
            warnings.warn(f"ignoring unreadable cache entry {self.images} ({error}); decoding again", stacklevel=3)
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
    def _continues(state: dict, source: _Plan, size: int) -> bool:
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
    view = memoryview(array.reshape(-1)).cast("B")
    while view.nbytes:
        if hasattr(os, "pwrite"):
            written = os.pwrite(handle, view, offset)
        else:
            os.lseek(handle, offset, os.SEEK_SET)
            written = os.write(handle, view)
        view, offset = view[written:], offset + written


def _decode(source: _Plan, writer: _CacheWriter, size: int, progress: bool) -> None:
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
        for chunk in source.chunks(position):
            for item in chunk:
                try:
                    rows.append(source.decode(item, size))
                    labels.append(source.labels[position])
                except _DECODE_ERRORS:
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


def _folder_plan(root: Path) -> _Plan:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subfolders found; put each class's images in its own subfolder "
                        f"(e.g. {root}/cat/*.jpg, {root}/dog/*.jpg)")
    entries = [(f, label) for label, name in enumerate(classes)
               for f in sorted((root / name).rglob("*"))
               if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")]

    def chunks(start: int) -> Iterator[list]:
        for first in range(start, len(entries), CHUNK_IMAGES):
            yield [path for path, _ in entries[first : first + CHUNK_IMAGES]]

    return _Plan(str(root), classes, [label for _, label in entries], chunks, lambda path, size: decode_image(path, size),
                 lambda i: str(entries[i][0].relative_to(root)),
                 f"{root}: no readable images in {', '.join(classes)} (files ending in {', '.join(sorted(IMAGE_EXTENSIONS))})")


def _hf_plan(kind: str, name: str, files: list[Path], image_field: str, label_field: str | None) -> _Plan:
    import datasets  # imported here: it is slow to import and only needed on a cache miss

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        if kind == "parquet":
            table = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
        else:
            table = datasets.load_dataset(name, split="train")
    except Exception as error:
        raise DataError(f"could not load {name}: {error}") from error
    label_field = label_field or ("dog" if "dog" in table.column_names else "label")
    missing = [f for f in (image_field, label_field) if f not in table.column_names]
    if missing:
        raise DataError(f"{name}: missing field(s) {missing}; its fields are {table.column_names} "
                        "(choose others with --image-field / --label-field)")
    labels, class_names = _labels(table, label_field)
    if any(not 0 <= label < len(class_names) for label in labels):
        raise DataError(f"{name}: field {label_field!r} has rows without a class (-1); choose another --label-field")
    # Arrow rows, CHUNK_IMAGES at a time: an image column gives {"bytes", "path"} undecoded, and
    # the table stays memory-mapped on disk (datasets' cache), never read whole.
    images = table.select_columns([image_field]).with_format("arrow")

    def chunks(start: int) -> Iterator[list]:
        for first in range(start, len(images), CHUNK_IMAGES):
            yield images[first : first + CHUNK_IMAGES].column(0).to_pylist()

    return _Plan(name, class_names, labels, chunks, lambda item, size: decode_image(_image_bytes(item), size),
                 lambda i: f"row {i}",
                 f"{name}: none of its {len(table)} rows holds a readable image in field {image_field!r}")


def _image_bytes(item: Any) -> bytes | bytearray | Path:
    if isinstance(item, dict):
        if item.get("bytes"):
            return item["bytes"]
        if item.get("path"):
            return Path(item["path"])
    if isinstance(item, (bytes, bytearray)):
        return item
    if isinstance(item, Image.Image):
        buffer = io.BytesIO()
        item.save(buffer, "PNG")
        return buffer.getvalue()
    raise TypeError(f"unsupported image value of type {type(item).__name__}")


def _labels(table: Any, field_name: str) -> tuple[list[int], list[str]]:
    import datasets

    feature = table.features[field_name]
    values = table[field_name]
    if isinstance(feature, datasets.ClassLabel):
        return list(values), list(feature.names)
    if feature.dtype == "bool":
        names = ["cat", "dog"] if field_name == "dog" else [f"not_{field_name}", field_name]
        return [int(bool(v)) for v in values], names
    if any(v is None for v in values):
        raise DataError(f"field {field_name!r} has empty values; choose another --label-field")
    classes = sorted(set(values), key=lambda v: (str(type(v)), v))
    index = {v: i for i, v in enumerate(classes)}
    return [index[v] for v in values], [str(v) for v in classes]
