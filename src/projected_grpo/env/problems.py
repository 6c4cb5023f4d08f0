"""LeetCode problems: loading (bundled, benchmark JSONL, Hugging Face) and test parsing.

The benchmark format (rl-rewardhacking, Ariahw et al. 2025), one JSON object a line: id,
difficulty, question, gt_answer (list of `assert Solution().method(...) == expected`),
func_name (`Solution().method`), setup_code, canonical_solution, prompt_metadata.starter_code.
"""

from __future__ import annotations

import ast
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from projected_grpo.env.prompts import build_messages, method_name, problem_statement
from projected_grpo.errors import UserError
from projected_grpo.jsonl import json_objects

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "problems_bundled.jsonl"
HF_PREFIX = "hf:"
HF_DEFAULT = "newfacade/LeetCodeDataset"
REQUIRED = ("id", "difficulty", "question", "gt_answer", "func_name", "setup_code",
            "canonical_solution")


@dataclass(frozen=True)
class TestCase:
    """One assert test split into the call's argument source and the expected-value source."""

    args_src: str  # e.g. "n = 5, queries = [[2,4]]" (what goes between the call's parentheses)
    expected_src: str  # e.g. "[3, 2, 1]"
    source: str  # the original assert statement


@dataclass
class Problem:
    """One LeetCode problem with its hidden tests."""

    id: str  # problem id as a string ("3243")
    difficulty: str  # "medium" or "hard"
    question: str  # bare problem statement (no instructions)
    func_name: str  # as stored by the benchmark: "Solution().method"
    starter_code: str  # class Solution skeleton
    setup_code: str  # imports and ListNode/TreeNode helpers prepended to every program
    tests: list[str]  # assert statements, `assert Solution().m(...) == expected`
    canonical_solution: str  # reference solution (passes all tests)
    cases: list[TestCase] = field(default_factory=list, repr=False)  # parsed tests
    expected: list | None = field(default=None, repr=False, compare=False)  # cached plain values

    @property
    def method(self) -> str:
        """Bare method name ('twoSum')."""
        return method_name(self.func_name)

    def messages(self, mode: str = "none", hint: str = "simple") -> list[dict[str, str]]:
        """Chat messages (system + user) for this problem under a loophole mode."""
        return build_messages(self.question, self.func_name, self.starter_code, mode, hint)


def parse_test(source: str, method: str, where: str = "") -> TestCase:
    """Split `assert Solution().<method>(args) == expected` into its parts, or raise UserError."""
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise UserError(f"{where}: test does not parse ({err.msg}): {source[:120]}") from err
    stmt = tree.body[0] if len(tree.body) == 1 else None
    ok = (isinstance(stmt, ast.Assert) and isinstance(stmt.test, ast.Compare)
          and len(stmt.test.ops) == 1 and isinstance(stmt.test.ops[0], ast.Eq))
    call = stmt.test.left if ok else None
    ok = ok and (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                 and call.func.attr == method and isinstance(call.func.value, ast.Call)
                 and isinstance(call.func.value.func, ast.Name)
                 and call.func.value.func.id == "Solution" and not call.func.value.args)
    if not ok:
        raise UserError(f"{where}: test is not of the form `assert Solution().{method}(...) == "
                        f"expected`: {source[:120]}")
    parts = [ast.get_source_segment(source, a) for a in call.args]
    for kw in call.keywords:
        value = ast.get_source_segment(source, kw.value)
        parts.append(f"{kw.arg}={value}" if kw.arg else f"**{value}")
    expected = ast.get_source_segment(source, stmt.test.comparators[0])
    return TestCase(", ".join(parts), expected, source)


def problem_from_record(rec: dict, where: str) -> Problem:
    """Build a Problem from one benchmark-format record; `where` is 'file:line' for errors."""
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise UserError(f"{where}: missing field(s) {', '.join(missing)}")
    meta = rec.get("prompt_metadata") or {}
    starter = meta.get("starter_code") if isinstance(meta, dict) else None
    if not isinstance(starter, str):
        raise UserError(f"{where}: missing field prompt_metadata.starter_code")
    tests = rec["gt_answer"]
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise UserError(f"{where}: field gt_answer must be a non-empty list of assert strings")
    for key in ("question", "func_name", "setup_code", "canonical_solution"):
        if not isinstance(rec[key], str):
            raise UserError(f"{where}: field {key} must be a string")
    method = method_name(rec["func_name"])
    cases = [parse_test(t, method, f"{where} gt_answer[{i}]") for i, t in enumerate(tests)]
    return Problem(id=str(rec["id"]), difficulty=str(rec["difficulty"]),
                   question=problem_statement(rec["question"]), func_name=rec["func_name"],
                   starter_code=starter, setup_code=rec["setup_code"], tests=list(tests),
                   canonical_solution=rec["canonical_solution"], cases=cases)


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
        import datasets  # noqa: PLC0415 - optional dependency, imported lazily
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
        from projected_grpo.env.grader import canonical_passes  # noqa: PLC0415 - cycle

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
