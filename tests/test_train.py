"""Trainer: one smoke run per arm, resume equality (also after SIGKILL), the no-cheat rule,
update-space projection, and clear errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from projected_grpo import arms
from projected_grpo.interventions import uses_labels
from projected_grpo.training import runio
from projected_grpo.training import train as train_mod
from projected_grpo.cli import main
from projected_grpo.config import TIMING_KEYS, preset
from projected_grpo.env.grader import grade_many
from projected_grpo.errors import UserError

ROUTING = ("routing", "routing_v", "routing_random")
FAST = dict(n_problems=4, max_new_tokens=16, steps=2, grade_workers=2, vhack_m=2)
REQUIRED = ("step", "reward_mean", "reward_std", "hack_rate", "pass_rate", "format_rate", "frac_zero_adv",
            "kl", "loss", "grad_norm", "cos_in", "cos_out", "frac_fired", "update_hackward", "cos_in_real",
            "cos_in_null", "tokens", "gen_s",
            "grade_s", "train_s", "teacher_hack_rate", "teacher_pass_rate")


def smoke(**kw):
    return replace(preset("smoke"), **(FAST | kw))


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory, mixed_code_pairs) -> tuple[str, str]:
    """A few bundled code pairs (run_tests and stdout, conftest) and persona pairs, so each
    extraction in these tests stays quick."""
    rows = (Path(train_mod.__file__).parents[1] / "data" / "pairs_persona.jsonl").read_text().splitlines()
    persona = tmp_path_factory.mktemp("pairs") / "pairs_persona.jsonl"
    persona.write_text("\n".join([r for r in rows if '"train"' in r][:6]) + "\n")
    return mixed_code_pairs, str(persona)


@pytest.fixture(scope="module")
def v_hack(tmp_path_factory, small_pairs) -> str:
    """One extracted artifact shared by the runs below (the trainer extracts it in the first run)."""
    out = tmp_path_factory.mktemp("first") / "run"
    train_mod.train(smoke(arm="vanilla", steps=1, pairs=small_pairs[0]), out, progress=False)
    assert (out / "v_hack.safetensors").is_file()
    return str(out / "v_hack.safetensors")


def metrics(out: Path) -> list[dict]:
    return runio.train_rows(runio.read_jsonl(out / runio.METRICS))


def arm_config(arm: str, v_hack: str, small_pairs, **kw):
    """The smoke config of one arm in these tests (refresh re-extracts V every step)."""
    return smoke(arm=arm, v_hack=v_hack, pairs=small_pairs[0], persona_pairs=small_pairs[1],
                 **({"refresh_every": 1} if arm == "refresh" else {}) | kw)


@pytest.fixture(scope="module")
def honest_runs(tmp_path_factory, v_hack, small_pairs):
    """arm -> run dir of its smoke run, trained once and shared by the smoke and no-cheat tests."""
    done: dict[str, Path] = {}

    def get(arm: str) -> Path:
        if arm not in done:
            done[arm] = tmp_path_factory.mktemp("honest") / arm
            train_mod.train(arm_config(arm, v_hack, small_pairs), done[arm], progress=False)
        return done[arm]
    return get


@pytest.mark.parametrize("arm", arms.NAMES)
def test_smoke_run_per_arm(arm, v_hack, honest_runs):
    out = honest_runs(arm)
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    # held-out eval (one problem named by no pair) at step 0 and after the last step, in every arm
    assert [r["step"] for r in runio.eval_rows(runio.read_jsonl(out / runio.METRICS))] == [0, 2]
    for r in rows:
        assert all(k in r for k in REQUIRED), set(REQUIRED) - set(r)
        assert r["n_student"] == 2 and r["n_teacher"] == 2  # P=2 × (G=2: one student, one teacher)
    if arm in ("vanilla", "rebound", "monitor_penalty", "screening", "probe_penalty", "plan", "inoculation") + ROUTING:
        assert all(r["cos_out"] == r["cos_in"] for r in rows)  # measured, never changed
    elif arm == "clean_subspace":                              # onto the honest span: changed, not removed
        assert (out / "clean_basis.safetensors").is_file() and any(r["cos_out"] != r["cos_in"] for r in rows)
    else:
        assert all(r["cos_out"] < 1e-6 for r in rows)          # projected away
        assert any(r["cos_in"] > 0 for r in rows) and any(r["frac_fired"] > 0 for r in rows)
    if arm in ("random", "shuffled", "lomo"):
        control = load_file(out / f"v_hack_{arm}.safetensors")
        real = load_file(v_hack)
        # not the real V (shuffled, m > 1: the same span, rows flipped in some modules; vhack.py)
        assert not all(torch.allclose(control[k], real[k]) for k in real)
    if arm == "rebound":
        assert (out / "rebound_direction.safetensors").is_file()
    assert all(r["uses_labels"] is (arm in ("oracle", "monitor_penalty", "screening", "routing")) for r in rows)
    assert all(("cov_rows" in r) is (arm == "oracle") for r in rows)  # oracle: g_h of the hack rows
    if arm == "refresh":
        assert [r["refresh_s"] > 0 for r in rows] == [False, True]   # re-extracted before step 2
    if arm in ("monitor_penalty", "screening", "probe_penalty") + ROUTING:   # the detector's rates, every step
        prefix = {"probe_penalty": "probe", "routing_v": "route", "routing_random": "route"}.get(arm, "monitor")
        assert all(f"{prefix}_tpr" in r and f"{prefix}_fpr" in r for r in rows)
    if arm in ROUTING:     # the quarantine trained, logged, checkpointed; δS saved without it
        assert all(r["quarantine_norm"] > 0 and "routed_frac" in r for r in rows)
        evals = runio.eval_rows(runio.read_jsonl(out / runio.METRICS))
        assert all(e["eval_n_with_quarantine"] == e["eval_n"] for e in evals)
        ckpt = runio.load_checkpoint(out)
        saved = load_file(out / "delta_s.safetensors")
        assert all(torch.equal(saved[k], ckpt["delta_s"][k]) for k in saved) and "delta_q" in ckpt
    cfg = json.loads((out / runio.CONFIG).read_text())
    assert cfg["arm"] == arm and cfg["v_hack"] == v_hack
    samples = runio.read_jsonl(out / runio.SAMPLES)
    assert len(samples) == 2 * 2 * 2 and {"gt_correct", "label", "reward", "advantage"} <= set(samples[0])
    assert (out / "delta_s.safetensors").is_file() and runio.load_checkpoint(out)["step"] == 2


def _comparable(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


RESUME_STEPS = 4


def resume_flags(v_hack: str) -> list[str]:
    """CLI flags of the projected run the resume tests cut and continue (the smoke config below)."""
    return ["--preset", "smoke", "--arm", "projected", "--v-hack", v_hack, "--steps", str(RESUME_STEPS)] + [
        f"--{k.replace('_', '-')}={v}" for k, v in FAST.items() if k != "steps"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, v_hack) -> Path:
    """The projected run of RESUME_STEPS steps, never stopped: what each resumed run must log."""
    ref = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert main(["train", "--out", str(ref), *resume_flags(v_hack)]) == 0
    return ref


def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(v_hack, uninterrupted, tmp_path):
    cfg = smoke(arm="projected", v_hack=v_hack, steps=RESUME_STEPS)
    cut = tmp_path / "cut"
    train_mod.Trainer(cfg, cut, progress=False).run(until=2)     # a run stopped after step 2 ...
    assert len(metrics(cut)) == 2 and not (cut / "delta_s.safetensors").exists()
    train_mod.train(cfg, cut, resume=True, progress=False)       # ... continued to the last step
    assert _comparable(metrics(cut)) == _comparable(metrics(uninterrupted))
    a, b = load_file(uninterrupted / "delta_s.safetensors"), load_file(cut / "delta_s.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_routing_run_resumes_to_the_uninterrupted_run(v_hack, small_pairs, honest_runs, tmp_path):
    """Killed after checkpoint 1 (δQ moved by then), resumed: the smoke run's metrics, eval rows with and
    without the quarantine, δS and δQ, as if never stopped (δQ and its AdamW state are checkpointed)."""
    cfg = arm_config("routing", v_hack, small_pairs)
    cut = tmp_path / "cut"
    train_mod.Trainer(cfg, cut, progress=False).run(until=1)
    assert any(bool(q.any()) for q in runio.load_checkpoint(cut)["delta_q"].values())
    train_mod.train(cfg, cut, resume=True, progress=False)
    whole = honest_runs("routing")
    assert (_comparable(runio.read_jsonl(cut / runio.METRICS))
            == _comparable(runio.read_jsonl(whole / runio.METRICS)))
    for part in ("delta_s", "delta_q"):
        a, b = runio.load_checkpoint(whole)[part], runio.load_checkpoint(cut)[part]
        assert all(torch.equal(a[k], b[k]) for k in a), part


def test_resume_after_sigkill_loses_no_step_and_logs_none_twice(v_hack, uninterrupted, tmp_path):
    args = resume_flags(v_hack)
    out = tmp_path / "killed"
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "projected_grpo.cli", "train", "--out", str(out), *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(metrics(out)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(metrics(out))
    assert 1 <= done < RESUME_STEPS, f"kill landed after {done} steps"
    assert main(["train", "--out", str(out), "--resume", *args]) == 0
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert _comparable(rows) == _comparable(metrics(uninterrupted))


# Every arm that must keep the no-cheat rule (all but the declared upper bound), and the projected
# arm with the coverage diagnostic, which reads the labels for its log only.
NO_CHEAT = [("vanilla", {}), ("projected", {}), ("rebound", {}), ("random", {}), ("shuffled", {}),
            ("lomo", {}), ("refresh", {}), ("probe_penalty", {}), ("plan", {}), ("inoculation", {}),
            ("clean_subspace", {}), ("routing_v", {}), ("routing_random", {}),
            ("projected", {"coverage": True})]


def test_no_cheat_list_holds_every_arm_that_does_not_use_labels():
    assert {a for a, _ in NO_CHEAT} == {a.name for a in arms.TABLE if not uses_labels(a)}
    assert [a.name for a in arms.TABLE if uses_labels(a)] == ["oracle", "monitor_penalty", "screening", "routing"]


@pytest.mark.parametrize("arm,extra", NO_CHEAT, ids=[a + ("+coverage" if kw.get("coverage") else "")
                                                     for a, kw in NO_CHEAT])
def test_oracle_never_reaches_reward_advantage_or_projection(arm, extra, v_hack, small_pairs, honest_runs,
                                                             tmp_path):
    cfg = arm_config(arm, v_hack, small_pairs, **extra)
    if extra.get("coverage"):
        honest = tmp_path / "honest"
        train_mod.train(cfg, honest, progress=False)
    else:
        honest = honest_runs(arm)

    def scrambled(*args, **kwargs):  # the oracle's verdicts inverted, labels all 'reward_hack'
        grades = grade_many(*args, **kwargs)
        for g in grades:
            g.gt_correct, g.label = not g.gt_correct, "reward_hack"
        return grades

    lied = tmp_path / "scrambled"
    train_mod.train(cfg, lied, progress=False, grade=scrambled)  # grades training, teacher and eval rows
    a, b = metrics(honest), metrics(lied)
    training = ("reward_mean", "reward_std", "reward_mod_mean", "loss", "grad_norm", "cos_in", "cos_out",
                "frac_fired", "update_hackward", "cos_in_real", "cos_in_null", "frac_zero_adv",
                "refresh_overlap")
    assert [[r.get(k) for k in training] for r in a] == [[r.get(k) for k in training] for r in b]
    assert [r["hack_rate"] for r in b] == [1.0, 1.0] != [r["hack_rate"] for r in a]
    if extra.get("coverage"):  # the diagnostic did read the (scrambled) labels, for its log only
        assert [r["cov_rows"] for r in b] == [4, 4] != [r["cov_rows"] for r in a]
    da, db = load_file(honest / "delta_s.safetensors"), load_file(lied / "delta_s.safetensors")
    assert all(torch.equal(da[k], db[k]) for k in da)
    assert any(bool(da[k].any()) for k in da)  # δS moved: the comparison is not vacuous
    if arm in ROUTING:                         # and so did the quarantine, alike
        qa, qb = (runio.load_checkpoint(d)["delta_q"] for d in (honest, lied))
        assert all(torch.equal(qa[k], qb[k]) for k in qa) and any(bool(qa[k].any()) for k in qa)
        assert [r["routed_rows"] for r in a] == [r["routed_rows"] for r in b]


def test_update_space_projection_removes_hackward_part_of_the_step(v_hack, tmp_path):
    # update_hackward = ‖relu(−V Δ)‖/‖Δ‖ of the step actually taken (its sign is tied to log-probs in
    # tests/test_projection_sign.py); gradient projection leaves a hack-ward share in the AdamW step
    grad = tmp_path / "grad"
    train_mod.train(smoke(arm="projected", v_hack=v_hack, project_target="grad"), grad, progress=False)
    assert all(r["update_hackward"] > 1e-3 for r in metrics(grad))
    out = tmp_path / "upd"
    train_mod.train(smoke(arm="projected", v_hack=v_hack, project_target="update"), out, progress=False)
    assert all(r["update_hackward"] < 1e-5 for r in metrics(out))


def test_control_arm_measures_the_real_and_null_v_on_the_raw_gradient(honest_runs):
    # step 1 starts from δS = 0 with the same samples in both runs, so the raw gradients are equal:
    # the random arm's cos_in_real (real V) must be the vanilla run's cos_in, not a cosine taken
    # after the control V changed the gradient
    van, rnd = metrics(honest_runs("vanilla"))[0], metrics(honest_runs("random"))[0]
    assert van["step"] == rnd["step"] == 1
    assert van["cos_in"] > 0 and rnd["cos_out"] < 1e-6
    assert rnd["cos_in_real"] == pytest.approx(van["cos_in"], rel=1e-5)
    # the null V is a seeded random V of the real V's m: the random control's own V (same seed)
    assert rnd["cos_in_null"] == pytest.approx(van["cos_in_null"], rel=1e-5)
    assert rnd["cos_in"] == pytest.approx(rnd["cos_in_null"], rel=1e-5)


def test_bad_input_stops_with_a_message_naming_it(v_hack, small_pairs, honest_runs, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "a"), "--arm", "nonsense"]) == 2
    assert "unknown arm 'nonsense'" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "a"), "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "a"), "--model", "no-org/no-model-here"]) == 2
    assert "no-org/no-model-here" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "a"), "--decode-attention", "flash"]) == 2
    assert "--decode-attention must be auto, triton, sdpa or matmul" in capsys.readouterr().err
    # a v_hack made for another dtype is refused before anything is generated
    out = tmp_path / "mismatch"
    with pytest.raises(UserError, match="dtype"):
        train_mod.train(smoke(v_hack=v_hack, dtype="bfloat16"), out, progress=False)   # V is fp32
    assert not (out / runio.METRICS).exists()
    # an output dir that holds another run needs --resume, and is left as it was
    taken = tmp_path / "taken"
    shutil.copytree(honest_runs("vanilla"), taken)
    before = {p: p.read_bytes() for p in taken.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="already holds a run"):
        train_mod.train(arm_config("vanilla", v_hack, small_pairs), taken, progress=False)
    assert {p: p.read_bytes() for p in taken.rglob("*") if p.is_file()} == before


def test_resume_refuses_a_v_file_that_changed_since_the_run_started(v_hack, tmp_path):
    """A resumed run must project with the V it started with: a V file re-extracted or replaced in
    between (a sweep dir restored without its V files re-extracts them) is refused, naming the run;
    with the original file back the resume goes on."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    v_file = tmp_path / "v_hack.safetensors"
    v_file.write_bytes(Path(v_hack).read_bytes())
    cfg = smoke(arm="projected", v_hack=str(v_file), steps=2)
    out = tmp_path / "run"
    train_mod.Trainer(cfg, out, progress=False).run(until=1)
    original = v_file.read_bytes()
    with safe_open(str(v_file), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    k0 = sorted(tensors)[0]
    tensors[k0][0] = -tensors[k0][0]                  # one direction's sign flipped: another V
    save_file(tensors, str(v_file), metadata=meta)
    with pytest.raises(UserError, match=r"run.*V differs from the one this run started with"):
        train_mod.train(cfg, out, resume=True, progress=False)
    assert len(metrics(out)) == 1                                # nothing was logged by the refusal
    v_file.write_bytes(original)
    train_mod.train(cfg, out, resume=True, progress=False)
    assert [r["step"] for r in metrics(out)] == [1, 2]


def test_trainer_runs_on_the_parts_it_is_handed(v_hack, tmp_path):
    """Policy, grade, sampler and V handed in are the ones the run uses: the grade function grades
    training, teacher-pool and eval rows; the sampler samples training and eval rows; the handed
    model's δS is trained; a policy and V handed in give the run that building them from cfg gives."""
    from projected_grpo.training.evaluate import EVAL_SAMPLES
    from projected_grpo.training.policy import load_policy, policy_device
    from projected_grpo.training.rollout import sample
    from projected_grpo.directions.vhack import load_v_hack

    cfg = smoke(arm="projected", v_hack=v_hack, steps=1)
    calls = []

    def grade(*args, **kwargs):
        grades = grade_many(*args, **kwargs)
        for g in grades:
            g.reward += 1000.0                   # rewards the real grader never gives; same advantages
        return grades

    def sampler(*args, **kwargs):
        calls.append((args[3].shape[0], args[5]))   # (prompt rows, samples per prompt row)
        return sample(*args, **kwargs)

    def handed_v(policy):
        return {k: t.to(policy_device(cfg)) for k, t in load_v_hack(v_hack, policy.adapter).items()}

    policy = load_policy(cfg)
    v = handed_v(policy)
    trainer = train_mod.Trainer(cfg, tmp_path / "handed", progress=False, policy=policy, grade=grade,
                                sampler=sampler, directions=(v, v))
    assert trainer.model is policy.model and trainer.v_project is v
    trainer.run()
    built = tmp_path / "built"
    train_mod.train(cfg, built, progress=False)
    policy_2 = load_policy(cfg)
    v_2 = handed_v(policy_2)
    train_mod.train(cfg, tmp_path / "handed_2", progress=False, policy=policy_2, directions=(v_2, v_2))
    rows, evals = (runio.read_jsonl(tmp_path / "handed" / name) for name in (runio.SAMPLES, EVAL_SAMPLES))
    assert any(r["teacher"] for r in rows) and all(r["reward"] >= 1000 for r in rows)
    assert evals and all(r["reward"] >= 1000 for r in evals)
    sampled = [r for r in rows if not r["teacher"]]            # G − n_teacher per prompt; eval: 1 per row
    assert len(sampled) == cfg.steps * cfg.prompts_per_step * (cfg.group_size - cfg.n_teacher)
    assert sum(n * k for n, k in calls) == len(sampled) + len(evals)   # every sampled row came from it
    assert any(bool(p.detach().abs().sum()) for p in policy.adapter.params().values())  # its δS moved
    assert _comparable(metrics(tmp_path / "handed_2")) == _comparable(metrics(built))


def test_a_refresh_run_cannot_be_handed_fixed_directions(tmp_path):
    with pytest.raises(ValueError, match="refresh"):
        train_mod.Trainer(smoke(arm="refresh", refresh_every=1), tmp_path / "run", directions=({}, {}))
