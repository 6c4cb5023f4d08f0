"""--report-to: TensorBoard and wandb (offline) read back and compared with metrics.jsonl / samples.jsonl,
across a resume; a missing library or an unknown name stops the run before anything is written."""

from __future__ import annotations

import importlib.util
import json
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from projected_grpo import runio, trackers
from projected_grpo import train as train_mod
from projected_grpo.cli import main
from projected_grpo.config import preset

FAST = dict(n_problems=4, max_new_tokens=16, grade_workers=2, vhack_m=2, eval_problems=2, eval_samples=2)


def smoke(**kw):
    return replace(preset("smoke"), **(FAST | kw))


@pytest.fixture(scope="module")
def v_hack(tmp_path_factory) -> str:
    """One V from a few bundled pairs, extracted once for the runs below (report_to none)."""
    d = tmp_path_factory.mktemp("pairs")
    rows = (Path(train_mod.__file__).parent / "data" / "pairs_code.jsonl").read_text().splitlines()
    (d / "pairs.jsonl").write_text("\n".join([r for r in rows if '"train"' in r][:6]) + "\n")
    out = d / "run"
    train_mod.train(smoke(steps=1, eval_samples=0, pairs=str(d / "pairs.jsonl")), out, progress=False)
    return str(out / "v_hack.safetensors")


def _expected(out: Path) -> tuple[dict, list[dict]]:
    """{(tag, step): value} that the trackers should hold, from metrics.jsonl; and samples.jsonl."""
    want = {}
    for row in runio.read_jsonl(out / runio.METRICS):
        kind = row.get("kind", "train")
        for key, value in trackers.numeric(row, "eval_" if kind == "eval" else "").items():
            want[(f"{kind}/{key}", row["step"])] = value
    return want, runio.read_jsonl(out / runio.SAMPLES)


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
