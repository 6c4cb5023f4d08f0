"""The `hf:` problem loader with the real `datasets` library, on a local file in newfacade/LeetCodeDataset's
schema (task_id, question_id, difficulty, tags, problem_description, starter_code, estimated_date, prompt,
completion, entry_point, test, input_output, query, response): its filters, and clear errors when
`datasets` is missing or the hub is offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from projected_grpo.env.problems import load_hf, load_problems
from projected_grpo.errors import UserError

SETUP = "from typing import *\nfrom collections import *\n"  # LeetCodeDataset's `prompt`: imports, helpers


def row(qid: int, slug: str, difficulty: str, method: str, args: str, body: str, cases: list[tuple[str, str]],
        description: str = "") -> dict:
    """One row in LeetCodeDataset's schema (a made-up problem)."""
    starter = f"class Solution:\n    def {method}(self, {args}) -> int:\n        "
    return {"task_id": slug, "question_id": qid, "difficulty": difficulty, "tags": ["Math"],
            "problem_description": description or f"Compute {method} of the inputs.\n",
            "starter_code": starter, "estimated_date": "2024-01-01", "prompt": SETUP,
            "completion": f"class Solution:\n    def {method}(self, {args}) -> int:\n        return {body}\n",
            "entry_point": f"Solution().{method}",
            "test": "def check(candidate):\n" + "".join(f"    assert candidate({i}) == {o}\n" for i, o in cases),
            "input_output": [{"input": i, "output": o} for i, o in cases],
            "query": "", "response": ""}


@pytest.fixture
def dataset_file(tmp_path) -> Path:
    add = [("a = 1, b = 2", "3"), ("a = -4, b = 9", "5")]
    rows = [
        row(9001, "add-two", "Medium", "addTwo", "a: int, b: int", "a + b", add),                    # kept
        row(9002, "max-of-list", "Hard", "maxOf", "nums: List[int]", "max(nums)",
            [("nums = [3, 1, 2]", "3"), ("nums = [-1]", "-1")]),                                      # kept
        row(9003, "easy-add", "Easy", "addTwo", "a: int, b: int", "a + b", add),                     # easy
        row(9004, "wrong-reference", "Medium", "addTwo", "a: int, b: int", "a - b", add),            # canonical fails
        row(9005, "long-statement", "Medium", "addTwo", "a: int, b: int", "a + b", add,
            description="Add the numbers. " * 500),                                                  # prompt too long
        row(9006, "no-io", "Medium", "addTwo", "a: int, b: int", "a + b", []),                       # no tests
    ]
    path = tmp_path / "LeetCodeDataset-test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hf_loader_keeps_medium_hard_problems_whose_canonical_passes_and_whose_prompt_fits(dataset_file):
    problems = load_problems(f"hf:{dataset_file}")
    assert [(p.id, p.difficulty) for p in problems] == [("9001", "medium"), ("9002", "hard")]
    p = problems[0]
    assert p.func_name == "Solution().addTwo" and p.method == "addTwo" and p.setup_code == SETUP
    assert p.tests == ["assert Solution().addTwo(a = 1, b = 2) == 3", "assert Solution().addTwo(a = -4, b = 9) == 5"]
    assert [(c.args_src, c.expected_src) for c in p.cases] == [("a=1, b=2", "3"), ("a=-4, b=9", "5")]
    user = p.messages("run_tests")[1]["content"]
    assert "Compute addTwo of the inputs." in user and "def addTwo(self, a: int, b: int) -> int:" in user
    # each filter is what drops its row: without verification the wrong reference stays, with a longer
    # cap the long statement stays
    assert [q.id for q in load_hf(str(dataset_file), verify=False)] == ["9001", "9002", "9004"]
    assert [q.id for q in load_hf(str(dataset_file), max_prompt_chars=100_000)] == ["9001", "9002", "9005"]


def test_hf_loader_errors_name_the_flag(dataset_file, tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"hf:.*missing\.jsonl: file .* does not exist"):
        load_problems(f"hf:{tmp_path / 'missing.jsonl'}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(UserError, match=r"--problems hf:.* needs the `datasets` package \(pip install"):
        load_problems(f"hf:{dataset_file}")


def test_hf_hub_offline_is_a_clear_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    res = subprocess.run([sys.executable, "-m", "projected_grpo.cli", "env-check",
                          "--problems", "hf:newfacade/LeetCodeDataset"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("pgrpo env-check: error: --problems hf:newfacade/LeetCodeDataset: could not load")
    assert "Offline" in last and "--problems hf:/path/to/LeetCodeDataset-test.jsonl" in last
