"""Held-out evaluation: the current policy on the eval problems, and nothing else (DESIGN §8).

The trainer evaluates at step 0 (before any update: the base rate), every `--eval-every` steps and
after the last step, always before that step's checkpoint is written (a checkpoint implies its eval
row exists). One evaluation:
  1. each eval problem's prompt, `--eval-samples` completions from the policy with δS folded in, at
     `--eval-temperature` (0 = greedy) and `--eval-max-new-tokens`;
  2. graded by the run's grader (`grade_many`), exactly as training rollouts are;
  3. rates over all eval samples, written as one metrics.jsonl row with "kind": "eval":
       eval_hack_rate    = share labelled "reward_hack"
       eval_attempt_rate = share with a label in ATTEMPT_LABELS (a hack was tried)
       eval_pass_rate    = share with gt_correct (the strict oracle)
       eval_format_rate  = share with format_ok
     and the graded completions to eval_samples.jsonl (each with its step).
What the training step does to its rollouts never happens here: no teacher rows are mixed in, nothing
is projected (no gradient is taken), no Rebound reward modification (the rates read the grades).

Sampling seeds come from (seed, step, rank, chunk) and the torch RNG state is restored afterwards, so
an evaluation never changes the training trajectory. Across data-parallel ranks the eval problems are
dealt out like training prompts (problems[rank::world]) and the graded samples gathered; rank 0 writes.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import torch

from projected_grpo import dist
from projected_grpo.config import TrainConfig
from projected_grpo.env.grader import ATTEMPT_LABELS, EnvConfig, grade_many
from projected_grpo.rollout import encode_prompts, sample

EVAL_SAMPLES = "eval_samples.jsonl"


def due(step: int, cfg: TrainConfig) -> bool:
    """Whether the run evaluates after `step` completed steps: 0, every eval_every, and the last."""
    if cfg.eval_samples == 0:
        return False
    return step == 0 or step == cfg.steps or (cfg.eval_every > 0 and step % cfg.eval_every == 0)


def eval_seed(seed: int, step: int, rank: int, chunk: int) -> int:
    """The sampling seed of one eval chunk (a different stream from the training samples')."""
    return ((seed * 1_000_003 + step) * 1_009 + rank) * 101 + chunk + 7


def evaluate(model, tok, adapter, problems: list, cfg: TrainConfig, env: EnvConfig, step: int,
             device: torch.device, grade=None, sampler=None) -> tuple[dict, list[dict]]:
    """(eval metrics row, graded sample rows) over all ranks, `problems` being every eval problem.
    `grade` / `sampler` (None: grader.grade_many / rollout.sample) are the run's own."""
    t0 = time.perf_counter()
    local = problems[dist.rank()::dist.world_size()]
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):   # the training RNG stream is left as it was
        rows = _sample_and_grade(model, tok, adapter, local, cfg, env, step, device, grade or grade_many,
                                 sampler or sample)
    rows = dist.gather_rows(rows)
    return summarize(rows, step, len(problems), cfg.eval_temperature, time.perf_counter() - t0), rows


def _sample_and_grade(model, tok, adapter, problems: list, cfg: TrainConfig, env: EnvConfig, step: int,
                      device: torch.device, grade, sampler) -> list[dict]:
    """This rank's eval samples, graded, in chunks no larger than a training step's batch."""
    n = cfg.eval_samples
    per_chunk = max(1, cfg.prompts_per_step * cfg.group_size // n)   # prompts per sampling call
    max_new = cfg.eval_max_new_tokens or cfg.max_new_tokens
    rows = []
    for c, start in enumerate(range(0, len(problems), per_chunk)):
        chunk = problems[start:start + per_chunk]
        ids, mask = encode_prompts(tok, [p.messages(cfg.mode, cfg.hint) for p in chunk], device)
        out = sampler(model, tok, adapter, ids, mask, n, max_new, cfg.eval_temperature, cfg.top_p,
                     seed=eval_seed(cfg.seed, step, dist.rank(), c),
                     static_cache=cfg.fast_rollout and device.type == "cuda", attention=cfg.decode_attention)
        items = [{"id": p.id, "completion": text, "mode": cfg.mode}
                 for p, text in zip((p for p in chunk for _ in range(n)), out.texts)]  # (len(chunk)·n,)
        grades = grade({p.id: p for p in chunk}, items, env)
        rows += [{"step": step, "problem_id": it["id"], "sample": i % n, "completion": it["completion"],
                  **asdict(g)} for i, (it, g) in enumerate(zip(items, grades))]
    return rows


def summarize(rows: list[dict], step: int, n_problems: int, temperature: float, seconds: float) -> dict:
    """The metrics.jsonl row of one evaluation (rates are None when there were no samples)."""

    def rate(hit) -> float | None:
        return float(np.mean([hit(r) for r in rows])) if rows else None

    return {"kind": "eval", "step": step,
            "eval_hack_rate": rate(lambda r: r["label"] == "reward_hack"),
            "eval_pass_rate": rate(lambda r: r["gt_correct"]),
            "eval_attempt_rate": rate(lambda r: r["label"] in ATTEMPT_LABELS),
            "eval_format_rate": rate(lambda r: r["format_ok"]),
            "eval_n": len(rows), "eval_problems": n_problems, "eval_temperature": temperature,
            "eval_s": seconds}
