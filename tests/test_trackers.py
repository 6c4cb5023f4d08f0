"""--report-to: TensorBoard and wandb (offline) read back and compared with metrics.jsonl / samples.jsonl,
across a resume; a missing library or an unknown name stops the run before anything is written."""

from __future__ import annotations

import importlib.util
import json
import math
import signal
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from projected_grpo.training import runio, trackers
from projected_grpo.training import train as train_mod
from projected_grpo.cli import main
from projected_grpo.config import preset

# β > 0: the KL column is logged (it is None at β = 0, which the smoke preset uses)
FAST = dict(n_problems=4, max_new_tokens=16, grade_workers=2, vhack_m=2, eval_problems=2, eval_samples=2, beta=0.04)


def smoke(**kw):
    return replace(preset("smoke"), **(FAST | kw))


@pytest.fixture(scope="module")
def v_hack(tmp_path_factory) -> str:
    """One V from a few bundled pairs, extracted once for the runs below (report_to none)."""
    d = tmp_path_factory.mktemp("pairs")
    rows = (Path(train_mod.__file__).parents[1] / "data" / "pairs_code.jsonl").read_text().splitlines()
    (d / "pairs.jsonl").write_text("\n".join([r for r in rows if '"train"' in r][:6]) + "\n")
    out = d / "run"
    train_mod.train(smoke(steps=1, eval_samples=0, pairs=str(d / "pairs.jsonl")), out, progress=False)
    return str(out / "v_hack.safetensors")


# Tags a run must show whatever else it logs: a hand-written floor under the rule in _expected, so
# neither the rule nor the trackers can lose these without a failure.
MUST_SHOW = {"train/hack_rate", "train/pass_rate", "train/reward_mean", "train/cos_in", "train/cos_out",
             "train/frac_fired", "train/loss", "train/kl", "train/lr", "train/grad_norm",
             "train/update_hackward", "eval/hack_rate", "eval/pass_rate", "eval/n"}


def _expected(out: Path) -> tuple[dict, list[dict]]:
    """{(tag, step): value} that the trackers should hold, read from metrics.jsonl by the README's
    rule (not trackers.py's code): every number of a row, bools as 0/1, under train/<key> or, for an
    eval row, eval/<key without eval_>; `step` and `kind` are the row's place, not values. And the
    rows of samples.jsonl."""
    want = {}
    for line in (out / runio.METRICS).read_text().splitlines():
        row = json.loads(line)
        kind = row.get("kind", "train")
        for key, value in row.items():
            if key in ("step", "kind") or not isinstance(value, (bool, int, float)) or not math.isfinite(value):
                continue
            tag = f"{kind}/{key[len('eval_'):] if kind == 'eval' and key.startswith('eval_') else key}"
            want[(tag, row["step"])] = float(value)
    assert {tag for tag, _ in want} >= MUST_SHOW, MUST_SHOW - {tag for tag, _ in want}
    return want, [json.loads(line) for line in (out / runio.SAMPLES).read_text().splitlines()]


def test_tensorboard_events_equal_metrics_jsonl_across_a_crash_and_resume(v_hack, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = smoke(arm="projected", v_hack=v_hack, steps=4, checkpoint_every=2, report_to="tensorboard",
                report_samples_every=2)
    out = tmp_path / "run"
    # a run that logged step 3 and died before checkpointing it: the resume re-runs step 3 from checkpoint 2
    train_mod.Trainer(cfg, out, progress=False).run(until=3)
    train_mod.train(cfg, out, resume=True, progress=False)
    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    got = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), f"{tag}: a step shown twice after the resume: {steps}"
        got.update({(tag, e.step): e.value for e in events})
    want, samples = _expected(out)
    assert {s for _, s in want} == {0, 1, 2, 3, 4}
    # the teacher rows' programs ran in bubblewrap, and every training row says so
    assert {r["sandbox_backend"] for r in runio.train_rows(runio.read_jsonl(out / runio.METRICS))} == {"bwrap"}
    assert got.keys() == want.keys()
    assert all(got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-7) for k in want)  # float32 in events
    assert ("eval/hack_rate", 0) in got and ("train/hack_rate", 4) in got and ("train/cos_in", 1) in got
    texts = {t: {e.step: e.tensor_proto.string_val[0].decode() for e in acc.Tensors(t)}
             for t in acc.Tags()["tensors"]}
    assert json.loads(texts["config/text_summary"][0].strip("`\njson")) == json.loads(cfg.to_json())
    assert sorted(texts["samples/text_summary"]) == [2, 4]
    for step, text in texts["samples/text_summary"].items():
        lines = text.splitlines()[2:]                       # header and rule first
        mine = [s for s in samples if s["step"] == step]
        assert len(lines) == len(mine)
        for line, s in zip(lines, mine):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            assert cells[:6] == [s["problem_id"], str(s["teacher"]), str(s["reward"]), s["label"],
                                 str(s["passed"]), str(s["gt_correct"])]


def _wandb_records(path: Path):
    """The records of a .wandb file: W&B's LevelDB-style log (7-byte file header, 32 KiB blocks of
    chunks [crc32c:4][length:2 LE][type:1 full/first/middle/last]), each record a protobuf Record."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:                       # block trailer: zero padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        if kind == 0 and length == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):                                # full, or the last chunk of a record
            rec = Record()
            rec.ParseFromString(buf)
            yield rec
            buf = b""


def test_wandb_offline_run_holds_the_metrics_config_and_samples_and_resumes_the_same_run(
        v_hack, tmp_path, monkeypatch):
    for var, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": tmp_path / "cfg",
                       "WANDB_CACHE_DIR": tmp_path / "cache", "WANDB_DATA_DIR": tmp_path / "data"}.items():
        monkeypatch.setenv(var, str(value))
    cfg = smoke(v_hack=v_hack, steps=2, report_to="wandb", report_samples_every=1)
    out = tmp_path / "run"
    train_mod.Trainer(cfg, out, progress=False).run(until=1)
    train_mod.train(cfg, out, resume=True, progress=False)
    run_id = (out / "wandb" / "run_id").read_text()
    files = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [f.name for f in files] == [f"run-{run_id}.wandb"] * 2  # the resume continued the same run
    got, config, tables = {}, {}, {}
    for f in files:
        for rec in _wandb_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                step = rec.history.step.num
                got.update({(k, step): v for k, v in items.items() if k.startswith(("train/", "eval/"))})
                if "samples/path" in items:                  # a Table: its file in the run's files/
                    tables[step] = json.loads((f.parent / "files" / items["samples/path"]).read_text())
            elif kind in ("run", "config"):                  # the config: at init, then any update
                part = rec.run.config if kind == "run" else rec.config
                config.update({i.key: json.loads(i.value_json) for i in part.update})
    want, samples = _expected(out)
    assert {s for _, s in want} == {0, 1, 2}
    assert got.keys() == want.keys()
    assert all(got[k] == pytest.approx(want[k], rel=1e-12) for k in want)
    assert {k: v for k, v in config.items() if k != "_wandb"} == json.loads(cfg.to_json())
    assert sorted(tables) == [1, 2]
    for step, table in tables.items():
        mine = [s for s in samples if s["step"] == step]
        assert table["columns"] == list(trackers.SAMPLE_COLUMNS)
        assert [r[:6] for r in table["data"]] == [[s["problem_id"], s["teacher"], s["reward"], s["label"],
                                                  s["passed"], s["gt_correct"]] for s in mine]
        assert all(r[7] == s["completion"][:trackers.COMPLETION_CHARS] for r, s in zip(table["data"], mine))


def test_missing_tracker_library_or_unknown_name_stops_before_anything_is_written(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--report-to", "tensorboard,wandb"]) == 2
    err = capsys.readouterr().err
    assert "--report-to tensorboard,wandb" in err and "wandb package is not installed" in err
    assert "pip install 'projected-grpo[trackers]'" in err
    assert main(["train", "--out", str(out), "--report-to", "mlflow"]) == 2
    assert "--report-to: unknown tracker mlflow" in capsys.readouterr().err
    assert not out.exists()


def _wandb_history(path: Path) -> list[tuple[tuple[str, int], float]]:
    """((tag, step), value) of every train/ and eval/ item in a .wandb file's history records, in order."""
    items = []
    for rec in _wandb_records(path):
        if rec.WhichOneof("record_type") == "history":
            for i in rec.history.item:
                key = i.key or "/".join(i.nested_key)
                if key.startswith(("train/", "eval/")):
                    items.append(((key, rec.history.step.num), json.loads(i.value_json)))
    return items


def _offline_wandb(monkeypatch, tmp_path: Path, mode: str = "offline") -> None:
    """wandb in `mode`, every file of it under tmp_path, no API key from anywhere."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var, value in {"WANDB_MODE": mode, "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": tmp_path / "cfg",
                       "WANDB_CACHE_DIR": tmp_path / "cache", "WANDB_DATA_DIR": tmp_path / "data",
                       "NETRC": tmp_path / "no-netrc"}.items():
        monkeypatch.setenv(var, str(value))


# A `pgrpo train` that SIGKILLs itself right after checkpoint AT: no tracker is closed or flushed.
KILL_AFTER_CHECKPOINT = r"""
import os, signal, sys
from projected_grpo.training import runio
from projected_grpo.cli import main

at, real_save = int(sys.argv[1]), runio.save_checkpoint

def save_checkpoint(run_dir, state):
    real_save(run_dir, state)
    if state["step"] == at:
        os.kill(os.getpid(), signal.SIGKILL)

runio.save_checkpoint = save_checkpoint
sys.exit(main(sys.argv[2:]))
"""


def test_a_run_killed_with_sigkill_resumes_with_every_step_once_in_wandb_and_tensorboard(v_hack, tmp_path,
                                                                                       monkeypatch):
    """Issue 25: killed after checkpoint 3 of 5, the offline wandb file held only its header and the
    resumed run logged steps 4-5, so wandb never saw steps 0-3. The run that DIR/wandb/run_id names,
    and TensorBoard, must end with every step of metrics.jsonl once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _offline_wandb(monkeypatch, tmp_path)
    out = tmp_path / "run"
    flags = ["--v-hack", v_hack, "--steps", "5", "--n-problems", "4", "--max-new-tokens", "16", "--grade-workers",
             "2", "--eval-problems", "2", "--eval-samples", "2", "--eval-every", "2", "--report-to",
             "wandb,tensorboard", "--report-samples-every", "2", "--beta", "0.04"]
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_CHECKPOINT, "3", "train", "--out", str(out), *flags],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert runio.load_checkpoint(out)["step"] == 3
    assert main(["train", "--out", str(out), "--resume"]) == 0
    want, _ = _expected(out)
    assert {s for _, s in want} == {0, 1, 2, 3, 4, 5}

    run_id = (out / "wandb" / "run_id").read_text().strip()
    history = [item for f in sorted((out / "wandb").glob(f"offline-run-*/run-{run_id}.wandb"))
               for item in _wandb_history(f)]
    counts: dict = {}
    for key, _ in history:
        counts[key] = counts.get(key, 0) + 1
    assert {k for k, n in counts.items() if n > 1} == set(), "a step logged twice to wandb"
    assert counts.keys() == want.keys(), sorted(want.keys() - counts.keys())[:10]
    assert all(v == pytest.approx(want[k], rel=1e-12) for k, v in history)

    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0}).Reload()
    shown = {}
    for tag in acc.Tags()["scalars"]:
        steps = [e.step for e in acc.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag}: a step shown twice: {steps}"
        shown.update({(tag, e.step): e.value for e in acc.Scalars(tag)})
    assert shown.keys() == want.keys()
    assert all(shown[k] == pytest.approx(want[k], rel=1e-6, abs=1e-7) for k in want)


def test_a_tracker_that_cannot_open_stops_in_one_line_and_leaves_nothing_behind(v_hack, tmp_path, monkeypatch,
                                                                                  capsys):
    """Issue 25: WANDB_MODE=online with no key ended in a 36-line traceback and left config.json,
    split.json, teacher_pool.json and wandb/ behind, so the retry was refused."""
    _offline_wandb(monkeypatch, tmp_path, mode="online")
    out = tmp_path / "run"
    flags = ["--v-hack", v_hack, "--steps", "1", "--n-problems", "4", "--max-new-tokens", "8", "--grade-workers",
             "2", "--eval-samples", "0"]
    assert main(["train", "--out", str(out), *flags, "--report-to", "wandb"]) == 2
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("pgrpo train: error:")]
    assert "Traceback" not in err and len(ours) == 1, err
    assert "--report-to wandb: the wandb tracker could not open" in ours[0] and "API key" in ours[0]
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    assert main(["train", "--out", str(out), *flags, "--report-to", "none"]) == 0    # the retry
