"""`pgrpo baseline`: a model's base rates on a problem set, without training (issue #17).

For every hint variant of the mode, each problem gets `--n-samples` completions from the model as it is
(nothing folded in: no δS, no projection, no teacher rows), sampled and graded exactly as the trainer's
held-out evaluation does it (`evaluate.evaluate` at step 0: same prompts, seeds, sampler and grader),
under the prompt training uses (the evaluator named `run_tests`; no renamed or no-hint sets).
Per hint and over all hints:
    hack_rate    = share labelled "reward_hack"
    attempt_rate = share with a label in env.grader.ATTEMPT_LABELS (a hack was tried)
    pass_rate    = share with gt_correct (the strict oracle)
    format_rate  = share with format_ok
    n            = samples
Written to DIR: baseline.jsonl (one row per hint, then {"hint": "all"}), baseline.md (the same as a
table) and samples.jsonl (every graded completion with its hint), and printed.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import torch

from projected_grpo.training import evaluate
from projected_grpo.config import TrainConfig
from projected_grpo.env.grader import EnvConfig
from projected_grpo.env.prompts import HINTS, check_mode
from projected_grpo.errors import UserError
from projected_grpo.training.runio import write_atomic

RATES, TABLE, SAMPLES = "baseline.jsonl", "baseline.md", "samples.jsonl"
RATE_KEYS = ("hack_rate", "attempt_rate", "pass_rate", "format_rate")


class BaseWeights:
    """Stands in for the δS adapter when sampling: nothing to fold, the model's own weights are the policy.
    No wrapped modules (so no quarantine for evaluate to switch off)."""

    modules: dict = {}

    @staticmethod
    def merged(offload: bool = False):
        return contextlib.nullcontext()


def parse_hints(text: str, mode: str) -> list[str]:
    """`--hint a,b` (or `all`) as a list of the mode's hint variants."""
    hints = list(HINTS[mode]) if text == "all" else [h.strip() for h in text.split(",")]
    if not hints or any(not h for h in hints) or len(set(hints)) != len(hints):
        raise UserError(f"--hint {text!r}: give distinct hint variants separated by commas, or 'all'")
    for h in hints:
        check_mode(mode, h)
    return hints


def rates(summary: dict, hint: str, mode: str) -> dict:
    """An eval summary row (evaluate.summarize) as a baseline row."""
    return {"hint": hint, "mode": mode, **{k: summary[f"eval_{k}"] for k in RATE_KEYS},
            "n": summary["eval_n"], "n_problems": summary["eval_problems"],
            "temperature": summary["eval_temperature"], "seconds": round(summary["eval_s"], 2)}


def measure(model, tok, problems: list, mode: str, hints: list[str], n_samples: int, temperature: float,
            max_new_tokens: int, top_p: float, seed: int, batch: int, env: EnvConfig,
            device: torch.device) -> tuple[list[dict], list[dict]]:
    """(rate rows per hint + overall, graded sample rows) for the model as loaded."""
    cfg = TrainConfig(mode=mode, seed=seed, eval_samples=n_samples, eval_temperature=temperature,
                      eval_max_new_tokens=max_new_tokens, max_new_tokens=max_new_tokens, top_p=top_p,
                      prompts_per_step=batch, group_size=1,   # a sampling call holds ≈ `batch` completions
                      eval_renamed=False, eval_nohint=False)  # the training prompt's base rate only
    rows, samples = [], []
    for hint in hints:
        summary, graded = evaluate.evaluate(model, tok, BaseWeights(), problems, replace(cfg, hint=hint),
                                            replace(env, hint=hint), 0, device)
        rows.append(rates(summary, hint, mode))
        samples += [{"hint": hint, **r} for r in graded]
    seconds = sum(r["seconds"] for r in rows)
    rows.append(rates(evaluate.summarize(samples, 0, len(problems), temperature, seconds), "all", mode))
    return rows, samples


def table(rows: list[dict], model: str, problems: str) -> str:
    """baseline.md: one line per hint and the overall line."""
    head = (f"# Base rates of `{model}` on `{problems}`\n\n"
            "| hint | hack | attempted | pass | format | n |\n|---|---|---|---|---|---|\n")

    def pct(x) -> str:
        return "—" if x is None else f"{x:.3f}"

    return head + "".join(f"| {r['hint']} | {pct(r['hack_rate'])} | {pct(r['attempt_rate'])} | "
                          f"{pct(r['pass_rate'])} | {pct(r['format_rate'])} | {r['n']} |\n" for r in rows)


def write(out: Path, rows: list[dict], samples: list[dict], model: str, problems: str) -> str:
    """baseline.jsonl, baseline.md and samples.jsonl into `out` (created); -> the table's text."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / SAMPLES, "".join(json.dumps(r) + "\n" for r in samples).encode())
    write_atomic(out / RATES, "".join(json.dumps(r) + "\n" for r in rows).encode())
    text = table(rows, model, problems)
    write_atomic(out / TABLE, text.encode())
    return text
