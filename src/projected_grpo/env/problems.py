"""LeetCode problems: loading (bundled, benchmark JSONL, Hugging Face).

The record format and the Problem type are in problem.py; a Hugging Face load keeps the problems
whose canonical solution passes in the grader (grader.canonical_passes).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from projected_grpo.env.grader import canonical_passes
from projected_grpo.env.problem import Problem, problem_from_record
from projected_grpo.env.prompts import method_name
from projected_grpo.errors import UserError
from projected_grpo.jsonl import json_objects

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "problems_bundled.jsonl"
HF_PREFIX = "hf:"
HF_DEFAULT = "newfacade/LeetCodeDataset"


def load_jsonl(path: str | Path) -> list[Problem]:
    """Load a benchmark-format JSONL file; malformed lines raise UserError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"problems file {path} does not exist")
    problems, seen = [], set()
    for where, rec in json_objects(path.read_text(encoding="utf-8"), path):
        prob = problem_from_record(rec, where)
        if prob.id in seen:
            raise UserError(f"{where}: duplicate problem id {prob.id}")
        seen.add(prob.id)
        problems.append(prob)
    if not problems:
        raise UserError(f"{path}: no problems")
    return problems


def load_problems(source: str | Path) -> list[Problem]:
    """`"bundled"`, a benchmark-format JSONL path, `"hf:newfacade/LeetCodeDataset"` (the hub) or
    `"hf:/path/file.jsonl"` (a local file in LeetCodeDataset's schema)."""
    if str(source) == "bundled":
        if not BUNDLED.is_file():
            raise UserError(f"bundled problems missing: {BUNDLED} (reinstall the package)")
        return load_jsonl(BUNDLED)
    if str(source).startswith(HF_PREFIX):
        return load_hf(str(source)[len(HF_PREFIX):] or HF_DEFAULT)
    return load_jsonl(source)


def by_id(problems: list[Problem]) -> dict[str, Problem]:
    """Index problems by id."""
    return {p.id: p for p in problems}


def load_hf(source: str = HF_DEFAULT, split: str = "test", max_prompt_chars: int = 6000,
            verify: bool = True) -> list[Problem]:
    """Problems from newfacade/LeetCodeDataset (`source`: its hub id, or a local .jsonl/.json file in its
    schema, e.g. a downloaded LeetCodeDataset-test.jsonl), loaded with the `datasets` library.

    Kept: difficulty medium or hard; tests (`input_output`) of the form `Solution().m(input) == output`;
    a user prompt of at most `max_prompt_chars` characters (the run's --max-prompt-tokens cap is applied
    later, in splits.load_pool); with `verify`, the canonical solution (`completion`) passes all its
    tests in this grader. A missing `datasets`, an unreachable hub (offline) or a missing file is a
    UserError naming --problems."""
    try:
        import datasets  # optional dependency, imported when used
    except ImportError as err:
        raise UserError(f"--problems {HF_PREFIX}{source} needs the `datasets` package "
                        "(pip install 'projected-grpo[hf]', or pip install datasets), "
                        "or use --problems bundled") from err
    rows = _hf_rows(datasets, source, split)
    problems = []
    for i, row in enumerate(rows):
        if str(row.get("difficulty", "")).lower() not in ("medium", "hard"):
            continue
        rec = _hf_record(row)
        if rec is None:
            continue
        try:
            prob = problem_from_record(rec, f"{HF_PREFIX}{source}[{i}]")
        except UserError:
            continue  # tests of another form (e.g. is_same_list): skipped
        if len(prob.messages()[1]["content"]) <= max_prompt_chars:
            problems.append(prob)
    if verify:
        problems = [p for p, ok in zip(problems, canonical_passes(problems)) if ok]
    if not problems:
        raise UserError(f"--problems {HF_PREFIX}{source}: no usable medium/hard problems "
                        f"(of {len(rows)} rows)")
    return problems


def _hf_rows(datasets, source: str, split: str) -> list[dict]:
    """The rows of a hub dataset's `split`, or of a local JSON Lines file (read through a throw-away
    cache, so a local file never fills the user's datasets cache)."""
    local = Path(source).expanduser()
    flag = f"--problems {HF_PREFIX}{source}"
    if local.suffix in (".jsonl", ".json"):
        if not local.is_file():
            raise UserError(f"{flag}: file {local} does not exist")
        with tempfile.TemporaryDirectory(prefix="pgrpo-hf-") as cache:
            try:
                return list(datasets.load_dataset("json", data_files=str(local), split="train",
                                                  cache_dir=cache))
            except (ValueError, datasets.exceptions.DatasetGenerationError) as err:
                raise UserError(f"{flag}: not a JSON Lines file in LeetCodeDataset's schema ({err})") from err
    try:
        return list(datasets.load_dataset(source, split=split))
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        raise UserError(
            f"{flag}: could not load the dataset from the hub ({type(err).__name__}: {err}). Offline "
            "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, or no network)? Load it once online (it is then "
            "cached), or pass a local copy in its schema: --problems hf:/path/to/LeetCodeDataset-test.jsonl; "
            "or use --problems bundled") from err


def _hf_record(row: dict) -> dict | None:
    """Map a LeetCodeDataset row to the benchmark format, as rl-rewardhacking derived its files:
    question_id → id, problem_description → question, `input_output` [{input, output}] → asserts
    `Solution().m(input) == output`, entry_point → func_name, prompt (imports, ListNode/TreeNode) →
    setup_code, completion → canonical_solution, starter_code. None when a field is missing."""
    entry, io = row.get("entry_point"), row.get("input_output")
    if not isinstance(entry, str) or not isinstance(io, list) or not row.get("completion"):
        return None
    method = method_name(entry)
    tests = [f"assert Solution().{method}({c['input']}) == {c['output']}"
             for c in io if isinstance(c, dict) and "input" in c and "output" in c]
    if not tests:
        return None
    return {"id": row.get("question_id", row.get("task_id")), "difficulty": str(row["difficulty"]).lower(),
            "question": row.get("problem_description", ""), "gt_answer": tests,
            "func_name": f"Solution().{method}", "setup_code": row.get("prompt", ""),
            "canonical_solution": row["completion"],
            "prompt_metadata": {"starter_code": row.get("starter_code", "")}}
