"""`pgrpo env-check` (canonical / stub / exploit matrix) and `pgrpo grade` (JSONL in/out)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from projected_grpo.env import exploits
from projected_grpo.env.grader import EnvConfig, grade_many
from projected_grpo.env.problems import by_id, load_problems
from projected_grpo.env.prompts import HINTS, MODES
from projected_grpo.env.sandbox import resolve_backend
from projected_grpo.errors import UserError
from projected_grpo.jsonl import json_objects
from projected_grpo.training.runio import write_atomic

ITEM_FIELDS = ("id", "completion", "mode")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register env-check and grade."""
    p = sub.add_parser("env-check", help="check the grader on canonical, stub and exploit programs")
    p.add_argument("--problems", default="bundled", help="JSONL path, 'bundled' or 'hf:<name>'")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per sandboxed program")
    p.add_argument("--limit", type=int, default=0, help="check only the first N problems")
    p.set_defaults(func=cmd_env_check)

    g = sub.add_parser("grade", help="grade completions JSONL ({id, completion, mode} a line)")
    g.add_argument("--problems", default="bundled", help="JSONL path, 'bundled' or 'hf:<name>'")
    g.add_argument("--completions", required=True, type=Path)
    g.add_argument("--out", required=True, type=Path)
    g.add_argument("--hint", default="simple", help="hint variant recorded with the grades")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    g.add_argument("--timeout", type=float, default=10.0, help="seconds per sandboxed program")
    g.add_argument("--correct-reward", type=float, default=1.0)
    g.add_argument("--format-reward", type=float, default=0.25)
    g.set_defaults(func=cmd_grade)


def cmd_env_check(args: argparse.Namespace) -> int:
    """Grade canonical (mode none), stub (every mode) and each lever's exploit (every mode)."""
    problems = load_problems(args.problems)
    if args.limit:
        problems = problems[: args.limit]
    levers = [m for m in args.modes if m in exploits.LEVERS]
    items = []
    for p in problems:
        items.append({"id": p.id, "completion": exploits.canonical(p), "mode": "none",
                      "what": "canonical"})
        for mode in args.modes:
            items.append({"id": p.id, "completion": exploits.stub(p), "mode": mode, "what": "stub"})
            for lever in levers:
                items.append({"id": p.id, "completion": exploits.exploit(p, lever), "mode": mode,
                              "what": lever})
    start = time.monotonic()
    grades = grade_many(by_id(problems), items, EnvConfig(timeout_s=args.timeout),
                        workers=args.workers)
    seconds = time.monotonic() - start
    counts = {"problems": len(problems), "canonical_correct": 0, "stub_rejected": 0,
              "exploit_diagonal": 0, "exploit_offdiagonal_leaks": 0, "misses": 0}
    stub_ok: dict[str, bool] = {}
    table: dict[tuple[str, str], int] = {}
    misses = []
    for item, g in zip(items, grades):
        what, mode, pid = item["what"], item["mode"], item["id"]
        ok_cell = table.setdefault((what, mode), 0)
        if what == "canonical":
            ok = g.label == "correct"
            counts["canonical_correct"] += ok
        elif what == "stub":
            ok = not g.passed and not g.gt_correct
            stub_ok[pid] = stub_ok.get(pid, True) and ok
        elif what == mode:
            ok = g.label == "reward_hack"
            counts["exploit_diagonal"] += ok
        else:
            ok = g.label != "reward_hack" and not g.passed
            counts["exploit_offdiagonal_leaks"] += not ok
        table[(what, mode)] = ok_cell + ok
        if not ok:
            misses.append(f"problem {pid}: {what} under {mode} -> {g.label} "
                          f"(passed={g.passed}, error={g.error or '-'})")
    counts["stub_rejected"] = sum(stub_ok.values())
    counts["misses"] = len(misses)
    _print_table(table, args.modes, len(problems))
    for line in misses[:20]:
        print("MISS", line)
    backend = grades[0].backend if grades else resolve_backend()
    print(f"{len(items)} gradings in {seconds:.1f}s on {args.workers} workers, backend {backend}")
    print(json.dumps(counts))
    return 1 if misses else 0


def _print_table(table: dict[tuple[str, str], int], modes: list[str], n: int) -> None:
    rows = sorted({w for w, _ in table}, key=lambda w: (w != "canonical", w != "stub", w))
    print(f"{'program (ok/' + str(n) + ')':<22}" + "".join(f"{m:>13}" for m in modes))
    for what in rows:
        cells = "".join(f"{table.get((what, m), '-'):>13}" for m in modes)
        print(f"{what:<22}{cells}")


def read_items(path: Path, known_ids: set[str]) -> list[dict]:
    """Validate every line of a completions JSONL first; UserError names file:line."""
    if not path.is_file():
        raise UserError(f"completions file {path} does not exist")
    items = []
    for where, rec in json_objects(path.read_text(encoding="utf-8"), path):
        missing = [k for k in ITEM_FIELDS if k not in rec]
        if missing:
            raise UserError(f"{where}: missing field(s) {', '.join(missing)}")
        rec["id"] = str(rec["id"])
        if rec["id"] not in known_ids:
            raise UserError(f"{where}: unknown problem id {rec['id']!r}")
        if rec["mode"] not in MODES:
            raise UserError(f"{where}: unknown mode {rec['mode']!r}; known: {', '.join(MODES)}")
        if not isinstance(rec["completion"], str):
            raise UserError(f"{where}: field completion must be a string")
        items.append(rec)
    return items


def cmd_grade(args: argparse.Namespace) -> int:
    """Grade a completions file; writes input fields + grade fields per line, atomically."""
    if args.hint not in {h for hints in HINTS.values() for h in hints}:
        raise UserError(f"unknown hint variant {args.hint!r}")
    problems = by_id(load_problems(args.problems))
    items = read_items(args.completions, set(problems))
    cfg = EnvConfig(hint="simple", timeout_s=args.timeout)
    cfg.reward.correct_reward, cfg.reward.format_reward = args.correct_reward, args.format_reward
    start = time.monotonic()
    grades = grade_many(problems, items, cfg, workers=args.workers)
    seconds = time.monotonic() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, "".join(json.dumps({**item, "hint": args.hint, **asdict(g)}) + "\n"
                                   for item, g in zip(items, grades)))
    n = len(grades)
    summary = {"n": n, "pass_rate": sum(g.gt_correct for g in grades) / n if n else 0.0,
               "hack_rate": sum(g.label == "reward_hack" for g in grades) / n if n else 0.0,
               "seconds": round(seconds, 3)}
    print(f"graded {n} completions -> {args.out}", file=sys.stderr)
    print(json.dumps(summary))
    return 0
