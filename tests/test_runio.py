"""The one atomic writer (runio.write_atomic_with): a write either lands whole or not at all."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from projected_grpo.training import runio
from projected_grpo.errors import UserError


def test_write_atomic_replaces_bytes_and_text(tmp_path):
    path = tmp_path / "f.txt"
    runio.write_atomic(path, b"old\n")
    runio.write_atomic(path, "new ü\n")
    assert path.read_bytes() == "new ü\n".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_failing_writer_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old content")

    def half_then_fail(tmp):
        tmp.write_bytes(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        runio.write_atomic_with(path, half_then_fail)
    assert path.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_failing_writer_creates_nothing_when_absent(tmp_path):
    def fail(tmp):
        tmp.write_bytes(b"x")
        raise KeyboardInterrupt  # a kill-like exception is cleaned up too

    with pytest.raises(KeyboardInterrupt):
        runio.write_atomic_with(tmp_path / "new.bin", fail)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_that_fails_to_pickle_keeps_the_previous_one(tmp_path):
    """torch.save opens the temp file and writes part of it before pickling fails."""
    runio.save_checkpoint(tmp_path, {"step": 3, "w": torch.ones(2)})
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        runio.save_checkpoint(tmp_path, {"step": 4, "w": torch.zeros(2), "bad": lambda: 0})
    state = runio.load_checkpoint(tmp_path)
    assert state["step"] == 3 and torch.equal(state["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [runio.CHECKPOINT]


# ---- one rule for "run finished" --------------------------------------------------------------
def _run_dir(root, name: str, steps: int, rows: int, delta_s: bool, checkpoint: bool):
    """A run dir as the trainer leaves it: config, `rows` training rows (and an eval row at 0),
    optionally its checkpoint and δS."""
    d = root / name
    d.mkdir()
    (d / runio.CONFIG).write_text(json.dumps({"arm": name.split("_s")[0], "seed": 1, "steps": steps}))
    runio.append_jsonl(d / runio.METRICS, [{"kind": "eval", "step": 0, "eval_hack_rate": 0.0}]
                       + [{"kind": "train", "step": s + 1, "hack_rate": 0.5, "pass_rate": 0.5}
                          for s in range(rows)])
    if checkpoint:
        runio.save_checkpoint(d, {"step": rows})
    if delta_s:
        (d / runio.DELTA_S).write_bytes(b"delta_s")
    return d


@pytest.mark.parametrize("rows, delta_s, checkpoint, state", [
    (3, True, True, "finished"),
    (2, True, True, "unfinished"),     # δS there, but fewer training rows than steps
    (3, False, True, "unfinished"),    # every row, but killed before δS was written
    (3, False, False, "finished"),     # a copy of the logs only (as published under docs/results)
    (2, False, False, "unfinished"),
], ids=["closed", "delta_s_fewer_steps", "all_steps_no_delta_s", "log_copy", "log_copy_short"])
def test_sweep_and_report_agree_on_finished(tmp_path, rows, delta_s, checkpoint, state):
    from projected_grpo.studies import report, sweep
    from projected_grpo.config import TrainConfig

    run = _run_dir(tmp_path, "vanilla_s1", 3, rows, delta_s, checkpoint)
    assert runio.run_state(run) == state
    cfg = TrainConfig(arm="vanilla", seed=1, steps=3)
    (run / runio.CONFIG).write_text(cfg.to_json())
    assert sweep.check_run(cfg, run) == state               # what the sweep skips or resumes by
    summary = report.summarise(tmp_path, last_k=1)
    assert summary["header"]["n_finished"] == (state == "finished")
    assert [r["status"] for r in summary["not_finished"]] == ([] if state == "finished" else [state])


def test_run_state_missing(tmp_path):
    assert runio.run_state(tmp_path / "nothing", 3) == "missing"


# ---- corrupt logs and the one writer -----------------------------------------------------------
def test_a_torn_last_line_is_dropped_and_a_garbled_middle_line_is_refused_naming_it(tmp_path):
    """A crash can tear only the last line of an append; a bad line before it is corruption, and
    reading on past it (or stopping at it) would drop the rows after it without a word."""
    path = tmp_path / runio.METRICS
    path.write_text('{"step": 1, "x": 0.5}\n{"step": 2, "x": 0.25}\n{"step": 3, "x"')
    assert runio.read_jsonl(path) == [{"step": 1, "x": 0.5}, {"step": 2, "x": 0.25}]
    path.write_text('{"step": 1, "x": 0.5}\n{"step": 2, "x": 0.\x00\x17\n{"step": 3, "x": 1.0}\n')
    with pytest.raises(UserError, match=rf"{path}, line 2: not a JSON row"):
        runio.read_jsonl(path)
    path.write_text('{"step": 1}\n[2]\n{"step": 3}\n')
    with pytest.raises(UserError, match=rf"{path}, line 2: a JSON row must be an object"):
        runio.read_jsonl(path)


# A writer as the README describes one: flock on DIR/writer.lock, its pid in the file, held till it dies.
HOLD = """
import fcntl, os, sys, time
os.makedirs(sys.argv[1], exist_ok=True)
fd = os.open(os.path.join(sys.argv[1], "writer.lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_writer_is_refused_naming_the_holders_pid_until_the_holder_is_killed(tmp_path, capsys):
    """Two processes writing one run dir logged its steps twice (issue 25): the lock is the kernel's,
    so a live holder refuses `pgrpo train` (one line, the dir and the pid) and a SIGKILLed one does not."""
    import os
    import signal
    import subprocess
    import sys

    from projected_grpo.cli import main

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["train", "--out", str(run), "--steps", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(run) in err[0] and f"pid {holder.pid}" in err[0], err
        assert sorted(p.name for p in run.iterdir()) == ["writer.lock"]       # nothing of the refused run
        from projected_grpo.training import runlock

        assert runlock.holder(run) == str(holder.pid)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert runlock.holder(run) is None                  # the kernel released it with the dead holder
    with runlock.held(run) as lock:
        assert (run / runlock.LOCK).read_text().strip() == str(os.getpid()) and lock.held
    assert not (run / runlock.LOCK).exists()
