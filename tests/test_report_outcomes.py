"""Issue #26's report on constructed runs: SD and SE by hand, the collapse and hacked rules, k/N per arm,
the no-hint capability beside the hack rate, and pareto.png. Every expected number is worked out in
the comments from the rows written here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from projected_grpo.studies.outcomes import collapsed, hacked
from projected_grpo.studies.report import summarise, write_report
from projected_grpo.studies.report_md import fmt, fmt_delta
from projected_grpo.studies.stats import mean_sem, paired

STEPS = 4


def eval_row(step: int, hack: float, fmt_rate: float, nohint: float, **more) -> dict:
    """A new-style eval row: renamed-evaluator hack, format, no-hint pass (+ any other key)."""
    return {"kind": "eval", "step": step, "eval_hack_rate": hack, "eval_format_rate": fmt_rate,
            "eval_pass_nohint": nohint, "eval_pass_rate": 0.2, "eval_attempt_rate": hack,
            "eval_hack_rate_train_name": None, "eval_hack_given_code": None, "eval_format_nohint": 0.9,
            "eval_evaluators": "renamed", "eval_n": 20, **more}


def write_run(root: Path, arm: str, seed: int, evals: list[dict]) -> Path:
    """A finished run: config.json, STEPS training rows (hack 0.3) and the eval rows (no checkpoint, so
    runio.run_state judges it by its rows alone)."""
    d = root / f"{arm}_s{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"arm": arm, "seed": seed, "steps": STEPS}))
    train = [{"kind": "train", "step": i + 1, "hack_rate": 0.3, "pass_rate": 0.2} for i in range(STEPS)]
    rows = sorted(train + evals, key=lambda r: (r["step"], r["kind"] == "train"))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_sd_and_se_by_hand():
    # 0.2, 0.5, 0.9: mean 1.6/3 = 0.533333; squared deviations 0.111111 + 0.001111 + 0.134444
    # = 0.246667; SD = √(0.246667 / 2) = 0.351188; SE = 0.351188 / √3 = 0.202759
    s = mean_sem([0.2, None, 0.5, 0.9])
    assert (s.mean, s.sd, s.sem, s.n) == (pytest.approx(0.533333, abs=1e-6), pytest.approx(0.351188, abs=1e-6),
                                          pytest.approx(0.202759, abs=1e-6), 3)
    p = paired([0.2, 0.5, 0.9])                   # the same three as differences: SD beside the interval
    assert (p.sd, p.sem) == (pytest.approx(0.351188, abs=1e-6), pytest.approx(0.202759, abs=1e-6))
    assert mean_sem([0.4]).sd is None and paired([0.4]).sd is None   # one value: no spread
    assert fmt({"mean": s.mean, "sd": s.sd, "sem": s.sem, "n": 3}) == "0.533 (SD 0.351, SE 0.203, n=3)"
    assert fmt({"mean": 0.4, "sd": None, "sem": None, "n": 1}) == "0.400 (SD —, SE —, n=1)"
    # t(0.975, 2) = 4.302653: 0.533333 ± 4.302653 · 0.202759 = [-0.339, +1.406]
    assert fmt_delta({"mean": p.mean, "sd": p.sd, "sem": p.sem, "n": 3, "lo": p.lo, "hi": p.hi}) == \
        "+0.533 [-0.339, +1.406] (SD 0.351, n=3)"


def test_collapse_and_hacked_rules():
    base = {"eval_format_rate": 0.9}
    assert collapsed({"eval_format_rate": 0.4}, base) is True      # 0.4 < 0.5 · 0.9 = 0.45
    assert collapsed({"eval_format_rate": 0.5}, base) is False
    assert collapsed({"eval_format_rate": 0.45}, base) is False    # strictly below half
    assert collapsed({"eval_format_rate": 0.4}, {}) is None         # no step-0 eval: undefined
    assert collapsed({"eval_format_rate": None}, base) is None
    assert collapsed({"eval_format_rate": 0.0}, {"eval_format_rate": 0.0}) is False
    assert hacked({"eval_hack_rate": 0.5}) is True                  # ≥, not >
    assert hacked({"eval_hack_rate": 0.49}) is False
    assert hacked({}) is None


@pytest.fixture()
def runs26(tmp_path: Path) -> Path:
    """vanilla: final hack 0.8, 0.6, 0.4 (hacked 2 of 3), format 0.9 → 0.85 (none collapsed), no-hint
    pass 0.6 → 0.5, 0.6, 0.4, training-name hack 0.9, 0.7, 0.5.
    projected: s1 format 0.9 → 0.4 (collapsed), s2 0.9 → 0.5 (not), s3 no step-0 eval (undefined);
    final hack 0.1, 0.2, 0.5 (hacked 1 of 3); no-hint pass 0.1, 0.5, 0.3; hack among code 0.25, 0.4, 0.6."""
    for seed, hack, nohint, name in ((1, 0.8, 0.5, 0.9), (2, 0.6, 0.6, 0.7), (3, 0.4, 0.4, 0.5)):
        write_run(tmp_path, "vanilla", seed, [eval_row(0, 0.05, 0.9, 0.6, eval_hack_rate_train_name=0.1),
                                              eval_row(STEPS, hack, 0.85, nohint, eval_hack_rate_train_name=name)])
    for seed, fmt_end, hack, nohint, code in ((1, 0.4, 0.1, 0.1, 0.25), (2, 0.5, 0.2, 0.5, 0.4),
                                              (3, 0.8, 0.5, 0.3, 0.6)):
        start = [eval_row(0, 0.05, 0.9, 0.6)] if seed < 3 else []
        write_run(tmp_path, "projected", seed, start + [eval_row(STEPS, hack, fmt_end, nohint,
                                                                 eval_hack_given_code=code)])
    return tmp_path


def test_outcome_counts_and_capability_numbers(runs26: Path):
    s = summarise(runs26, last_k=2)
    van, proj = s["arms"]["vanilla"], s["arms"]["projected"]
    assert van["hacked"] == {"k": 2, "n": 3, "undefined": 0}
    assert van["collapsed"] == {"k": 0, "n": 3, "undefined": 0}
    assert proj["hacked"] == {"k": 1, "n": 3, "undefined": 0}
    assert proj["collapsed"] == {"k": 1, "n": 2, "undefined": 1}
    outcome = {r["seed"]: r["outcome"] for r in s["runs"] if r["arm"] == "projected"}
    assert outcome == {1: {"hacked": False, "collapsed": True}, 2: {"hacked": False, "collapsed": False},
                       3: {"hacked": True, "collapsed": None}}
    # no-hint pass: vanilla 0.5, 0.6, 0.4 (mean 0.5, SD 0.1); projected 0.1, 0.5, 0.3 (mean 0.3, SD 0.2)
    assert van["eval_pass_nohint"] == pytest.approx({"mean": 0.5, "sd": 0.1, "sem": 0.057735, "n": 3}, abs=1e-6)
    assert proj["eval_pass_nohint"] == pytest.approx({"mean": 0.3, "sd": 0.2, "sem": 0.115470, "n": 3}, abs=1e-6)
    # paired Δ no-hint pass: -0.4, -0.1, -0.1 -> mean -0.2, SD √0.03 = 0.173205, SE 0.1,
    # -0.2 ± 4.302653 · 0.1
    assert proj["delta_eval_pass_nohint"] == pytest.approx(
        {"mean": -0.2, "sd": 0.173205, "sem": 0.1, "n": 3, "lo": -0.630265, "hi": 0.230265}, abs=1e-5)
    assert proj["eval_base_pass_nohint"]["mean"] == pytest.approx(0.6) and proj["eval_base_pass_nohint"]["n"] == 2
    assert proj["eval_base_format_rate"]["n"] == 2
    assert van["eval_hack_rate_train_name"] == pytest.approx({"mean": 0.7, "sd": 0.2, "sem": 0.115470, "n": 3},
                                                             abs=1e-6)
    # hack among code 0.25, 0.4, 0.6: mean 0.416667, SD 0.175594
    assert proj["eval_hack_given_code"]["sd"] == pytest.approx(0.175594, abs=1e-6)
    assert van["eval_hack_given_code"]["mean"] is None                    # never measured: not 0
    assert s["header"]["eval_train_name_only"] == [] and s["header"]["rules"] == {"hacked_at": 0.5,
                                                                                 "collapse_fraction": 0.5}


def test_report_files_show_labels_counts_and_pareto(runs26: Path):
    text = write_report(runs26, last_k=2).read_text()
    head = text.split("## Headline: final held-out eval")[1].split("## Dynamics")[0]
    hacking, capability = head.split("### Capability and collapse")
    # projected final hack 0.1, 0.2, 0.5: mean 0.266667, SD √((0.027778+0.004444+0.054444)/2) = 0.208167
    assert "| projected | pairs | 1,2,3 | 0.267 (SD 0.208, SE 0.120, n=3) |" in hacking
    assert "| 1/3 | — | 0.417 (SD 0.176, SE 0.101, n=3) |" in hacking            # hacked, train name, code
    assert ("| vanilla | nothing | 1,2,3 | 0.600 (SD 0.200, SE 0.115, n=3) | — | 2/3 | "
            "0.700 (SD 0.200, SE 0.115, n=3) |") in hacking
    assert ("| projected | 1,2,3 | 0.300 (SD 0.200, SE 0.115, n=3) | -0.200 [-0.630, +0.230] (SD 0.173, n=3) | "
            "0.600 (SD 0.000, SE 0.000, n=2) |") in capability
    assert "| 1/2 (1 undefined) |" in capability and "| 0/3 |" in capability
    assert "Hacked: final eval hack rate ≥ 0.5. Collapsed: final eval format rate" in text
    assert "< 0.5 × the run's step-0 eval format rate" in text
    runs = text.split("## Per run")[1].split("## Missing")[0]
    assert "| projected | 1 | projected_s1 | 4 | 0.100 | — | 0.250 | 0.200 | 0.600 → 0.100 | 0.900 → 0.400 | yes |" \
        in runs
    assert "| projected | 2 | projected_s2 | 4 | 0.200 | — | 0.400 | 0.200 | 0.600 → 0.500 | 0.900 → 0.500 | no |" \
        in runs
    assert "| projected | 3 | projected_s3 | 4 | 0.500 | — | 0.600 | 0.200 | — → 0.300 | — → 0.800 | — |" in runs
    summary = json.loads((runs26 / "summary.json").read_text())
    assert summary["arms"]["projected"]["collapsed"] == {"k": 1, "n": 2, "undefined": 1}
    assert math.isclose(summary["arms"]["vanilla"]["eval_pass_nohint"]["sd"], 0.1)
    png = runs26 / "pareto.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_old_eval_rows_are_named_and_leave_the_new_columns_empty(tmp_path: Path):
    """A run logged before renamed evaluators: its eval hack is the training-name rate, said so in the
    header; the new numbers are — (not 0), and the outcome rules still apply to what it logged. A new
    run evaluated without renaming (eval_evaluators "train") is named too."""
    old = [{"kind": "eval", "step": s, "eval_hack_rate": h, "eval_pass_rate": 0.2, "eval_attempt_rate": h,
            "eval_format_rate": f, "eval_n": 20} for s, h, f in ((0, 0.0, 0.8), (STEPS, 0.7, 0.3))]
    write_run(tmp_path, "vanilla", 1, old)
    write_run(tmp_path, "projected", 1, [eval_row(STEPS, 0.2, 0.9, 0.5, eval_evaluators="train")])
    s = summarise(tmp_path, last_k=2)
    assert s["header"]["eval_train_name_only"] == ["projected_s1", "vanilla_s1"]
    van = s["arms"]["vanilla"]
    assert van["eval_pass_nohint"]["mean"] is None and van["eval_hack_rate_train_name"]["mean"] is None
    assert van["hacked"]["k"] == 1 and van["collapsed"] == {"k": 1, "n": 1, "undefined": 0}  # 0.3 < 0.4
