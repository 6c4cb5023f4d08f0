"""Held-out evaluation (evaluate.py) inside a training run, on the smoke model:

- an eval row at step 0 (the base rate), every --eval-every steps and after the last step, each one
  written before that step's checkpoint, with the rates its eval_samples.jsonl rows give, per prompt
  set (renamed evaluators = the headline, the training name, no hint);
- the eval problems are the split's, never trained on, and no teacher completion is among the samples;
- eval is a function of δS and (seed, step) only: a fresh policy with a projected run's final δS, set up
  as a vanilla run without a teacher pool, samples and grades exactly the run's last eval;
- evaluating does not change training: the same run with --eval-samples 0 logs the same training rows
  and ends at the same δS;
- an interrupted run resumed from its checkpoint logs the same rows as the uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from projected_grpo.training import evaluate, runio, splits
from projected_grpo.training import train as train_mod
from projected_grpo.config import TIMING_KEYS, preset
from projected_grpo.env.grader import ATTEMPT_LABELS
from projected_grpo.env.prompts import EVAL_EVALUATORS
from projected_grpo.env.problems import load_problems
from projected_grpo.training.teacher import builtin_entries

N_EVAL, N_SAMPLES = 2, 2


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A projected smoke run with a teacher pool, 4 problems of which 2 are held out, and its V."""
    from projected_grpo.studies.experiments import prepare_v_hack

    d = tmp_path_factory.mktemp("eval")
    rows = (Path(train_mod.__file__).parents[1] / "data" / "pairs_code.jsonl").read_text().splitlines()
    pairs = d / "pairs.jsonl"   # six train pairs; of pg-001…pg-004 they name only pg-002
    pairs.write_text("\n".join([r for r in rows if '"train"' in r][:6]) + "\n")
    cfg = replace(preset("smoke"), arm="projected", n_problems=4, max_new_tokens=16, steps=2, grade_workers=2,
                  vhack_m=2, pairs=str(pairs), eval_problems=N_EVAL, eval_samples=N_SAMPLES, eval_every=1)
    assert cfg.teacher_pool == "builtin" and cfg.n_teacher == 1
    prepare_v_hack(cfg, d / "v.safetensors", verify=False, progress=False)
    return replace(cfg, v_hack=str(d / "v.safetensors"))


@pytest.fixture(scope="module")
def run(base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "projected"
    train_mod.train(base, out, progress=False)
    return out


def _rows(out: Path) -> list[dict]:
    return runio.read_jsonl(out / runio.METRICS)


def _comparable(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_eval_rows_at_step_0_every_k_and_last_before_each_checkpoint(run, base):
    rows = _rows(run)
    assert [(r["kind"], r["step"]) for r in rows] == [("eval", 0), ("train", 1), ("eval", 1), ("train", 2),
                                                      ("eval", 2)]
    assert runio.train_rows(rows) == rows[1::2] and runio.eval_rows(rows) == rows[0::2]
    split = json.loads((run / splits.SPLIT).read_text())
    assert len(split["eval"]) == N_EVAL and not set(split["eval"]) & set(split["train"])
    assert not set(split["eval"]) & set(split["pairs"])
    samples = runio.read_jsonl(run / evaluate.EVAL_SAMPLES)
    train_samples = runio.read_jsonl(run / runio.SAMPLES)
    assert not {s["problem_id"] for s in train_samples} & set(split["eval"])      # never trained on
    for row in runio.eval_rows(rows):
        step = [s for s in samples if s["step"] == row["step"]]
        assert [s["variant"] for s in step] == ["renamed"] * 4 + ["train_name"] * 4 + ["nohint"] * 4
        mine, train, nohint = step[:4], step[4:8], step[8:]
        for part in (mine, train, nohint):
            assert sorted({s["problem_id"] for s in part}) == sorted(split["eval"])
        assert {s["evaluator"] for s in mine} <= set(EVAL_EVALUATORS)          # renamed: the headline
        assert {(s["mode"], s["evaluator"]) for s in train} == {("run_tests", "run_tests")}
        assert {s["mode"] for s in nohint} == {"none"}
        assert row["eval_n"] == len(mine) == N_EVAL * N_SAMPLES and row["eval_problems"] == N_EVAL
        assert row["eval_n_all"] == 3 * N_EVAL * N_SAMPLES and row["eval_evaluators"] == "renamed"
        assert row["eval_temperature"] == base.eval_temperature
        assert row["eval_hack_rate"] == sum(s["label"] == "reward_hack" for s in mine) / len(mine)
        assert row["eval_attempt_rate"] == sum(s["label"] in ATTEMPT_LABELS for s in mine) / len(mine)
        assert row["eval_pass_rate"] == sum(s["gt_correct"] for s in mine) / len(mine)
        assert row["eval_format_rate"] == sum(s["format_ok"] for s in mine) / len(mine)
        assert row["eval_hack_rate_train_name"] == sum(s["label"] == "reward_hack" for s in train) / 4
        assert row["eval_pass_nohint"] == sum(s["gt_correct"] for s in nohint) / 4
    # the training rollouts mixed teacher rows in; the eval samples hold none of the pool's texts
    assert any(s["teacher"] for s in train_samples)
    pool = {t for ts in builtin_entries(load_problems("bundled")[:4], base.mode).values() for t in ts}
    assert not {s["completion"] for s in samples} & pool
    assert "teacher" not in samples[0] and "advantage" not in samples[0]


def test_eval_depends_only_on_delta_s_not_on_arm_teacher_or_projection(run, base):
    """The run's last eval (projected arm, teacher rows in training) is re-done from its final δS by
    a policy built as a vanilla arm with no teacher pool and no V: same samples, same grades, same row."""
    vanilla = replace(base, arm="vanilla", teacher_pool="", mix_ratio=0.0, v_hack="")
    model, tok, adapter = train_mod.load_policy(vanilla)
    final = load_file(run / "delta_s.safetensors")
    with torch.no_grad():
        for k, p in adapter.params().items():
            p.copy_(final[k])
    assert any(float(p.detach().abs().max()) > 0 for p in adapter.params().values())   # a trained δS
    env = train_mod.EnvConfig(mode=vanilla.mode, hint=vanilla.hint, timeout_s=vanilla.grade_timeout_s,
                              workers=2)
    problems = {p.id: p for p in load_problems("bundled")}
    eval_ids = json.loads((run / splits.SPLIT).read_text())["eval"]
    row, samples = evaluate.evaluate(model, tok, adapter, [problems[i] for i in eval_ids], vanilla, env,
                                     step=base.steps, device=torch.device("cpu"))
    logged = [s for s in runio.read_jsonl(run / evaluate.EVAL_SAMPLES) if s["step"] == base.steps]
    keep = ("problem_id", "sample", "completion", "label", "gt_correct", "passed", "format_ok")
    assert [{k: s[k] for k in keep} for s in samples] == [{k: s[k] for k in keep} for s in logged]
    assert _comparable([row]) == _comparable([runio.eval_rows(_rows(run))[-1]])


def test_evaluating_does_not_change_training(run, base, tmp_path):
    quiet = tmp_path / "no_eval"
    train_mod.train(replace(base, eval_samples=0), quiet, progress=False)
    assert runio.eval_rows(_rows(quiet)) == [] and not (quiet / evaluate.EVAL_SAMPLES).exists()
    assert json.loads((quiet / splits.SPLIT).read_text())["eval"] == json.loads(
        (run / splits.SPLIT).read_text())["eval"]                  # same split, the eval problems held out
    assert _comparable(runio.train_rows(_rows(quiet))) == _comparable(runio.train_rows(_rows(run)))
    a, b = load_file(run / "delta_s.safetensors"), load_file(quiet / "delta_s.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_redoes_rows_after_the_checkpoint_once(run, base, tmp_path):
    cut = tmp_path / "cut"
    train_mod.Trainer(base, cut, progress=False).run(until=1)
    assert runio.load_checkpoint(cut)["step"] == 1
    assert [r["step"] for r in runio.eval_rows(_rows(cut))] == [0, 1]   # checkpoint 1 ⇒ eval row 1
    # a crash after step 2's rows were written but before its checkpoint
    runio.append_jsonl(cut / runio.METRICS, [{"kind": "eval", "step": 2, "eval_hack_rate": 9.0}])
    runio.append_jsonl(cut / evaluate.EVAL_SAMPLES, [{"step": 2, "completion": "stale"}])
    train_mod.train(base, cut, resume=True, progress=False)
    assert _comparable(_rows(cut)) == _comparable(_rows(run))
    assert runio.read_jsonl(cut / evaluate.EVAL_SAMPLES) == runio.read_jsonl(run / evaluate.EVAL_SAMPLES)
