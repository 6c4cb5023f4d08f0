"""Run the trusted harness (env/harness.py) on one job in an isolated, resource-limited process.

Backends:
- `bwrap` (bubblewrap): new net/pid/ipc/uts namespaces, read-only binds of only /usr and the
  Python install, tmpfs /tmp, a private writable cwd (/sandbox), cleared environment, killed with
  its whole pid namespace when it ends or times out. Run as root, the program also drops to a
  per-slot unprivileged uid (setpriv) so RLIMIT_NPROC bounds fork bombs.
- `fallback`: plain subprocess + rlimits + new session (killpg on exit/timeout). No file-system
  or network isolation; chosen only when bwrap is missing or fails its probe, with ONE warning.

rlimits (address space, CPU seconds, file size, processes) are applied with `prlimit`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HARNESS_SOURCE = Path(__file__).with_name("harness.py")
SANDBOX_CWD = "/sandbox"
SLOT_UID_BASE = 200_000  # root only: sandboxes run as uid SLOT_UID_BASE + slot
SLOTS = 512
WARNING = ("\n" + "!" * 78 + "\nWARNING: bubblewrap (bwrap) is unavailable or failed its probe: {why}\n"
           "Graded programs run WITHOUT file-system/network isolation (rlimits + new session only).\n"
           "Install bubblewrap (apt-get install bubblewrap) before grading untrusted code.\n"
           + "!" * 78 + "\n")


@dataclass
class SandboxConfig:
    """Resource limits and backend choice for one sandboxed program."""

    timeout_s: float = 10.0  # wall-clock limit per process (CPU limit is this + 1 s)
    memory_mb: int = 1024  # address-space limit (RLIMIT_AS)
    file_size_mb: int = 16  # largest file the program may write, stdout included (RLIMIT_FSIZE)
    max_procs: int = 32  # processes/threads per sandbox (RLIMIT_NPROC; see module doc)
    output_limit: int = 1 << 20  # bytes of stdout/stderr kept for the grader
    backend: str = "auto"  # "auto" (bwrap if it works, else fallback), "bwrap" or "fallback"


@dataclass
class RunResult:
    """What came back from one sandboxed run."""

    returncode: int | None  # exit status (negative: killed by signal); None if never started
    timed_out: bool  # the wall timeout fired and the process tree was killed
    seconds: float  # wall time of the run
    stdout: bytes  # the program's stdout (first output_limit bytes)
    stderr: bytes  # the program's stderr (first output_limit bytes)
    frames: list[dict] = field(default_factory=list)  # harness frames carrying this run's nonce
    bad_frames: int = 0  # channel lines without the nonce or not JSON (tampering or truncation)
    files: dict[str, bytes] = field(default_factory=dict)  # collected regular files from the cwd
    backend: str = ""  # "bwrap" or "fallback"


def python_executable() -> str:
    """The real interpreter (venvs are symlinks into the base install)."""
    return os.path.realpath(sys.executable)


@functools.lru_cache(maxsize=None)
def resolve_backend(requested: str = "auto") -> str:
    """'bwrap' when bubblewrap works here, else 'fallback' (warning printed once per process)."""
    if requested == "fallback":
        return "fallback"
    why = ""
    if shutil.which("bwrap") is None:
        why = "bwrap not found on PATH"
    else:
        probe = Sandbox(SandboxConfig(timeout_s=20, backend="bwrap"), _probe=True)
        res = probe.run({"kind": "expected", "setup": "", "exprs": ["1 + 1"]})
        if not any(f.get("k") == "out" and f.get("v") == 2 for f in res.frames):
            why = f"probe failed (rc={res.returncode}): {res.stderr[-300:].decode(errors='replace')}"
    if not why:
        return "bwrap"
    if requested == "bwrap":
        raise RuntimeError(f"bwrap backend requested but unusable: {why}")
    print(WARNING.format(why=why), file=sys.stderr, flush=True)
    return "fallback"


class Sandbox:
    """Runs harness jobs; thread-safe (each run gets its own temp dir and uid slot)."""

    def __init__(self, cfg: SandboxConfig | None = None, _probe: bool = False) -> None:
        self.cfg = cfg or SandboxConfig()
        self.backend = "bwrap" if _probe else resolve_backend(self.cfg.backend)
        self.harness = HARNESS_SOURCE.read_text()
        self.python = python_executable()
        self.is_root = os.geteuid() == 0 and shutil.which("setpriv") is not None
        self._slots: queue.Queue[int] = queue.Queue()
        offset = (os.getpid() % 64) * SLOTS  # separate uid ranges for concurrent graders
        for i in range(SLOTS):
            self._slots.put(SLOT_UID_BASE + offset + i)

    def _prlimit(self) -> list[str]:
        c = self.cfg
        cpu = int(c.timeout_s) + 1
        lim = [f"--as={c.memory_mb << 20}", f"--cpu={cpu}", f"--fsize={c.file_size_mb << 20}",
               "--core=0"]
        if self.backend == "bwrap" and self.is_root:
            lim.append(f"--nproc={c.max_procs}")  # counted for the slot uid only
        return ["prlimit", *lim, "--"]

    def _bwrap(self, work: str, uid: int) -> list[str]:
        prefix = os.path.realpath(sys.base_prefix)
        cmd = ["bwrap", "--die-with-parent", "--unshare-net", "--unshare-pid", "--unshare-ipc",
               "--unshare-uts", "--unshare-cgroup-try", "--ro-bind", "/usr", "/usr"]
        for link in ("/bin", "/lib", "/lib64", "/sbin"):
            if os.path.islink(link):
                cmd += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                cmd += ["--ro-bind", link, link]
        if not prefix.startswith("/usr/"):
            cmd += ["--ro-bind", prefix, prefix]
        pydir = os.path.dirname(self.python)
        if not (pydir.startswith("/usr/") or pydir.startswith(prefix + "/")):
            cmd += ["--ro-bind", pydir, pydir]
        cmd += ["--proc", "/proc", "--dev", "/dev", "--size", str(64 << 20), "--tmpfs", "/tmp",  # noqa: S108 (the sandbox's own empty /tmp)
                "--bind", work, SANDBOX_CWD, "--chdir", SANDBOX_CWD, "--clearenv",
                "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", SANDBOX_CWD,
                "--setenv", "LANG", "C.UTF-8"]
        if self.is_root:
            cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "/usr/bin/setpriv",
                    f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                    "--bounding-set=-all"]
        else:
            cmd[1:1] = ["--unshare-user"]
        return cmd

    def run(self, job: dict, collect: tuple[str, ...] = ()) -> RunResult:
        """Run one harness job; `collect` names files to read back from the program's cwd."""
        uid = self._slots.get()
        tmp = tempfile.mkdtemp(prefix="pgrpo-sbx-")
        try:
            return self._run(job, collect, tmp, uid)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            self._slots.put(uid)

    def _run(self, job: dict, collect: tuple[str, ...], tmp: str, uid: int) -> RunResult:
        work = os.path.join(tmp, "work")
        os.mkdir(work, 0o700)
        if self.backend == "bwrap" and self.is_root:
            os.chown(work, uid, uid)
        nonce = secrets.token_hex(16)
        paths = {n: os.path.join(tmp, n) for n in ("out", "err", "chan")}
        files = {n: open(p, "w+b") for n, p in paths.items()}  # noqa: SIM115 - closed below
        try:
            chan_fd = files["chan"].fileno()
            payload = json.dumps({**job, "nonce": nonce, "chan_fd": chan_fd}).encode()
            py = [self.python, "-I", "-S", "-B", "-c", self.harness]
            if self.backend == "bwrap":
                cmd = self._prlimit() + self._bwrap(work, uid) + py
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            else:
                cmd = self._prlimit() + py
                env = {"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8"}
            start = time.monotonic()
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=files["out"],
                                    stderr=files["err"], pass_fds=(chan_fd,), cwd=work, env=env,
                                    start_new_session=True)
            fired = threading.Event()  # a blocking wait + timer returns at once (no polling)
            timer = threading.Timer(self.cfg.timeout_s, _on_timeout, (proc, fired))
            timer.start()
            try:
                try:
                    assert proc.stdin is not None  # stdin=PIPE
                    proc.stdin.write(payload)
                    proc.stdin.close()
                except (BrokenPipeError, OSError):
                    pass  # died early; its exit status and frames tell the grader
                proc.wait()
            finally:
                timer.cancel()
                _kill_tree(proc)
            timed_out = fired.is_set()
            seconds = time.monotonic() - start
            out = _read_capped(files["out"], self.cfg.output_limit)
            err = _read_capped(files["err"], self.cfg.output_limit)
            frames, bad = _parse_frames(_read_capped(files["chan"], 256 << 20), nonce)
        finally:
            for f in files.values():
                f.close()
        got = {name: data for name in collect if (data := _read_regular(work, name)) is not None}
        return RunResult(proc.returncode, timed_out, seconds, out, err, frames, bad, got,
                         self.backend)


def _on_timeout(proc: subprocess.Popen, fired: threading.Event) -> None:
    fired.set()
    _kill_tree(proc, wait=False)


def _kill_tree(proc: subprocess.Popen, wait: bool = True) -> None:
    """SIGKILL the process group (bwrap's pid namespace dies with it), then reap."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if wait:
        proc.wait()


def _read_capped(f, limit: int) -> bytes:
    f.seek(0)
    return f.read(limit)


def _parse_frames(raw: bytes, nonce: str) -> tuple[list[dict], int]:
    frames, bad, prefix = [], 0, nonce.encode() + b" "
    for line in raw.split(b"\n"):
        if not line:
            continue
        if not line.startswith(prefix):
            bad += 1
            continue
        try:
            obj = json.loads(line[len(prefix):])
        except (ValueError, RecursionError):  # RecursionError: a forged frame nested too deep
            bad += 1
            continue
        if isinstance(obj, dict):
            frames.append(obj)
        else:
            bad += 1
    return frames, bad


def _read_regular(directory: str, name: str, limit: int = 4096) -> bytes | None:
    """Read a file the program left in its cwd, refusing symlinks, FIFOs and devices."""
    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)
