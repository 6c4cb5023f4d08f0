"""The short, fixed-seed CPU run of every arm that tests/test_arm_golden.py checks against
tests/data/arm_golden.json (written by scripts/arm_golden.py from the code of its stated commit).

One run per arm of the smoke model: 4 problems, 2 steps, 16 new tokens, m = 2, refresh every step,
a small pair file (6 run_tests training pairs and the stdout pairs of the same problems) and 6
persona pairs. What a run gives: its training and eval rows and its graded samples, without the
fields that depend on the machine (timings, the sandbox backend)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

ARMS = ("vanilla", "projected", "rebound", "random", "shuffled", "lomo", "refresh", "oracle")
MACHINE = ("backend", "sandbox_backend", "seconds")      # besides every *_s timing field


def small_pairs(tmp: Path) -> tuple[str, str]:
    """(code pair file, persona pair file) written into `tmp` from the bundled pairs."""
    from projected_grpo.directions.pairs import BUNDLED

    rows = [json.loads(line) for line in BUNDLED["code"].read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["split"] == "train"]
    run_tests = [r for r in train if r["mode"] == "run_tests"][:6]
    named = {r["problem_id"] for r in run_tests}
    stdout = [r for r in train if r["mode"] == "stdout" and r["problem_id"] in named]
    code = tmp / "pairs_code.jsonl"
    code.write_text("".join(json.dumps(r) + "\n" for r in run_tests + stdout))
    persona_rows = BUNDLED["persona"].read_text().splitlines()
    persona = tmp / "pairs_persona.jsonl"
    persona.write_text("\n".join([r for r in persona_rows if '"train"' in r][:6]) + "\n")
    return str(code), str(persona)


def config(arm: str, tmp: Path, **kw):
    from projected_grpo.config import preset

    code, persona = small_pairs(tmp)
    return replace(preset("smoke"), arm=arm, n_problems=4, max_new_tokens=16, steps=2, grade_workers=2,
                   vhack_m=2, refresh_every=1, pairs=code, persona_pairs=persona, seed=3, **kw)


def clean(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.endswith("_s") and k not in MACHINE}


def run_arm(arm: str, tmp: Path, **kw) -> dict[str, list[dict]]:
    """{"metrics", "samples", "eval_samples"}: the rows of `arm`'s run in `tmp`/arm, cleaned (one torch
    thread, as the tests run)."""
    import torch

    from projected_grpo.training import runio
    from projected_grpo.training import train as train_mod
    from projected_grpo.training.evaluate import EVAL_SAMPLES

    torch.set_num_threads(1)
    out = tmp / arm
    train_mod.train(config(arm, tmp, **kw), out, progress=False)
    return {name: [clean(r) for r in runio.read_jsonl(out / f)]
            for name, f in (("metrics", runio.METRICS), ("samples", runio.SAMPLES),
                            ("eval_samples", EVAL_SAMPLES))}
