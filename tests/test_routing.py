"""Issue 29 item 2, gradient routing: the quarantine δQ beside δS (core/quarantine.py) and the routers
(interventions/routing.py). References are separate computations: a plain adapter whose δS holds
δS + δQ and vanilla backward passes over row subsets, single-row backward passes for the per-row
gradients, the cosine written out by hand, and runs without δQ or without interruption."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from projected_grpo.config import preset
from projected_grpo.core import quarantine
from projected_grpo.core.passes import BatchState, backward_pass
from projected_grpo.directions.vhack import random_v
from projected_grpo.env.grader import EnvConfig, grade_many
from projected_grpo.env.problems import load_problems
from projected_grpo.interventions import REGISTRY, LabelLeak, StepBatch
from projected_grpo.interventions.routing import route_cosines, row_gradients
from projected_grpo.training import evaluate, runio
from projected_grpo.training import train as train_mod
from projected_grpo.training.policy import load_policy
from projected_grpo.training.rollout import encode_prompts, sample

G, P = 4, 2
FLAGS = [True, False, False, True, False, True, False, False]        # a fixed routing of the 8 rows
ADV = [0.5, -0.5, 0.25, -0.25, 1.0, 0.0, -1.0, -0.25]


def cfg_of(**kw):
    base = dict(n_problems=4, max_new_tokens=8, steps=1, grade_workers=2, group_size=G, prompts_per_step=P,
                teacher_pool="", mix_ratio=0.0, eval_samples=0, vhack_m=2, micro_batch=3)
    return replace(preset("smoke"), **(base | kw))


def randomise(params: dict[str, torch.Tensor], seed: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


def grads_of(adapter) -> dict[str, torch.Tensor]:
    """δS's gradient (zeros where none), then cleared."""
    out = {}
    for k, p in adapter.params().items():
        out[k] = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
        p.grad = None
    return out


def close(a: dict, b: dict) -> bool:
    return all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-7) for k in a)


def training_rows(policy, cfg):
    """P prompts × G sampled rows of the first bundled problems (δ as the adapter holds it)."""
    problems = load_problems("bundled")[:P]
    ids, mask = encode_prompts(policy.tok, [p.messages(cfg.mode, cfg.hint) for p in problems], torch.device("cpu"))
    return sample(policy.model, policy.tok, policy.adapter, ids, mask, G, cfg.max_new_tokens, 1.0, 1.0, seed=7)


def random_vs(adapter, m: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: random_v(r, m, gen) for k, r in adapter.ranks().items()}


def with_plain_twin(cfg, seed_s: int, seed_q: int):
    """(policy with a quarantine, plain policy, δQ): random δS and δQ on the first, and the second's δS
    holding δS + δQ, the independent reference every routed gradient is checked against."""
    policy, plain = load_policy(cfg), load_policy(cfg)
    delta_q = quarantine.attach(policy.adapter)
    randomise(policy.adapter.params(), seed_s, 0.02)
    randomise(delta_q, seed_q, 0.02)
    with torch.no_grad():
        for k, p in plain.adapter.params().items():
            p.copy_(policy.adapter.params()[k] + delta_q[k])
    return policy, plain, delta_q


# ---- the split of the backward ---------------------------------------------------------------------
@pytest.mark.parametrize("beta,impl", [(0.0, "hook"), (0.04, "hook"), (0.04, "merged")])
def test_routed_rows_train_the_quarantine_only_and_the_two_gradients_add_up_to_vanilla(beta, impl):
    """At δS, δQ ≠ 0 (so the KL term of β > 0 has a gradient): δS's gradient is the vanilla gradient of
    the unflagged rows alone and δQ's that of the flagged rows alone, both computed on a plain adapter
    whose δS holds δS + δQ; their sum is the vanilla gradient of all rows. Micro-batch 3 splits groups;
    `merged`: the training forward on W' folded from δS + δQ (merged_delta.py)."""
    cfg = cfg_of(beta=beta, delta_s_impl=impl)
    routed_policy, plain, delta_q = with_plain_twin(cfg, 1, 2)
    rows = training_rows(routed_policy, cfg)
    adv, teacher = torch.tensor(ADV), [False] * len(ADV)

    router = REGISTRY["route_monitor"](cfg)
    router.quarantined = list(FLAGS)
    router.backward(routed_policy.model, routed_policy.adapter, cfg, rows, adv, teacher, BatchState())
    g_policy = grads_of(routed_policy.adapter)
    g_quarantine = {k: q.grad.detach().clone() for k, q in delta_q.items()}
    assert all(p.requires_grad for p in routed_policy.adapter.params().values())
    assert not any(q.requires_grad for q in delta_q.values())      # δQ learns only inside the routed pass

    def vanilla(idx: list[int]) -> dict[str, torch.Tensor]:
        backward_pass(plain.model, plain.adapter, cfg, rows.select(idx), adv[idx], [False] * len(idx),
                      BatchState())
        return grads_of(plain.adapter)

    unflagged = vanilla([i for i, f in enumerate(FLAGS) if not f])
    flagged = vanilla([i for i, f in enumerate(FLAGS) if f])
    everything = vanilla(list(range(len(FLAGS))))
    assert close(g_policy, unflagged) and close(g_quarantine, flagged)
    assert close({k: g_policy[k] + g_quarantine[k] for k in g_policy}, everything)
    assert not close(g_policy, everything)                         # the flagged rows did carry gradient
    assert any(float(g.abs().max()) > 0 for g in g_quarantine.values())


# ---- what sampling and eval see ----------------------------------------------------------------------
def test_training_sampling_uses_delta_s_plus_delta_q_and_eval_drops_delta_q():
    """The trainer's sampler runs on δS + δQ: (δS = a, δQ = b) samples exactly what a plain δS = a + b
    does, and a changed δQ changes the sampled log-probs; eval (every prompt set, samples and row)
    is bit-identical for δQ = 0 and a large δQ, while eval with the quarantine kept changes."""
    cfg = cfg_of(eval_samples=2)
    routed, plain = load_policy(cfg), load_policy(cfg)
    delta_q = quarantine.attach(routed.adapter)
    randomise(routed.adapter.params(), 3, 0.05)
    randomise(delta_q, 4, 0.5)
    with torch.no_grad():
        for k, p in plain.adapter.params().items():
            p.copy_(routed.adapter.params()[k] + delta_q[k])
    with_q, summed = training_rows(routed, cfg), training_rows(plain, cfg)
    assert with_q.texts == summed.texts and torch.equal(with_q.sampler_logp, summed.sampler_logp)
    saved_q = {k: q.clone() for k, q in delta_q.items()}
    randomise(delta_q, 5, 0.5)
    assert not torch.equal(training_rows(routed, cfg).sampler_logp, with_q.sampler_logp)

    env = EnvConfig(mode=cfg.mode, hint=cfg.hint, workers=2)
    problems = load_problems("bundled")[4:6]

    def run_eval(**kw):
        row, samples = evaluate.evaluate(routed.model, routed.tok, routed.adapter, problems, cfg, env, step=1,
                                         device=torch.device("cpu"), **kw)
        row.pop("eval_s")
        return row, [{k: v for k, v in s.items() if k != "seconds"} for s in samples]

    with torch.no_grad():
        for q in delta_q.values():
            q.zero_()
    at_zero = run_eval()
    with torch.no_grad():
        for k, q in delta_q.items():
            q.copy_(saved_q[k])
    deployed = run_eval()
    assert deployed == at_zero and len(deployed[1]) == 3 * len(problems) * cfg.eval_samples
    kept_row, kept = run_eval(quarantine=True, primary_only=True)
    headline = [s for s in deployed[1] if s["variant"] == deployed[1][0]["variant"]]
    assert [s["evaluator"] for s in kept] == [s["evaluator"] for s in headline]   # the same prompts, paired
    assert [s["completion"] for s in kept] != [s["completion"] for s in headline]


# ---- the label-free router ------------------------------------------------------------------------------
def test_route_cosine_by_hand():
    """Two modules (r = 3, 2), V's top rows a and b: u = (a, b)/‖(a, b)‖, cos_i = cos(g_i, u) over
    the concatenated gradient; a zero row is not live (cos 0)."""
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0])
    v = {"m1": torch.stack([a, torch.tensor([0.0, 1.0, 0.0])]), "m2": torch.stack([b, torch.tensor([1.0, 0.0])])}
    g1 = torch.tensor([[2.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0]])
    g2 = torch.tensor([[0.0, 2.0], [0.0, 0.0], [0.0, -1.0], [0.0, 0.0]])
    cos, live = route_cosines({"m1": g1, "m2": g2}, v)
    by_hand = [1.0, -0.5, -1 / 20 ** 0.5, 0.0]       # (4/√2)/√8, (−1/√2)/√2, (−1/√2)/√10, zero row
    assert cos.tolist() == pytest.approx(by_hand, abs=1e-12)
    assert live.tolist() == [True, True, True, False]


@pytest.mark.parametrize("batching", ["padded", "sorted"])
def test_row_gradients_are_the_single_row_backward_passes(batching):
    """routing_v's per-row gradients (one batched pass, a per-row copy of δ = δS + δQ) against one
    vanilla backward pass per row on a plain adapter whose δS holds δS + δQ (β > 0: the KL too), under
    either --train-batching (core/batching.py)."""
    cfg = cfg_of(beta=0.04, train_batching=batching)
    policy, plain, delta_q = with_plain_twin(cfg, 6, 7)
    rows = training_rows(policy, cfg)
    adv = torch.tensor(ADV)
    per_row = row_gradients(policy.model, policy.adapter, cfg, rows, adv, [False] * len(ADV))
    assert all(p.grad is None for p in policy.adapter.params().values())      # the per-row pass leaves none
    assert all(q.grad is None for q in delta_q.values())
    for i in range(len(ADV)):
        backward_pass(plain.model, plain.adapter, cfg, rows.select([i]), adv[[i]], [False], BatchState())
        one = grads_of(plain.adapter)
        assert close({k: per_row[k][i] for k in one}, one), i
        assert any(float(g.abs().max()) > 0 for g in one.values())


def constructed_grade(*args, **kwargs):
    """The real grades with rewards and labels set by row (2 groups of 4): spread advantages, 3 hacks."""
    grades = grade_many(*args, **kwargs)
    for i, g in enumerate(grades):
        g.reward = [1.25, 0.25, 1.0, 0.0][i % 4] + 0.1 * (i // 4)
        g.label = "reward_hack" if i % 8 in (0, 2, 5) else "correct"
    return grades


def routing_trainer(arm: str, out, **kw):
    cfg = cfg_of(arm=arm, **kw)
    policy = load_policy(cfg)
    v = random_vs(policy.adapter, 2, 9)                  # handed: no pair extraction in these tests
    return train_mod.Trainer(cfg, out, progress=False, policy=policy, grade=constructed_grade, directions=(v, v))


def test_routing_v_routes_the_rows_whose_hand_computed_cosine_exceeds_the_threshold(tmp_path):
    """One step of routing_v: before it routes, each trained row's gradient by a single-row backward
    pass and its cosine with u by hand; the threshold set between two of them. The router must route
    exactly the rows above it, and log their share."""
    trainer = routing_trainer("routing_v", tmp_path / "run")
    router, seen = trainer.router, {}
    real_route = router.route

    def route(batch, rows, adv, is_teacher, kept):
        u = torch.cat([trainer.v_project[k][0] for k in trainer.adapter.modules])
        cos = []
        for i in range(len(rows.texts)):
            backward_pass(trainer.model, trainer.adapter, trainer.cfg, rows.select([i]), adv[[i]],
                          [is_teacher[i]], BatchState())
            g = torch.cat(list(grads_of(trainer.adapter).values()))
            cos.append(F.cosine_similarity(g.double(), u.double(), dim=0).item() if g.norm() > 0 else 0.0)
        live = sorted(c for c in cos if c != 0.0)
        assert len(live) >= 2, cos
        trainer.cfg.route_threshold = (live[len(live) // 2 - 1] + live[len(live) // 2]) / 2
        real_route(batch, rows, adv, is_teacher, kept)
        seen.update(cos=cos, threshold=trainer.cfg.route_threshold, routed=list(router.quarantined))

    router.route = route
    trainer.run()
    expect = [c > seen["threshold"] for c in seen["cos"]]
    assert seen["routed"] == expect and any(expect) and not all(expect)
    row = runio.train_rows(runio.read_jsonl(tmp_path / "run" / runio.METRICS))[0]
    assert row["routed_rows"] == sum(expect) and row["route_cos_max"] == pytest.approx(max(seen["cos"]), rel=1e-4)
    assert row["quarantine_norm"] > 0 and row["uses_labels"] is False


@pytest.mark.parametrize("arm", ["routing_v", "routing_random", "routing"])
def test_only_the_monitor_router_reads_labels(arm, tmp_path, monkeypatch):
    """With the label gate made to refuse everyone, the label-free routers still train; the monitor's
    router is refused (the gate is live). With the gate open the ground-truth monitor routes exactly
    the rows labelled reward_hack."""
    def refuse(self, who):
        raise LabelLeak(f"{who.name} asked for labels")

    if arm == "routing":
        with monkeypatch.context() as patch:
            patch.setattr(StepBatch, "hack_labels", refuse)
            with pytest.raises(LabelLeak, match="route_monitor asked for labels"):
                routing_trainer(arm, tmp_path / "refused").run()
        trainer = routing_trainer(arm, tmp_path / "run")
        trainer.run()
        row = runio.train_rows(runio.read_jsonl(tmp_path / "run" / runio.METRICS))[0]
        assert row["routed_rows"] == 3 and (row["monitor_tpr"], row["monitor_fpr"]) == (1.0, 0.0)
        assert trainer.router.quarantined == [i % 8 in (0, 2, 5) for i in range(8)]
        return
    monkeypatch.setattr(StepBatch, "hack_labels", refuse)
    routing_trainer(arm, tmp_path / "run").run()
    assert runio.train_rows(runio.read_jsonl(tmp_path / "run" / runio.METRICS))[0]["uses_labels"] is False
