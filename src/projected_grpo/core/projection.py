"""The intervention (DESIGN §3): remove the hack-ward part of each module's δS gradient or step.

Sign convention. V (m × r, orthonormal rows) is oriented along the gradient of a hack-favouring
loss: D v > 0 for the pair differences d = ∇NLL(hack) − ∇NLL(clean). So
    a hack-ward GRADIENT g has V g > 0  (descending it lowers NLL(hack) relative to NLL(clean)),
    a hack-ward STEP     Δ has V Δ < 0  (an optimiser step is Δ ≈ −lr·precond(g)).
tests/test_projection_sign.py pins this against log-probs: a step with V Δ < 0 raises
logp(hack) − logp(clean) on held-out pairs.

Gradient projection, per module with g = δS.grad (r,):
    c = V g                   # (m,) coefficient along each hack axis
    removed = relu(c) V       # (r,) only hack-ward motion is removed (one-sided)
    g ← g − removed
Update projection (`--project-target update`), per module with the optimiser step Δ (r,):
    Δ ← Δ + relu(−V Δ) V      # the step's hack-ward side (V Δ < 0) is removed, the rest kept
Logged, averaged over modules: cos_in = ‖relu(V g)‖/‖g‖ before, cos_out after, frac_fired =
share of (module, axis) coefficients with c > 0 (≈ 0.5 for a direction unrelated to g), and
update_hackward = ‖relu(−V Δ)‖/‖Δ‖, the hack-ward share of the step actually taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-12


@dataclass
class ProjectionStats:
    """Per-step averages over modules."""

    cos_in: float       # ‖relu(V g)‖/‖g‖ before projection
    cos_out: float      # the same after (0 when projected; == cos_in when only measured)
    frac_fired: float   # share of (module, axis) coefficients with c > 0


def hackward_cos(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """‖relu(V g)‖ / ‖g‖ for V (m, r), g (r,) as a 0-dim tensor (0 for a zero g); no host sync."""
    return _cos_from(v @ g, g)


def _cos_from(c: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """‖relu(c)‖ / ‖g‖ over the last dim, given c = V g: c (..., m), g (..., r); 0 where g = 0."""
    norm = g.norm(dim=-1)
    return torch.where(norm > EPS, torch.relu(c).norm(dim=-1) / norm.clamp(min=EPS), torch.zeros_like(norm))


def project_vector(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g − relu(V g) V: the one-sided projection of one module's vector. V (m, r), g (r,)."""
    c = v @ g                       # (m,)
    return g - torch.relu(c) @ v    # (r,)


def project_grads(grads: dict[str, torch.Tensor], v_hack: dict[str, torch.Tensor],
                  apply: bool) -> ProjectionStats:
    """Measure (and, when `apply`, project in place) every module's gradient.

    `grads`: module key -> δS.grad (r,); `v_hack`: module key -> V (m, r) on the same device.
    Modules of one V shape are stacked and done in one batch (a model has a handful of distinct
    shapes: a few dozen kernels in all, not a dozen per module), and the statistics come back to
    the host in one transfer at the end."""
    groups: dict[tuple, list[str]] = {}
    for key, g in grads.items():
        groups.setdefault((tuple(v_hack[key].shape), g.dtype, g.device), []).append(key)
    cos_in, cos_out, fired, axes = [], [], [], 0
    for (_, dtype, _), keys in groups.items():
        G = torch.stack([grads[k] for k in keys])                         # (n, r)
        V = torch.stack([v_hack[k] for k in keys]).to(dtype)              # (n, m, r)
        c = torch.bmm(V, G[:, :, None])[:, :, 0]                          # (n, m): c = V g per module
        fired.append((c > 0).sum())
        axes += c.numel()
        cos_in.append(_cos_from(c, G))
        if apply:
            G = G - torch.bmm(torch.relu(c)[:, None, :], V)[:, 0, :]      # g − relu(V g) V
            torch._foreach_copy_([grads[k] for k in keys], list(G.unbind(0)))
            c = torch.bmm(V, G[:, :, None])[:, :, 0]
        cos_out.append(_cos_from(c, G))
    if not cos_in:
        return ProjectionStats(0.0, 0.0, 0.0)
    cos_in_all, cos_out_all = torch.cat(cos_in), torch.cat(cos_out)
    mean_in, mean_out, n_fired = torch.stack([cos_in_all.mean(), cos_out_all.mean(),
                                              torch.stack(fired).sum().to(cos_in_all.dtype)]).tolist()
    return ProjectionStats(cos_in=mean_in, cos_out=mean_out, frac_fired=n_fired / max(axes, 1))


def null_directions(v_hack: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A seeded random orthonormal V of each module's shape (m, r), on V's device: the null that
    cos_in_null = ‖relu(V_rand g)‖/‖g‖ measures (≈ sqrt(m / 2r) for a V unrelated to g). Drawn
    as the `random` control is (same generator, module order and m), so with the run's seed it
    is that control's V."""
    from projected_grpo.directions.vhack import random_v

    gen = torch.Generator().manual_seed(seed)
    return {k: random_v(v.shape[1], v.shape[0], gen).to(v.device) for k, v in v_hack.items()}


def project_update(v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Δ + relu(−V Δ) V: one module's optimiser step without its hack-ward side. V (m, r), Δ (r,).
    Afterwards V Δ ≥ 0 on every axis (no hack-ward component is left)."""
    c = v @ delta                       # (m,)
    return delta + torch.relu(-c) @ v   # (r,)


def update_hackward(deltas: dict[str, torch.Tensor], v_hack: dict[str, torch.Tensor]) -> float:
    """Mean over modules of ‖relu(−V Δ)‖/‖Δ‖: the hack-ward share of the actual step Δ (0 when the
    step has no hack-ward component; 1 when it lies along −V)."""
    vals = [hackward_cos(v_hack[k].to(d.dtype), -d) for k, d in deltas.items()]
    return torch.stack(vals).mean().item() if vals else 0.0
