"""The arms beyond the pair V (arms.py): leave-one-mode-out, refresh (and its resume), the coverage
diagnostic, and the oracle upper bound. The no-cheat rule over every other arm is
tests/test_train.py::test_oracle_never_reaches_reward_advantage_or_projection."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from projected_grpo import arms
from projected_grpo.interventions import arm_label, uses_labels
from projected_grpo.directions import oracle
from projected_grpo.training import runio
from projected_grpo.training import train as train_mod
from projected_grpo.core.adapter import read_metadata
from projected_grpo.cli import main
from projected_grpo.config import TIMING_KEYS, preset
from projected_grpo.env.grader import grade_many
from projected_grpo.errors import UserError
from projected_grpo.core.projection import project_grads
from projected_grpo.studies.report_md import arm_lines
from projected_grpo.directions.vhack import random_v, save_v_hack


FAST = dict(n_problems=4, max_new_tokens=16, grade_workers=2, vhack_m=2, eval_samples=0)
COV_KEYS = ("cov_span", "cov_removed", "cov_span_null", "cov_rows")


def smoke(**kw):
    return replace(preset("smoke"), **(FAST | kw))


def metrics(out: Path) -> list[dict]:
    return runio.train_rows(runio.read_jsonl(out / runio.METRICS))


def without(rows: list[dict], keys) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in keys} for r in rows]


@pytest.fixture(scope="module")
def v_hack(tmp_path_factory, mixed_code_pairs) -> str:
    """The real V (m = 2) from all the test pairs (run_tests and stdout)."""
    path = tmp_path_factory.mktemp("v") / "v.safetensors"
    assert main(["extract", "--out", str(path), "--vhack-m", "2", "--pairs", mixed_code_pairs]) == 0
    return str(path)


# ---- leave-one-mode-out ----------------------------------------------------------------------
def test_lomo_v_is_extracted_without_the_runs_mode(v_hack, mixed_code_pairs, tmp_path):
    trainer = train_mod.Trainer(smoke(arm="lomo", v_hack=v_hack, pairs=mixed_code_pairs, mode="run_tests"),
                                tmp_path / "run", progress=False)
    path = tmp_path / "run" / "v_hack_lomo.safetensors"
    meta = read_metadata(path)
    assert json.loads(meta["modes"]) == ["stdout"] and meta["n_train"] == "3" and meta["m"] == "2"
    # the same V as an extraction from the stdout pairs alone, and not the real (all-mode) V
    alone = tmp_path / "stdout_only.safetensors"
    assert main(["extract", "--out", str(alone), "--vhack-m", "2", "--pairs", mixed_code_pairs,
                 "--vhack-modes", "stdout"]) == 0
    lomo, ref, real = load_file(path), load_file(alone), load_file(v_hack)
    assert all(torch.equal(lomo[k], ref[k]) for k in lomo)
    assert not any(torch.allclose(lomo[k], real[k]) for k in lomo)
    # it is what the arm projects with; the real V is what it measures
    assert all(torch.equal(trainer.v_project[k].cpu(), lomo[k]) for k in lomo)
    assert all(torch.equal(trainer.v_measure[k].cpu(), real[k]) for k in real)


def test_lomo_without_pairs_of_another_mode_is_refused(v_hack, tmp_path):
    only_run_tests = tmp_path / "pairs.jsonl"
    rows = (Path(train_mod.__file__).parents[1] / "data" / "pairs_code.jsonl").read_text().splitlines()
    only_run_tests.write_text("\n".join(r for r in rows if '"run_tests"' in r) + "\n")
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"--arm lomo: .* no training pairs of a mode other than --mode run_tests"):
        train_mod.Trainer(smoke(arm="lomo", v_hack=v_hack, pairs=str(only_run_tests)), out, progress=False)
    assert not out.exists()


# ---- refresh ---------------------------------------------------------------------------------
def test_refresh_v_moves_with_delta_s_and_resumes_bit_identically(mixed_code_pairs, tmp_path):
    # V re-extracted before steps 3 (index 2) and 5; V_0 is the real V extracted at δS = 0
    cfg = smoke(arm="refresh", pairs=mixed_code_pairs, steps=4, refresh_every=2)
    full, cut = tmp_path / "full", tmp_path / "cut"
    trainer = train_mod.Trainer(cfg, full, progress=False)
    trainer.run(until=3)
    shutil.copytree(full, cut)       # the run dir as a run killed after step 3's checkpoint leaves it
    trainer.start_step = 3           # the uninterrupted run: the same trainer, its state in memory
    trainer.run()
    rows = metrics(full)
    assert [r["refresh_s"] > 0 for r in rows] == [False, False, True, False]
    assert [r["refresh_overlap"] for r in rows[:2]] == pytest.approx([1.0, 1.0])
    assert all(r["refresh_overlap"] < 1 - 1e-4 for r in rows[2:])          # δS moved, so did V
    assert rows[2]["cos_in"] != rows[2]["cos_in_real"]                     # projects the new V ...
    assert rows[0]["cos_in"] == rows[0]["cos_in_real"]                     # ... measures V_0
    # resumed after step 3: step 4 must project with the V re-extracted for step 3, not V_0
    train_mod.train(cfg, cut, resume=True, progress=False)
    assert without(metrics(cut), TIMING_KEYS) == without(rows, TIMING_KEYS)
    a, b = load_file(full / "delta_s.safetensors"), load_file(cut / "delta_s.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refresh_every_must_be_positive(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "a"), "--arm", "refresh", "--refresh-every", "0"]) == 2
    assert "--refresh-every must be >= 1" in capsys.readouterr().err


# ---- coverage --------------------------------------------------------------------------------
def test_coverage_metrics_read_the_span_and_the_one_sided_share():
    gen = torch.Generator().manual_seed(0)
    r, m, n = 512, 4, 64
    g_h = {f"m{i}": torch.randn(r, generator=gen) for i in range(n)}

    def containing(sign: float) -> dict:  # V whose first row is ±ĝ_h, the rest orthonormal to it
        out = {}
        for k, g in g_h.items():
            q, _ = torch.linalg.qr(torch.cat([g[:, None], torch.randn(r, m - 1, generator=gen)], 1))
            v = q.T.contiguous()
            out[k] = v * torch.where(v[0] @ g > 0, 1.0, -1.0) * torch.tensor([sign] + [1.0] * (m - 1))[:, None]
        return out
    rand = {k: random_v(r, m, gen) for k in g_h}
    hackward = oracle.coverage(g_h, containing(+1.0), rand)
    assert hackward["cov_span"] == pytest.approx(1.0, abs=1e-5)
    assert hackward["cov_removed"] == pytest.approx(1.0, abs=1e-5)
    assert hackward["cov_span_null"] == pytest.approx(math.sqrt(m / r), rel=0.25)
    backward = oracle.coverage(g_h, containing(-1.0), rand)   # same span, but V g_h ≤ 0: nothing removed
    assert backward["cov_span"] == pytest.approx(1.0, abs=1e-5) and backward["cov_removed"] < 0.1
    unrelated = oracle.coverage(g_h, rand, rand)
    assert unrelated["cov_span"] == pytest.approx(math.sqrt(m / r), rel=0.25)
    assert oracle.coverage({k: torch.zeros(r) for k in g_h}, rand, rand)["cov_span"] is None


def test_coverage_changes_nothing_and_sees_a_v_built_from_the_hack_gradient(v_hack, mixed_code_pairs,
                                                                           tmp_path, monkeypatch):
    cfg = smoke(arm="projected", v_hack=v_hack, pairs=mixed_code_pairs, steps=2)
    plain, cov = tmp_path / "plain", tmp_path / "cov"
    train_mod.train(cfg, plain, progress=False)
    seen = []
    real_hack_gradient = oracle.hack_gradient

    def keep(*args, **kwargs):
        g_h, n = real_hack_gradient(*args, **kwargs)
        seen.append(g_h)
        return g_h, n
    monkeypatch.setattr(oracle, "hack_gradient", keep)
    train_mod.train(replace(cfg, coverage=True), cov, progress=False)
    # bit-identical training: δS and every training metric but the diagnostic's own
    a, b = load_file(plain / "delta_s.safetensors"), load_file(cov / "delta_s.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = metrics(cov)
    assert without(metrics(plain), TIMING_KEYS) == without(rows, TIMING_KEYS + COV_KEYS)
    # the smoke batch of step 1 holds labelled hack rows (teacher exploits): the diagnostic ran on them
    first = rows[0]
    assert first["cov_rows"] > 0 and 0 < first["cov_removed"] <= first["cov_span"] <= 1
    # a V whose first axis is step 1's g_h (the rest random): the same batch (δS = 0, same samples)
    # is then fully covered, and fully removed by the one-sided projection
    trainer = train_mod.Trainer(replace(cfg, v_hack=v_hack, steps=1, coverage=True), tmp_path / "built",
                                progress=False)
    gen = torch.Generator().manual_seed(1)
    built = {}
    for k, g in seen[0].items():
        q, _ = torch.linalg.qr(torch.cat([g[:, None].double(), torch.randn(g.numel(), 1, generator=gen,
                                                                            dtype=torch.float64)], 1))
        built[k] = (q.T * torch.where(q[:, 0] @ g.double() > 0, 1.0, -1.0)[None, None]).float()[0:2]
        built[k][1] = q[:, 1].float()
    path = save_v_hack(tmp_path / "built.safetensors", built, trainer.adapter, control="none",
                       pairs_sha256="test", modes=None, n_train=0)
    out = tmp_path / "with_built_v"
    train_mod.train(replace(cfg, v_hack=str(path), steps=1, coverage=True), out, progress=False)
    [row] = metrics(out)
    assert row["cov_rows"] == first["cov_rows"]
    assert row["cov_span"] == pytest.approx(1.0, abs=1e-4) and row["cov_removed"] == pytest.approx(1.0, abs=1e-4)
    assert row["cov_span_null"] == pytest.approx(first["cov_span_null"], rel=1e-5)  # the seeded null
    assert row["cov_span_null"] < 0.5 * row["cov_span"]


# ---- oracle (upper bound) --------------------------------------------------------------------
def test_oracle_arm_removes_the_hack_rows_gradient_direction(v_hack, mixed_code_pairs, tmp_path):
    # fp32: g_h is recomputed below on another route, equal to it up to fp32 rounding
    cfg = smoke(arm="oracle", dtype="float32", pairs=mixed_code_pairs, steps=1)
    trainer = train_mod.Trainer(cfg, tmp_path / "honest", progress=False)
    seen = {}
    real_backward, real_opt_step = trainer.backward, trainer.opt.step

    def backward(rows, adv, is_teacher=None, batch=None):  # the real pass (g_h comes from oracle.py)
        seen.update(rows=rows, adv=adv.clone(), is_teacher=list(is_teacher))
        return real_backward(rows, adv, is_teacher, batch)

    def opt_step(*args, **kwargs):                          # the gradient the optimiser is given
        seen["g"] = {k: p.grad.clone() for k, p in trainer.adapter.params().items()}
        return real_opt_step(*args, **kwargs)
    trainer.backward, trainer.opt.step = backward, opt_step
    trainer.run()
    [row] = metrics(tmp_path / "honest")
    hack = [s["label"] == "reward_hack" for s in runio.read_jsonl(tmp_path / "honest" / runio.SAMPLES)]
    assert any(hack) and row["cov_rows"] == sum(hack) and row["uses_labels"] is True
    # g_h on another route: the whole batch with the non-hack rows' advantages zeroed (β = 0), at δS = 0
    with torch.no_grad():
        for p in trainer.adapter.params().values():
            p.zero_()
    mask = torch.tensor(hack, dtype=seen["adv"].dtype)
    real_backward(seen["rows"], seen["adv"] * mask, seen["is_teacher"])
    g_h = {k: p.grad.clone() for k, p in trainer.adapter.params().items()}
    for k, g in seen["g"].items():
        assert float(g @ g_h[k]) <= 1e-5 * float(g.norm() * g_h[k].norm())   # no hack-ward part left
        v = trainer.v_project[k][0]
        assert float(v @ g_h[k]) == pytest.approx(float(g_h[k].norm()), rel=1e-3)  # V = ĝ_h
    assert row["cos_in"] > 0.1 and row["cos_out"] < 1e-6      # it did remove something
    assert row["cos_in_real"] != row["cos_in"]                # measured with the real V too
    # with the labels scrambled (every row a hack) the same run ends elsewhere: the labels reach it
    def scrambled(*args, **kwargs):
        grades = grade_many(*args, **kwargs)
        for g in grades:
            g.label = "reward_hack"
        return grades
    train_mod.train(cfg, tmp_path / "scrambled", progress=False, grade=scrambled)
    a = load_file(tmp_path / "honest" / "delta_s.safetensors")
    b = load_file(tmp_path / "scrambled" / "delta_s.safetensors")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_oracle_directions_project_nothing_without_hack_rows():
    g = {"a": torch.tensor([1.0, -2.0, 3.0])}
    v = oracle.oracle_directions({"a": torch.zeros(3)})
    stats = project_grads(g, v, apply=True)
    assert torch.equal(g["a"], torch.tensor([1.0, -2.0, 3.0])) and stats.cos_in == 0.0


def test_the_oracle_arm_is_declared_an_upper_bound_wherever_it_is_named():
    oracle_arm = arms.get("oracle")
    assert uses_labels(oracle_arm) and "UPPER BOUND" in oracle_arm.description
    assert arm_label("oracle") == "oracle (upper bound: uses labels)"
    assert [a.name for a in arms.TABLE if a.upper_bound] == ["oracle"]
    lines = arm_lines({"vanilla": {}, "oracle": {}})
    assert any(line.startswith("- oracle (upper bound: uses labels): UPPER BOUND") for line in lines)
    from projected_grpo.config import field_help
    assert "UPPER BOUND" in field_help("arm")
