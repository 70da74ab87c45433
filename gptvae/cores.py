"""Sharing this machine's cores between the training processes on it.

Each training process registers in a folder of lock files (one per process, locked while it lives)
and takes usable cores // processes registered, at least one thread. Two sweeps side by side then
run at the speed of one each instead of fighting over twice the threads. No torch at import.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def trainers_dir() -> Path:
    """Where the training processes of this machine register (one locked file each)."""
    root = os.environ.get("GPTVAE_RUNTIME_DIR") or Path(tempfile.gettempdir()) / f"gptvae-{os.getuid()}"
    return Path(root) / "trainers"


def live_trainers(folder: Path, *, exclude: Path | None = None) -> int:
    """Registered processes still holding their file's lock; files of dead ones are removed."""
    live = 0
    for entry in folder.glob("*.lock"):
        if entry == exclude:
            continue
        try:
            with open(entry, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)   # got it: its owner is gone
            entry.unlink(missing_ok=True)
        except BlockingIOError:
            live += 1
        except FileNotFoundError:
            pass
    return live


@contextmanager
def core_share(threads: int | None = None):
    """Register this process as a trainer and set torch's threads to its share of the cores:
    `threads` if given (an executor that knows its jobs), else usable cores // trainers running now
    (this one included), at least 1. Yields the thread count; unregisters on exit."""
    import torch

    folder = trainers_dir()
    folder.mkdir(parents=True, exist_ok=True)
    mine = folder / f"{os.getpid()}.lock"
    staging = folder / f"{os.getpid()}.staging"   # locked before it is visible as *.lock: never seen unlocked
    with open(staging, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        os.replace(staging, mine)
        try:
            share = threads or max(1, usable_cores() // (1 + live_trainers(folder, exclude=mine)))
            torch.set_num_threads(share)
            yield share
        finally:
            mine.unlink(missing_ok=True)
