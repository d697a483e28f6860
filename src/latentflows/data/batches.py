"""Mini-batches for the training and evaluation loops (``Batches``), and ``prefetch``, which
gets the next batches ready in a background thread while the current one is used."""

from __future__ import annotations

import atexit
import copy
import math
import queue
import threading
from typing import Iterable, Iterator, Sequence, TypeVar

import torch
from torch import Tensor

from .mapped import MappedImages

T = TypeVar("T")


class Batches:
    """Mini-batches of tensors (in memory, or images read from disk), reshuffled each epoch
    by a seeded generator.

    Slicing tensors that are already in memory costs microseconds, where a DataLoader
    with per-item collation costs far more than the small models it feeds. A data set
    bigger than memory (``data.MappedImages``) is read a batch at a time, ahead of the step.

    Args:
        tensors: tensors with the same first dimension (e.g. images and labels), or images
            read from disk (``data.MappedImages``).
        batch_size: rows per batch.
        shuffle: a new seeded order every epoch.
        seed: seeds the order.
        drop_last: leave out the last, smaller batch.
        prefetch: batches read ahead in a background thread (default: 2 for data read from
            disk, none for tensors in memory, where cutting a batch costs microseconds).

    Example:
        >>> import torch
        >>> [len(batch[0]) for batch in Batches([torch.arange(10)], 4)]
        [4, 4, 2]
    """

    def __init__(self, tensors: Sequence[Tensor | MappedImages], batch_size: int, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False, prefetch: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.tensors, self.batch_size, self.shuffle, self.drop_last = list(tensors), batch_size, shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.size = len(self.tensors[0])
        self.rank, self.world_size = 0, 1
        # batches read from disk (memory-mapped data sets) are read ahead in a thread
        on_disk = any(not isinstance(t, Tensor) for t in self.tensors)
        self.prefetch = prefetch if prefetch is not None else (2 if on_disk else 0)

    def sharded(self, rank: int, world_size: int) -> "Batches":
        """The same batches (same order, same generator), of which process ``rank`` of
        ``world_size`` gets a contiguous share of each: the global batch is ``batch_size``.

        Example:
            >>> import torch
            >>> [batch[0].tolist() for batch in Batches([torch.arange(6)], 4).sharded(1, 2)]
            [[2, 3], [5]]
        """
        if self.shuffle and self.drop_last and self.batch_size % world_size:
            raise ValueError(f"a batch of {self.batch_size} does not split evenly over {world_size} processes; "
                             f"use a batch size that is a multiple of {world_size}")
        shard = copy.copy(self)
        shard.rank, shard.world_size = rank, world_size
        return shard

    def __len__(self) -> int:
        if self.drop_last and self.size >= self.batch_size:
            return self.size // self.batch_size
        return math.ceil(self.size / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        return prefetch(self._batches(), self.prefetch)

    def _batches(self) -> Iterator[tuple[Tensor, ...]]:
        order = torch.randperm(self.size, generator=self.generator) if self.shuffle else None
        if order is not None:  # drawn on the CPU (the same order on every device), moved once per epoch
            order = order.to(self.tensors[0].device)
        for i in range(len(self)):
            start, stop = i * self.batch_size, min((i + 1) * self.batch_size, self.size)
            if self.world_size > 1:  # this process's share of the global batch
                share = -(-(stop - start) // self.world_size)
                start, stop = min(start + self.rank * share, stop), min(start + (self.rank + 1) * share, stop)
            if order is None:
                yield tuple(t[start:stop] for t in self.tensors)
            else:
                index = order[start:stop]
                yield tuple(t[index] for t in self.tensors)


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
