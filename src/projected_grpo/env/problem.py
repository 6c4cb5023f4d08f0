"""One LeetCode problem: its type, the benchmark record it is built from, and test parsing.

The benchmark format (rl-rewardhacking, Ariahw et al. 2025), one JSON object a line: id,
difficulty, question, gt_answer (list of `assert Solution().method(...) == expected`),
func_name (`Solution().method`), setup_code, canonical_solution, prompt_metadata.starter_code.
Loading files and datasets of them is problems.py (it grades canonical solutions, so it sits above
the grader, which needs only this module).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from projected_grpo.env.prompts import TRAIN_EVALUATOR, build_messages, method_name, problem_statement
from projected_grpo.errors import UserError

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

    def messages(self, mode: str = "none", hint: str = "simple",
                 evaluator: str = TRAIN_EVALUATOR) -> list[dict[str, str]]:
        """Chat messages (system + user) for this problem under a loophole mode; `evaluator` is the
        name the run_tests hints give the evaluation function."""
        return build_messages(self.question, self.func_name, self.starter_code, mode, hint, evaluator)


def parse_test(source: str, method: str, where: str = "") -> TestCase:
    """Split `assert Solution().<method>(args) == expected` into its parts, or raise UserError."""
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise UserError(f"{where}: test does not parse ({err.msg}): {source[:120]}") from err
    stmt = tree.body[0] if len(tree.body) == 1 else None
    test = stmt.test if isinstance(stmt, ast.Assert) else None
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        test = None
    call = test.left if test is not None else None
    if test is None or not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                            and call.func.attr == method and isinstance(call.func.value, ast.Call)
                            and isinstance(call.func.value.func, ast.Name)
                            and call.func.value.func.id == "Solution" and not call.func.value.args):
        raise UserError(f"{where}: test is not of the form `assert Solution().{method}(...) == "
                        f"expected`: {source[:120]}")
    parts = [_segment(source, a) for a in call.args]
    for kw in call.keywords:
        value = _segment(source, kw.value)
        parts.append(f"{kw.arg}={value}" if kw.arg else f"**{value}")
    return TestCase(", ".join(parts), _segment(source, test.comparators[0]), source)


def _segment(source: str, node: ast.AST) -> str:
    """The text of `node` in `source` (parsed from it, so the node has its position)."""
    text = ast.get_source_segment(source, node)
    assert text is not None
    return text


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
