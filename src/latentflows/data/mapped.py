"""Images bigger than memory: ``MappedImages``, a tensor-like view of a decode-cache file.

Indexing reads just the rows asked for with positioned reads (``os.preadv``, one call per run
of consecutive rows) into an ordinary uint8 tensor, so the process holds only its batches and
the file stays in the operating system's page cache. ``_RowFile`` does that I/O.
"""

from __future__ import annotations

import operator
import os
import threading
import weakref
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import DataError

READ_CHUNK_BYTES = 64 * 2**20  # what MappedImages reads at once when it reads everything
_IOV_MAX = 512  # rows per preadv call (POSIX guarantees at least 1024 buffers)


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
        views = [b.data.cast("B") for b in buffers]  # ndarray.data: the array's memoryview
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
