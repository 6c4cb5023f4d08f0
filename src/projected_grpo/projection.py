"""The intervention (DESIGN §3): remove the hack-ward part of each module's δS gradient.

Per module, with V (m × r, orthonormal rows, oriented hack-ward) and g = δS.grad (r,):
    c = V g                   # (m,) coefficient along each hack axis
    removed = relu(c) V       # (r,) only hack-ward motion is removed (one-sided)
    g ← g − removed
Logged, averaged over modules: cos_in = ‖relu(V g)‖/‖g‖ before, cos_out after, and frac_fired =
share of (module, axis) coefficients with c > 0 (≈ 0.5 for a direction unrelated to g).
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
    norm = g.norm()
    return torch.where(norm > EPS, torch.relu(v @ g).norm() / norm.clamp(min=EPS), torch.zeros_like(norm))


def project_vector(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g − relu(V g) V: the one-sided projection of one module's vector. V (m, r), g (r,)."""
    c = v @ g                       # (m,)
    return g - torch.relu(c) @ v    # (r,)


def project_grads(grads: dict[str, torch.Tensor], v_hack: dict[str, torch.Tensor],
                  apply: bool) -> ProjectionStats:
    """Measure (and, when `apply`, project in place) every module's gradient.

    `grads`: module key -> δS.grad (r,); `v_hack`: module key -> V (m, r) on the same device.
    The statistics stay on the device until one transfer at the end."""
    cos_in, cos_out, fired, axes = [], [], [], 0
    for key, g in grads.items():
        v = v_hack[key].to(g.dtype)
        c = v @ g                                   # (m,)
        fired.append((c > 0).sum())
        axes += c.numel()
        cos_in.append(hackward_cos(v, g))
        if apply:
            g.sub_(torch.relu(c) @ v)
        cos_out.append(hackward_cos(v, g))
    if not cos_in:
        return ProjectionStats(0.0, 0.0, 0.0)
    mean_in, mean_out, n_fired = torch.stack([torch.stack(cos_in).mean(), torch.stack(cos_out).mean(),
                                              torch.stack(fired).sum().to(cos_in[0].dtype)]).tolist()
    return ProjectionStats(cos_in=mean_in, cos_out=mean_out, frac_fired=n_fired / max(axes, 1))


def update_cos(deltas: dict[str, torch.Tensor], v_hack: dict[str, torch.Tensor]) -> float:
    """Mean over modules of ‖relu(V Δδ)‖/‖Δδ‖ for the actual optimiser step Δδ."""
    vals = [hackward_cos(v_hack[k].to(d.dtype), d) for k, d in deltas.items()]
    return torch.stack(vals).mean().item() if vals else 0.0
