"""Advantages, the loss against a hand computation, and the projection math."""

import math

import pytest
import torch

from projected_grpo.core.grpo import (clipped, group_advantages, grpo_token_loss, sampler_mismatch,
                                 teacher_is_weight, tis_weight)
from projected_grpo.core.projection import (hackward_cos, project_grads, project_update, project_vector,
                                       update_hackward)


def test_advantages_dr_grpo_and_exact_zero_for_equal_groups():
    r = torch.tensor([[1.25, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25], [0.0, 1.0, 0.0, 1.0]])
    a = group_advantages(r)
    assert torch.allclose(a[0], torch.tensor([0.75, -0.25, -0.25, -0.25]))  # no std division
    assert torch.equal(a[1], torch.zeros(4))  # all equal: exactly zero, never noise
    assert torch.allclose(a[2], torch.tensor([-0.5, 0.5, -0.5, 0.5]))
    # floating-point: 0.1 + 0.2 style groups where mean - r is not exactly 0 must still give 0
    same = torch.full((1, 3), 0.1 + 0.2)
    assert torch.equal(group_advantages(same), torch.zeros(1, 3))


def test_loss_matches_hand_computation():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]], requires_grad=True)
    old = torch.tensor([[-1.2, -1.9, -0.5], [-0.3, -1.0, -9.0]])
    ref = torch.tensor([[-1.1, -2.2, -0.4], [-0.2, -0.7, -9.0]])
    adv = torch.tensor([0.5, -1.0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # last token of row 2 is padding
    eps, beta, denom = 0.2, 0.04, 2 * 3 * 1.0
    loss, kl = grpo_token_loss(logp, old, adv, mask, denom, eps, beta, ref)
    total, kl_hand = 0.0, 0.0
    for b in range(2):
        for t in range(3):
            if mask[b, t] == 0:
                continue
            rho = math.exp(logp[b, t].item() - old[b, t].item())
            a = adv[b].item()
            surr = min(rho * a, min(max(rho, 1 - eps), 1 + eps) * a)
            lr = ref[b, t].item() - logp[b, t].item()
            k3 = math.exp(lr) - lr - 1
            total += -surr + beta * k3
            kl_hand += k3
    assert math.isclose(loss.item(), total / denom, rel_tol=1e-6)
    assert math.isclose(kl.item(), kl_hand, rel_tol=1e-6)
    loss.backward()
    assert logp.grad[1, 2] == 0  # masked token gets no gradient
    with pytest.raises(ValueError, match="beta > 0 needs logp_ref"):   # a KL term without its reference
        grpo_token_loss(logp, old, adv, mask, denom, eps, beta)


def test_loss_at_ratio_one_is_policy_gradient():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = grpo_token_loss(logp, logp.detach(), torch.tensor([2.0]), torch.ones(1, 2), 4.0, 0.2, 0.0)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, -0.5]]))  # -A/denom per token


def test_weighted_loss_and_its_gradient_match_hand_computation():
    """w scales each token's surrogate (not the KL term); clipped tokens get zero gradient."""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.3, -1.9, -0.5], [-0.3, -1.0, -1.5]])
    ref = torch.tensor([[-1.1, -2.2, -0.4], [-0.2, -0.7, -2.0]])
    w = torch.tensor([[0.5, 2.0, 1.0], [1.0, 0.25, 1.5]])
    adv, mask = torch.tensor([0.5, -1.0]), torch.ones(2, 3)
    eps, beta, denom = 0.2, 0.1, 6.0
    loss, _ = grpo_token_loss(logp, old, adv, mask, denom, eps, beta, ref, w)
    loss.backward()
    total = 0.0
    for b in range(2):
        for t in range(3):
            rho, a = math.exp(logp[b, t].item() - old[b, t].item()), adv[b].item()
            lr = ref[b, t].item() - logp[b, t].item()
            total += -w[b, t].item() * min(rho * a, min(max(rho, 1 - eps), 1 + eps) * a) \
                + beta * (math.exp(lr) - lr - 1)
            is_clipped = (a > 0 and rho > 1 + eps) or (a < 0 and rho < 1 - eps)
            assert bool(clipped(logp.detach(), old, adv, eps)[b, t]) == is_clipped
            pg = 0.0 if is_clipped else -w[b, t].item() * rho * a
            kl_grad = beta * (1 - math.exp(lr))  # d/dlogπ of exp(lr) − lr − 1 with lr = ref − logπ
            assert math.isclose(logp.grad[b, t].item(), (pg + kl_grad) / denom, rel_tol=1e-5, abs_tol=1e-9)
    assert math.isclose(loss.item(), total / denom, rel_tol=1e-6)
    assert clipped(logp.detach(), old, adv, eps).any()  # (0,0): ρ = e^0.3 > 1.2 with A > 0


def test_tis_and_teacher_weights():
    old = torch.tensor([[-1.0, -0.1, -3.0]])
    mu = torch.tensor([[-1.2, -2.0, -3.0]])
    w = tis_weight(old, mu, cap=2.0)
    assert torch.allclose(w, torch.tensor([[math.exp(0.2), 2.0, 1.0]]))  # min(π/μ, C)
    assert torch.equal(tis_weight(old, mu, cap=0.0), torch.ones(1, 3))   # off
    assert torch.allclose(teacher_is_weight(old), torch.exp(old)) and teacher_is_weight(old).max() <= 1
    d, k3, n = sampler_mismatch(old, mu, torch.tensor([[1.0, 1.0, 0.0]]))
    assert math.isclose(d, 0.2 + 1.9, rel_tol=1e-6) and n == 2.0
    assert math.isclose(k3, sum(math.exp(x) - 1 - x for x in (0.2, 1.9)), rel_tol=1e-6)


def _orthonormal(m, r, seed=0):
    q, _ = torch.linalg.qr(torch.randn(r, m, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()  # (m, r)


def test_projection_removes_only_positive_coefficients_within_span():
    v = _orthonormal(3, 10)
    g = torch.randn(10, generator=torch.Generator().manual_seed(1))
    c = v @ g
    out = project_vector(v, g)
    removed = g - out
    # removed lies in span V
    assert torch.allclose(v.T @ (v @ removed), removed, atol=1e-6)
    c_out = v @ out
    for i in range(3):
        if c[i] > 0:
            assert abs(c_out[i]) < 1e-6        # hack-ward component gone
        else:
            assert torch.isclose(c_out[i], c[i], atol=1e-6)  # anti-hack component kept
    assert hackward_cos(v, out) < 1e-6


def test_project_grads_stats_vanilla_untouched_and_projected():
    v = {"a": _orthonormal(2, 8, 0), "b": _orthonormal(2, 8, 1)}
    g0 = {"a": torch.randn(8), "b": torch.randn(8)}
    grads = {k: t.clone() for k, t in g0.items()}
    s = project_grads(grads, v, apply=False)
    assert all(torch.equal(grads[k], g0[k]) for k in g0)
    assert s.cos_in == s.cos_out
    fired = sum(int(((v[k] @ g0[k]) > 0).sum()) for k in g0)
    assert s.frac_fired == fired / 4
    s2 = project_grads(grads, v, apply=True)
    assert s2.cos_in == s.cos_in and s2.cos_out < 1e-6
    # a gradient pointing straight down the hack axis is removed entirely
    g = {"a": 3.0 * v["a"][0].clone()}
    s3 = project_grads(g, {"a": v["a"]}, apply=True)
    assert abs(s3.cos_in - 1.0) < 1e-6 and torch.allclose(g["a"], torch.zeros(8), atol=1e-6)
    # and one pointing away from it is untouched
    g = {"a": -3.0 * v["a"][0].clone()}
    before = g["a"].clone()
    project_grads(g, {"a": v["a"]}, apply=True)
    assert torch.equal(g["a"], before)


def test_frac_fired_counts_the_positive_coefficients_of_a_constructed_gradient():
    # V rows are unit axes, so the coefficients c = V g of a gradient built on them are exact: modules
    # of two V shapes (the stats are batched per shape), and a c of exactly 0, which does not fire
    va, vb = torch.eye(10)[[3, 7, 1]], -torch.eye(6)[[0, 4]]
    v = {"a1": va, "a2": va.clone(), "b": vb}
    coef = {"a1": [2.0, -1.0, 0.5],       # 2 fire
            "a2": [-0.3, 0.0, -4.0],      # 0 fire (c = 0 is not hack-ward)
            "b": [1.5, 0.25]}             # 2 fire
    grads = {k: torch.tensor(c) @ v[k] + 0.7 * torch.eye(v[k].shape[1])[5] for k, c in coef.items()}
    assert all(torch.equal(v[k] @ grads[k], torch.tensor(c)) for k, c in coef.items())  # (axis 5 ⟂ V)
    assert project_grads({k: g.clone() for k, g in grads.items()}, v, apply=False).frac_fired == 4 / 8
    assert project_grads({k: g.clone() for k, g in grads.items()}, v, apply=True).frac_fired == 4 / 8
    # every coefficient of every module hack-ward: all fire; all anti-hack: none
    assert project_grads({k: v[k].sum(0) for k in v}, v, apply=False).frac_fired == 1.0
    assert project_grads({k: -v[k].sum(0) for k in v}, v, apply=False).frac_fired == 0.0


def test_update_projection_removes_the_hackward_side_of_a_step():
    # V is oriented along hack-ward GRADIENTS (V g > 0), so a hack-ward STEP has V Δ < 0
    # (tests/test_projection_sign.py ties this to log-probs)
    v = {"a": _orthonormal(3, 10)}
    delta = torch.randn(10, generator=torch.Generator().manual_seed(3))
    c = v["a"] @ delta
    assert (c < 0).any() and (c > 0).any()
    out = project_update(v["a"], delta)
    c_out = v["a"] @ out
    assert (c_out >= -1e-6).all()                                    # no hack-ward component left
    assert torch.allclose(c_out[c > 0], c[c > 0], atol=1e-6)         # anti-hack part kept
    assert torch.allclose(v["a"].T @ (v["a"] @ (out - delta)), out - delta, atol=1e-6)  # only span V moves
    assert update_hackward({"a": out}, v) < 1e-6
    assert update_hackward({"a": delta}, v) == pytest.approx(
        (torch.relu(-c).norm() / delta.norm()).item(), rel=1e-5)
    assert abs(update_hackward({"a": -2 * v["a"][0]}, v) - 1.0) < 1e-6  # a step straight down −V
    assert update_hackward({"a": v["a"][0]}, v) < 1e-6                   # a step along +V is anti-hack
