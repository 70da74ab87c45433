"""Where a model runs, in what precision, and on how many of this machine's cores."""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch


def pick_device(name: str | None = None) -> torch.device:
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_device(model) -> torch.device:
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return param.device if param is not None else torch.device("cpu")


def bf16_is_fast(device: torch.device) -> bool:
    """bf16 autocast pays on CUDA and on CPUs with AMX or AVX512-BF16 (about 2x per step here)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())


def autocast_context(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


# sharing this machine's cores between the training processes on it

def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def trainers_dir() -> Path:
    """Where the training processes of this machine register (one locked file each)."""
    return Path(os.environ.get("GPTVAE_RUNTIME_DIR") or Path(tempfile.gettempdir()) / f"gptvae-{os.getuid()}") / "trainers"


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
    with open(mine, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            share = threads or max(1, usable_cores() // (1 + live_trainers(folder, exclude=mine)))
            torch.set_num_threads(share)
            yield share
        finally:
            mine.unlink(missing_ok=True)
