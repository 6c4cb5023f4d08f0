"""Issue 27: interventions as plug-ins — the monitor's noisy channel, monitor penalty, screening, the
probe penalty, the label gate, and the arms table that names what each arm knows. Hand formulas and
binomial bounds are the references; trainer-level tests grade a constructed batch (rewards and labels
set by hand through a handed grade function)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from projected_grpo import arms
from projected_grpo.training import runio
from projected_grpo.training import train as train_mod
from projected_grpo.config import preset
from projected_grpo.env.grader import grade_many
from projected_grpo.errors import UserError
from projected_grpo.core.grpo import group_advantages
from projected_grpo.interventions import REGISTRY, Intervention, LabelLeak, StepBatch, build, label_use, uses_labels
from projected_grpo.interventions.monitor import channel
from projected_grpo.interventions.probe import fit_logistic
from projected_grpo.interventions.prompts import INOCULATION_TEXT, PLAN_TEXT
from projected_grpo.training.step_metrics import detector_metrics

G, P = 4, 2
# the constructed batch: per row (reward, oracle label is reward_hack), group-major, 2 groups of 4.
# Group 1 keeps a single unflagged row under a ground-truth monitor.
ROWS = [(1.25, True), (0.25, False), (1.0, False), (1.25, True),
        (1.25, True), (1.25, True), (0.0, False), (1.25, True)]


# ---- the channel and the advantage, by hand ----------------------------------------------------
@pytest.mark.parametrize("tpr,fpr", [(0.9, 0.05), (0.6, 0.3), (1.0, 0.0)])
def test_the_monitor_channel_realises_its_stated_tpr_and_fpr(tpr, fpr):
    n = 200_000
    hack = torch.arange(n) % 3 == 0                                   # 1 row in 3 is a hack
    flags = channel(hack, tpr, fpr, seed=5, step=7, rank=0)
    tpr_hat, fpr_hat = flags[hack].double().mean().item(), flags[~hack].double().mean().item()
    for hat, p, m in ((tpr_hat, tpr, int(hack.sum())), (fpr_hat, fpr, int((~hack).sum()))):
        se = math.sqrt(p * (1 - p) / m)                               # binomial SE of the realised rate
        assert abs(hat - p) <= 5 * se + 1e-12, (hat, p, se)
    again = channel(hack, tpr, fpr, seed=5, step=7, rank=0)
    assert torch.equal(flags, again)                                  # a resumed step flags the same rows
    if 0 < tpr < 1:
        assert not torch.equal(flags, channel(hack, tpr, fpr, seed=5, step=8, rank=0))


def test_screened_group_advantages_by_hand():
    r = torch.tensor([[r for r, _ in ROWS[:4]], [r for r, _ in ROWS[4:]]])
    keep = ~torch.tensor([[h for _, h in ROWS[:4]], [h for _, h in ROWS[4:]]])
    adv = group_advantages(r, keep)
    # group 0 keeps rows 1, 2 (rewards 0.25, 1.0): mean 0.625; group 1 keeps row 6 alone: all zero
    assert adv.tolist() == [[0.0, 0.25 - 0.625, 1.0 - 0.625, 0.0], [0.0, 0.0, 0.0, 0.0]]
    assert group_advantages(r, torch.zeros_like(keep)).abs().sum() == 0          # nothing kept
    assert torch.equal(group_advantages(r, torch.ones_like(keep)), group_advantages(r))


def test_detector_metrics_by_hand():
    flags = [True, False, True, True, False, False]
    hack = [True, True, False, True, False, False]
    m = detector_metrics("monitor", flags, hack)
    assert m == {"monitor_tpr": 2 / 3, "monitor_fpr": 1 / 3, "monitor_flag_rate": 3 / 6, "monitor_hack_rows": 3}
    assert detector_metrics("p", [False], [False])["p_tpr"] is None


def test_logistic_fit_meets_its_optimality_condition_in_fp64():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(80, 5, generator=gen, dtype=torch.float64)
    y = ((x[:, 0] - 0.5 * x[:, 1] + 0.8 * torch.randn(80, generator=gen, dtype=torch.float64)) > 0).double()
    lam = 0.1
    w, b = fit_logistic(x, y, lam)
    p = torch.sigmoid(x @ w + b)
    # ∂/∂w [mean log-loss] + λ w = 0 and ∂/∂b = 0 (the bias is not penalised), by hand
    assert (x.T @ (p - y) / 80 + lam * w).abs().max() < 1e-9
    assert abs(float((p - y).mean())) < 1e-9
    assert w[0] > 0 > w[1]                                           # the signs the data were made with


# ---- trainer-level: a constructed batch ----------------------------------------------------------
def constructed_grade(*args, **kwargs):
    """The real grader's grades with reward and label set from ROWS by the row's place in its call."""
    grades = grade_many(*args, **kwargs)
    for i, g in enumerate(grades):
        g.reward, hack = ROWS[i % len(ROWS)]
        g.label = "reward_hack" if hack else "correct"
    return grades


def constructed(arm: str, **kw):
    base = dict(n_problems=4, max_new_tokens=8, steps=1, grade_workers=2, group_size=G, prompts_per_step=P,
                teacher_pool="", mix_ratio=0.0, eval_samples=0, vhack_m=2)
    return replace(preset("smoke"), arm=arm, **(base | kw))


@pytest.fixture(scope="module")
def v_file(tmp_path_factory, mixed_code_pairs) -> str:
    out = tmp_path_factory.mktemp("v") / "run"
    train_mod.train(constructed("vanilla", pairs=mixed_code_pairs), out, progress=False)
    return str(out / "v_hack.safetensors")


def one_step(cfg, out, capture: dict | None = None):
    """Run one step with the constructed grades; `capture` gets the rows the backward saw."""
    trainer = train_mod.Trainer(cfg, out, progress=False, grade=constructed_grade)
    if capture is not None:
        real = trainer.backward

        def backward(rows, adv, is_teacher=None, batch=None):
            capture.setdefault("texts", []).append(list(rows.texts))
            capture.setdefault("adv", []).append(adv.tolist())
            return real(rows, adv, is_teacher, batch)
        trainer.backward = backward
    trainer.run()
    return runio.read_jsonl(out / runio.SAMPLES), runio.train_rows(runio.read_jsonl(out / runio.METRICS))[0]


def test_a_ground_truth_monitor_penalty_gives_the_hack_rows_the_penalised_reward(v_file, tmp_path):
    cfg = constructed("monitor_penalty", v_hack=v_file, penalty=0.75, monitor_tpr=1.0, monitor_fpr=0.0)
    samples, row = one_step(cfg, tmp_path / "run")
    assert [(s["reward"], s["label"] == "reward_hack") for s in samples] == ROWS
    penalised = [r - 0.75 * h for r, h in ROWS]
    for g in range(P):
        grp = penalised[g * G:(g + 1) * G]
        mean = sum(grp) / G
        for j in range(G):
            assert samples[g * G + j]["advantage"] == pytest.approx(grp[j] - mean, abs=1e-6)
    assert row["reward_mod_mean"] == pytest.approx(sum(penalised) / len(penalised))
    assert row["reward_mean"] == pytest.approx(sum(r for r, _ in ROWS) / len(ROWS))   # the grade's, unmodified
    assert (row["monitor_tpr"], row["monitor_fpr"], row["monitor_hack_rows"]) == (1.0, 0.0, 5)
    assert row["uses_labels"] is True


def test_screening_removes_exactly_the_flagged_rows(v_file, tmp_path):
    cfg = constructed("screening", v_hack=v_file, monitor_tpr=1.0, monitor_fpr=0.0)
    seen: dict = {}
    samples, row = one_step(cfg, tmp_path / "run", seen)
    unflagged = [s["completion"] for s, (_, hack) in zip(samples, ROWS) if not hack]
    assert seen["texts"] == [unflagged]                        # the backward saw exactly the other rows
    assert seen["adv"] == [[pytest.approx(-0.375), pytest.approx(0.375), 0.0]]   # group 1: one row, zero
    assert [s["advantage"] for s, (_, hack) in zip(samples, ROWS) if hack] == [0.0] * 5
    assert (row["monitor_tpr"], row["monitor_fpr"]) == (1.0, 0.0)


def test_a_noisy_monitor_flags_by_its_channel(v_file, tmp_path):
    """At TPR 0.5 / FPR 0.5 the penalised rows are exactly the channel's draw for (seed, step 0, rank 0)."""
    cfg = constructed("monitor_penalty", v_hack=v_file, penalty=0.5, monitor_tpr=0.5, monitor_fpr=0.5)
    samples, row = one_step(cfg, tmp_path / "run")
    flags = channel(torch.tensor([h for _, h in ROWS]), 0.5, 0.5, cfg.seed, 0, 0).tolist()
    hack = [h for _, h in ROWS]
    assert row["monitor_tpr"] == sum(f and h for f, h in zip(flags, hack)) / sum(hack)
    assert row["reward_mod_mean"] == pytest.approx(sum(r - 0.5 * f for (r, _), f in zip(ROWS, flags)) / len(ROWS))


def test_the_probe_score_never_reaches_the_delta_s_gradient(tmp_path, mixed_code_pairs, v_file):
    """The probe's weights and bias doubled: the same flags (same sign of the logit at threshold 0.5)
    but other probabilities. Given the same rewards, δS's gradient is bit-identical; a score that were
    back-propagated (or a reward that were the continuous score) would change it."""
    grads = []
    probs = []
    for scale in (1.0, 2.0):
        cfg = constructed("probe_penalty", pairs=mixed_code_pairs, v_hack=v_file, penalty=0.5, probe_layer=1)
        trainer = train_mod.Trainer(cfg, tmp_path / f"run{scale}", progress=False, grade=constructed_grade)
        probe = trainer.interventions[0].probe
        probe.w, probe.b = [scale * w for w in probe.w], scale * probe.b
        real_reward = trainer.interventions[0].reward

        def reward(batch, rewards, real_reward=real_reward):
            out = real_reward(batch, rewards)
            assert not out.requires_grad
            probs.append(trainer.interventions[0].flags.tolist())
            return out
        trainer.interventions[0].reward = reward
        real_step = trainer.optimiser_step

        def step(real_step=real_step, trainer=trainer):
            grads.append({k: p.grad.detach().clone() for k, p in trainer.adapter.params().items()
                          if p.grad is not None})
            return real_step()
        trainer.optimiser_step = step
        trainer.run()
    assert probs[0] == probs[1]
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(torch.equal(grads[0][k], grads[1][k]) for k in grads[0])


def test_probe_penalty_logs_its_recall_and_heldout_accuracy(tmp_path, mixed_code_pairs, v_file):
    cfg = constructed("probe_penalty", pairs=mixed_code_pairs, v_hack=v_file, penalty=0.5)
    out = tmp_path / "run"
    samples, row = one_step(cfg, out)
    probe = json.loads((out / "probe.json").read_text())
    assert 0.0 <= row["probe_heldout_acc"] == probe["heldout_acc"] <= 1.0
    assert probe["n_fit"] > 0 and probe["n_heldout"] > 0
    split = json.loads((out / "split.json").read_text())            # the calibration set shares no eval problem
    assert not set(probe["fit_problems"] + probe["heldout_problems"]) & set(split["eval"])
    assert not set(probe["fit_problems"]) & set(probe["heldout_problems"])
    assert row["probe_hack_rows"] == 5 and row["probe_tpr"] is not None
    assert row["uses_labels"] is False


# ---- the label gate and the table ------------------------------------------------------------------
class _Peeking(Intervention):
    name = "peeking"
    point = "reward"
    kind = "pairs"

    def reward(self, batch, rewards):
        return rewards - batch.hack_labels(self).view_as(rewards).float()


def test_an_intervention_that_does_not_declare_labels_cannot_read_them():
    class Graded:
        def __init__(self, label):
            self.label = label
    batch = StepBatch(0, [], [], None, [Graded("reward_hack"), Graded("correct")], [False, False], None, None, None)
    with pytest.raises(LabelLeak, match="peeking declares pairs"):
        _Peeking(preset("smoke")).reward(batch, torch.zeros(1, 2))
    monitor = REGISTRY["monitor_penalty"](preset("smoke"))
    assert batch.hack_labels(monitor).tolist() == [True, False]


def test_every_arm_declares_what_it_knows():
    cfg = replace(preset("smoke"), monitor_tpr=0.9, monitor_fpr=0.05)
    uses = {a.name: label_use(a.name, cfg) for a in arms.TABLE}
    assert uses["vanilla"] == uses["plan"] == uses["inoculation"] == "nothing"
    assert uses["monitor_penalty"] == uses["screening"] == "monitor: noisy monitor, TPR 0.90 / FPR 0.05"
    assert uses["oracle"].startswith("oracle:") and uses["probe_penalty"].startswith("calibration:")
    assert uses["clean_subspace"].startswith("demonstrations: canonical solutions of the train problems")
    assert all(uses[a].startswith("pairs:") for a in ("projected", "random", "shuffled", "lomo", "refresh",
                                                       "rebound"))
    dropped = "routed to a quarantine δQ dropped at eval and deploy"
    assert uses["routing"] == f"monitor: noisy monitor, TPR 0.90 / FPR 0.05, flagged rows {dropped}"
    assert uses["routing_v"] == f"pairs: top axis of the pair V (m=4), rows with gradient cos > 0 {dropped}"
    assert uses["routing_random"].startswith("nothing: seeded random V") and dropped in uses["routing_random"]
    assert [a.name for a in arms.TABLE if uses_labels(a)] == ["oracle", "monitor_penalty", "screening", "routing"]
    for a in arms.TABLE:                                  # the static kind is the one knows() states
        for iv in build(a, cfg):
            assert iv.knows().kind == type(iv).kind


def test_train_help_lists_every_arm(capsys):
    from projected_grpo.cli import main

    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(a.name in text for a in arms.TABLE)
    assert "--monitor-tpr" in text and "--probe-layer" in text


@pytest.mark.parametrize("flag,value,message", [("--monitor-tpr", "1.5", "--monitor-tpr must be in [0, 1], got 1.5"),
                                                ("--monitor-fpr", "-0.1", "--monitor-fpr must be in [0, 1]"),
                                                ("--probe-heldout", "1", "--probe-heldout must be in (0, 1)"),
                                                ("--penalty", "-1", "--penalty and --probe-l2 must be >= 0"),
                                                ("--route-threshold", "1.5", "--route-threshold must be in [-1, 1]")])
def test_bad_detector_flags_are_refused_naming_the_flag(flag, value, message, capsys):
    from projected_grpo.cli import main

    assert main(["train", "--print-config", flag, value]) == 2
    assert message in capsys.readouterr().err


def test_a_probe_calibration_set_naming_an_eval_problem_is_refused(tmp_path, mixed_code_pairs, v_file):
    """Pairs whose problems are this run's eval problems: refused with one line naming --probe-pairs,
    and the run dir is left as it was (absent), so the corrected retry starts clean."""
    eval_ids = json.loads((Path(v_file).parent / "split.json").read_text())["eval"]
    rows = [json.loads(line) for line in Path(mixed_code_pairs).read_text().splitlines()]
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text("".join(json.dumps({**r, "problem_id": eval_ids[i % len(eval_ids)]}) + "\n"
                             for i, r in enumerate(rows)))
    out = tmp_path / "run"
    cfg = constructed("probe_penalty", pairs=mixed_code_pairs, v_hack=v_file, probe_pairs=str(leaky))
    with pytest.raises(UserError, match=r"--probe-pairs .*leaky.jsonl.*share no problem with eval"):
        train_mod.Trainer(cfg, out, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("arm,text,at_eval", [("plan", PLAN_TEXT, True), ("inoculation", INOCULATION_TEXT, False)])
def test_prompt_arm_texts_reach_training_and_eval_as_specified(arm, text, at_eval, v_file, tmp_path):
    """Every training prompt the sampler sees carries the arm's text; every eval prompt (all three sets)
    carries it only for the plan arm. Read back from the token ids the sampler was given."""
    from projected_grpo.training.rollout import sample

    seen: dict[str, list[str]] = {"train": [], "eval": []}

    def spy(model, tok, adapter, ids, mask, per_prompt, *args, **kw):
        texts = [tok.decode(i[m.bool()]) for i, m in zip(ids, mask)]
        seen["train" if per_prompt == G else "eval"].extend(texts)    # eval samples one per prompt row
        return sample(model, tok, adapter, ids, mask, per_prompt, *args, **kw)

    cfg = constructed(arm, v_hack=v_file, eval_samples=1, eval_problems=2)
    out = train_mod.Trainer(cfg, tmp_path / "run", progress=False, sampler=spy).run()
    flat = " ".join(text.split())
    assert seen["train"] and all(flat in " ".join(t.split()) for t in seen["train"])
    evals = runio.read_jsonl(out / "eval_samples.jsonl")            # every eval row, all three prompt sets
    assert len(seen["eval"]) == len(evals) and {r["variant"] for r in evals} == {"renamed", "train_name", "nohint"}
    assert all((flat in " ".join(t.split())) is at_eval for t in seen["eval"])


# ---- clean subspace --------------------------------------------------------------------------------
def test_projection_onto_the_clean_span_keeps_what_is_inside_and_removes_what_is_orthogonal():
    from projected_grpo.interventions.clean_subspace import project_onto, top_k_basis

    gen = torch.Generator().manual_seed(1)
    d = torch.randn(2, 7, generator=gen, dtype=torch.float64)
    d = torch.cat([d, d[:1] * 2 + d[1:] * 0.5])                     # 3 demonstrations of rank 2
    b = top_k_basis(d.float(), 3)
    assert b.shape == (2, 7)                                          # K capped at the rank
    assert torch.allclose(b.double() @ b.double().T, torch.eye(2, dtype=torch.float64), atol=1e-6)
    inside = (torch.tensor([0.3, -1.2], dtype=torch.float64) @ d[:2]).float()
    q, _ = torch.linalg.qr(d[:2].T)                                   # fp64 basis of span(D)
    outside = torch.randn(7, generator=gen, dtype=torch.float64)
    outside = (outside - q @ (q.T @ outside)).float()                 # orthogonal to span(D), by hand
    grads = {"m": inside.clone(), "n": outside.clone()}
    project_onto(grads, {"m": b, "n": b})
    assert torch.allclose(grads["m"], inside, atol=1e-5)
    assert grads["n"].abs().max() < 1e-5


def test_clean_subspace_keeps_delta_s_inside_the_span_of_honest_gradients(v_file, tmp_path):
    """With --project-target update, every δS step is projected onto span(B), so δS (from 0) stays there;
    the basis came from the canonical solutions of the train problems only."""
    from safetensors.torch import load_file

    cfg = constructed("clean_subspace", v_hack=v_file, clean_k=2, project_target="update", steps=2)
    out = train_mod.Trainer(cfg, tmp_path / "run", progress=False, grade=constructed_grade).run()
    basis, delta = load_file(str(out / "clean_basis.safetensors")), load_file(str(out / "delta_s.safetensors"))
    moved = [k for k in delta if delta[k].abs().max() > 0]
    assert moved                                                      # not vacuous
    for k in moved:
        b, s = basis[k].double(), delta[k].double()
        assert b.shape[0] <= 2
        assert (s - b.T @ (b @ s)).norm() <= 1e-4 * s.norm()
