"""Files written all-or-nothing, and checkpoints.

Every file the suite writes goes through `atomic_write_bytes`: a temporary file in the same folder,
fsync, then rename, so a reader (or a killed writer) never sees half a file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

from gptvae.errors import CheckpointError

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KEYS = frozenset({"step", "model", "optimizer", "scheduler", "rng", "config"})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(handle) on a temporary file in the same folder, fsync, then rename: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> Path:
    atomic_write_bytes(path, lambda h: h.write(text.encode()))
    return Path(path)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def atomic_write_csv(path: Path, frame) -> None:
    """A pandas frame as CSV with fixed float formatting and line endings, so rewrites are byte-stable."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.10g", lineterminator="\n")
    atomic_write_text(path, buffer.getvalue())


def save_checkpoint(path: Path, state: dict) -> None:
    import torch

    atomic_write_bytes(path, lambda h: torch.save(state, h))


def load_checkpoint(path: Path) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing = CHECKPOINT_KEYS - set(state)
        if missing:
            raise ValueError(f"missing entries {sorted(missing)}")
        return state
    except Exception as err:
        reason = (str(err).strip().splitlines() or [""])[0][:160]   # torch's messages run to pages
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a gptvae checkpoint ({type(err).__name__}: {reason}). "
            "It was left untouched; move it away to start the run from scratch."
        ) from None
