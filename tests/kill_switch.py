"""Imported by a training subprocess (``latentflows train --import kill_switch``) to stop it
at an exact moment, so that resuming can be tested at any step of either stage, and in the
middle of writing a checkpoint.

``LATENTFLOWS_TEST_KILL="step:N:SIGNAL"`` sends the process SIGNAL (SIGKILL or SIGINT) just
before its N-th training step (counted over both stages, from 1);
``"save:N:SIGNAL"`` sends it after the N-th checkpoint's temporary file is written and
before it is renamed into place. ``LATENTFLOWS_TEST_STEPS=FILE`` writes one line per step
(the stage) to FILE. Unset, nothing changes.
"""

import os
import signal

from latentflows import storage
from latentflows.training import Trainer

_moment = os.environ.get("LATENTFLOWS_TEST_KILL")
_log = os.environ.get("LATENTFLOWS_TEST_STEPS")
_counts = {"step": 0, "save": 0}


def _reached(kind: str) -> None:
    _counts[kind] += 1
    if _moment:
        wanted, count, name = _moment.split(":")
        if wanted == kind and int(count) == _counts[kind]:
            os.kill(os.getpid(), getattr(signal, name))


_train_step = Trainer.train_step


def train_step(self, batch):
    if _log:
        with open(_log, "a") as stream:
            stream.write(f"{self.stage}\n")
    _reached("step")
    return _train_step(self, batch)


_save_file = storage.save_file


def save_file(tensors, path, metadata=None):
    _save_file(tensors, path, metadata=metadata)
    if metadata and metadata.get("format") == "latentflows-checkpoint":
        _reached("save")


Trainer.train_step = train_step
storage.save_file = save_file
