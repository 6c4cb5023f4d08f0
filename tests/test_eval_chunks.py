"""Eval sampling calls (--eval-chunk) and grading a chunk while the next one samples (--eval-overlap,
issue #28): the chunk sizes follow the flag, the grades of every row are those of its own completion,
in prompt order, and with the overlap the grader really runs while the next chunk samples."""

from __future__ import annotations

import threading
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from projected_grpo.config import preset
from projected_grpo.env.grader import EnvConfig, grade_many
from projected_grpo.errors import UserError
from projected_grpo.training import dist, evaluate
from tests.test_env_grader import ADD, fence

WRONG = "def add(a, b):\n    return a - b\n"


def _run(monkeypatch, cfg, grade=None, on_sample=None):
    """evaluate() on 4 problems with a sampler whose k-th completion overall is the canonical solution
    for even k and a wrong one for odd k; returns (sampling call sizes, rows, expected label per row)."""
    monkeypatch.setattr(dist, "gather_rows", lambda rows: rows)
    monkeypatch.setattr(evaluate, "encode_prompts", lambda tok, msgs, device: (torch.zeros(len(msgs), 3),) * 2)
    calls, texts = [], []

    def sampler(model, tok, adapter, ids, mask, n, *args, **kwargs):
        if on_sample:
            on_sample(len(calls))
        calls.append(ids.shape[0] * n)
        new = [fence(ADD.canonical_solution if (len(texts) + i) % 2 == 0 else WRONG) for i in range(ids.shape[0])]
        texts.extend(new)
        return SimpleNamespace(texts=new)

    problems = [replace(ADD, id=f"add{i}") for i in range(4)]
    _, rows = evaluate.evaluate(None, None, None, problems, cfg, EnvConfig(mode="run_tests", workers=1), step=0,
                                device=torch.device("cpu"), sampler=sampler, grade=grade)
    return calls, rows, texts


def test_chunk_sizes_follow_eval_chunk_and_grades_stay_with_their_rows(monkeypatch):
    base = replace(preset("smoke"), prompts_per_step=4, group_size=2, eval_samples=3)   # 12 rows a prompt set
    for overlap in (True, False):
        calls, rows, texts = _run(monkeypatch, replace(base, eval_chunk=5, eval_overlap=overlap))
        assert calls == [5, 5, 2] * 3
        assert [r["completion"] for r in rows] == texts                  # sampled order = row order
        assert [r["label"] for r in rows] == ["correct" if k % 2 == 0 else "incorrect" for k in range(36)]
        assert [(r["problem_id"], r["sample"]) for r in rows[:4]] == [("add0", 0), ("add0", 1), ("add0", 2),
                                                                      ("add1", 0)]
    calls, _, _ = _run(monkeypatch, replace(base, eval_chunk=0))
    assert calls == [8, 4] * 3                       # 0: a training step's batch, P·G = 8 rows


@pytest.mark.parametrize("overlap", [True, False])
def test_with_overlap_a_chunk_is_graded_while_the_next_one_samples(monkeypatch, overlap):
    """The first chunk's grading waits (up to 2 s) for the second chunk's sampling to start: it sees it
    start only when grading runs beside sampling."""
    second_started, seen = threading.Event(), []

    def on_sample(k):
        if k == 1:
            second_started.set()

    def grade(problems_by_id, items, env):
        if not seen:
            seen.append(second_started.wait(timeout=2.0))
        return grade_many(problems_by_id, items, env)

    cfg = replace(preset("smoke"), prompts_per_step=4, group_size=2, eval_samples=3, eval_chunk=6,
                  eval_overlap=overlap)
    _, rows, _ = _run(monkeypatch, cfg, grade=grade, on_sample=on_sample)
    assert seen == [overlap] and len(rows) == 36


def test_negative_eval_chunk_is_refused():
    with pytest.raises(UserError, match="--eval-chunk must be >= 0"):
        replace(preset("smoke"), eval_chunk=-1).validate()
