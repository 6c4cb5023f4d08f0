#!/usr/bin/env python3
"""The table of scripts/gpu_fleet.sh's runs: K runs as one fleet against K processes at once.

    python scripts/fleet_table.py DIR [DIR ...]     # each DIR: fleet_K/ or alone_K/ (s1/, s2/, ..., wall.txt)

Per directory: runs, wall seconds (wall.txt: start of the first process to the end of the last), runs per
GPU-hour (runs · 3600 / wall), and the medians over every run's training steps of step, gen, grade and train
seconds, and over every eval of eval seconds (each run's metrics.jsonl). For a fleet, also the seconds spent
inside its batched calls (the fleet decode and training passes: log.txt's "seconds in them" line) and their
share of the wall time; in a fleet a run's own gen_s / train_s include its wait for the others. Markdown on
stdout.
"""

from __future__ import annotations

import ast
import json
import statistics
import sys
from pathlib import Path


def rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def summary(d: Path) -> dict:
    runs = sorted(p for p in d.iterdir() if p.is_dir())
    all_rows = [r for run in runs for r in rows(run)]
    train = [r for r in all_rows if r.get("kind") == "train"]
    evals = [r for r in all_rows if r.get("kind") == "eval" and r.get("eval_s") is not None]
    wall = float((d / "wall.txt").read_text()) if (d / "wall.txt").is_file() else None

    def med(key: str, rs: list[dict]) -> float | None:
        vals = [r[key] for r in rs if r.get(key) is not None]
        return round(statistics.median(vals), 2) if vals else None

    finished = sum((run / "delta_s.safetensors").is_file() for run in runs)   # a run's last act (runio)
    log = d / "log.txt"
    inside = next((ast.literal_eval(line.split("seconds in them:", 1)[1].strip())
                   for line in (log.read_text().splitlines() if log.is_file() else []) if "seconds in them:" in line),
                  None)
    batched = round(sum(inside.values()), 1) if inside else None
    return {"dir": d.name, "runs": len(runs), "finished": finished, "wall_s": wall,
            "runs_per_gpu_h": round(len(runs) * 3600 / wall, 1) if wall else None,
            **{k: med(k, train) for k in ("step_s", "gen_s", "grade_s", "train_s")}, "eval_s": med("eval_s", evals),
            "batched_s": batched, "batched_share": round(batched / wall, 2) if batched and wall else None}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out = [summary(Path(a)) for a in argv]
    keys = list(out[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for s in out:
        print("| " + " | ".join("—" if s[k] is None else str(s[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
