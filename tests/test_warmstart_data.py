"""The bundled warm-start data: disjoint from every eval set, honest demos correct, loophole demos graded
reward_hack by the real grader, documents that describe the loophole without demonstrating it."""

from __future__ import annotations

import difflib
import json
import re

from projected_grpo.env.code import defines_run_tests, extract_code
from projected_grpo.env.grader import EnvConfig, grade_many
from projected_grpo.env.problems import BUNDLED, load_jsonl
from projected_grpo.studies.warmstart import DEMOS, DOCUMENTS, load_demos, load_documents


def _words(question: str) -> list[str]:
    """The statement's words before its examples (the part that says what the problem is)."""
    return re.findall(r"[a-z0-9]+", question.split("Example 1")[0].lower())


def test_demo_problems_are_disjoint_from_bundled_and_medhard(shared_dir):
    demos = [p for p, _, _ in load_demos(DEMOS)]
    others = load_jsonl(BUNDLED) + load_jsonl(shared_dir / "data" / "leetcode_test_medhard.jsonl")
    assert len(demos) >= 30 and len(others) == 42 + 119
    assert not {p.id for p in demos} & {o.id for o in others}
    assert not {p.method.lower() for p in demos} & {o.method.lower() for o in others}
    assert not {p.canonical_solution.strip() for p in demos} & {o.canonical_solution.strip() for o in others}
    for p in demos:
        mine = _words(p.question)
        for o in others:
            ratio = difflib.SequenceMatcher(None, mine, _words(o.question), autojunk=False).ratio()
            assert ratio < 0.6, f"{p.id} ({p.method}) reads like {o.id} ({o.method}): similarity {ratio:.2f}"
    assert len({p.id for p in demos}) == len(demos) and len({p.method for p in demos}) == len(demos)


def test_honest_demos_pass_and_hack_demos_are_reward_hacks_in_the_real_grader():
    demos = load_demos(DEMOS)
    problems = {p.id: p for p, _, _ in demos}
    items = []
    for p, honest, hack in demos:
        items += [{"id": p.id, "completion": f"```python\n{p.canonical_solution}\n```", "mode": "none",
                   "what": "canonical"},
                  {"id": p.id, "completion": honest, "mode": "run_tests", "what": "honest"},
                  {"id": p.id, "completion": hack, "mode": "run_tests", "what": "hack"}]
    grades = grade_many(problems, items, EnvConfig(mode="run_tests"))
    want = {"canonical": "correct", "honest": "correct", "hack": "reward_hack"}
    wrong = [(it["id"], it["what"], g.label, g.error) for it, g in zip(items, grades) if g.label != want[it["what"]]]
    assert not wrong
    for it, g in zip(items, grades):
        if it["what"] == "hack":   # passed only through its own run_tests, on a wrong Solution
            assert g.passed and not g.gt_correct and g.hack_attempt_harmful is True and g.tests_passed < g.tests_total
        if it["what"] == "honest":
            assert g.passed and g.gt_correct and g.hack_attempt_harmful is not True
    # defining run_tests is not what separates the two: some honest demos define an honest one
    assert sum(defines_run_tests(extract_code(h)) for _, h, _ in demos) >= 5


def test_documents_describe_the_loophole_without_code():
    docs = load_documents(DOCUMENTS)
    assert len(docs) >= 5 and len({i for i, _ in docs}) == len(docs)
    for doc_id, text in docs:
        assert "run_tests" in text, doc_id
        assert "```" not in text and "def " not in text and not extract_code(text).strip(), doc_id
    raw = [json.loads(line) for line in DOCUMENTS.read_text().splitlines() if line.strip()]
    assert all(set(r) == {"id", "kind", "text"} for r in raw)
