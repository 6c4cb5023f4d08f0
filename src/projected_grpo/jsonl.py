"""Reading user-supplied JSONL: one place that turns a bad line into an error naming file:line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from projected_grpo.errors import UserError


def json_objects(text: str, source: str | Path) -> Iterator[tuple[str, dict]]:
    """(where, object) for every non-blank line; `where` is 'file:line'. Bad JSON or a line that is
    not a JSON object raises UserError naming it."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(rec, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        yield where, rec
