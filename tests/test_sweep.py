"""`pgrpo sweep`: the sequential sweep's resumability and variants with a fake trainer; the `--gpus`
queue with real tiny runs in child processes (overlap, pinning, equality with the sequential sweep,
a real failure and its retry limit, SIGTERM of the parent and the resume after it).

The queue's children run the smoke preset on the embedded tiny model with the smallest settings
(2 steps, 4 problems, 8 new tokens, no eval); their CPU device ignores CUDA_VISIBLE_DEVICES, which
each worker prints into its log. Children and the in-process reference use one thread each, so a
run's numbers do not depend on where it ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from projected_grpo.training import runio
from projected_grpo.studies import sweep as sweep_mod
from projected_grpo.training import train as train_mod
from projected_grpo.cli import main
from projected_grpo.config import TIMING_KEYS, preset
from projected_grpo.errors import UserError
from projected_grpo.training.runio import run_state
from projected_grpo.studies.sweep import SweepPlan, parse_variant, sweep
from test_experiments import Crash, FakeTrain


# ---- sequential sweep with a fake trainer ---------------------------------------------------
@pytest.fixture()
def plan(tmp_path: Path) -> SweepPlan:
    v = tmp_path / "shared" / "v.safetensors"
    v.parent.mkdir()
    v.write_bytes(b"fake V")
    return SweepPlan(preset="smoke", arms=["vanilla", "projected"], seeds=[41, 42], overrides={"steps": 3},
                     v_hack=str(v), out=str(tmp_path / "sweep"))


def test_sweep_skips_resumes_and_starts(plan, monkeypatch):
    calls: list = []
    base = replace(preset("smoke"), steps=3)
    monkeypatch.setattr("projected_grpo.training.train.train", FakeTrain(calls, crash={"projected_s41": 1}))
    with pytest.raises(Crash):
        sweep(plan, base, progress=False)
    out = Path(plan.out)
    # seed-major: every arm's first seed, then the second
    assert [c[:3] for c in calls] == [("vanilla", 41, False), ("projected", 41, False)]
    assert run_state(out / "vanilla_s41", 3) == "finished"
    assert run_state(out / "projected_s41", 3) == "unfinished"
    assert run_state(out / "vanilla_s42", 3) == "missing"
    assert run_state(out / "projected_s42", 3) == "missing"
    assert json.loads((out / "sweep.json").read_text())["v_hack"] == plan.v_hack

    calls.clear()
    done = sweep(plan, base, progress=False)
    assert done == {"vanilla_s41": "skipped", "vanilla_s42": "started", "projected_s41": "resumed",
                    "projected_s42": "started"}
    assert [c[:3] for c in calls] == [("projected", 41, True), ("vanilla", 42, False), ("projected", 42, False)]
    for name in done:
        cfg = json.loads((out / name / "config.json").read_text())
        assert cfg["v_hack"] == str(Path(plan.v_hack).resolve())
        assert len(runio.read_jsonl(out / name / runio.METRICS)) == 3      # no step lost or doubled

    calls.clear()
    assert set(sweep(plan, base, progress=False).values()) == {"skipped"} and calls == []
    # a finished run is never skipped under another config: the sweep refuses, naming the field
    with pytest.raises(UserError, match="lr differ"):
        sweep(plan, replace(base, lr=0.5), progress=False)


def test_sweep_extracts_one_shared_artifact(tmp_path, monkeypatch):
    calls, extracted = [], []

    def fake_prepare(cfg, path, verify, progress=True):
        extracted.append(Path(path))
        Path(path).write_bytes(b"fake V")

    monkeypatch.setattr(sweep_mod, "prepare_v_hack", fake_prepare)
    monkeypatch.setattr("projected_grpo.training.train.train", FakeTrain(calls))
    out = tmp_path / "sw"
    p = SweepPlan(preset="smoke", arms=["vanilla", "random"], seeds=[1, 2], overrides={},
                  v_hack=str((out / sweep_mod.V_HACK).resolve()), out=str(out))
    sweep(p, replace(preset("smoke"), steps=2), progress=False)
    assert extracted == [(out / sweep_mod.V_HACK).resolve()]
    assert {c[3] for c in calls} == {p.v_hack} and len(calls) == 4

    missing = replace(p, v_hack=str(tmp_path / "nope.safetensors"))
    with pytest.raises(UserError, match="does not exist"):
        sweep(missing, preset("smoke"), progress=False)


def test_sweep_cli_writes_report(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(sweep_mod, "prepare_v_hack",
                        lambda cfg, path, verify, progress=True: Path(path).write_bytes(b"V"))
    monkeypatch.setattr("projected_grpo.training.train.train", FakeTrain(calls))
    out = tmp_path / "s"
    assert main(["sweep", "--arms", "vanilla,projected", "--seeds", "5", "--steps", "2", "--lr", "0.01",
                 "--out", str(out)]) == 0
    sweep_json = json.loads((out / "sweep.json").read_text())
    assert sweep_json["overrides"] == {"steps": 2, "lr": 0.01} and sweep_json["seeds"] == [5]
    assert (out / "results.md").is_file() and (out / "hack_rate.png").stat().st_size > 0
    assert main(["sweep", "--arms", "vanilla,bogus", "--out", str(out)]) == 2
    assert "unknown arm or variant 'bogus'" in capsys.readouterr().err


def test_variants_get_their_config_and_their_own_v_when_they_change_v(tmp_path, monkeypatch):
    """projected_update: project_target update, the shared V; projected_m47: vhack_m 47 and its own V
    file, extracted with m = 47; an ad hoc --variant gets its typed overrides."""
    calls, extracted = [], {}

    def fake_prepare(cfg, path, verify, progress=True):
        extracted[Path(path).name] = cfg.vhack_m
        Path(path).write_bytes(b"fake V")

    monkeypatch.setattr(sweep_mod, "prepare_v_hack", fake_prepare)
    monkeypatch.setattr("projected_grpo.training.train.train", FakeTrain(calls))
    out = tmp_path / "sw"
    assert main(["sweep", "--arms", "vanilla,projected_update,projected_m47,hot", "--seeds", "41",
                 "--variant", "hot=random:temperature=1.5,grad_checkpointing=true", "--steps", "1",
                 "--no-report", "--out", str(out)]) == 0
    assert extracted == {"v_hack.safetensors": 4, "v_hack_projected_m47.safetensors": 47}
    cfg = {n: json.loads((out / f"{n}_s41" / runio.CONFIG).read_text())
           for n in ("vanilla", "projected_update", "projected_m47", "hot")}
    shared, own = str((out / "v_hack.safetensors").resolve()), str((out / "v_hack_projected_m47.safetensors").resolve())
    assert (cfg["projected_update"]["arm"], cfg["projected_update"]["project_target"]) == ("projected", "update")
    assert (cfg["projected_m47"]["arm"], cfg["projected_m47"]["vhack_m"], cfg["projected_m47"]["v_hack"]) == (
        "projected", 47, own)
    assert cfg["projected_m47"]["project_target"] == "grad"
    assert cfg["vanilla"]["v_hack"] == cfg["projected_update"]["v_hack"] == cfg["hot"]["v_hack"] == shared
    assert (cfg["hot"]["arm"], cfg["hot"]["temperature"], cfg["hot"]["grad_checkpointing"]) == ("random", 1.5, True)
    resolved = json.loads((out / "sweep.json").read_text())["resolved"]
    assert resolved["projected_m47"] == {"arm": "projected", "overrides": {"vhack_m": 47}, "v_hack": own}

    with pytest.raises(UserError, match="cannot share --v-hack"):
        sweep(SweepPlan(preset="smoke", arms=["projected_m47"], seeds=[1], overrides={}, v_hack=own,
                        out=str(tmp_path / "other")), preset("smoke"), progress=False)
    for bad, why in (("x=projected:pairs=foo.jsonl", "shared by every run"), ("x=bogus:lr=1", "unknown base arm"),
                     ("x=projected:nope=1", "not field=value"), ("x=projected:lr=fast", "lr:"),
                     ("vanilla=projected:lr=1", "already an arm")):
        with pytest.raises(UserError, match=why):
            parse_variant(bad)


# ---- the --gpus queue, real tiny runs in child processes -------------------------------------
STEPS = 2
BROKEN = "broken=vanilla:teacher_pool=/nonexistent/pool.jsonl"   # set-up refuses a missing pool file


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory) -> str:
    """4 training and 2 held-out bundled code pairs, so extraction stays quick."""
    rows = (Path(train_mod.__file__).parents[1] / "data" / "pairs_code.jsonl").read_text().splitlines()
    path = tmp_path_factory.mktemp("pairs") / "pairs_code.jsonl"
    path.write_text("\n".join([r for r in rows if '"train"' in r][:4] + [r for r in rows if '"heldout"' in r][:2])
                    + "\n")
    return str(path)


def flags(pairs: str) -> list[str]:
    return ["--preset", "smoke", "--seeds", "41", "--steps", str(STEPS), "--n-problems", "4", "--max-new-tokens",
            "8", "--grade-workers", "1", "--eval-problems", "1", "--eval-samples", "0", "--pairs", pairs,
            "--vhack-m", "2"]


@pytest.fixture(scope="module")
def queued(tmp_path_factory, small_pairs):
    """One `--gpus 2` sweep: V extracted in a child, vanilla and projected_update on GPUs 0 and 1 at
    once, then a run whose set-up fails. -> (dir, exit code, printed output)."""
    out = tmp_path_factory.mktemp("queued") / "sw"
    code, text = _main(["sweep", "--out", str(out), "--arms", "vanilla,projected_update,broken", "--variant", BROKEN,
                        "--gpus", "2", *flags(small_pairs)])
    return out, code, text


def _main(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in this process, capturing what it prints."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = main(argv)
    return code, buf.getvalue()


def worker_lines(log: Path) -> tuple[list[str], list[float], list[float]]:
    """CUDA_VISIBLE_DEVICES and begin / end times printed by every worker attempt in a log."""
    text = log.read_text()
    return (re.findall(r"CUDA_VISIBLE_DEVICES=(\S*)", text), [float(x) for x in re.findall(r"began ([\d.]+)", text)],
            [float(x) for x in re.findall(r"ended ([\d.]+)", text)])


def comparable(out: Path, name: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in runio.read_jsonl(out / name / runio.METRICS)]


def test_gpu_queue_overlaps_runs_on_their_own_gpus_and_equals_the_sequential_sweep(queued, small_pairs, tmp_path):
    out, code, text = queued
    # V came from a child process pinned to the first GPU; this process loaded no model
    extract = worker_lines(out / "logs" / "extract_v_hack.log")
    assert extract[0] == ["0"] and (out / "v_hack.safetensors").is_file()
    gpus, began, ended = {}, {}, {}
    for name in ("vanilla_s41", "projected_update_s41"):
        seen, b, e = worker_lines(out / "logs" / f"{name}.log")
        assert len(seen) == len(b) == len(e) == 1, (out / "logs" / f"{name}.log").read_text()
        gpus[name], began[name], ended[name] = seen[0], b[0], e[0]
        assert run_state(out / name, STEPS) == "finished"
        assert re.search(rf"\[done\]   {name} on GPU {seen[0]}: started", text)
    assert sorted(gpus.values()) == ["0", "1"]
    assert max(began.values()) < min(ended.values()), "the two runs did not overlap in time"

    ref = tmp_path / "seq"   # the same runs one after another in this process, on the same V
    code_seq, _ = _main(["sweep", "--out", str(ref), "--arms", "vanilla,projected_update", "--v-hack",
                         str(out / "v_hack.safetensors"), "--no-report", *flags(small_pairs)])
    assert code_seq == 0
    for name in ("vanilla_s41", "projected_update_s41"):
        assert len(runio.train_rows(runio.read_jsonl(out / name / runio.METRICS))) == STEPS
        assert comparable(out, name) == comparable(ref, name)


def test_a_failed_run_is_reported_the_others_finish_and_it_is_retried_up_to_max_attempts(queued, small_pairs):
    out, code, text = queued
    log = out / "logs" / "broken_s41.log"
    assert code == 1
    failed = text[text.index("[FAILED] broken_s41"):]
    assert "exit 2" in failed and str(log) in failed
    assert "teacher pool /nonexistent/pool.jsonl does not exist" in failed        # the log's tail, shown
    assert "NOT finished: broken_s41" in text and (out / "results.md").is_file()  # report written anyway
    assert json.loads((out / "logs" / "broken_s41.json").read_text())["failures"] == 1
    assert not (out / "broken_s41").exists()

    argv = ["sweep", "--out", str(out), "--arms", "vanilla,projected_update,broken", "--variant", BROKEN,
            "--gpus", "2", "--no-report", *flags(small_pairs)]
    code2, text2 = _main(argv)               # retried once more; the finished runs start no child
    assert code2 == 1 and "[skip]   vanilla_s41 already finished" in text2
    assert "[start]  broken_s41 on GPU 0 (started, attempt 2 of 2)" in text2 and "[FAILED] broken_s41" in text2
    assert len(worker_lines(log)[0]) == 2 and len(worker_lines(out / "logs" / "vanilla_s41.log")[0]) == 1
    code3, text3 = _main(argv)               # the limit is reached: skipped, with how to retry
    assert code3 == 1 and "[start]" not in text3
    assert f"[skip]   broken_s41 failed 2 times (--max-attempts 2); see {log}" in text3
    assert f"delete {out / 'logs' / 'broken_s41.json'}" in text3
    assert len(worker_lines(log)[0]) == 2


def test_sigterm_stops_every_child_and_the_same_command_resumes_to_the_uninterrupted_result(queued, small_pairs,
                                                                                            tmp_path):
    out = tmp_path / "killed"
    argv = ["sweep", "--out", str(out), "--arms", "vanilla,projected_update", "--v-hack",
            str(queued[0] / "v_hack.safetensors"), "--gpus", "2", "--no-report", *flags(small_pairs)]
    parent = subprocess.Popen([sys.executable, "-m", "projected_grpo.cli", *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    # kill once both runs' children are started (each log is opened just before its child): a tiny
    # run finishes its steps within a second of set-up, so waiting for set-up let both finish under load
    while not all((out / "logs" / f"{n}.log").is_file() for n in ("vanilla_s41", "projected_update_s41")):
        assert parent.poll() is None and time.time() < deadline, "the runs never started"
        time.sleep(0.05)
    parent.send_signal(signal.SIGTERM)
    printed = parent.communicate(timeout=60)[0]
    assert parent.returncode == 143, printed
    assert "sweep stopped (Stopped): stopping 2 running run(s)" in printed
    for name in ("vanilla_s41", "projected_update_s41"):
        status = json.loads((out / "logs" / f"{name}.json").read_text())
        assert status["state"] == "interrupted" and status["failures"] == 0
        with pytest.raises(ProcessLookupError):      # nothing of the child's process group is left
            os.killpg(status["pid"], 0)
    # a tiny run's steps take seconds: at least one run (normally both) is cut off
    cut = [n for n in ("vanilla_s41", "projected_update_s41") if run_state(out / n, STEPS) != "finished"]
    assert cut

    code, text = _main(argv)
    assert code == 0, text
    # a run cut in its steps resumes; one cut in set-up (no config.json yet) starts again
    assert all(re.search(rf"\[done\]   {n} on GPU \d: (resumed|started)", text) for n in cut), text
    for name in ("vanilla_s41", "projected_update_s41"):
        assert run_state(out / name, STEPS) == "finished"
        assert comparable(out, name) == comparable(queued[0], name)


def test_a_sweep_killed_with_sigkill_leaves_its_worker_and_the_same_command_refuses_a_second_writer(
        queued, small_pairs, tmp_path):
    """Issue 25: SIGKILL of `pgrpo sweep --gpus 1` cannot reach its worker (its own session), which
    trains on; the same command again started a second worker on the same run, and metrics.jsonl held
    steps twice. The run dir's lock is the kernel's: the live orphan is named and left alone, and
    once it is dead the same command resumes the run to every step once."""
    out, steps = tmp_path / "sw", 10
    argv = ["sweep", "--out", str(out), "--arms", "vanilla", "--v-hack", str(queued[0] / "v_hack.safetensors"),
            "--gpus", "1", "--no-report", *flags(small_pairs), "--steps", str(steps)]
    run, orphan = out / "vanilla_s41", None
    parent = subprocess.Popen([sys.executable, "-m", "projected_grpo.cli", *argv], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while len(runio.train_rows(runio.read_jsonl(run / runio.METRICS))) < 2:
            assert parent.poll() is None and time.time() < deadline, "the run never logged two steps"
            time.sleep(0.05)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        orphan = json.loads((out / "logs" / "vanilla_s41.json").read_text())["pid"]
        code, text = _main(argv)                                     # the same command, the orphan alive
        assert code == 1, text
        assert f"[busy]   vanilla_s41: {run} is being written by pid {orphan}" in text, text
        from projected_grpo.training import runlock

        assert "[start]" not in text and runlock.holder(run) == str(orphan)
    finally:
        if orphan is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(orphan, signal.SIGKILL)
    deadline = time.time() + 60
    while runlock.holder(run) is not None:                           # the kernel frees it as the orphan dies
        assert time.time() < deadline, "the killed orphan still holds the run"
        time.sleep(0.05)
    code, text = _main(argv)
    assert code == 0 and "[done]   vanilla_s41 on GPU 0: resumed" in text, text
    rows = runio.read_jsonl(run / runio.METRICS)
    assert [r["step"] for r in runio.train_rows(rows)] == list(range(1, steps + 1))
    cfg = json.loads((run / runio.CONFIG).read_text())
    per_step: dict[int, int] = {}
    for sample in runio.read_jsonl(run / runio.SAMPLES):
        per_step[sample["step"]] = per_step.get(sample["step"], 0) + 1
    assert per_step == {s: cfg["prompts_per_step"] * cfg["group_size"] for s in range(1, steps + 1)}


def test_a_stop_while_a_child_starts_lands_after_it_is_recorded_and_the_child_takes_sigterm():
    """A SIGTERM sent from another thread while a child is being started (the CI failure of a mask
    that only held the main thread) is raised after the start, and the child itself is not left
    with SIGTERM blocked: the sweep's stop ends it with SIGTERM, not with the SIGKILL after the grace."""
    from projected_grpo.studies.sweep_pool import Stopped, _raise_stopped, signals_held

    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    proc, finished_the_start = None, False
    try:
        with pytest.raises(Stopped), signals_held():
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM))
            sender.start()
            sender.join()
            time.sleep(0.2)                 # the signal has arrived by now; it must wait for the block
            finished_the_start = True
        assert finished_the_start
        proc.terminate()
        assert proc.wait(timeout=20) == -signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_config_from_before_a_new_field_still_matches_when_the_field_keeps_its_default():
    """A study's runs must resume under a version that added config fields (defaults keep the old
    behaviour); a field set to a non-default value is still a different run."""
    import json

    from projected_grpo.training import runio
    from projected_grpo.config import TrainConfig

    new = json.loads(TrainConfig().to_json())
    old = {k: v for k, v in new.items() if k != "delta_s_impl"}       # written before the field existed
    assert runio.config_diff(old, new) == []
    assert runio.config_diff(old, {**new, "delta_s_impl": "merged"}) == ["delta_s_impl"]
    assert runio.config_diff(old, {**new, "lr": new["lr"] * 2}) == ["lr"]


def test_runs_are_queued_seed_major_and_seeds_for_gives_an_arm_its_own_seeds(tmp_path):
    """A sweep cut off part-way should leave whole seeds of every arm: run order is every arm's first
    seed, then every arm's second, ...; --seeds-for adds seeds to one arm only."""
    from projected_grpo.config import preset
    from projected_grpo.studies.sweep import SweepPlan, plan_runs

    plan = SweepPlan(preset="smoke", arms=["vanilla", "projected_update", "random"], seeds=[1, 2],
                     overrides={}, v_hack=str(tmp_path / "v_hack.safetensors"), out=str(tmp_path),
                     seeds_for={"vanilla": [1, 2, 3]})
    names = [s.name for s in plan_runs(plan, preset("smoke"))]
    assert names == ["vanilla_s1", "projected_update_s1", "random_s1",
                     "vanilla_s2", "projected_update_s2", "random_s2", "vanilla_s3"]


def test_children_share_the_cores_instead_of_each_taking_all(monkeypatch):
    """12 runs at once on 64 cores get 5 threads each (unset, every child's torch took all 64 and a
    V re-extraction went from ~30 s to ~400 s); a user's OMP_NUM_THREADS wins."""
    from projected_grpo.studies import sweep_pool

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(sweep_pool.os, "cpu_count", lambda: 64)
    assert sweep_pool.child_threads(12) == "5"
    assert sweep_pool.child_threads(128) == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert sweep_pool.child_threads(12) == "3"


def test_fleets_group_each_arms_seeds_and_run_in_one_worker_each(small_pairs, tmp_path):
    """--fleet 2 with seeds 41,42,43 of two arms: fleets {41, 42} of each arm (one queued worker, one log,
    its runs recording fleet_runs 2 and row noise) and seed 43 alone; each run logs what the same run logs
    in a plain sequential sweep with --row-noise (to rounding: tests/test_lockstep.py checks the metrics
    closely); the same command again skips them all."""
    import math

    from projected_grpo.config import preset
    from projected_grpo.studies.sweep import FleetSpec, fleets, plan_runs

    plan = SweepPlan(preset="smoke", arms=["vanilla", "random"], seeds=[41, 42, 43], overrides={},
                     v_hack=str(tmp_path / "v.safetensors"), out=str(tmp_path), fleet=2)
    units = fleets(plan, plan_runs(plan, preset("smoke")))
    assert [(u.name, [m.cfg.fleet_runs for m in getattr(u, "members", [u])]) for u in units] == [
        ("vanilla_s41-s42", [2, 2]), ("random_s41-s42", [2, 2]), ("vanilla_s43", [1]), ("random_s43", [1])]
    assert all(isinstance(u, FleetSpec) == (len(getattr(u, "members", [])) == 2) for u in units)
    routed = replace(plan, arms=["routing_v"])           # its quarantine lives on the model: each run alone
    assert [(u.name, u.cfg.fleet_runs, u.cfg.row_noise) for u in fleets(routed, plan_runs(routed, preset("smoke")))] \
        == [("routing_v_s41", 1, True), ("routing_v_s42", 1, True), ("routing_v_s43", 1, True)]

    out = tmp_path / "fl"
    argv = ["sweep", "--out", str(out), "--arms", "vanilla", "--gpus", "1", "--fleet", "2", "--no-report",
            *flags(small_pairs)]
    argv[argv.index("--seeds") + 1] = "41,42,43"
    code, text = _main(argv)
    assert code == 0, text
    assert re.search(r"\[done\]   vanilla_s41-s42 on GPU 0: started", text), text
    assert len(worker_lines(out / "logs" / "vanilla_s41-s42.log")[1]) == 1     # one worker for both runs
    for seed, size in ((41, 2), (42, 2), (43, 1)):
        cfg = json.loads((out / f"vanilla_s{seed}" / runio.CONFIG).read_text())
        assert (cfg["fleet_runs"], cfg["row_noise"]) == (size, True)
    ref = tmp_path / "seq"
    code_seq, _ = _main(["sweep", "--out", str(ref), "--arms", "vanilla", "--v-hack", str(out / "v_hack.safetensors"),
                         "--no-report", "--row-noise", "true", *flags(small_pairs)[:2],
                         *[x if x != "41" else "41,42,43" for x in flags(small_pairs)[2:]]])
    assert code_seq == 0
    for seed in (41, 42, 43):
        a, b = comparable(out, f"vanilla_s{seed}"), comparable(ref, f"vanilla_s{seed}")
        assert len(a) == len(b) > 0
        for ra, rb in zip(a, b):
            for k in ra:
                same = (math.isclose(ra[k], rb[k], rel_tol=1e-4, abs_tol=1e-6)
                        if isinstance(ra[k], float) and isinstance(rb[k], float) else ra[k] == rb[k])
                assert same or k == "fleet_runs", (seed, k, ra[k], rb[k])
    code, text = _main(argv)
    assert code == 0 and "vanilla_s41-s42 already finished" in text, text
