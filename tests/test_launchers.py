"""`pgrpo sweep --launcher slurm|ray` for real on one CPU machine, against the local launcher.

slurm: submitit's LocalExecutor (`--slurm-cluster local`), which runs each array task as a local
subprocess exactly as a Slurm node would run it; ray: a Ray instance the sweep starts on this machine
(`ray.init` with no address). Each drives a 2-run smoke sweep (tiny model, 3 steps, 8 new tokens, no
eval, a random V from vfiles.py so nothing is extracted); one run's worker is SIGKILLed after its
first step, the sweep reports it failed, and the same command again resumes it. The end state must
be the local launcher's: the same summary.json and the same per-step metrics. Retries and log tails
are launch.py's, shared by both launchers: checked once, through slurm; a SIGTERM of the sweep
cancels its jobs under both. Every sweep is a `pgrpo`
child process, so nothing of submitit or Ray stays in the test process.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors import safe_open

from projected_grpo.cli import main
from projected_grpo.config import TIMING_KEYS, preset
from projected_grpo.training import runio
from projected_grpo.training.runio import run_state
from vfiles import random_v

STEPS = 3
RUNS = ("vanilla_s41", "projected_s41")
BROKEN = "broken=vanilla:teacher_pool=/nonexistent/pool.jsonl"   # set-up refuses a missing pool file


@pytest.fixture(scope="module")
def v_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("v") / "v.safetensors"
    return str(random_v(path, replace(preset("smoke"), vhack_m=2)))


def flags(v_file: str, arms: str = "vanilla,projected") -> list[str]:
    """The smallest runs; v_file "" leaves --v-hack out (the sweep extracts V)."""
    return ["--preset", "smoke", "--arms", arms, "--seeds", "41", "--steps", str(STEPS), "--n-problems", "4",
            "--max-new-tokens", "8", "--grade-workers", "1", "--eval-problems", "1", "--eval-samples", "0",
            "--vhack-m", "2", *(["--v-hack", v_file] if v_file else [])]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, v_file) -> Path:
    """The local launcher's sweep (runs one after another in the test process)."""
    out = tmp_path_factory.mktemp("local") / "sw"
    assert main(["sweep", "--out", str(out), "--launcher", "local", *flags(v_file)]) == 0
    return out


def pgrpo(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "projected_grpo.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def comparable(out: Path, name: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in runio.read_jsonl(out / name / runio.METRICS)]


def kill_worker_then_relaunch(argv: list[str], out: Path, env: dict | None = None) -> tuple[str, str]:
    """Launch the sweep; SIGKILL vanilla_s41's worker once it has logged a step; wait for the sweep;
    launch the same command again. -> what each launch printed."""
    run, log = out / "vanilla_s41", out / "logs" / "vanilla_s41.log"
    parent, deadline = pgrpo(argv, env), time.time() + 300
    while not runio.train_rows(runio.read_jsonl(run / runio.METRICS)):
        assert parent.poll() is None and time.time() < deadline, parent.communicate()[0]
        time.sleep(0.02)
    pid = int(re.findall(r"worker run: pid (\d+)", log.read_text())[-1])
    os.kill(pid, signal.SIGKILL)
    first = parent.communicate(timeout=300)[0]
    assert parent.returncode == 1, first
    assert run_state(run, STEPS) == "unfinished", "the kill landed after the run finished"
    again = pgrpo(argv, env)
    second = again.communicate(timeout=300)[0]
    assert again.returncode == 0, second
    return first, second


def check_against_reference(out: Path, reference: Path, first: str, second: str, launcher: str) -> None:
    # the killed run: reported failed with its log, the other finished; then resumed, the other skipped
    assert re.search(rf"\[FAILED\] vanilla_s41 \({launcher} job \S+\): exit -9 after \d+s \(failure 1 of at most "
                     rf"2\); log {re.escape(str(out / 'logs' / 'vanilla_s41.log'))}", first), first
    assert re.search(rf"\[done\]   projected_s41 \({launcher} job \S+\): started", first), first
    assert "[skip]   projected_s41 already finished" in second, second
    assert re.search(rf"\[done\]   vanilla_s41 \({launcher} job \S+\): resumed", second), second
    # the job ids printed at each submission are the ones sweep.json records
    record = json.loads((out / "sweep.json").read_text())
    submitted: dict[str, list[str]] = {}
    for name, job in re.findall(rf"\[submit\] (\S+) as {launcher} job (\S+)", first + second):
        submitted.setdefault(name, []).append(job)
    assert record["launcher"] == launcher and record["jobs"] == submitted
    assert [len(submitted[n]) for n in RUNS] == [2, 1]
    status = json.loads((out / "logs" / "vanilla_s41.json").read_text())
    assert (status["state"], status["failures"], status["job_id"]) == ("finished", 1, submitted["vanilla_s41"][-1])
    # the same result as the local launcher's uninterrupted runs
    for name in RUNS:
        assert run_state(out / name, STEPS) == "finished"
        assert comparable(out, name) == comparable(reference, name)
    assert json.loads((out / "summary.json").read_text()) == json.loads((reference / "summary.json").read_text())


def test_slurm_launcher_on_submitits_local_executor_equals_the_local_launcher_and_resumes_a_killed_run(
        reference, v_file, tmp_path):
    out = tmp_path / "sw"
    argv = ["sweep", "--out", str(out), "--launcher", "slurm", "--slurm-cluster", "local", "--gpus-per-run", "0",
            *flags(v_file)]
    first, second = kill_worker_then_relaunch(argv, out)
    check_against_reference(out, reference, first, second, "slurm")
    assert list((out / "logs" / "slurm").glob("*_submitted.pkl")), "submitit wrote no job of its own"


def test_ray_launcher_on_a_local_ray_equals_the_local_launcher_and_resumes_a_killed_run(reference, v_file, tmp_path):
    # Ray's socket paths must stay under 108 characters: a short temp dir, not pytest's deep tmp_path
    ray_tmp = tempfile.mkdtemp(prefix="pgrpo-ray-", dir="/tmp")
    try:
        out = tmp_path / "sw"
        argv = ["sweep", "--out", str(out), "--launcher", "ray", "--gpus-per-run", "0", *flags(v_file)]
        first, second = kill_worker_then_relaunch(argv, out, dict(os.environ, RAY_TMPDIR=ray_tmp))
        assert "Started a local Ray instance" in first
        check_against_reference(out, reference, first, second, "ray")
        deadline = time.time() + 30          # ray.shutdown() leaves no process of the instance behind
        while left := ray_processes(ray_tmp):
            assert time.time() < deadline, f"Ray processes left after the sweep: {left}"
            time.sleep(0.5)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.parametrize("launcher", ["slurm", "ray"])
def test_sigterm_cancels_every_job_and_leaves_no_worker(launcher, v_file, tmp_path):
    """The sweep stopped while a run trains: its job is cancelled (Slurm: scancel, here SIGINT to
    submitit's local task; Ray: a forced cancel), the worker dies with it, the run is "interrupted"
    (not a failure) and stays resumable."""
    ray_tmp = tempfile.mkdtemp(prefix="pgrpo-ray-", dir="/tmp")
    out, log = tmp_path / "sw", tmp_path / "sw" / "logs" / "vanilla_s41.log"
    argv = ["sweep", "--out", str(out), "--launcher", launcher, "--slurm-cluster", "local", "--gpus-per-run", "0",
            "--no-report", *flags(v_file, arms="vanilla"), "--steps", "50"]
    try:
        parent, deadline = pgrpo(argv, dict(os.environ, RAY_TMPDIR=ray_tmp)), time.time() + 300
        while not runio.train_rows(runio.read_jsonl(out / "vanilla_s41" / runio.METRICS)):
            assert parent.poll() is None and time.time() < deadline, parent.communicate()[0]
            time.sleep(0.05)
        pid = int(re.findall(r"worker run: pid (\d+)", log.read_text())[-1])
        parent.send_signal(signal.SIGTERM)
        printed = parent.communicate(timeout=120)[0]
        assert parent.returncode == 143, printed
        assert f"sweep stopped (Stopped): cancelling 1 {launcher} job(s): vanilla_s41" in printed
        status = json.loads((out / "logs" / "vanilla_s41.json").read_text())
        assert (status["state"], status["failures"]) == ("interrupted", 0)
        deadline = time.time() + 30
        while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text():
            assert time.time() < deadline, f"worker {pid} outlived its cancelled job"
            time.sleep(0.2)
        assert run_state(out / "vanilla_s41", 50) == "unfinished"
        while left := ray_processes(ray_tmp):
            assert time.time() < deadline, f"Ray processes left after the sweep: {left}"
            time.sleep(0.5)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def ray_processes(ray_tmp: str) -> list[str]:
    """Processes whose command line names the Ray instance's temp dir (its raylet, GCS, workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and ray_tmp in cmd and int(proc.name) != os.getpid():
            found.append(f"{proc.name}: {cmd[:120]}")
    return found


def test_v_is_extracted_as_a_job_and_a_failed_run_is_reported_with_its_log_tail_and_retried_up_to_max_attempts(
        tmp_path):
    """In this process (the jobs are still submitit's subprocesses): no --v-hack, so V is extracted
    first as one job; then a run whose set-up fails."""
    out = tmp_path / "sw"
    log = out / "logs" / "broken_s41.log"
    rows = (Path(runio.__file__).parents[1] / "data" / "pairs_code.jsonl").read_text().splitlines()
    pairs = tmp_path / "pairs_code.jsonl"       # 4 training and 2 held-out pairs: a quick extraction
    pairs.write_text("\n".join([r for r in rows if '"train"' in r][:4] + [r for r in rows if '"heldout"' in r][:2])
                     + "\n")
    argv = ["sweep", "--out", str(out), "--launcher", "slurm", "--slurm-cluster", "local", "--gpus-per-run", "0",
            "--variant", BROKEN, "--no-report", "--pairs", str(pairs), *flags("", arms="broken")]
    for attempt in (1, 2):
        code, text = in_process(argv)
        assert code == 1, text
        if attempt == 1:
            [job] = re.findall(r"\[extract\] v_hack.safetensors \(m=2\) as slurm job (\S+),", text)
            assert json.loads((out / "sweep.json").read_text())["jobs"]["extract_v_hack"] == [job]
            assert re.search(r"worker extract: pid \d+", (out / "logs" / "extract_v_hack.log").read_text())
            with safe_open(str(out / "v_hack.safetensors"), "pt") as f:                 # from the 4 pairs above
                assert {k: f.metadata()[k] for k in ("m", "control", "n_train")} == {"m": "2", "control": "none",
                                                                                    "n_train": "4"}
        else:
            assert "[extract]" not in text                                              # V is there now
        assert "[submit] broken_s41 as slurm job" in text and f"attempt {attempt} of 2" in text
        failed = text[text.index("[FAILED] broken_s41"):]
        assert "exit 2 after" in failed and f"failure {attempt} of at most 2" in failed and str(log) in failed
        assert "teacher pool /nonexistent/pool.jsonl does not exist" in failed          # the log's tail
        assert json.loads((out / "logs" / "broken_s41.json").read_text())["failures"] == attempt
    code, text = in_process(argv)
    assert code == 1 and "[submit]" not in text, text
    assert f"[skip]   broken_s41 failed 2 times (--max-attempts 2); see {log}" in text
    assert len(json.loads((out / "sweep.json").read_text())["jobs"]["broken_s41"]) == 2
    assert not (out / "broken_s41").exists()


def in_process(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = main(argv)
    return code, buf.getvalue()


@pytest.mark.parametrize(("launcher", "module"), [("slurm", "submitit"), ("ray", "ray")])
def test_a_missing_package_is_one_line_naming_the_extra_and_writes_nothing(launcher, module, tmp_path, monkeypatch,
                                                                          capsys, v_file):
    monkeypatch.setitem(sys.modules, module, None)          # `import submitit` / `import ray` fails
    out = tmp_path / "sw"
    assert main(["sweep", "--out", str(out), "--launcher", launcher, "--slurm-cluster", "local",
                 *flags(v_file)]) == 2
    err = capsys.readouterr().err
    assert err == (f"pgrpo sweep: error: --launcher {launcher} needs the {module} package: "
                   f"pip install 'projected_grpo[{launcher}]'\n")
    assert not out.exists()


def test_cluster_launcher_flags_are_checked(tmp_path, capsys, v_file):
    out = tmp_path / "sw"
    assert main(["sweep", "--out", str(out), "--launcher", "ray", "--gpus", "2", *flags(v_file)]) == 2
    assert "--gpus and --runs-per-gpu are for --launcher local" in capsys.readouterr().err
    assert main(["sweep", "--out", str(out), "--launcher", "slurm", "--slurm-cluster", "local", "--time-min", "0",
                 *flags(v_file)]) == 2
    assert capsys.readouterr().err == "pgrpo sweep: error: --time-min must be >= 1\n"
    assert main(["sweep", "--out", str(out), "--launcher", "ray", "--ray-address", "127.0.0.1:1",
                 *flags(v_file)]) == 2        # Ray itself would retry for minutes, printing warnings
    assert capsys.readouterr().err.startswith("pgrpo sweep: error: --ray-address 127.0.0.1:1: cannot reach ")
    if shutil.which("sbatch") is None:       # this machine is no Slurm login node: a real cluster is refused
        assert main(["sweep", "--out", str(out), "--launcher", "slurm", *flags(v_file)]) == 2
        assert "sbatch is not on PATH" in capsys.readouterr().err
    assert not out.exists()
