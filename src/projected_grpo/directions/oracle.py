"""The oracle-labelled hack rows' gradient g_h: the coverage diagnostic and the oracle arm's V.

This module READS THE ORACLE LABELS. It serves two uses only (DESIGN §8): the coverage metrics,
logged and never fed back into training, and the `oracle` arm, the declared UPPER BOUND of what
gradient projection can do (arms.py). No other arm's reward, advantage or projection sees it
(tests/test_train.py::test_oracle_never_reaches_reward_advantage_or_projection).

g_h = ∂L_hack/∂δS, with L_hack the GRPO loss (grpo.py) of the step's batch restricted to its rows
labelled reward_hack (student and teacher rows alike): the same advantages, token weights,
denominator G·max_new_tokens·P and δS as the real pass. It is one extra backward over those rows
with a fresh BatchState, all-reduced over ranks like the real gradient, read, and zeroed again
before the real pass, which is therefore unchanged.

Per module, with V (m × r, orthonormal rows), averaged over the modules where g_h ≠ 0:
    cov_span      = ‖V g_h‖ / ‖g_h‖         share of g_h inside span(V), two-sided
    cov_removed   = ‖relu(V g_h)‖ / ‖g_h‖   share the one-sided gradient projection removes
    cov_span_null = cov_span for the seeded null V (≈ sqrt(m / r) for a V unrelated to g_h)
Oracle arm, per module: V = g_h / ‖g_h‖ (1 × r), 0 where g_h = 0 (nothing is projected there; a
step without hack rows projects nothing at all).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from projected_grpo.training import dist
from projected_grpo.core.grpo import grad_safe_attention
from projected_grpo.core.passes import BatchState, backward_pass
from projected_grpo.core.projection import EPS, hackward_cos
from projected_grpo.training.rollout import Rollouts

if TYPE_CHECKING:                 # annotations only: config imports nothing of this stage
    from projected_grpo.config import TrainConfig

HACK_LABEL = "reward_hack"


def hack_gradient(model, adapter, cfg: TrainConfig, rows: Rollouts, adv: torch.Tensor,
                  is_teacher: list[bool], hack: list[bool]) -> tuple[dict[str, torch.Tensor], int]:
    """(g_h per module {key: (r,)}, number of hack rows over all ranks). `hack` (B,) marks this
    rank's rows labelled reward_hack. Expects no δS gradient on entry and leaves none behind."""
    params = adapter.params()
    if any(p.grad is not None for p in params.values()):
        raise RuntimeError("hack_gradient must run before the real pass (δS.grad is not empty)")
    idx = [i for i, h in enumerate(hack) if h]
    if idx:
        with grad_safe_attention():
            backward_pass(model, adapter, cfg, rows.select(idx), adv[idx],
                          [is_teacher[i] for i in idx], BatchState())
    grads = dist.all_reduce_grads(params)          # every rank joins, with or without hack rows
    g_h = {k: g.detach().float().clone() for k, g in grads.items()}
    for p in params.values():
        p.grad = None
    (n_rows,) = dist.sum_scalars([float(len(idx))])
    return g_h, int(n_rows)


def oracle_directions(g_h: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The oracle arm's V: {key: g_h/‖g_h‖ as (1, r)}, zero rows where g_h = 0."""
    out = {}
    for k, g in g_h.items():
        norm = g.norm()
        out[k] = (g / norm if norm > EPS else torch.zeros_like(g))[None]
    return out


def zero_directions(v_like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A V of m = 1 that projects nothing, shaped like the modules of `v_like` (m, r)."""
    return {k: torch.zeros(1, v.shape[1], device=v.device) for k, v in v_like.items()}


def coverage(g_h: dict[str, torch.Tensor], v: dict[str, torch.Tensor],
             v_null: dict[str, torch.Tensor]) -> dict[str, float | None]:
    """cov_span, cov_removed, cov_span_null (module doc), means over the modules where g_h ≠ 0;
    None when g_h is 0 everywhere (no hack rows, or only hack rows with A = 0 and β = 0)."""
    keys = [k for k, g in g_h.items() if g.norm() > EPS]
    if not keys:
        return {"cov_span": None, "cov_removed": None, "cov_span_null": None}

    def mean(values: list[torch.Tensor]) -> float:
        return torch.stack(values).mean().item()

    def span(vk: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (vk.to(g.dtype) @ g).norm() / g.norm()

    return {"cov_span": mean([span(v[k], g_h[k]) for k in keys]),
            "cov_removed": mean([hackward_cos(v[k].to(g_h[k].dtype), g_h[k]) for k in keys]),
            "cov_span_null": mean([span(v_null[k], g_h[k]) for k in keys])}
