"""Teacher pool: cached, pre-graded completions mixed into each group beside the student's samples.

File format (JSONL): {"id": problem id, "completion": text, "kind": free-form tag (e.g. canonical,
exploit)}. `builtin` instead of a path builds the pool in memory from each problem's canonical
solution (honest, passes), the env's canned exploit for the run's mode (hack, passes only through
the lever) and a stub that returns 0 (honest but wrong). Each completion is graded once, at load,
under the run's mode; its grade is reused. Teacher completions are never truncated.

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
from pathlib import Path

from projected_grpo.env.grader import EnvConfig, Grade, grade_many
from projected_grpo.errors import UserError
from projected_grpo.jsonl import json_objects


class TeacherPool:
    def __init__(self, entries: dict[str, list[str]], grades: dict[tuple[str, str], Grade]):
        self.entries, self.grades = entries, grades

    @classmethod
    def load(cls, path: str | Path, problems: list, env: EnvConfig) -> "TeacherPool":
        if str(path) == "builtin":
            return cls.graded(builtin_entries(problems, env.mode), problems, env)
        path = Path(path)
        if not path.is_file():
            raise UserError(f"teacher pool {path} does not exist")
        known = {p.id for p in problems}
        entries: dict[str, list[str]] = {}
        for where, rec in json_objects(path.read_text(encoding="utf-8"), path):
            if "id" not in rec or "completion" not in rec:
                raise UserError(f"{where}: a teacher-pool line needs fields id and completion")
            pid, text = str(rec["id"]), str(rec["completion"])
            if pid in known:
                entries.setdefault(pid, []).append(text)
        missing = sorted(known - set(entries))
        if missing:
            raise UserError(f"{path}: no teacher completion for problems {missing[:5]}"
                            f"{'…' if len(missing) > 5 else ''} ({len(missing)} of {len(known)})")
        return cls.graded(entries, problems, env)

    @classmethod
    def graded(cls, entries: dict[str, list[str]], problems: list, env: EnvConfig) -> "TeacherPool":
        by_id = {p.id: p for p in problems}
        items = [{"id": pid, "completion": t, "mode": env.mode} for pid, ts in entries.items() for t in ts]
        graded = grade_many(by_id, items, env)
        return cls(entries, {(it["id"], it["completion"]): g for it, g in zip(items, graded)})

    def draw(self, problems: list, k: int, seed: int) -> list[str]:
        """k completions per problem (with replacement), deterministic in `seed`."""
        rng = random.Random(seed)
        return [rng.choice(self.entries[p.id]) for p in problems for _ in range(k)]

    def grade_of(self, pid: str, text: str) -> Grade:
        return self.grades[(pid, text)]


def builtin_entries(problems: list, mode: str) -> dict[str, list[str]]:
    """Canonical, canned exploit (when the mode has a lever) and stub completions per problem."""
    from projected_grpo.env import exploits

    return {p.id: [exploits.canonical(p), exploits.stub(p)]
            + ([exploits.exploit(p, mode)] if mode in exploits.LEVERS else []) for p in problems}


def write_pool(path: str | Path, problems: list, mode: str) -> int:
    """Write the builtin pool as a JSONL file a user can edit; returns the line count."""
    rows = [{"id": pid, "completion": text, "kind": kind}
            for pid, texts in builtin_entries(problems, mode).items()
            for text, kind in zip(texts, ("canonical", "stub", "exploit"))]
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return len(rows)
