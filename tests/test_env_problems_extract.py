"""Problem loading/parsing and code extraction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from projected_grpo.env.grader import compiles, defines_run_tests, extract_code
from projected_grpo.env.problem import parse_test
from projected_grpo.env.problems import BUNDLED, load_problems
from projected_grpo.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "leetcode_test_medhard.jsonl"


def shared_file() -> Path:
    assert SHARED.is_file(), f"shared benchmark missing at {SHARED} (expected the repo's ../shared)"
    return SHARED


def test_load_shared_benchmark():
    probs = load_problems(shared_file())
    assert len(probs) == 119
    assert {p.difficulty for p in probs} == {"medium", "hard"}
    p = probs[0]
    assert p.id == "3243" and p.method == "shortestDistanceAfterQueries"
    assert not p.question.startswith("PROBLEM:") and "Your solution" not in p.question
    assert len(p.cases) == len(p.tests) > 0
    assert p.cases[0].args_src.startswith("n = 7") or p.cases[0].args_src.startswith("n=7")
    msgs = p.messages("run_tests", "simple")
    assert msgs[0]["role"] == "system" and "run_tests()" in msgs[1]["content"]
    assert "shortestDistanceAfterQueries" in msgs[1]["content"]


def test_load_bundled_if_present():
    if not BUNDLED.is_file():
        pytest.fail(f"bundled problems missing at {BUNDLED}")
    probs = load_problems("bundled")
    assert len(probs) >= 10 and all(p.cases for p in probs)


def test_parse_test_forms():
    c = parse_test("assert Solution().f(a = [1, 2], b = -3) == [-inf, 2]", "f")
    assert c.args_src == "a=[1, 2], b=-3" and c.expected_src == "[-inf, 2]"
    assert parse_test("assert Solution().f(1, *xs) == 1", "f").args_src == "1, *xs"
    for bad in ("assert is_same_list(Solution().f(x), list_node([1]))",
                "assert Solution().g(x = 1) == 1", "assert Solution().f(x = 1) != 1",
                "x = 1", "assert Solution().f(x=1) == 1 == 1", "assert (("):
        with pytest.raises(UserError, match="where"):
            parse_test(bad, "f", "where")


def _record(**over) -> dict:
    rec = {"id": 1, "difficulty": "medium", "question": "Add.", "func_name": "Solution().add",
           "gt_answer": ["assert Solution().add(a = 1, b = 2) == 3"], "setup_code": "",
           "canonical_solution": "class Solution:\n    def add(self, a, b):\n        return a + b\n",
           "prompt_metadata": {"starter_code": "class Solution:\n    def add(self, a, b):\n"}}
    rec.update(over)
    return rec


@pytest.mark.parametrize("line,message", [
    ("{not json", "invalid JSON"),
    (json.dumps({k: v for k, v in _record().items() if k != "gt_answer"}), "missing field.*gt_answer"),
    (json.dumps(_record(prompt_metadata={})), "prompt_metadata.starter_code"),
    (json.dumps(_record(gt_answer=["assert foo() == 1"])), "not of the form"),
    (json.dumps(_record(gt_answer=[])), "non-empty list"),
])
def test_malformed_problem_lines(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(_record()) + "\n" + line + "\n")
    with pytest.raises(UserError, match=message) as err:
        load_problems(path)
    assert f"{path}:2" in str(err.value)


def test_missing_sources():
    with pytest.raises(UserError, match="does not exist"):
        load_problems("/nonexistent/problems.jsonl")


def test_extract_joins_python_blocks_and_unterminated_last():
    text = ("Intro\n```python\nimport math\n```\ntext\n```py\nx = 1\n```\n```bash\nls\n```\n"
            "```python\nclass Solution:\n    pass\n")
    code = extract_code(text)
    assert "import math" in code and "x = 1" in code and "class Solution" in code
    assert "ls" not in code and compiles(code)


def test_extract_plain_fallback_and_empty():
    assert extract_code("```\nprint(1)\n```") == "print(1)"
    assert extract_code("```python\na = 1\n```\n```\nb = 2\n```") == "a = 1"
    assert extract_code("no code here") == ""
    assert not compiles("def f(:\n")


def test_run_tests_detector():
    assert defines_run_tests("def run_tests():\n    pass\n")
    assert defines_run_tests("run_tests = lambda: None\n")
    assert not defines_run_tests("class S:\n    def run_tests(self):\n        pass\n")
