"""Hostile completion texts: none may stop grading. Each is graded incorrect, with no reward,
under every mode, with the reason in Grade.error (issue 14 item 5)."""

from __future__ import annotations

import time

import pytest

from projected_grpo.env.code import MAX_CODE_CHARS
from projected_grpo.env.grader import EnvConfig, extract_code, grade_many
from projected_grpo.env.prompts import MODES
from test_env_grader import ADD, PROBS, WRONG, fence

# A program that steals the harness's nonce and channel and sends one frame nested 10^5 deep:
# the grader's own json.loads of it raised RecursionError.
FORGED_DEEP_FRAME = WRONG + (
    "import os, sys\nf = sys._getframe(1).f_locals\n"
    "os.write(f['chan'], (f['nonce'] + ' ' + '[' * 100000 + ']' * 100000 + '\\n').encode())\n")

HOSTILE = {  # name -> (completion, the error it must be graded with)
    "minus_chain_3000": (fence("x = " + "-" * 3000 + "1"), "too_complex:RecursionError"),
    "minus_chain_1e5": (fence("x = " + "-" * 100_000 + "1"), "too_complex:MemoryError"),
    "plus_chain_1e5": (fence("x = 1" + "+1" * 100_000), "too_complex:RecursionError"),
    "attribute_chain_1e5": (fence("x = y" + ".a" * 100_000), "too_complex:RecursionError"),
    "nested_lambdas_3000": (fence("x = " + "lambda: " * 3000 + "1"), "too_complex:MemoryError"),
    "nested_brackets_1e5": (fence("x = " + "[" * 100_000 + "]" * 100_000), "syntax_error"),
    # a run_tests that cannot run: the lever's text is there, no harmful run_tests was defined
    "run_tests_in_deep_code": (fence(ADD.canonical_solution + "def run_tests():\n    return True\n"
                                     + "x = " + "-" * 3000 + "1"), "too_complex:RecursionError"),
    "huge_program_3MB": (fence("x = 1\n" * 500_000), "too_long"),
    "nul_and_binary": (fence("x = 1\x00" + bytes(range(256)).decode("latin-1")), "syntax_error"),
    "lone_surrogates": (fence("x = '\udc80\ud800'\nclass Solution:\n    pass"), "syntax_error"),
    "forged_deep_frame": (fence(FORGED_DEEP_FRAME), "tampered_channel"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_text_is_graded_incorrect_with_a_reason(name):
    text, error = HOSTILE[name]
    items = [{"id": ADD.id, "completion": text, "mode": m} for m in MODES]
    grades = grade_many(PROBS, items + [{"id": ADD.id, "completion": fence(ADD.canonical_solution)}],
                        EnvConfig(timeout_s=10.0), workers=2)
    *hostile, canonical = grades
    assert canonical.label == "correct"  # the batch it sits in is graded as usual
    for mode, g in zip(MODES, hostile):
        assert g.error == error, (mode, g)
        assert g.label == "incorrect" and not g.passed and not g.gt_correct, (mode, g)
        assert not g.hack_attempted, (mode, g)
        # only the forged frame compiles (format bonus 0.25); nothing else earns any reward
        assert g.format_ok == (name == "forged_deep_frame") and g.reward == 0.25 * g.format_ok


def test_the_size_cap_is_past_any_generation_budget():
    assert MAX_CODE_CHARS >= 100_000  # 'full' generates at most 1,024 tokens (a few thousand chars)
    g = grade_many(PROBS, [{"id": ADD.id, "completion": fence(WRONG + "x = 1\n" * 10_000)}])[0]
    assert g.format_ok and g.error == ""  # 60 kB of code is still parsed and run


def test_fence_extraction_is_linear_in_the_text():
    # "``` " + spaces without a newline backtracked quadratically: 20k spaces took 2.9 s, 50k ~18 s
    start = time.monotonic()
    assert extract_code("``` " + " " * 50_000) == ""
    assert extract_code("intro\n```  python  \nx = 1\n```") == "x = 1"  # padded lang still read
    assert time.monotonic() - start < 2.0
