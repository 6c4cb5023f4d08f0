"""Runs of a study per GPU-hour on one card: K vanilla runs at once (`pgrpo sweep --gpus 1
--runs-per-gpu K`), each for --steps steps with its evals, timed end to end, once per configuration.

    python bench/study_throughput.py --preset qwen05_warm --model /root/warm/ws_0.35 --runs 9 --steps 64 \
        --out /root/tput --config today= --config sorted=train_batching=sorted,micro_tokens=8192 \
        [-- any other pgrpo sweep flags, given to every configuration]

The first --config is the reference (today's code: no overrides); every configuration runs in this one
process's sequence on the same card, so the ratios compare like with like. Shared work is done once and
not counted: a warm-up sweep (seed 1, one step, no eval) extracts V, writes split.json and fills the SVD
cache; its V file and split are copied into each timed sweep dir. A configuration's wall time includes
what a study pays per run: process start, model load, decode compile, training, evals and grading.

Writes OUT/throughput.json (one object per configuration) and OUT/throughput.md, and prints the table:
runs per GPU-hour = K · 3600 / wall, the ratio to the first configuration, and the medians over all
runs' steps of step, generation and training seconds and of the training tokens per step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from sweep_speedup import timed


def card() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no CUDA)"


def parse_config(text: str) -> tuple[str, list[str]]:
    """'name=field=value,field=value' -> (name, ['--field', 'value', ...]); 'name=' has no overrides."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--config {text!r}: expected NAME=[field=value,...]")
    flags: list[str] = []
    for item in filter(None, rest.split(",")):
        field, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--config {text!r}: {item!r} is not field=value")
        flags += [f"--{field.strip().replace('_', '-')}", value.strip()]
    return name, flags


def sweep_cmd(args, out: Path, seeds: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "projected_grpo.cli", "sweep", "--preset", args.preset, "--arms", "vanilla",
            "--seeds", seeds, "--out", str(out), "--gpus", "1", "--runs-per-gpu", str(args.runs), "--no-report",
            *extra]


def run_medians(sweep_dir: Path) -> dict:
    """Medians over every training step of every run in the sweep dir."""
    rows = [json.loads(line) for f in sorted(sweep_dir.glob("*/metrics.jsonl"))
            for line in f.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval" and r.get("eval_s") is not None]

    def med(key, rs=train):
        xs = [r[key] for r in rs if r.get(key) is not None]
        return round(statistics.median(xs), 3) if xs else None
    return {"steps_logged": len(train), "step_s": med("step_s"), "gen_s": med("gen_s"), "train_s": med("train_s"),
            "tokens": med("tokens"), "eval_s": med("eval_s", evals)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--preset", default="qwen05_warm")
    p.add_argument("--runs", type=int, default=9, help="K runs at once on the one card (seeds 1..K)")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--config", action="append", required=True, help="NAME=[field=value,...]; repeatable")
    p.add_argument("--out", required=True, help="a fresh directory")
    args, extra = p.parse_known_args()
    extra = [x for x in extra if x != "--"]
    configs = [parse_config(c) for c in args.config]
    if len({n for n, _ in configs}) != len(configs):
        raise SystemExit("--config names must differ")
    root = Path(args.out)
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty: give a fresh --out")
    root.mkdir(parents=True, exist_ok=True)
    steps = ["--steps", str(args.steps)]

    prep = root / "prep"
    t_prep = timed(sweep_cmd(args, prep, "1", [*extra, "--steps", "1", "--eval-every", "0"]), root / "prep.log")
    print(f"warm-up (V, split, SVD cache; not counted): {t_prep:.0f}s")
    seeds = ",".join(str(s) for s in range(1, args.runs + 1))
    results = []
    for name, flags in configs:
        d = root / name
        d.mkdir()
        for f in list(prep.glob("v_hack*.safetensors")) + [prep / "split.json"]:
            shutil.copy2(f, d / f.name)
        wall = timed(sweep_cmd(args, d, seeds, [*extra, *steps, *flags]), root / f"{name}.log")
        row = {"config": name, "overrides": flags, "runs": args.runs, "steps": args.steps, "wall_s": round(wall, 1),
               "runs_per_gpu_hour": round(args.runs * 3600 / wall, 2), **run_medians(d)}
        results.append(row)
        print(json.dumps(row))
    base = results[0]["runs_per_gpu_hour"]
    for r in results:
        r["ratio"] = round(r["runs_per_gpu_hour"] / base, 3)
    meta = {"card": card(), "preset": args.preset, "extra": extra}
    (root / "throughput.json").write_text(json.dumps({**meta, "configs": results}, indent=1))
    lines = [f"{meta['card']}, preset {args.preset}, {args.runs} runs at once × {args.steps} steps "
             f"(extra flags: {' '.join(extra) or 'none'})", "",
             "| config | overrides | wall s | runs per GPU-hour | × first | step s | gen s | train s | "
             "tokens/step | eval s |", "|---" * 10 + "|"]
    for r in results:
        lines.append(f"| {r['config']} | {' '.join(r['overrides']) or '—'} | {r['wall_s']} | {r['runs_per_gpu_hour']} "
                     f"| {r['ratio']} | {r['step_s']} | {r['gen_s']} | {r['train_s']} | {r['tokens']} | "
                     f"{r['eval_s']} |")
    (root / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
