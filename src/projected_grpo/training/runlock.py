"""One writer per directory: an OS lock on DIR/writer.lock, held for the life of the process that writes.

Two processes resuming one run dir both truncate and append its logs (a sweep killed with SIGKILL
leaves its workers training; the same command again started a second writer on the same run, and
metrics.jsonl held steps twice). A status file cannot tell a live writer from a dead one; a lock the
kernel holds can: `fcntl.flock` is released when its holder exits, however it dies, so a crashed
run's lock never blocks its resume, and a live one always does.

The lock file holds the holder's pid (for the refusal's message only; the flock is what counts).
It is removed when the lock is released, so a finished run dir holds no lock file. Because the file
can be removed, acquiring checks that the locked file is still the one at the path (else another
process removed it in between and the lock is taken again on the new file).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from projected_grpo.errors import UserError

LOCK = "writer.lock"


class Busy(UserError):
    """Another live process holds the directory's lock."""


class RunLock:
    """The writer's lock on one directory; `acquire` creates the directory when missing
    (`made_dir` says whether it did, so a failed set-up can remove it again)."""

    def __init__(self, directory: Path, what: str = "run"):
        self.dir, self.what = Path(directory), what
        self.path = self.dir / LOCK
        self.fd: int | None = None
        self.made_dir = False

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise Busy naming the directory and the holder's pid."""
        if self.held:
            return self
        self.made_dir = not self.dir.is_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise Busy(f"{self.dir}: another process (pid {holder}) is writing this {self.what} "
                           f"(it holds {self.path}); wait for it to end or stop it, then run the "
                           "command again") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)                      # removed by its last holder meanwhile: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and unlock; then remove the directory if `acquire` made it and
        nothing else is in it (a set-up that failed)."""
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if _same_file(self.fd, self.path):
                self.path.unlink()
        os.close(self.fd)
        self.fd = None
        if self.made_dir:
            with contextlib.suppress(OSError):
                self.dir.rmdir()


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


@contextlib.contextmanager
def held(directory: Path, what: str = "run") -> Iterator[RunLock]:
    """The lock on `directory` for the body's duration."""
    lock = RunLock(directory, what).acquire()
    try:
        yield lock
    finally:
        lock.release()


def holder(directory: Path) -> str | None:
    """The pid (as its lock file records it) of a live process holding `directory`'s lock, or None.
    Creates nothing; a lock file left by a dead process is not held."""
    try:
        fd = os.open(Path(directory) / LOCK, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.read(fd, 32).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)                          # closing also unlocks, when the flock was ours
    return None
