"""scripts/install_bwrap_local.sh (bubblewrap on a machine without it or internet): unpack .debs into a
prefix, probe, and the grader's sandbox then finds that bwrap through PATH alone.

No network here: the .deb is rebuilt from this machine's installed bubblewrap package (its files and a
control file), standing in for what scripts/fetch_bwrap.sh downloads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> Path:
    """A .debs folder holding bubblewrap as a .deb, rebuilt from the installed package's files."""
    files = subprocess.run(["dpkg", "-L", "bubblewrap"], capture_output=True, text=True)
    assert files.returncode == 0, "bubblewrap is not installed here (make sandbox)"
    root = tmp_path_factory.mktemp("pkg")
    for f in files.stdout.split():
        if os.path.isfile(f) and not os.path.islink(f):
            (root / f.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, root / f.lstrip("/"))
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        "Package: bubblewrap\nVersion: 0.0-test\nArchitecture: amd64\nMaintainer: test <t@t>\n"
        "Description: rebuilt for the test\n")
    out = tmp_path_factory.mktemp("debs")
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(out / "bubblewrap.deb")],
                   check=True, capture_output=True)
    return out


def test_installed_bwrap_is_found_by_path_and_sandboxes_the_grader(debs, tmp_path):
    prefix = tmp_path / "bw"
    res = subprocess.run(["bash", str(REPO / "scripts" / "install_bwrap_local.sh"), str(prefix), str(debs)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "bwrap --version: bubblewrap " in res.stdout and "namespace probe: pid" in res.stdout
    assert f"grader sandbox probe: bwrap with {prefix}/bin/bwrap" in res.stdout
    assert f'export PATH="{prefix}/bin:$PATH"' in res.stdout
    # PATH without /usr/bin: the system's bwrap is out of reach, only prlimit (which the sandbox calls
    # by name) is linked in; the grader must still run programs under the unpacked bwrap
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "prlimit").symlink_to(shutil.which("prlimit"))
    code = ("import shutil, sys\n"
            "from projected_grpo.env.sandbox import Sandbox, SandboxConfig\n"
            "sbx = Sandbox(SandboxConfig(backend='bwrap'))\n"
            "res = sbx.run({'kind': 'expected', 'setup': '', 'exprs': ['6 * 7']})\n"
            "print(shutil.which('bwrap'), res.backend, [f.get('v') for f in res.frames if f.get('k') == 'out'])\n")
    env = {**os.environ, "PATH": f"{prefix}/bin:{tools}", "PYTHONPATH": str(REPO / "src")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [f"{prefix}/bin/bwrap", "bwrap", "[42]"]


def test_install_script_without_debs_says_what_to_run(tmp_path):
    res = subprocess.run(["bash", str(REPO / "scripts" / "install_bwrap_local.sh"), str(tmp_path / "bw"),
                          str(tmp_path / "empty")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "run scripts/fetch_bwrap.sh" in res.stderr


def test_report_header_names_the_sandbox_backend_of_each_run(tmp_path):
    from projected_grpo.studies.report import write_report

    for name, backend in (("new", "bwrap"), ("gpu", "fallback"), ("old", None)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"arm": "vanilla", "seed": len(name) + ord(name[0]), "steps": 1}))
        row = {"kind": "train", "step": 1, "hack_rate": 0.0, "pass_rate": 0.0, "reward_mean": 0.0}
        if backend:
            row["sandbox_backend"] = backend
        (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    text = write_report(tmp_path).read_text()
    assert "graded in sandbox: bwrap, fallback, not recorded (fallback = rlimits only, no isolation)" in text
