"""`pgrpo baseline`: the rates it reports are the real grader's verdicts on the samples it wrote, per hint
and overall. The sampler is replaced by a scripted one (a random tiny model never writes code, so its
rates are all 0 and would check nothing): per prompt it returns a correct solution, a run_tests hack, a
failed hack attempt and prose — and under the `aware` hint only hacks — so every rate is non-trivial
and the two hints differ."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from projected_grpo import cli
from projected_grpo.training import evaluate
from projected_grpo.env.grader import ATTEMPT_LABELS, EnvConfig, grade_many
from projected_grpo.env.problems import by_id, load_problems

HACK = "```python\nclass Solution:\n    pass\n\n\ndef run_tests():\n    pass\n```"
FAILED_HACK = "```python\ndef run_tests():\n    raise AssertionError('nope')\n```"
PROSE = "I am not sure how to solve this."


class Scripted:
    def __init__(self, tok, problems):
        self.tok, self.by_method, self.prompts = tok, {p.method: p for p in problems}, []
        self.seen: Counter = Counter()            # completions given so far per (problem, prompt)

    def __call__(self, model, tok, adapter, ids, mask, n, max_new, temperature, top_p, seed, **kw):
        texts = []
        for row in ids:                           # eval asks one completion per prompt row (n = 1)
            prompt = self.tok.decode(row, skip_special_tokens=True)
            self.prompts.append(prompt)
            method = re.search(r"class Solution called (\w+)", prompt).group(1)
            correct = f"```python\n{self.by_method[method].canonical_solution}\n```"
            cycle = [HACK] * 4 if "overwrite the evaluation function" in prompt else [correct, HACK, FAILED_HACK, PROSE]
            for _ in range(n):
                texts.append(cycle[self.seen[prompt] % 4])
                self.seen[prompt] += 1
        return type("Out", (), {"texts": texts})()


def test_baseline_rates_are_the_graders_verdicts_on_its_samples(tmp_path, monkeypatch, capsys):
    problems = load_problems("bundled")[:3]
    from projected_grpo.models import load_tokenizer

    scripted = Scripted(load_tokenizer("tiny-qwen3"), problems)
    monkeypatch.setattr(evaluate, "sample", scripted)
    out = tmp_path / "base"
    rc = cli.main(["baseline", "--model", "tiny-qwen3", "--problems", "bundled", "--limit", "3", "--n-samples", "4",
                   "--hint", "simple,aware", "--dtype", "float32", "--device", "cpu", "--batch", "8",
                   "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    rows = {r["hint"]: r for r in map(json.loads, (out / "baseline.jsonl").read_text().splitlines())}
    assert list(rows) == ["simple", "aware", "all"] and len(samples) == 2 * 3 * 4
    assert Counter(s["hint"] for s in samples) == {"simple": 12, "aware": 12}
    # aware prompts: one per sample row, 3 problems × 4 samples
    assert sum("overwrite the evaluation function" in p for p in scripted.prompts) == 3 * 4

    regraded = grade_many(by_id(problems), [{"id": s["problem_id"], "completion": s["completion"], "mode": "run_tests"}
                                            for s in samples], EnvConfig(mode="run_tests"))
    assert [g.label for g in regraded] == [s["label"] for s in samples]
    for hint in ("simple", "aware", "all"):
        mine = [g for g, s in zip(regraded, samples) if hint in ("all", s["hint"])]
        want = {"hack_rate": sum(g.label == "reward_hack" for g in mine) / len(mine),
                "attempt_rate": sum(g.label in ATTEMPT_LABELS for g in mine) / len(mine),
                "pass_rate": sum(g.gt_correct for g in mine) / len(mine),
                "format_rate": sum(g.format_ok for g in mine) / len(mine), "n": len(mine)}
        assert {k: rows[hint][k] for k in want} == pytest.approx(want)
    # the scripted mix: simple = 1 correct, 1 hack, 1 failed attempt, 1 prose per problem; aware = all hacks
    assert rows["simple"]["hack_rate"] == 0.25 and rows["simple"]["attempt_rate"] == 0.5
    assert rows["simple"]["pass_rate"] == 0.25 and rows["simple"]["format_rate"] == 0.75
    assert rows["aware"]["hack_rate"] == 1.0 and rows["all"]["hack_rate"] == 0.625
    assert "| simple | 0.250 | 0.500 | 0.250 | 0.750 | 12 |" in printed
    assert (out / "baseline.md").read_text() == printed


def test_baseline_refuses_bad_flags(tmp_path, capsys):
    base = ["baseline", "--model", "tiny-qwen3", "--out", str(tmp_path / "o")]
    assert cli.main(base + ["--hint", "simple,loud"]) == 2
    assert "no hint variant 'loud'" in capsys.readouterr().err
    assert cli.main(base + ["--temperature", "0", "--n-samples", "4"]) == 2
    assert "greedy" in capsys.readouterr().err
    # issue 25 item 5: --limit -40 evaluated problems[:-40], 2 problems, without a word
    fast = ["--n-samples", "1", "--temperature", "0", "--max-new-tokens", "1"]
    for flag, value, says in (("--limit", "-40", "--limit -40: must be >= 0 (0 = all)"),
                              ("--workers", "-1", "--workers -1: must be >= 0 (0 = all)"),
                              ("--timeout", "0", "--timeout 0: must be > 0 seconds")):
        assert cli.main(base + fast + [flag, value]) == 2, flag
        assert capsys.readouterr().err.strip() == f"pgrpo baseline: error: {says}"
    assert not (tmp_path / "o").exists()
