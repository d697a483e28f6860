"""Ctrl-C during training: never lost, always raised out of the training loop.

Python delivers SIGINT's ``KeyboardInterrupt`` wherever the main thread happens to be; in a
finalizer it is printed as "Exception ignored" and dropped. ``remembered_interrupts`` keeps it
until the trainer raises it at the next step (``raise_pending_interrupt``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_PENDING_INTERRUPT = threading.Event()


def _remember_and_raise(signum: int, frame: object) -> None:
    _PENDING_INTERRUPT.set()
    raise KeyboardInterrupt


def raise_pending_interrupt() -> None:
    """Raise the ``KeyboardInterrupt`` of a Ctrl-C that Python dropped (see ``remembered_interrupts``)."""
    if _PENDING_INTERRUPT.is_set():
        _PENDING_INTERRUPT.clear()
        raise KeyboardInterrupt


@contextlib.contextmanager
def remembered_interrupts() -> Iterator[None]:
    """While training, a Ctrl-C raises ``KeyboardInterrupt`` as usual and is also remembered
    until it has been raised out of the training loop.

    Python delivers the signal's exception wherever the main thread is; when that is a
    finalizer (an old status bar's ``__del__``, a garbage collection), it prints "Exception
    ignored" and training goes on, so a Ctrl-C would be lost now and then. The trainer checks
    the remembered one before every step. Only Python's default handler is replaced (and
    restored afterwards); outside the main thread nothing changes.

    Example:
        >>> with remembered_interrupts():
        ...     raise_pending_interrupt()   # nothing pending: returns
    """
    previous = None
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous = signal.signal(signal.SIGINT, _remember_and_raise)
    try:
        yield
    except KeyboardInterrupt:
        _PENDING_INTERRUPT.clear()  # it reached the caller
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
