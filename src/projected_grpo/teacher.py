"""Teacher pool: cached, pre-graded completions mixed into each group beside the student's samples.

File format (JSONL): {"id": problem id, "completion": text, "kind": free-form tag (e.g. canonical,
exploit)}. Each completion is graded once, at load, under the run's mode; its grade is reused.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from projected_grpo.env.grader import EnvConfig, Grade, grade_many
from projected_grpo.errors import UserError


class TeacherPool:
    def __init__(self, entries: dict[str, list[str]], grades: dict[tuple[str, str], Grade]):
        self.entries, self.grades = entries, grades

    @classmethod
    def load(cls, path: str | Path, problems: list, env: EnvConfig) -> "TeacherPool":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"teacher pool {path} does not exist")
        known = {p.id for p in problems}
        entries: dict[str, list[str]] = {}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                pid, text = str(rec["id"]), str(rec["completion"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise UserError(f"{path}:{n}: bad teacher-pool line ({err})") from err
            if pid in known:
                entries.setdefault(pid, []).append(text)
        missing = sorted(known - set(entries))
        if missing:
            raise UserError(f"{path}: no teacher completion for problems {missing[:5]}"
                            f"{'…' if len(missing) > 5 else ''} ({len(missing)} of {len(known)})")
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
