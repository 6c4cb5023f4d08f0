"""The one atomic file writer: a temp file beside the target, fsynced and renamed onto it, so a reader
(or a run killed mid-write) sees the old content or the new, never half of it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomic_with(path: str | Path, write: Callable[[Path], object]) -> Path:
    """The one atomic file writer: `write(tmp)` fills a temp file beside `path` (same directory, so
    the rename cannot cross file systems), which is fsynced and renamed onto `path`. If `write`
    raises, the temp file is removed and `path` keeps its old content (or stays absent). `write`
    may be e.g. `lambda p: torch.save(obj, p)` or `lambda p: save_file(tensors, p, metadata=m)`."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write bytes (or text, as UTF-8) to `path` atomically (see write_atomic_with)."""
    raw = data.encode() if isinstance(data, str) else data
    return write_atomic_with(path, lambda tmp: tmp.write_bytes(raw))
