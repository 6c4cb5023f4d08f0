"""bench/study_throughput.py end to end on the CPU (smoke preset, 1 step, three configurations): each
configuration's sweep runs its K runs (--runs, or its own runs=K), the figures in throughput.json follow
from the measured wall time (runs per GPU-hour = K · 3600 / wall, the ratio to the first configuration),
the overrides reach the runs' configs, a configuration whose sweep fails is recorded as failed without
stopping the bench, and the Markdown table a user reads holds the same numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from projected_grpo.config import preset
from vfiles import random_v

ROOT = Path(__file__).parents[1]


def test_study_throughput_bench_runs_and_its_figures_follow_from_the_wall_time(tmp_path):
    v = random_v(tmp_path / "v.safetensors", preset("smoke"))     # no pair extraction: beside the point here
    out = tmp_path / "tput"
    cmd = [sys.executable, str(ROOT / "bench/study_throughput.py"), "--preset", "smoke", "--runs", "2", "--steps", "1",
           "--out", str(out), "--config", "today=", "--config", "sorted=train_batching=sorted,micro_tokens=512,runs=1",
           "--config", "bad=micro_tokens=512",                                  # refused: needs sorted
           "--", "--v-hack", str(v), "--eval-every", "0", "--max-new-tokens", "8"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((out / "throughput.json").read_text())
    assert report["card"] == "CPU (no CUDA)" and report["preset"] == "smoke"
    rows = {r["config"]: r for r in report["configs"]}
    assert list(rows) == ["today", "sorted", "bad"]
    for name, k in (("today", 2), ("sorted", 1)):
        r = rows[name]
        assert r["exit"] == 0 and r["runs"] == k and r["steps_logged"] == k           # K runs × 1 step each
        assert abs(r["runs_per_gpu_hour"] - k * 3600 / r["wall_s"]) <= 0.01 * r["runs_per_gpu_hour"]
        cfgs = [json.loads((out / name / f"vanilla_s{s}" / "config.json").read_text()) for s in range(1, k + 1)]
        assert {(c["train_batching"], c["micro_tokens"], c["steps"]) for c in cfgs} == (
            {("padded", 0, 1)} if name == "today" else {("sorted", 512, 1)})
    assert rows["bad"]["exit"] != 0 and rows["bad"]["runs_per_gpu_hour"] is None and rows["bad"]["ratio"] is None
    assert "--micro-tokens needs --train-batching sorted" in (out / "bad.log").read_text()
    assert rows["today"]["ratio"] == 1.0
    today, new = rows["today"]["runs_per_gpu_hour"], rows["sorted"]["runs_per_gpu_hour"]
    assert abs(rows["sorted"]["ratio"] - new / today) < 1e-3
    table = (out / "throughput.md").read_text()
    assert f"| sorted | --train-batching sorted --micro-tokens 512 | 1 | {rows['sorted']['wall_s']} |" in table
    assert f"| bad | --micro-tokens 512 | 2 | {rows['bad']['wall_s']} | failed (exit {rows['bad']['exit']}" in table
