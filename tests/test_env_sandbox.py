"""Sandbox properties, each checked with a program that tries to break it, on both backends."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from projected_grpo.env.sandbox import Sandbox, SandboxConfig, resolve_backend

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BACKENDS = ["bwrap", "fallback"]


@pytest.fixture
def fresh_backend():
    """resolve_backend caches its answer per process: forget it before and after the test."""
    resolve_backend.cache_clear()
    yield resolve_backend
    resolve_backend.cache_clear()


def test_auto_backend_isolates_with_bwrap_and_falls_back_loudly(fresh_backend, tmp_path, monkeypatch, capsys):
    # a working bwrap (CI installs it: make sandbox): "auto" runs the program isolated
    target = tmp_path / "outside.txt"
    write = (f"try:\n    open({str(target)!r}, 'w').write('x')\n    print('WROTE')\n"
             "except OSError:\n    print('denied')\n")
    res = Sandbox(SandboxConfig(timeout_s=5.0)).run({"kind": "main", "setup": "", "program": write,
                                                     "method": "f", "inputs": []})
    assert res.backend == "bwrap" and out(res).strip() == "denied" and not target.exists()
    # a bwrap that fails its probe: "auto" falls back and says why; "bwrap" refuses
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "bwrap").write_text("#!/bin/sh\nexit 1\n")
    (fake / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    fresh_backend.cache_clear()
    assert fresh_backend("auto") == "fallback"
    assert "WARNING: bubblewrap (bwrap) is unavailable or failed its probe: probe failed" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="bwrap backend requested but unusable: probe failed"):
        fresh_backend("bwrap")
    # no bwrap on PATH at all: the same, naming that
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    fresh_backend.cache_clear()
    assert fresh_backend("auto") == "fallback"
    assert "bwrap not found on PATH" in capsys.readouterr().err
    # the fallback really is unisolated: the same program's write lands (the warning is not idle talk)
    monkeypatch.undo()
    res = Sandbox(SandboxConfig(timeout_s=5.0, backend="fallback")).run(
        {"kind": "main", "setup": "", "program": write, "method": "f", "inputs": []})
    assert res.backend == "fallback" and out(res).strip() == "WROTE" and target.read_text() == "x"


def run(program: str, backend: str = "bwrap", collect=(), **limits):
    sb = Sandbox(SandboxConfig(backend=backend, **{"timeout_s": 5.0, **limits}))
    return sb.run({"kind": "main", "setup": "", "program": program, "method": "f",
                   "inputs": []}, collect=collect)


def out(res) -> str:
    return res.stdout.decode(errors="replace")


def _running(marker: str) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False


def test_network_connect_fails():
    res = run("import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n"
              "    print('CONNECTED')\nexcept OSError as e:\n    print('blocked', e)\n")
    assert "blocked" in out(res) and "CONNECTED" not in out(res)


def test_writes_outside_cwd_fail(tmp_path):
    target = REPO / f"pwned-{uuid.uuid4().hex}"
    res = run(f"import os\nfor p in [{str(target)!r}, '/usr/pwned', '/etc/pwned', '/pwned']:\n"
              "    try:\n        open(p, 'w').write('x')\n        print('WROTE', p)\n"
              "    except OSError as e:\n        print('denied', p)\nopen('ok.txt', 'w').write('ok')\n"
              "print('cwd', os.getcwd())\n", collect=("ok.txt",))
    assert "WROTE" not in out(res) and out(res).count("denied") == 4
    assert not target.exists() and res.files["ok.txt"] == b"ok"


def test_project_and_shared_data_are_invisible():
    paths = [str(REPO), str(REPO / "src"), str(SHARED), str(SHARED / "data"), "/root", "/work"]
    res = run("import os\nfor p in %r:\n    try:\n        print('SAW', p, os.listdir(p)[:3])\n"
              "    except OSError:\n        print('hidden', p)\n" % paths)
    assert "SAW" not in out(res) and out(res).count("hidden") == len(paths)


def test_environment_is_sanitized(monkeypatch):
    monkeypatch.setenv("PGRPO_SECRET_TOKEN", "hunter2")
    res = run("import os\nprint(sorted(os.environ.items()))\n")
    assert "hunter2" not in out(res) and "PGRPO_SECRET_TOKEN" not in out(res)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forked_child_is_killed(backend):
    marker = f"pgrpo-orphan-{uuid.uuid4().hex}"
    detach = "os.setsid()\n        " if backend == "bwrap" else ""  # fallback: same session only
    prog = ("import os, sys\nif os.fork() == 0:\n        " + detach +
            f"os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
            "print('parent done')\n")
    res = run(prog, backend)
    assert "parent done" in out(res)
    time.sleep(0.3)
    assert not _running(marker), "a child of the graded program survived"


@pytest.mark.parametrize("backend", BACKENDS)
def test_infinite_loop_times_out(backend):
    t = time.monotonic()
    res = run("while True:\n    pass\n", backend, timeout_s=1.5)
    assert res.timed_out and time.monotonic() - t < 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_hog_is_stopped(backend):
    res = run("try:\n    x = bytearray(4 << 30)\n    print('GOT 4GB')\nexcept MemoryError:\n"
              "    print('memory error')\n", backend, memory_mb=512)
    assert "GOT 4GB" not in out(res) and "memory error" in out(res)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_output_is_capped(backend):
    t = time.monotonic()
    res = run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", backend)
    assert len(res.stdout) <= SandboxConfig().output_limit and time.monotonic() - t < 8
    load = [f for f in res.frames if f.get("k") == "load"]
    assert load and load[0]["ok"] is False  # the file-size limit stopped the writes (EFBIG)


@pytest.mark.parametrize("backend", BACKENDS)
def test_segfault_is_contained(backend):
    res = run("import ctypes\nctypes.string_at(0)\n", backend)
    assert res.returncode is not None and res.returncode != 0 and not res.timed_out


def test_fork_bomb_is_bounded():
    marker = f"pgrpo-bomb-{uuid.uuid4().hex}"
    t = time.monotonic()
    res = run(f"import os\nMARK = {marker!r}\nn = 0\ntry:\n    while True:\n        os.fork()\n"
              "        n += 1\nexcept OSError:\n    print('fork refused after', n)\n"
              "import time\ntime.sleep(30)\n", timeout_s=3)
    assert time.monotonic() - t < 10
    assert "fork refused" in out(res) or res.timed_out
    time.sleep(0.3)
    assert not _running(marker)
