"""training/lockstep.py: runs stepped together in one process give each run the run it gives alone.

The reference is the plain Trainer, one run per seed, with the same row noise (`--row-noise`: a row's
sampling noise depends on its run's seed and its row only) and the hook δS path the fleet trains with.
A fleet of two seeds must then sample the same completions, log the same metrics (timings aside) and
end at the same δS, up to the rounding of a batched matmul and of micro-batches that mix the runs."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from projected_grpo.cli import main
from projected_grpo.config import TIMING_KEYS, preset
from projected_grpo.errors import UserError
from projected_grpo.fast.row_noise import counter_noise, row_seeds
from projected_grpo.training import runio
from projected_grpo.training import train as train_mod
from projected_grpo.training.evaluate import EVAL_SAMPLES
from projected_grpo.training.runio import config_diff
from projected_grpo.training.lockstep import check_fleet, train_fleet

SEEDS = (41, 42)
BASE = replace(preset("smoke"), n_problems=4, max_new_tokens=16, steps=2, grade_workers=2, vhack_m=2,
               eval_samples=2, row_noise=True, delta_s_impl="hook")


def _close(a, b) -> bool:
    """Metric values equal, floats to 1e-5 relative or 1e-6 absolute (a projected cos_out is ~1e-8: rounding)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    return a == b


@pytest.fixture(scope="module")
def fleet_and_alone(tmp_path_factory, mixed_code_pairs):
    """Per δS path: a fleet of SEEDS and each seed alone (merged: the first seed alone only)."""
    root = tmp_path_factory.mktemp("lockstep")
    fleets = {}
    for impl in ("hook", "merged"):
        base = replace(BASE, arm="projected", pairs=mixed_code_pairs, delta_s_impl=impl)
        fleets[impl] = train_fleet([replace(base, seed=s, fleet_runs=len(SEEDS)) for s in SEEDS],
                                   [root / f"{impl}_fleet_s{s}" for s in SEEDS], progress=False)
        assert not fleets[impl].errors, fleets[impl].errors
        for s in SEEDS if impl == "hook" else SEEDS[:1]:
            train_mod.train(replace(base, seed=s), root / f"{impl}_alone_s{s}", progress=False)
    return root, fleets


@pytest.mark.parametrize("impl, seed", [("hook", SEEDS[0]), ("hook", SEEDS[1]), ("merged", SEEDS[0])])
def test_each_run_of_a_fleet_is_the_run_it_is_alone(fleet_and_alone, impl, seed):
    """hook: the runs train in one pass with per-row δS; merged: each in its own merged pass."""
    root, fleets = fleet_and_alone
    fleet = fleets[impl]
    alone, inside = root / f"{impl}_alone_s{seed}", root / f"{impl}_fleet_s{seed}"
    for name in (runio.SAMPLES, EVAL_SAMPLES):          # the same completions, graded alike
        a, b = runio.read_jsonl(alone / name), runio.read_jsonl(inside / name)
        assert len(a) == len(b) > 0
        assert [(r["completion"], r["reward"]) for r in a] == [(r["completion"], r["reward"]) for r in b]
    a, b = runio.read_jsonl(alone / runio.METRICS), runio.read_jsonl(inside / runio.METRICS)
    assert [r["kind"] for r in a] == [r["kind"] for r in b]
    for ra, rb in zip(a, b):
        differ = {k: (ra[k], rb.get(k)) for k in ra if k not in TIMING_KEYS and not _close(ra[k], rb.get(k))}
        assert not differ, (ra["kind"], ra.get("step"), differ)
    da, db = load_file(alone / "delta_s.safetensors"), load_file(inside / "delta_s.safetensors")
    scale = max(float(t.abs().max()) for t in da.values())
    assert scale > 1e-3                                                 # δS moved
    # Adam divides each gradient by its own running RMS, so an element whose gradient is near zero turns
    # the batched matmul's rounding into a visible step: (on one CPU, 1 of 3,072 elements differs by
    # 4e-4 of the scale, 3 by more than 1e-5). Every element to 1e-3 of the scale, 99% to 1e-5.
    gap = torch.cat([(da[k] - db[k]).abs().flatten() for k in da]) / scale
    assert float(gap.max()) < 1e-3 and float((gap < 1e-5).float().mean()) > 0.99, float(gap.max())
    assert json.loads((inside / runio.CONFIG).read_text())["fleet_runs"] == len(SEEDS)
    # the runs met: one sampling meeting per step and per eval chunk, one training meeting per pass
    assert fleet.meetings["train"] == BASE.steps * BASE.num_iterations and fleet.meetings["sample"] > BASE.steps
    assert fleet.seconds["sample"] > 0 and fleet.seconds["train"] > 0         # the batched calls were timed


def test_a_fleet_run_resumed_alone_and_a_mixed_fleet_are_refused(fleet_and_alone, capsys):
    root, _ = fleet_and_alone
    assert main(["train", "--resume", "--out", str(root / "hook_fleet_s41")]) != 0
    assert "started in a fleet of 2" in capsys.readouterr().err
    assert config_diff({"fleet_runs": 2}, {"fleet_runs": 5}) == []                 # any fleet size ...
    assert config_diff({"fleet_runs": 2}, {"fleet_runs": 1}) == ["fleet_runs"]     # ... but not alone
    cfgs = [replace(BASE, seed=s, fleet_runs=2) for s in SEEDS]
    with pytest.raises(UserError, match="differs in --lr"):
        check_fleet([cfgs[0], replace(cfgs[1], lr=1e-3)])
    with pytest.raises(UserError, match="appears twice"):
        check_fleet([cfgs[0], cfgs[0]])
    with pytest.raises(UserError, match="gradient routing"):
        check_fleet([replace(c, arm="routing") for c in cfgs])
    assert main(["train", "--fleet-seeds", "1,2", "--out", str(root / "x")]) != 0
    assert "must hold {seed}" in capsys.readouterr().err
    with pytest.raises(UserError, match="needs --row-noise"):
        check_fleet([replace(c, row_noise=False) for c in cfgs])
    assert main(["train", "--fleet-runs", "2", "--out", str(root / "y")]) != 0
    assert "started with --fleet-seeds" in capsys.readouterr().err


def test_row_noise_is_exp1_and_each_rows_own():
    """Exp(1) draws: mean and variance 1 (±4 SE), P(E > t) = e^-t at t = 1, 3; a row's draws depend on
    its (seed, row) and step only; distinct rows and steps draw differently."""
    seeds = row_seeds(7, 64)
    e = counter_noise(seeds, torch.tensor([3]), 4096).double()       # 262,144 draws
    n = e.numel()
    assert abs(float(e.mean()) - 1) < 4 / math.sqrt(n)
    assert abs(float(e.var()) - 1) < 4 * math.sqrt(8 / n)              # Var of E² - 1... SD of s² ≈ √8/√n
    for t in (1.0, 3.0):
        p = math.exp(-t)
        assert abs(float((e > t).double().mean()) - p) < 4 * math.sqrt(p * (1 - p) / n)
    again = counter_noise(row_seeds(7, 70)[5:9], torch.tensor([3]), 4096)   # rows 5..8 in another batch
    assert torch.equal(again, e[5:9].float())
    assert not torch.equal(e[0], e[1]) and not torch.equal(counter_noise(seeds, torch.tensor([4]), 4096)[0],
                                                              e[0].float())
    assert abs(float(torch.corrcoef(torch.stack([e[0], e[1]]))[0, 1])) < 4 / math.sqrt(4096)


@pytest.mark.timeout(300)
def test_a_run_that_fails_mid_fleet_stops_alone_and_the_others_finish(tmp_path, monkeypatch, mixed_code_pairs):
    """The grader raises on one run's second training batch: that run stops with the error in the result
    (its dir resumable), the other run is not left waiting for it and finishes every step."""
    from projected_grpo.env import grader

    real, calls = grader.grade_many, []

    def flaky(problems, items, env, *args, **kwargs):
        calls.append(len(items))
        if len(calls) == 3:            # no eval: step 1 of both runs, then one run's step 2
            raise RuntimeError("grader down")
        return real(problems, items, env, *args, **kwargs)

    monkeypatch.setattr(grader, "grade_many", flaky)
    base = replace(BASE, arm="vanilla", steps=2, eval_samples=0, fleet_runs=2, pairs=mixed_code_pairs)
    result = train_fleet([replace(base, seed=s) for s in SEEDS], [tmp_path / f"s{s}" for s in SEEDS],
                         progress=False)
    assert len(result.errors) == 1 and "grader down" in str(next(iter(result.errors.values())))
    failed = next(iter(result.errors))
    done = tmp_path / f"s{SEEDS[1 - failed]}"
    assert runio.run_state(done, base.steps) == "finished"
    assert runio.run_state(tmp_path / f"s{SEEDS[failed]}", base.steps) == "unfinished"
    rows = runio.read_jsonl(done / runio.METRICS)
    # the same fleet resumed: the finished run is left as it is, the failed one finishes
    assert main(["train", "--fleet-seeds", ",".join(map(str, SEEDS)), "--out", str(tmp_path / "s{seed}"),
                 "--resume"]) == 0
    assert runio.read_jsonl(done / runio.METRICS) == rows
    assert runio.run_state(tmp_path / f"s{SEEDS[failed]}", base.steps) == "finished"
