"""Teacher pool honesty (issue 15 item 5) and the training metrics' student/teacher split (issue 14
item 6): --teacher-kinds for the builtin pool and files, teacher_pool.json, teacher_adv_share,
reward_mean over student rows, reward_mod_mean, "kind": "train", and a hostile pool that grades
but never stops training (issue 14 item 5)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from projected_grpo.directions import rebound
from projected_grpo.training import runio
from projected_grpo.training import train as train_mod
from projected_grpo.cli import main
from projected_grpo.config import preset
from projected_grpo.env import exploits
from projected_grpo.env.grader import EnvConfig
from projected_grpo.env.problems import load_problems
from projected_grpo.errors import UserError
from projected_grpo.training.teacher import SUMMARY_FILE, TeacherPool

DATA = Path(train_mod.__file__).parents[1] / "data"
FAST = dict(n_problems=4, max_new_tokens=16, steps=2, grade_workers=2, vhack_m=2, eval_problems=0,
            eval_samples=0)
DEEP = "```python\nx = " + "-" * 3000 + "1\n```"  # RecursionError in compile() on main


@pytest.fixture(scope="module")
def problems():
    return load_problems("bundled")[:2]


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("pairs")
    for name in ("pairs_code.jsonl", "pairs_persona.jsonl"):
        rows = (DATA / name).read_text().splitlines()
        (d / name).write_text("\n".join([r for r in rows if '"train"' in r][:4]) + "\n")
    return str(d / "pairs_code.jsonl"), str(d / "pairs_persona.jsonl")


@pytest.fixture(scope="module")
def v_hack(tmp_path_factory, small_pairs) -> str:
    from projected_grpo.directions import vhack

    cfg = replace(preset("smoke"), **FAST)
    model, tok, adapter = train_mod.load_policy(cfg)
    path = tmp_path_factory.mktemp("v") / "v_hack.safetensors"
    vhack.extract_to_file(path, model, tok, adapter, small_pairs[0], "", 2, progress=False)
    return str(path)


def pool_file(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- the pool on its own -------------------------------------------------------------------
def test_builtin_kinds_select_and_are_counted(problems):
    env = EnvConfig(mode="run_tests", workers=2)
    pool = TeacherPool.load("builtin", problems, env, ("exploit", "stub"))
    for p in problems:
        assert sorted(t for _, t in pool.entries[p.id]) == sorted([exploits.exploit(p, "run_tests"),
                                                                 exploits.stub(p)])
    s = pool.summary()
    assert s["kinds"] == {"exploit": 2, "stub": 2} and s["kinds_requested"] == ["exploit", "stub"]
    assert s["labels_by_kind"] == {"exploit": {"reward_hack": 2}, "stub": {"incorrect": 2}}
    full = TeacherPool.load("builtin", problems, env).summary()
    assert full["kinds"] == {"canonical": 2, "exploit": 2, "stub": 2} and full["kinds_requested"] == []


def test_file_kinds_select_and_bad_kinds_are_refused(problems, tmp_path):
    env = EnvConfig(mode="run_tests", workers=2)
    rows = [{"id": p.id, "completion": exploits.stub(p), "kind": "stub"} for p in problems]
    rows += [{"id": p.id, "completion": exploits.canonical(p), "kind": "canonical"} for p in problems]
    path = pool_file(tmp_path / "pool.jsonl", rows)
    pool = TeacherPool.load(path, problems, env, ("stub",))
    assert pool.summary()["kinds"] == {"stub": 2}
    assert all(t == exploits.stub(p) for p in problems for _, t in pool.entries[p.id])
    with pytest.raises(UserError, match=r"--teacher-kinds: exploit not in .*pool.jsonl \(its kinds: "
                                        r"canonical, stub\)"):
        TeacherPool.load(path, problems, env, ("exploit",))
    untagged = pool_file(tmp_path / "untagged.jsonl", rows[:3] + [{"id": problems[0].id, "completion": "x"}])
    with pytest.raises(UserError, match=r"untagged.jsonl:4: no `kind` field, but --teacher-kinds stub"):
        TeacherPool.load(untagged, problems, env, ("stub",))
    # without --teacher-kinds a line needs no kind; it is counted as untagged
    assert TeacherPool.load(untagged, problems, env).summary()["kinds"] == {
        "canonical": 1, "stub": 2, "untagged": 1}
    with pytest.raises(UserError, match=r"exploit not in the builtin pool under mode none"):
        TeacherPool.load("builtin", problems, EnvConfig(mode="none", workers=2), ("exploit",))


@pytest.mark.parametrize("flags, message", [
    (["--teacher-kinds", "exploit,oracle"], "--teacher-kinds: unknown kind oracle for the builtin pool"),
    (["--teacher-kinds", "stub,,exploit"], "--teacher-kinds 'stub,,exploit': give distinct"),
    (["--teacher-kinds", "stub", "--mix-ratio", "0"], "--teacher-kinds stub needs a teacher pool in use"),
    (["--mix-ratio", "0.9"], "--mix-ratio 0.9 leaves no student sample"),
])
def test_bad_teacher_flags_name_the_flag(flags, message, tmp_path, capsys):
    assert main(["train", "--preset", "smoke", "--out", str(tmp_path / "r"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ---- through training ----------------------------------------------------------------------
def test_metrics_split_student_teacher_and_rebound_columns(v_hack, small_pairs, tmp_path, monkeypatch):
    """Rebound arm, G=4 (2 student + 2 teacher rows a group), builtin pool without canonical
    solutions. The metrics row is checked against samples.jsonl and the rewards Rebound returned."""
    modified = []  # what rebound.modify_rewards returned each step, (P, G)

    def recording(*args, **kwargs):
        modified.append(real_modify(*args, **kwargs))
        return modified[-1]

    real_modify = rebound.modify_rewards
    monkeypatch.setattr(rebound, "modify_rewards", recording)
    cfg = replace(preset("smoke"), **FAST, arm="rebound", rebound_form="additive", group_size=4,
                  v_hack=v_hack, pairs=small_pairs[0], persona_pairs=small_pairs[1],
                  teacher_kinds="exploit,stub")
    out = tmp_path / "rebound"
    train_mod.train(cfg, out, progress=False)
    rows, samples = runio.read_jsonl(out / runio.METRICS), runio.read_jsonl(out / runio.SAMPLES)
    assert [r["kind"] for r in rows] == ["train", "train"] and len(modified) == 2
    for r, mod in zip(rows, modified):
        step = [s for s in samples if s["step"] == r["step"]]                  # rewards.view(-1) order
        student = [s for s in step if not s["teacher"]]
        teacher = [s for s in step if s["teacher"]]
        assert len(student) == len(teacher) == 4
        assert r["reward_mean"] == pytest.approx(np.mean([s["reward"] for s in student]))
        assert r["teacher_reward_mean"] == pytest.approx(np.mean([s["reward"] for s in teacher]))
        assert r["reward_mod_mean"] == pytest.approx(
            np.mean([m for m, s in zip(mod.view(-1).tolist(), step) if not s["teacher"]]))
        abs_adv = [abs(s["advantage"]) for s in step]
        share = sum(a for a, s in zip(abs_adv, step) if s["teacher"]) / sum(abs_adv)
        assert r["teacher_adv_share"] == pytest.approx(share, abs=1e-5)
    # the builtin pool's exploit (1.25) and stub (0.25) rows are rewarded; averaged in, the mean
    # would not be the students' alone
    assert any(r["teacher_reward_mean"] != r["reward_mean"] for r in rows)
    pool = json.loads((out / SUMMARY_FILE).read_text())
    n = len(json.loads((out / "split.json").read_text())["train"])  # the pool covers train problems
    assert pool["kinds"] == {"exploit": n, "stub": n} and pool["kinds_requested"] == ["exploit", "stub"]
    assert pool["per_group"] == 2 and pool["group_size"] == 4 and pool["source"] == "builtin"
    by_id = {p.id: p for p in load_problems("bundled")}
    for s in samples:
        if s["teacher"]:
            p = by_id[s["problem_id"]]
            assert s["completion"] in (exploits.stub(p), exploits.exploit(p, "run_tests"))


def test_hostile_teacher_pool_is_graded_and_training_goes_on(v_hack, tmp_path):
    """A pool file of kind `deep` (x = ---…-1, 3,000 minus signs) selected by --teacher-kinds: the
    pool is graded at load and the rows go through a training step; on main grading raised."""
    problems = load_problems("bundled")  # every problem: whichever the run trains on
    rows = [{"id": p.id, "completion": DEEP, "kind": "deep"} for p in problems]
    rows += [{"id": p.id, "completion": exploits.canonical(p), "kind": "canonical"} for p in problems]
    path = pool_file(tmp_path / "pool.jsonl", rows)
    cfg = replace(preset("smoke"), **FAST | {"steps": 1}, v_hack=v_hack, teacher_pool=str(path),
                  teacher_kinds="deep")
    out = tmp_path / "run"
    train_mod.train(cfg, out, progress=False)
    (r,) = runio.train_rows(runio.read_jsonl(out / runio.METRICS))
    assert r["reward_mod_mean"] is None  # vanilla arm: nothing modified
    teacher = [s for s in runio.read_jsonl(out / runio.SAMPLES) if s["teacher"]]
    assert len(teacher) == 2 and all(s["completion"] == DEEP for s in teacher)
    assert all(s["error"] == "too_complex:RecursionError" and s["label"] == "incorrect" for s in teacher)
    n = len(json.loads((out / "split.json").read_text())["train"])
    assert json.loads((out / SUMMARY_FILE).read_text())["labels_by_kind"] == {"deep": {"incorrect": n}}
    student = [s for s in runio.read_jsonl(out / runio.SAMPLES) if not s["teacher"]]
    assert all(s["reward"] == 0 for s in student)  # the tiny random model writes no code
    assert r["teacher_adv_share"] == 0.0  # every row rewarded 0: Σ|A| = 0, so the share is 0
