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
import subprocess
import sys
import time
from pathlib import Path

from sweep_speedup import timed


def card() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no CUDA)"


def parse_config(text: str) -> tuple[str, list[str], int | None]:
    """'name=field=value,field=value' -> (name, ['--field', 'value', ...], runs); 'name=' has no overrides;
    the key `runs` (not a run flag) sets this configuration's K, None = --runs."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--config {text!r}: expected NAME=[field=value,...]")
    flags: list[str] = []
    runs = None
    for item in filter(None, rest.split(",")):
        field, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--config {text!r}: {item!r} is not field=value")
        if field.strip() == "runs":
            if not value.strip().isdigit() or int(value) < 1:
                raise SystemExit(f"--config {text!r}: runs={value} is not a count >= 1")
            runs = int(value)
            continue
        flags += [f"--{field.strip().replace('_', '-')}", value.strip()]
    return name, flags, runs


def sweep_cmd(args, out: Path, seeds: str, extra: list[str], runs: int | None = None) -> list[str]:
    return [sys.executable, "-m", "projected_grpo.cli", "sweep", "--preset", args.preset, "--arms", "vanilla",
            "--seeds", seeds, "--out", str(out), "--gpus", "1", "--runs-per-gpu", str(runs or args.runs),
            "--no-report", *extra]


def run_timed(cmd: list[str], log: Path) -> tuple[float, int]:
    """(wall seconds, exit code) of one sweep, its output in `log`."""
    t0 = time.time()
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    return time.time() - t0, code


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
    if len({c[0] for c in configs}) != len(configs):
        raise SystemExit("--config names must differ")
    root = Path(args.out)
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty: give a fresh --out")
    root.mkdir(parents=True, exist_ok=True)
    steps = ["--steps", str(args.steps)]

    prep = root / "prep"
    t_prep = timed(sweep_cmd(args, prep, "1", [*extra, "--steps", "1", "--eval-every", "0"]), root / "prep.log")
    print(f"warm-up (V, split, SVD cache; not counted): {t_prep:.0f}s")
    meta = {"card": card(), "preset": args.preset, "extra": extra}
    results = []
    for name, flags, runs in configs:
        k = runs or args.runs
        d = root / name
        d.mkdir()
        for f in list(prep.glob("v_hack*.safetensors")) + [prep / "split.json"]:
            shutil.copy2(f, d / f.name)
        seeds = ",".join(str(s) for s in range(1, k + 1))
        wall, code = run_timed(sweep_cmd(args, d, seeds, [*extra, *steps, *flags], k), root / f"{name}.log")
        row = {"config": name, "overrides": flags, "runs": k, "steps": args.steps, "wall_s": round(wall, 1),
               "exit": code, "runs_per_gpu_hour": round(k * 3600 / wall, 2) if code == 0 else None,
               **run_medians(d)}
        results.append(row)
        print(json.dumps(row), flush=True)
        write_tables(root, meta, args, results)     # after every configuration: a cut bench keeps what ran


def write_tables(root: Path, meta: dict, args, results: list[dict]) -> None:
    """OUT/throughput.json and OUT/throughput.md of the configurations so far (ratios to the first)."""
    base = results[0]["runs_per_gpu_hour"]
    for r in results:
        r["ratio"] = round(r["runs_per_gpu_hour"] / base, 3) if base and r["runs_per_gpu_hour"] else None
    (root / "throughput.json").write_text(json.dumps({**meta, "configs": results}, indent=1))
    lines = [f"{meta['card']}, preset {args.preset}, K runs at once × {args.steps} steps "
             f"(extra flags: {' '.join(meta['extra']) or 'none'})", "",
             "| config | overrides | K | wall s | runs per GPU-hour | × first | step s | gen s | train s | "
             "tokens/step | eval s |", "|---" * 11 + "|"]
    for r in results:
        rate = r["runs_per_gpu_hour"] if r["exit"] == 0 else f"failed (exit {r['exit']}, see {r['config']}.log)"
        lines.append(f"| {r['config']} | {' '.join(r['overrides']) or '—'} | {r['runs']} | {r['wall_s']} | {rate} "
                     f"| {r['ratio']} | {r['step_s']} | {r['gen_s']} | {r['train_s']} | {r['tokens']} | "
                     f"{r['eval_s']} |")
    (root / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
