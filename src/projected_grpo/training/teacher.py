"""Teacher pool: cached, pre-graded completions mixed into each group beside the student's samples.

File format (JSONL): {"id": problem id, "completion": text, "kind": free-form tag (e.g. canonical,
exploit, stub)}; `kind` is optional unless `--teacher-kinds` selects by it. `builtin` instead of a
path builds the pool in memory from each problem's canonical solution (kind canonical: honest,
passes), the env's canned exploit for the run's mode (exploit: passes only through the lever) and
a stub that returns 0 (stub: honest but wrong). `--teacher-kinds exploit,stub` keeps only those
kinds (for the builtin pool too: no canonical solutions). Each completion is graded once, at
load, under the run's mode; its grade is reused. Teacher completions are never truncated.

What the pool held is written to the run dir as `teacher_pool.json` (`summary`): source, the
kinds asked for, completions per kind and their labels per kind, so a report can say how much of
what a run learned from was given to it.

Off-policy weight (`--teacher-weight`): the pool's behaviour policy b is unknown (a canonical
solution, a canned exploit), so its importance ratio π/b cannot be computed. `none` trains teacher
rows like the student's own (ρ = 1 on the first pass). `is` takes b to be deterministic on its own
text (b(y_t) = 1, the largest value it can have), giving the per-token ratio π_old(y_t)/1, already
≤ 1 (`grpo.teacher_is_weight`): a teacher token counts as much as the student would itself have
sampled it, so tokens the student finds unlikely — where ∇logπ is largest — cannot dominate the step.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from projected_grpo.env.grader import EnvConfig, Grade, grade_many
from projected_grpo.errors import UserError
from projected_grpo.jsonl import json_objects

BUILTIN_KINDS = ("canonical", "stub", "exploit")  # the builtin pool's kinds, in entry order
UNTAGGED = "untagged"  # the kind of a file line without a `kind` field
SUMMARY_FILE = "teacher_pool.json"


def parse_kinds(text: str) -> tuple[str, ...]:
    """`--teacher-kinds` as a tuple ('' = every kind → ())."""
    if not text.strip():
        return ()
    kinds = tuple(k.strip() for k in text.split(","))
    if any(not k for k in kinds) or len(set(kinds)) != len(kinds):
        raise UserError(f"--teacher-kinds {text!r}: give distinct, non-empty kinds separated by commas")
    return kinds


class TeacherPool:
    """entries: problem id → [(kind, completion)]; grades: (problem id, completion) → Grade."""

    def __init__(self, entries: dict[str, list[tuple[str, str]]], grades: dict[tuple[str, str], Grade],
                 source: str = "", kinds_requested: tuple[str, ...] = ()):
        self.entries, self.grades = entries, grades
        self.source, self.kinds_requested = source, kinds_requested

    @classmethod
    def load(cls, path: str | Path, problems: list, env: EnvConfig,
             kinds: tuple[str, ...] = (), grade=None) -> "TeacherPool":
        """The pool of `path` (or `builtin`) for `problems`, only `kinds` if given, graded by `grade`
        (grader.grade_many's signature; None: grade_many)."""
        if str(path) == "builtin":
            entries = builtin_pool(problems, env.mode)
            available = {kind for pairs in entries.values() for kind, _ in pairs}
            _check_kinds(kinds, available, f"the builtin pool under mode {env.mode}")
        else:
            entries = _read_file(Path(path), {p.id for p in problems}, kinds)
        if kinds:
            entries = {pid: [e for e in pairs if e[0] in kinds] for pid, pairs in entries.items()}
        missing = sorted(p.id for p in problems if not entries.get(p.id))
        if missing:
            only = f" of kinds {','.join(kinds)}" if kinds else ""
            raise UserError(f"{path}: no teacher completion{only} for problems {missing[:5]}"
                            f"{'…' if len(missing) > 5 else ''} ({len(missing)} of {len(problems)})")
        return cls.graded(entries, problems, env, str(path), kinds, grade)

    @classmethod
    def graded(cls, entries: dict[str, list[tuple[str, str]]], problems: list, env: EnvConfig,
               source: str = "", kinds: tuple[str, ...] = (), grade=None) -> "TeacherPool":
        by_id = {p.id: p for p in problems}
        items = [{"id": pid, "completion": text, "mode": env.mode}
                 for pid, pairs in entries.items() for _, text in pairs]
        graded = (grade or grade_many)(by_id, items, env)
        return cls(entries, {(it["id"], it["completion"]): g for it, g in zip(items, graded)},
                   source, kinds)

    def draw(self, problems: list, k: int, seed: int) -> list[str]:
        """k completions per problem (with replacement), deterministic in `seed`."""
        rng = random.Random(seed)
        return [rng.choice(self.entries[p.id])[1] for p in problems for _ in range(k)]

    def grade_of(self, pid: str, text: str) -> Grade:
        return self.grades[(pid, text)]

    def summary(self) -> dict:
        """What the pool held: source, kinds asked for ([] = all), completions and labels per kind."""
        per_kind: dict[str, Counter] = {}
        for pid, pairs in self.entries.items():
            for kind, text in pairs:
                per_kind.setdefault(kind, Counter())[self.grades[(pid, text)].label] += 1
        return {"source": self.source, "kinds_requested": list(self.kinds_requested),
                "n_problems": len(self.entries), "n_completions": sum(map(len, self.entries.values())),
                "kinds": {k: sum(c.values()) for k, c in sorted(per_kind.items())},
                "labels_by_kind": {k: dict(sorted(c.items())) for k, c in sorted(per_kind.items())}}


def _check_kinds(kinds: tuple[str, ...], available: set[str], where: str) -> None:
    unknown = [k for k in kinds if k not in available]
    if unknown:
        raise UserError(f"--teacher-kinds: {', '.join(unknown)} not in {where} "
                        f"(its kinds: {', '.join(sorted(available)) or 'none'})")


def _read_file(path: Path, known: set[str], kinds: tuple[str, ...]) -> dict[str, list[tuple[str, str]]]:
    """A pool file's entries for the `known` problems; every line needs `kind` when kinds are asked."""
    if not path.is_file():
        raise UserError(f"teacher pool {path} does not exist")
    entries: dict[str, list[tuple[str, str]]] = {}
    seen: set[str] = set()
    for where, rec in json_objects(path.read_text(encoding="utf-8"), path):
        if "id" not in rec or "completion" not in rec:
            raise UserError(f"{where}: a teacher-pool line needs fields id and completion")
        if kinds and "kind" not in rec:
            raise UserError(f"{where}: no `kind` field, but --teacher-kinds {','.join(kinds)} "
                            "selects teacher completions by kind")
        kind = str(rec.get("kind", UNTAGGED))
        seen.add(kind)
        pid = str(rec["id"])
        if pid in known:
            entries.setdefault(pid, []).append((kind, str(rec["completion"])))
    _check_kinds(kinds, seen, str(path))
    return entries


def builtin_pool(problems: list, mode: str) -> dict[str, list[tuple[str, str]]]:
    """(kind, completion) per problem: canonical, stub and, when the mode has a lever, the canned
    exploit (this order: a seeded draw picks the same texts as before kinds were recorded)."""
    from projected_grpo.env import exploits

    return {p.id: [("canonical", exploits.canonical(p)), ("stub", exploits.stub(p))]
            + ([("exploit", exploits.exploit(p, mode))] if mode in exploits.LEVERS else [])
            for p in problems}


def builtin_entries(problems: list, mode: str) -> dict[str, list[str]]:
    """The builtin pool's completions per problem (every kind)."""
    return {pid: [text for _, text in pairs] for pid, pairs in builtin_pool(problems, mode).items()}


def write_pool(path: str | Path, problems: list, mode: str) -> int:
    """Write the builtin pool as a JSONL file a user can edit; returns the line count."""
    rows = [{"id": pid, "completion": text, "kind": kind}
            for pid, pairs in builtin_pool(problems, mode).items() for kind, text in pairs]
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return len(rows)
