"""Grader throughput: completions graded per second (median of N runs).

Workload per problem: canonical (mode none), stub under every mode, and each lever's exploit
under every mode -- the env-check matrix, 17 gradings a problem (distinct programs run once).

    .venv/bin/python bench/grade_throughput.py [--problems PATH|bundled] [--runs 3] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from projected_grpo.env import exploits
from projected_grpo.env.grader import EnvConfig, grade_many
from projected_grpo.env.problems import by_id, load_problems
from projected_grpo.env.prompts import MODES
from projected_grpo.env.sandbox import resolve_backend

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "leetcode_test_medhard.jsonl"


def workload(problems) -> list[dict]:
    items = []
    for p in problems:
        items.append({"id": p.id, "completion": exploits.canonical(p), "mode": "none"})
        for mode in MODES:
            items.append({"id": p.id, "completion": exploits.stub(p), "mode": mode})
            items += [{"id": p.id, "completion": exploits.exploit(p, lever), "mode": mode}
                      for lever in exploits.LEVERS]
    return items


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--problems", default=str(SHARED) if SHARED.is_file() else "bundled")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--backend", default="auto", choices=["auto", "bwrap", "fallback"])
    args = ap.parse_args()
    problems = load_problems(args.problems)
    if args.limit:
        problems = problems[: args.limit]
    items = workload(problems)
    programs = len({(i["id"], i["completion"]) for i in items})
    backend = resolve_backend(args.backend)
    print(f"machine: {os.cpu_count()} cores ({cpu_model()}), load avg {os.getloadavg()[0]:.1f}, "
          f"python {platform.python_version()}, backend {backend}, workers {args.workers}")
    print(f"workload: {len(problems)} problems, {len(items)} gradings, {programs} distinct programs")
    rates = []
    for run in range(args.runs):
        fresh = by_id(load_problems(args.problems))  # no cached expected values between runs
        t = time.monotonic()
        grade_many(fresh, items, EnvConfig(backend=args.backend), workers=args.workers)
        dt = time.monotonic() - t
        rates.append(len(items) / dt)
        print(f"run {run + 1}: {dt:.1f}s, {rates[-1]:.1f} gradings/s, "
              f"{programs / dt:.1f} sandboxed programs/s")
    print(json.dumps({"gradings_per_s": round(statistics.median(rates), 2), "runs": args.runs,
                      "gradings": len(items), "programs": programs, "backend": backend,
                      "cores": os.cpu_count(), "workers": args.workers}))


if __name__ == "__main__":
    main()
