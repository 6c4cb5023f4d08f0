"""scripts/substrate_grid.py on constructed runs: onset, the four targets and the pre-registered choice
rule (docs/results/substrate/PLAN.md), each against numbers worked out by hand."""

import importlib.util
import json
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("substrate_grid",
                                              Path(__file__).parents[1] / "scripts/substrate_grid.py")
grid = sys.modules["substrate_grid"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(grid)


def make_run(root: Path, name: str, hack: list[float], final: dict, steps: int = 10) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"steps": steps}))
    base = {"kind": "eval", "step": 0, "eval_hack_rate": 0.1, "eval_format_rate": 0.9, "eval_pass_nohint": 0.2}
    rows = [base] + [{"kind": "train", "step": i + 1, "hack_rate": h} for i, h in enumerate(hack)]
    rows.append({"kind": "eval", "step": len(hack), **final})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


GOOD = {"eval_hack_rate": 0.8, "eval_format_rate": 0.9, "eval_pass_nohint": 0.2}


def test_onset_is_the_first_step_at_or_above_0_3_and_the_ratio_is_final_over_step_0(tmp_path):
    run = grid.load(make_run(tmp_path, "a_s1", [0.1, 0.29, 0.3, 0.1], {**GOOD, "eval_pass_nohint": 0.15}))
    assert (run.onset, run.point, run.done, run.finished) == (3, "a", 4, False)
    assert run.ratio == 0.15 / 0.2
    assert grid.load(make_run(tmp_path, "b_s1", [0.1, 0.2], GOOD)).onset is None


def test_targets_use_the_median_over_seeds_and_the_window_is_inclusive(tmp_path):
    # onsets 15, 20, 50 -> median 20 in [15, 50]; hack medians 0.8; format 0.9; ratio 1.0
    runs = [grid.load(make_run(tmp_path, f"p_s{i}", [0.0] * (k - 1) + [0.5], GOOD, steps=60))
            for i, k in enumerate((15, 20, 50))]
    met, short = grid.targets(runs)
    assert met == [True, True, True, True] and short == 0
    late = [grid.load(make_run(tmp_path, "q_s1", [0.0] * 59 + [0.5], {**GOOD, "eval_hack_rate": 0.4}, steps=60))]
    met, short = grid.targets(late)
    # onset 60: (60 - 50) / 15; hack 0.4: 0.1 / 0.5
    assert met == [False, False, True, True]
    assert abs(short - (10 / 15 + 0.1 / 0.5)) < 1e-12


def test_choice_prefers_the_onset_nearest_30_then_most_targets_then_smallest_shortfall(tmp_path):
    pts = {"early": [grid.load(make_run(tmp_path, "early_s1", [0.0] * 17 + [0.5], GOOD, steps=20))],
           "mid": [grid.load(make_run(tmp_path, "mid_s1", [0.0] * 33 + [0.5], GOOD, steps=40))]}
    assert grid.choose(pts) == "mid"          # |34 - 30| < |18 - 30|, both meet all four
    # none meets all: onset 12 (short 3/15 = 0.2) vs onset 10 (5/15): both 3 of 4 -> the smaller shortfall
    pts = {"a": [grid.load(make_run(tmp_path, "a_s1", [0.0] * 11 + [0.5], GOOD, steps=20))],
           "b": [grid.load(make_run(tmp_path, "b_s1", [0.0] * 9 + [0.5], GOOD, steps=20))],
           "c": [grid.load(make_run(tmp_path, "c_s1", [0.0] * 19 + [0.5], {**GOOD, "eval_format_rate": 0.1},
                                    steps=20))]}
    assert grid.choose(pts) == "a"


def test_the_committed_grid_table_is_what_the_script_prints_from_the_committed_runs():
    root = Path(__file__).parents[1] / "docs/results/substrate/grid2"
    assert (root / "grid.md").read_text() == grid.tables(root)
