"""Files written all-or-nothing, and checkpoints.

Every file the suite writes goes through `atomic_write_bytes`: a temporary file in the same folder,
fsync, then rename, so a reader (or a killed writer) never sees half a file. A full disk or a
read-only folder is reported as such (FileWriteError, one line naming the file).

A checkpoint is MAGIC, the sha256 of the payload, then the payload (torch.save of the state). The
digest is checked on every load, so a damaged file is refused instead of resumed from.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

from gptvae.errors import CheckpointError, FileWriteError

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KEYS = frozenset({"step", "model", "optimizer", "scheduler", "rng", "config"})
MODEL = "model.pt"   # a finished run's weights and config: logged as an artifact, so any machine can load the run
MODEL_KEYS = frozenset({"model", "config"})
MAGIC = b"GPTVAE-CHECKPOINT-1\n"
DIGEST = 32   # sha256 bytes after MAGIC


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(handle) on a temporary file in the same folder, fsync, then rename: all or nothing."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_error(path, err) from None
        raise


def write_error(path: Path, err: OSError) -> OSError:
    """A one-line FileWriteError for the failures a user can fix; other OSErrors as they are."""
    reasons = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied"}
    if err.errno not in reasons:
        return err
    return FileWriteError(f"cannot write {path}: {reasons[err.errno]} ({err.strerror}); free space or fix the "
                          f"folder's permissions, then run the same command again (nothing was half-written)")


def atomic_write_text(path: Path, text: str) -> Path:
    atomic_write_bytes(path, lambda h: h.write(text.encode()))
    return Path(path)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def atomic_write_csv(path: Path, frame) -> Path:
    """A pandas frame as CSV with fixed float formatting and line endings, so rewrites are byte-stable."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.10g", lineterminator="\n")
    return atomic_write_text(path, buffer.getvalue())


def save_checkpoint(path: Path, state: dict) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    digest = hashlib.sha256(payload).digest()
    atomic_write_bytes(path, lambda h: (h.write(MAGIC), h.write(digest), h.write(payload)))


def load_checkpoint(path: Path, *, keys=CHECKPOINT_KEYS) -> dict:
    """The state saved by save_checkpoint, after checking its sha256 and that it holds `keys` (a training
    checkpoint's, or MODEL_KEYS for a finished run's weights). A file from before checkpoints carried a
    digest (no MAGIC) is read as it is."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume from")
    try:
        blob = path.read_bytes()
        if blob.startswith(MAGIC):
            digest, payload = blob[len(MAGIC):len(MAGIC) + DIGEST], memoryview(blob)[len(MAGIC) + DIGEST:]
            if hashlib.sha256(payload).digest() != digest:
                raise ValueError("its sha256 does not match the one written with it: the file was damaged")
        else:
            payload = blob
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        missing = keys - set(state)
        if missing:
            raise ValueError(f"missing entries {sorted(missing)}")
        return state
    except Exception as err:
        reason = (str(err).strip().splitlines() or [""])[0][:160]   # torch's messages run to pages
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a gptvae checkpoint ({type(err).__name__}: {reason}). "
            "It was left untouched; move it away to start the run from scratch."
        ) from None
