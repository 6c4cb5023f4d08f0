"""Resume through the CLI: kills at several points of a run, `pgrpo train --out DIR --resume` alone
(the README's command, for a run started with non-default flags), flags beside --resume, bad input
before the first step, and `--print-config`.

A kill is simulated in a child process that swaps one function of the trainer for one that calls
os._exit(9) at the chosen point — as abrupt as SIGKILL (no cleanup, no flush), but landing exactly
there. CPU runs are deterministic, so a resumed run must log what an uninterrupted one logs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from projected_grpo.training import evaluate, runio
from projected_grpo.training import train as train_mod
from projected_grpo.cli import main
from projected_grpo.config import TIMING_KEYS, TrainConfig, preset
from projected_grpo.errors import UserError

STEPS, EVERY = 3, 2  # checkpoints after steps 2 and 3 (the last)
SAMPLE_TIMING = ("seconds",)  # sandbox wall time of a graded program: differs between identical runs


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory) -> str:
    """A few bundled code pairs, so extraction stays quick."""
    rows = (Path(train_mod.__file__).parents[1] / "data" / "pairs_code.jsonl").read_text().splitlines()
    path = tmp_path_factory.mktemp("pairs") / "pairs_code.jsonl"
    path.write_text("\n".join([r for r in rows if '"train"' in r][:6]) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def v_hack(tmp_path_factory, small_pairs) -> str:
    path = tmp_path_factory.mktemp("v") / "v.safetensors"
    assert main(["extract", "--out", str(path), "--vhack-m", "2", "--pairs", small_pairs]) == 0
    return str(path)


@pytest.fixture(scope="module")
def flags(v_hack, small_pairs) -> list[str]:
    """A run started with non-default flags (none of them is the smoke preset's value), with one
    held-out eval problem evaluated at steps 0, 2 and 3 (the pairs name one of the 4 problems)."""
    return ["--preset", "smoke", "--arm", "projected", "--v-hack", v_hack, "--seed", "5",
            "--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--n-problems", "4",
            "--max-new-tokens", "8", "--grade-workers", "2", "--pairs", small_pairs,
            "--eval-problems", "1", "--eval-samples", "1", "--eval-every", "2"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, flags) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", "--out", str(out), *flags]) == 0
    return out


def metrics(out: Path) -> list[dict]:
    return runio.read_jsonl(out / runio.METRICS)


def steps(out: Path) -> list[int]:
    """Steps of the training rows."""
    return [r["step"] for r in runio.train_rows(metrics(out))]


def eval_steps(out: Path) -> list[int]:
    return [r["step"] for r in runio.eval_rows(metrics(out))]


def comparable(rows: list[dict], timing: tuple[str, ...]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in timing} for r in rows]


# The child: runs `pgrpo ARGS...` with one function swapped to die at POINT, step AT.
CHILD = r"""
import os, sys
from pathlib import Path
from projected_grpo.training import runio, train
from projected_grpo.cli import main

point, at, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
real_append, real_save, real_grade = runio.append_jsonl, runio.save_checkpoint, train.grade_many

def append_jsonl(path, rows):
    real_append(path, rows)
    if point == f"after_{path.name}" and rows and rows[-1]["step"] == at:
        os._exit(9)

def save_checkpoint(run_dir, state):
    if point == "before_checkpoint" and state["step"] == at:
        os._exit(9)
    real_save(run_dir, state)
    if point == "after_checkpoint" and state["step"] == at:
        os._exit(9)

def grade_many(*args, **kwargs):
    if point == "mid_step" and len(runio.train_rows(runio.read_jsonl(Path(out) / runio.METRICS))) == at - 1:
        os._exit(9)
    return real_grade(*args, **kwargs)

runio.append_jsonl, runio.save_checkpoint, train.grade_many = append_jsonl, save_checkpoint, grade_many
sys.exit(main(["train", "--out", out] + sys.argv[4:]))
"""


def killed(out: Path, point: str, at: int, *args: str) -> None:
    """Run `pgrpo train --out OUT ARGS` in a child that dies (exit 9) at `point` of step `at`."""
    proc = subprocess.run([sys.executable, "-c", CHILD, point, str(at), str(out), *args],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 9, f"the kill at {point} {at} never came:\n{proc.stderr[-3000:]}"


def test_kills_at_every_point_resume_to_the_uninterrupted_run(reference, flags, tmp_path):
    out = tmp_path / "run"
    killed(out, "after_metrics.jsonl", 1, *flags)              # step 1 logged, no checkpoint yet
    assert steps(out) == [1] and eval_steps(out) == [0] and runio.load_checkpoint(out) is None
    killed(out, "before_checkpoint", 2, "--resume")            # restarts from 0; dies before ckpt 2
    assert steps(out) == [1, 2] and eval_steps(out) == [0, 2], metrics(out)
    assert runio.load_checkpoint(out) is None
    killed(out, "mid_step", 3, "--resume")                     # dies while grading step 3
    assert steps(out) == [1, 2] and runio.load_checkpoint(out)["step"] == 2, steps(out)
    killed(out, "after_samples.jsonl", 3, "--resume")          # step 3's samples, not its metrics
    assert steps(out) == [1, 2] and max(r["step"] for r in runio.read_jsonl(out / runio.SAMPLES)) == 3
    killed(out, "before_checkpoint", 3, "--resume")            # step 3 logged, ckpt still 2
    assert steps(out) == [1, 2, 3] and runio.load_checkpoint(out)["step"] == 2
    killed(out, "after_checkpoint", 3, "--resume")             # last ckpt written, not delta_s
    assert runio.load_checkpoint(out)["step"] == 3 and not (out / "delta_s.safetensors").exists()
    assert main(["train", "--out", str(out), "--resume"]) == 0

    assert steps(out) == list(range(1, STEPS + 1)) and eval_steps(out) == [0, 2, 3]
    assert comparable(metrics(out), TIMING_KEYS) == comparable(metrics(reference), TIMING_KEYS)
    for name in (runio.SAMPLES, evaluate.EVAL_SAMPLES):
        assert (comparable(runio.read_jsonl(out / name), SAMPLE_TIMING)
                == comparable(runio.read_jsonl(reference / name), SAMPLE_TIMING)), name
    a, b = load_file(reference / "delta_s.safetensors"), load_file(out / "delta_s.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(bool(a[k].any()) for k in a)  # the run did move δS: the comparison is not vacuous


def test_flags_beside_resume_must_agree_with_the_run(reference, flags, capsys):
    ref = str(reference)
    assert main(["train", "--out", ref, "--resume", "--seed", "7", "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--seed 7 (the run has 5)" in err and "--lr 0.1 (the run has 0.005)" in err
    assert main(["train", "--out", ref, "--resume", "--preset", "full"]) == 2
    assert "--preset full (differs from the run in" in capsys.readouterr().err
    # extending the run would change the cosine LR schedule of the steps already taken
    assert main(["train", "--out", ref, "--resume", "--steps", str(STEPS + 2)]) == 2
    assert "--steps cannot change: it fixes the cosine LR schedule" in capsys.readouterr().err
    stored = TrainConfig.from_dict(json.loads((reference / runio.CONFIG).read_text()))
    with pytest.raises(UserError, match="steps cannot change on resume"):
        train_mod.train(replace(stored, steps=STEPS + 2), reference, resume=True, progress=False)
    # the same flags again, the preset included, are accepted: the run's config, unchanged
    assert main(["train", "--out", ref, "--resume", *flags, "--print-config"]) == 0
    assert TrainConfig.from_dict(json.loads(capsys.readouterr().out)) == stored
    assert main(["train", "--out", ref + "-none", "--resume"]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_print_config_round_trips_into_the_runs_config_json(reference, flags, tmp_path, capsys):
    assert main(["train", "--print-config", *flags]) == 0          # no --out needed, nothing run
    printed = TrainConfig.from_dict(json.loads(capsys.readouterr().out))
    assert printed == TrainConfig.from_dict(json.loads((reference / runio.CONFIG).read_text()))
    assert printed.seed == 5 and printed.arm == "projected"
    # any preset, also one whose data is not on this machine (full/ariahw read the benchmark file,
    # which is not shipped): printing checks values, not paths; training still refuses the path
    for name in ("full", "ariahw"):
        assert main(["train", "--print-config", "--preset", name, "--seed", "3", "--lr", "0.002"]) == 0
        assert (TrainConfig.from_dict(json.loads(capsys.readouterr().out))
                == replace(preset(name), seed=3, lr=0.002))
    assert main(["train", "--preset", "ariahw", "--out", str(tmp_path / "a")]) == 2
    assert "file does not exist" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(["train", "--print-config", "--out", str(reference), "--resume"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((reference / runio.CONFIG).read_text())
    assert main(["train", "--print-config", "--out", str(tmp_path / "x"), "--seed", "3"]) == 0
    assert not (tmp_path / "x").exists()


def test_bad_input_before_the_first_step_leaves_nothing_that_blocks_the_retry(v_hack, small_pairs,
                                                                                tmp_path, capsys):
    out = tmp_path / "run"
    good = ["--n-problems", "4", "--max-new-tokens", "8", "--grade-workers", "2", "--steps", "1",
            "--vhack-m", "2", "--pairs", small_pairs, "--eval-samples", "0"]
    for bad, named in ((["--model", "no-org/no-model-here"], "no-org/no-model-here"),
                       (["--v-hack", str(tmp_path / "missing.safetensors")], "missing.safetensors"),
                       (["--problems", str(tmp_path / "nope.jsonl")], "nope.jsonl"),
                       # V is extracted into the run dir before the pool fails: it must go too
                       (["--teacher-pool", str(tmp_path / "pool.jsonl")], "pool.jsonl")):
        assert main(["train", "--out", str(out), *good, *bad]) == 2, bad
        assert named in capsys.readouterr().err
        assert not out.exists(), f"{bad} left {sorted(p.name for p in out.iterdir())}"
    # a directory that existed keeps what it held and gets nothing new
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", "--out", str(out), *good, "--v-hack", str(tmp_path / "missing.safetensors")]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(["train", "--out", str(out), *good, "--v-hack", v_hack]) == 0   # the corrected retry
    assert steps(out) == [1] and (out / runio.CONFIG).is_file()


def test_a_corrupt_log_is_refused_naming_its_line_and_rewrites_nothing_but_a_torn_last_line_resumes(
        reference, tmp_path, capsys):
    """Issue 25: with line 2 of metrics.jsonl garbled and no δS file, --resume cut the file to its
    first row (training rows 1-3 lost), then crashed. Corruption is refused before anything is
    rewritten; a torn last line is what a crash leaves, and is dropped."""

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / runio.DELTA_S).unlink()                              # killed after its last checkpoint
    logs = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    lines = logs[runio.METRICS].decode().splitlines(keepends=True)
    for broken, named in (([lines[0], '{"kind": "train", "st\x00p": \n'] + lines[2:], "line 2: not a JSON row"),
                          (lines[:3] + lines[1:2] + lines[3:], "train step 1 is logged more than once"),
                          ([lines[0]] + lines[2:], "holds training steps 2, 3 up to the checkpoint's step 3")):
        (out / runio.METRICS).write_text("".join(broken))
        assert main(["train", "--out", str(out), "--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{out / runio.METRICS}" in err[0] and named in err[0], err
        assert (out / runio.METRICS).read_text() == "".join(broken)                    # untouched
        assert all((out / n).read_bytes() == b for n, b in logs.items() if n != runio.METRICS)
        assert not (out / runio.DELTA_S).exists()
    (out / runio.METRICS).write_bytes(logs[runio.METRICS] + b'{"kind": "train", "step": 4, "loss')   # torn
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert (out / runio.METRICS).read_bytes() == logs[runio.METRICS] and (out / runio.DELTA_S).is_file()


def test_a_truncated_checkpoint_is_one_line_that_says_how_to_recover(reference, tmp_path, capsys):
    """Issue 25 item 5: a truncated checkpoint.pt was a RuntimeError traceback on --resume (and a
    restart without --resume is refused: the dir holds a run). Now one line naming the file and the
    way out; nothing in the dir is touched; and following the advice gives the uninterrupted run."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / runio.DELTA_S).unlink()                        # a run cut before its end
    ckpt = out / runio.CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["train", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"pgrpo train: error: {ckpt}: the checkpoint cannot be read")
    assert f"mv {ckpt} {ckpt}.bad" in err, err
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before                                # nothing lost, nothing added
    ckpt.rename(f"{ckpt}.bad")                            # the advice
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert steps(out) == list(range(1, STEPS + 1))
    assert comparable(metrics(out), TIMING_KEYS) == comparable(metrics(reference), TIMING_KEYS)
    a, b = load_file(reference / runio.DELTA_S), load_file(out / runio.DELTA_S)
    assert all(torch.equal(a[k], b[k]) for k in a)
