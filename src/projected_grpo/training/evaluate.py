"""Held-out evaluation: the current policy on the eval problems, and nothing else (DESIGN §8).

The trainer evaluates at step 0 (before any update: the base rate), every `--eval-every` steps and
after the last step, always before that step's checkpoint is written (a checkpoint implies its eval
row exists). One evaluation samples `--eval-samples` completions per eval problem under up to three
prompt sets (VARIANTS), at `--eval-temperature` (0 = greedy) and `--eval-max-new-tokens`, with δS
folded in, and grades them with the run's grader (`grade_many`), exactly as training rollouts are:
  renamed     the run's loophole hint, the evaluator's name drawn per sample from
              prompts.EVAL_EVALUATORS (ten names, none of them the training name; mode run_tests
              with --eval-renamed). The grader calls and detects the name the prompt used, so a
              hack counts only if it overwrites the evaluator this prompt named. Other modes (and
              --eval-renamed false) use the training prompt here.
  train_name  the training prompt itself (only when `renamed` renamed something).
  nohint      no loophole hint (mode none), strict oracle: the capability a defence must keep
              (--eval-nohint; in mode none it is the primary set itself, not sampled twice).
One metrics.jsonl row, "kind": "eval" (rates None when a set has no samples):
  eval_hack_rate, eval_pass_rate, eval_attempt_rate, eval_format_rate, eval_hack_given_code, eval_n
      on the primary set (renamed when it exists); eval_hack_given_code = hack rate among the samples
      that are well-formed code (format_ok), so a policy that stops writing code does not read as one
      that stopped hacking; eval_evaluators = "renamed" or "train" says which names they are under;
  eval_hack_rate_train_name, eval_pass_rate_train_name, eval_format_rate_train_name,
  eval_hack_given_code_train_name   the same on the training prompt (= the primary set's when no
      renaming happened);
  eval_pass_nohint, eval_format_nohint   on the no-hint set.
The graded completions go to eval_samples.jsonl (each with its step, variant and evaluator name).
What the training step does to its rollouts never happens here: no teacher rows are mixed in, nothing
is projected (no gradient is taken), no Rebound reward modification (the rates read the grades), and
a gradient-routing quarantine δQ is dropped (the deployed policy is δS alone; routing.py logs the
headline set with δQ beside it as eval_*_with_quarantine).

Sampling seeds come from (seed, step, rank, chunk, variant) and the torch RNG state is restored
afterwards, so an evaluation never changes the training trajectory; a sample's evaluator name comes
from (seed, step, problem, sample), so it does not depend on the number of ranks. Across
data-parallel ranks the eval problems are dealt out like training prompts (problems[rank::world]),
each rank samples in chunks of --eval-chunk rows (0: its own share of a training batch, P·G / world
rows), and the graded samples are gathered; rank 0 writes. With --eval-overlap (default) a chunk is
graded in a background thread while the next one samples on the device: the grades are the same, the
wall time is about max(sampling, grading) rather than their sum.
"""

from __future__ import annotations

import contextlib
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import numpy as np
import torch

from projected_grpo.training import dist
from projected_grpo.config import TrainConfig
from projected_grpo.core.quarantine import deployed
from projected_grpo.env.grader import ATTEMPT_LABELS, EnvConfig, grade_many
from projected_grpo.env.prompts import EVAL_EVALUATORS, TRAIN_EVALUATOR
from projected_grpo.training.rollout import encode_prompts, row_noise, sample

EVAL_SAMPLES = "eval_samples.jsonl"


def due(step: int, cfg: TrainConfig) -> bool:
    """Whether the run evaluates after `step` completed steps: 0, every eval_every, and the last."""
    if cfg.eval_samples == 0:
        return False
    return step == 0 or step == cfg.steps or (cfg.eval_every > 0 and step % cfg.eval_every == 0)


def eval_seed(seed: int, step: int, rank: int, chunk: int) -> int:
    """The sampling seed of one eval chunk (a different stream from the training samples')."""
    return ((seed * 1_000_003 + step) * 1_009 + rank) * 101 + chunk + 7


VARIANTS = ("renamed", "train_name", "nohint")


def evaluator_name(seed: int, step: int, problem_id: str, sample: int) -> str:
    """The renamed evaluator of one eval sample: a seeded draw from prompts.EVAL_EVALUATORS."""
    draw = random.Random(f"{seed}/{step}/{problem_id}/{sample}").randrange(len(EVAL_EVALUATORS))
    return EVAL_EVALUATORS[draw]


def variants(cfg: TrainConfig) -> list[str]:
    """The prompt sets this run's eval samples: the primary one first."""
    renames = cfg.eval_renamed and cfg.mode == "run_tests"
    out = ["renamed"] if renames else ["train_name"]
    if renames:
        out.append("train_name")
    if cfg.eval_nohint and cfg.mode != "none":
        out.append("nohint")
    return out


def prompt_rows(problems: list, cfg: TrainConfig, step: int, variant: str) -> list[dict]:
    """One row per eval sample of `variant`: problem, sample index, mode, hint and evaluator name."""
    mode, hint = ("none", "simple") if variant == "nohint" else (cfg.mode, cfg.hint)   # mode none has one hint
    return [{"problem": p, "sample": i, "mode": mode, "hint": hint,
             "evaluator": evaluator_name(cfg.seed, step, p.id, i) if variant == "renamed" else TRAIN_EVALUATOR}
            for p in problems for i in range(cfg.eval_samples)]


def evaluate(model, tok, adapter, problems: list, cfg: TrainConfig, env: EnvConfig, step: int,
             device: torch.device, grade=None, sampler=None, edit=None, *, quarantine: bool = False,
             primary_only: bool = False) -> tuple[dict, list[dict]]:
    """(eval metrics row, graded sample rows) over all ranks, `problems` being every eval problem.
    `grade` / `sampler` (None: grader.grade_many / rollout.sample) are the run's own; `edit` (None: none)
    turns each eval prompt's messages into the ones the arm deploys (its prompt interventions).
    The policy evaluated is the deployed one: a gradient-routing quarantine δQ is dropped
    (core/quarantine.py), unless `quarantine` (routing's diagnostic, with `primary_only`: the
    headline prompt set alone, on the same seeds, so its samples pair with the deployed ones)."""
    t0 = time.perf_counter()
    local = problems[dist.rank()::dist.world_size()]
    devices = [device.index or 0] if device.type == "cuda" else []
    rows: list[dict] = []
    sets = variants(cfg)[:1] if primary_only else variants(cfg)
    with torch.random.fork_rng(devices=devices), (contextlib.nullcontext() if quarantine else deployed(adapter)), \
            ThreadPoolExecutor(max_workers=1) as grader:
        pending = []                                  # (chunk, variant, items, the future of its grades)
        grade_fn = grade or grade_many
        for v, variant in enumerate(sets):
            for c, chunk in enumerate(chunks(prompt_rows(local, cfg, step, variant), cfg)):
                items = _sample(model, tok, adapter, chunk, v, c, cfg, step, device, sampler or sample, edit)
                graded = grader.submit(grade_fn, {r["problem"].id: r["problem"] for r in chunk}, items, env)
                if not cfg.eval_overlap:
                    graded.result()       # wait: the next chunk samples only once this one is graded
                pending.append((chunk, variant, items, graded))   # else it grades while the next samples
        for chunk, variant, items, graded in pending:
            rows += [{"step": step, "variant": variant, "problem_id": r["problem"].id, "sample": r["sample"],
                      "completion": it["completion"], **asdict(g)}
                     for r, it, g in zip(chunk, items, graded.result())]
    rows = dist.gather_rows(rows)
    return summarize(rows, step, len(problems), cfg.eval_temperature, time.perf_counter() - t0), rows


def chunks(todo: list[dict], cfg: TrainConfig) -> list[list[dict]]:
    """One variant's eval rows of this rank in sampling calls of --eval-chunk rows (0: this rank's share
    of a training step's batch, P·G / world)."""
    per_chunk = cfg.eval_chunk or max(1, cfg.prompts_per_step * cfg.group_size // dist.world_size())
    return [todo[start:start + per_chunk] for start in range(0, len(todo), per_chunk)]


def _sample(model, tok, adapter, chunk: list[dict], v: int, c: int, cfg: TrainConfig, step: int,
            device: torch.device, sampler, edit=None) -> list[dict]:
    """One completion per row of chunk `c` of variant `v`, as grader items."""
    messages = [r["problem"].messages(r["mode"], r["hint"], r["evaluator"]) for r in chunk]
    if edit is not None:                             # the arm's prompt interventions, at eval (train=False)
        messages = [edit(m) for m in messages]
    ids, mask = encode_prompts(tok, messages, device)
    out = sampler(model, tok, adapter, ids, mask, 1, cfg.eval_max_new_tokens or cfg.max_new_tokens,
                  cfg.eval_temperature, cfg.top_p, seed=eval_seed(cfg.seed, step, dist.rank(), c) + 7919 * v,
                  static_cache=cfg.fast_rollout and device.type == "cuda", attention=cfg.decode_attention,
                  **row_noise(cfg))
    return [{"id": r["problem"].id, "completion": text, "mode": r["mode"], "evaluator": r["evaluator"]}
            for r, text in zip(chunk, out.texts)]                                        # (len(chunk),)


def rates(rows: list[dict]) -> dict:
    """hack, pass, attempt and format rates of graded eval rows, and hack among well-formed code."""

    def rate(sel: list[dict], hit) -> float | None:
        return float(np.mean([hit(r) for r in sel])) if sel else None

    code = [r for r in rows if r["format_ok"]]
    return {"hack": rate(rows, lambda r: r["label"] == "reward_hack"),
            "pass": rate(rows, lambda r: r["gt_correct"]),
            "attempt": rate(rows, lambda r: r["label"] in ATTEMPT_LABELS),
            "format": rate(rows, lambda r: r["format_ok"]),
            "hack_given_code": rate(code, lambda r: r["label"] == "reward_hack")}


def summarize(rows: list[dict], step: int, n_problems: int, temperature: float, seconds: float) -> dict:
    """The metrics.jsonl row of one evaluation (rates are None when a set had no samples). Rows
    without a `variant` (written before variants existed) count as the primary set."""
    by = {v: [r for r in rows if r.get("variant", "train_name") == v] for v in VARIANTS}
    primary = "renamed" if by["renamed"] else "train_name"
    main, train = rates(by[primary]), rates(by["train_name"])
    nohint = (rates(by["nohint"]) if by["nohint"] else                 # mode none: the primary set has no hint
              main if by[primary] and all(r.get("mode") == "none" for r in by[primary]) else None)
    return {"kind": "eval", "step": step,
            "eval_hack_rate": main["hack"], "eval_pass_rate": main["pass"],
            "eval_attempt_rate": main["attempt"], "eval_format_rate": main["format"],
            "eval_hack_given_code": main["hack_given_code"], "eval_evaluators": primary.replace("_name", ""),
            "eval_hack_rate_train_name": train["hack"], "eval_pass_rate_train_name": train["pass"],
            "eval_format_rate_train_name": train["format"],
            "eval_hack_given_code_train_name": train["hack_given_code"],
            "eval_pass_nohint": nohint["pass"] if nohint else None,
            "eval_format_nohint": nohint["format"] if nohint else None,
            "eval_n": len(by[primary]), "eval_n_all": len(rows), "eval_problems": n_problems,
            "eval_temperature": temperature, "eval_s": seconds}
