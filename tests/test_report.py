"""The sweep report on hand-written run dirs: numbers checked by hand, missing runs listed, plots made."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from projected_grpo.report import mean_sem, summarise, window_mean, write_report

STEPS = 6


def write_run(root: Path, arm: str, seed: int, hack: list, pas: list, steps: int = STEPS,
              fired: float = 0.5, cos_in: float = 0.2) -> Path:
    """A run dir: config.json + one metrics row per entry of `hack`."""
    d = root / f"{arm}_s{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"arm": arm, "seed": seed, "steps": steps, "model": "tiny-qwen3",
                                               "mode": "run_tests", "dtype": "bfloat16", "group_size": 2,
                                               "prompts_per_step": 2, "vhack_m": 4}))
    rows = [{"step": i + 1, "hack_rate": h, "pass_rate": p, "reward_mean": 1.0, "cos_in": cos_in,
             "cos_out": 0.0 if arm != "vanilla" else cos_in, "frac_fired": fired}
            for i, (h, p) in enumerate(zip(hack, pas))]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def flat(x: float, early: float = 0.0) -> list:
    """STEPS values: `early` for the first steps, x for the last 3."""
    return [early] * (STEPS - 3) + [x] * 3


@pytest.fixture()
def sweep_dir(tmp_path: Path) -> Path:
    write_run(tmp_path, "vanilla", 41, flat(0.5), flat(0.2))
    write_run(tmp_path, "vanilla", 42, flat(0.7), flat(0.4))
    write_run(tmp_path, "projected", 41, flat(0.2), flat(0.2))
    write_run(tmp_path, "projected", 42, flat(0.6), flat(0.3))
    write_run(tmp_path, "random", 41, flat(0.4), flat(0.1))
    write_run(tmp_path, "random", 43, flat(0.3), flat(0.1))        # no vanilla for seed 43
    write_run(tmp_path, "rebound", 41, [0.9, 0.9], [0.0, 0.0])     # cut off after 2 of 6 steps
    (tmp_path / "sweep.json").write_text(json.dumps({"preset": "smoke", "arms": ["vanilla", "projected",
                                                     "rebound", "random"], "seeds": [41, 42]}))
    return tmp_path


def test_mean_sem_by_hand():
    s = mean_sem([0.5, 0.7])
    assert s.mean == pytest.approx(0.6) and s.sem == pytest.approx(0.1) and s.n == 2
    one = mean_sem([0.3, None])
    assert one.mean == pytest.approx(0.3) and one.sem is None and one.n == 1
    assert mean_sem([None]).mean is None


def test_window_mean_skips_null_hack_rate():
    rows = [{"hack_rate": 1.0}, {"hack_rate": None}, {"hack_rate": 0.5}, {"hack_rate": None}]
    assert window_mean(rows, "hack_rate", 3) == pytest.approx(0.5)
    assert window_mean(rows, "hack_rate") == pytest.approx(0.75)
    assert window_mean([{"hack_rate": None}], "hack_rate", 5) is None


def test_summary_numbers(sweep_dir: Path):
    s = summarise(sweep_dir, last_k=3)
    van, proj, rnd = s["arms"]["vanilla"], s["arms"]["projected"], s["arms"]["random"]
    assert van["hack_rate"] == pytest.approx({"mean": 0.6, "sem": 0.1, "n": 2})
    assert van["pass_rate"]["mean"] == pytest.approx(0.3)
    assert van["delta_hack_rate"]["mean"] is None                       # vanilla has no Δ vs itself
    # projected: per-seed Δ hack = 0.2-0.5 = -0.3 and 0.6-0.7 = -0.1 -> mean -0.2, sem 0.1,
    # 95% interval -0.2 ± t(0.975, 1) · 0.1 = -0.2 ± 1.27062
    assert proj["delta_hack_rate"] == pytest.approx({"mean": -0.2, "sem": 0.1, "n": 2,
                                                     "lo": -1.470620, "hi": 1.070620}, abs=1e-5)
    # pass Δ: 0.2-0.2 = 0, 0.3-0.4 = -0.1 -> mean -0.05, sem 0.05
    assert proj["delta_pass_rate"]["mean"] == pytest.approx(-0.05)
    assert proj["delta_pass_rate"]["sem"] == pytest.approx(0.05)
    # random: only seed 41 has a vanilla partner -> Δ = 0.4 - 0.5 over n = 1, no sem
    assert rnd["hack_rate"]["n"] == 2
    assert rnd["delta_hack_rate"]["mean"] == pytest.approx(-0.1)
    assert rnd["delta_hack_rate"]["sem"] is None and rnd["delta_hack_rate"]["n"] == 1
    assert rnd["delta_hack_rate"]["lo"] is None
    # k widens the window: last 6 steps of vanilla s41 = (0,0,0,.5,.5,.5) -> 0.25
    assert summarise(sweep_dir, last_k=6)["arms"]["vanilla"]["hack_rate"]["mean"] == pytest.approx(
        (0.25 + 0.35) / 2)
    assert proj["frac_fired"]["mean"] == pytest.approx(0.5) and proj["cos_out"]["mean"] == 0.0
    assert s["header"]["preset"] == "smoke" and s["header"]["steps"] == [STEPS]


def test_missing_and_unfinished_listed_not_averaged(sweep_dir: Path):
    s = summarise(sweep_dir, last_k=3)
    listed = {(r["arm"], r["seed"]): r for r in s["not_finished"]}
    assert listed[("rebound", 41)]["status"] == "unfinished" and listed[("rebound", 41)]["done"] == 2
    assert listed[("rebound", 42)]["status"] == "missing"       # in sweep.json, no dir
    assert ("random", 42) in listed and listed[("random", 42)]["status"] == "missing"
    assert s["arms"]["rebound"]["hack_rate"]["n"] == 0          # the cut-off run is not in the mean
    assert s["header"]["n_finished"] == 6


def test_write_report_files(sweep_dir: Path):
    out = write_report(sweep_dir, last_k=3)
    text = out.read_text()
    assert "0.600 ± 0.100 (n=2)" in text                         # vanilla hack rate
    assert "-0.200 [-1.471, +1.071] (n=2)" in text               # projected Δ hack, 95% t interval
    assert "-0.100 [—] (n=1)" in text                            # random Δ hack, one pair
    assert "## Missing / unfinished runs" in text
    assert "| rebound | 41 | rebound_s41 | unfinished | 2 / 6 |" in text
    assert "| rebound | 42 | rebound_s42 | missing | — |" in text
    assert "last 3 steps" in text and "preset: smoke" in text
    for name in ("hack_rate.png", "pass_rate.png", "cosine.png"):
        png = sweep_dir / name
        assert png.is_file() and png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert math.isclose(summary["arms"]["vanilla"]["hack_rate"]["mean"], 0.6)


def test_report_without_vanilla_or_sweep_json(tmp_path: Path):
    write_run(tmp_path, "projected", 41, [None] * STEPS, flat(0.2))   # hack_rate never logged
    out = write_report(tmp_path, last_k=3)
    text = out.read_text()
    assert "| projected | 41 | — |" in text
    assert "None: every listed run finished." in text
    assert "no sweep.json" in text


def test_cli_report(sweep_dir: Path, capsys):
    from projected_grpo.cli import main

    assert main(["report", str(sweep_dir), "--last-k", "3"]) == 0
    assert "0.600 ± 0.100 (n=2)" in capsys.readouterr().out
