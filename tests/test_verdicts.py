"""studies/verdicts.py: the pre-registered verdict per arm (Study 2's PLAN.md "Decision rules") on hand-written
run dirs whose intervals are worked out by hand here (t_{0.975, 4} = 2.776445 from the t table)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from projected_grpo.cli import main
from projected_grpo.studies.report import summarise, write_report
from projected_grpo.studies.verdicts import Rules

STEPS = 10
T4 = 2.776445                        # t_{0.975, 4}: five seeds
SEEDS = (1, 2, 3, 4, 5)
VAN_HACK = (0.8, 0.7, 0.9, 0.6, 0.75)
VAN_PASS = (0.30, 0.25, 0.35, 0.30, 0.28)


def run(root: Path, name: str, seed: int, hack: float, pass_nohint: float, onset: int = 3, fmt: float = 0.8,
        base: str | None = None, cfg: dict | None = None) -> None:
    """A finished run dir: training hack 0 before step `onset` and 0.6 from it; eval rows at steps 0 and STEPS
    (format 0.8 at step 0, `fmt` at the end: below 0.4 it collapsed)."""
    d = root / f"{name}_s{seed}"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"arm": base or name, "seed": seed, "steps": STEPS, **(cfg or {})}))
    rows = [{"kind": "eval", "step": 0, "eval_hack_rate": 0.05, "eval_pass_rate": 0.1, "eval_format_rate": 0.8,
             "eval_pass_nohint": 0.3, "eval_evaluators": "renamed", "eval_n": 160}]
    rows += [{"kind": "train", "step": s, "hack_rate": 0.6 if s >= onset else 0.0, "pass_rate": 0.1}
             for s in range(1, STEPS + 1)]
    rows.append({"kind": "eval", "step": STEPS, "eval_hack_rate": hack, "eval_pass_rate": 0.1,
                 "eval_format_rate": fmt, "eval_pass_nohint": pass_nohint, "eval_evaluators": "renamed",
                 "eval_n": 160})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    monitor = {"monitor_tpr": 0.9, "monitor_fpr": 0.05}
    for i, s in enumerate(SEEDS):
        vh, vp = VAN_HACK[i], VAN_PASS[i]
        run(tmp_path, "vanilla", s, vh, vp)
        run(tmp_path, "projected", s, (0.2, 0.1, 0.3, 0.2, 0.15)[i], vp)            # works, beats random
        run(tmp_path, "random", s, vh + (0.05, -0.05, 0.0, 0.05, -0.05)[i], vp)    # nothing
        run(tmp_path, "oracle", s, 0.0, vp)                                          # the bound
        run(tmp_path, "mp_good", s, vh - 0.4, vp, base="monitor_penalty", cfg=monitor)
        run(tmp_path, "mp_random", s, vh - 0.4 + (0.02, -0.02, 0.0, 0.01, -0.01)[i], vp,
            base="monitor_penalty", cfg={"monitor_tpr": 0.1, "monitor_fpr": 0.1})  # as good: non-specific
        run(tmp_path, "clean_subspace", s, 0.1, vp - (0.10, 0.12, 0.08, 0.10, 0.10)[i])  # pass falls: breaks
        run(tmp_path, "rebound", s, vh, vp, fmt=0.1 if s <= 2 else 0.8)             # 2 collapse: breaks
        run(tmp_path, "plan", s, vh, vp, onset=(6, 7, 5, 6, 6)[i])                 # hacks later: delays
    run(tmp_path, "inoculation", 1, 0.1, 0.3)                                        # one seed: too few
    (tmp_path / "sweep.json").write_text(json.dumps({"arms": ["vanilla", "projected", "random", "oracle", "mp_good",
                                                              "mp_random", "clean_subspace", "rebound", "plan",
                                                              "inoculation"], "seeds": list(SEEDS)}))
    return tmp_path


def test_each_rule_gives_its_verdict_with_the_intervals_worked_by_hand(study: Path):
    v = summarise(study, rules=Rules(controls={"mp_good": "mp_random"}))["verdicts"]
    assert v["gate"]["passed"] and v["gate"]["vanilla_mean_hack"] == pytest.approx(0.75)
    got = {arm: x["verdict"] for arm, x in v["arms"].items()}
    assert got == {"projected": "works", "random": "nothing", "oracle": "upper bound (works)",
                   "mp_good": "non-specific", "mp_random": "works", "clean_subspace": "breaks the model",
                   "rebound": "breaks the model", "plan": "delays", "inoculation": "too few seeds"}
    # projected − vanilla per seed: −0.6, −0.6, −0.6, −0.4, −0.6: mean −0.56, SD √(0.032 / 4), SE SD / √5
    p = v["arms"]["projected"]
    sd = math.sqrt((4 * 0.04 ** 2 + 0.16 ** 2) / 4)
    assert p["delta_hack"]["mean"] == pytest.approx(-0.56)
    assert p["delta_hack"]["hi"] == pytest.approx(-0.56 + T4 * sd / math.sqrt(5), abs=1e-6)
    assert p["control"] == "random"                       # arms.py: projected's control
    # projected − random: −0.65, −0.55, −0.6, −0.45, −0.55 -> mean −0.56, below 0
    assert p["vs_control"]["mean"] == pytest.approx(-0.56) and p["vs_control"]["hi"] < 0
    # mp_good − mp_random: −0.02, 0.02, 0, −0.01, 0.01: mean 0, the interval holds 0
    m = v["arms"]["mp_good"]
    assert m["vs_control"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert m["vs_control"]["lo"] < 0 < m["vs_control"]["hi"]
    # clean_subspace: Δ pass −0.10, −0.12, −0.08, −0.10, −0.10: mean −0.10, SD √(0.0008 / 4), hi < −0.03
    c = v["arms"]["clean_subspace"]
    assert c["delta_pass_nohint"]["hi"] == pytest.approx(-0.10 + T4 * math.sqrt(0.0002 / 5), abs=1e-6)
    assert (v["arms"]["rebound"]["collapsed"], v["arms"]["rebound"]["collapsed_vanilla"]) == (2, 0)
    # plan: onset 6, 7, 5, 6, 6 against 3: Δ 3, 4, 2, 3, 3: SD √(2 / 4) -> lo = 3 − t · SD / √5 > 0
    assert v["arms"]["plan"]["delta_onset"]["lo"] == pytest.approx(3 - T4 * math.sqrt(0.5) / math.sqrt(5), abs=1e-6)


def test_no_verdict_when_vanilla_did_not_hack(tmp_path: Path):
    for s in SEEDS:
        run(tmp_path, "vanilla", s, 0.3, 0.3)
        run(tmp_path, "projected", s, 0.1, 0.3)
    v = summarise(tmp_path, rules=Rules())["verdicts"]
    assert not v["gate"]["passed"] and v["arms"] == {}
    assert "**Induction gate not passed:** vanilla's mean final eval hack is 0.300" in write_report(
        tmp_path, rules=Rules()).read_text()


def test_cli_prints_each_verdict_beside_what_the_arm_knew_and_refuses_a_bad_control_flag(study: Path, capsys):
    assert main(["report", str(study), "--verdicts", "--control", "mp_good=mp_random"]) == 0
    summary = json.loads((study / "summary.json").read_text())
    assert summary["verdicts"]["arms"]["mp_good"]["verdict"] == "non-specific"
    text = (study / "results.md").read_text()
    table = text.split("## Verdicts (pre-registered decision rules)")[1].split("## Headline")[0]
    row = next(line for line in table.splitlines() if line.startswith("| mp_good "))
    assert row.startswith("| mp_good (uses labels: monitor) | monitor: noisy monitor, TPR 0.90 / FPR 0.05 |")
    assert "| **non-specific** |" in row and "mp_random: +0.000" in row
    assert "| **works** |" in next(line for line in table.splitlines() if line.startswith("| projected |"))
    assert "- mp_random (uses labels: monitor): variant of monitor_penalty: " in text   # described by its base
    capsys.readouterr()
    assert main(["report", str(study), "--verdicts", "--control", "mp_good"]) == 2
    assert "--control 'mp_good': expected ARM=CONTROL" in capsys.readouterr().err
    assert main(["report", str(study), "--control", "mp_good=mp_random"]) == 2
    assert "add --verdicts" in capsys.readouterr().err
