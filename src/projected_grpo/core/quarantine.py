"""The quarantine δQ of gradient routing (DESIGN §9; interventions/routing.py): a second set of
trainable singular-value deltas beside the policy's δS, one (r,) fp32 tensor per wrapped module.

While a module holds a δQ and its quarantine is on, every δS path uses δ = δS + δQ
(adapter.DeltaSLinear.delta): the hook forward, the merged training forward, the fold that sampling
uses and the per-sample copies. `reference()` is still the base model (δS = δQ = 0). Inside
`deployed(adapter)` every δQ is off: evaluation (evaluate.py) and anything deployed see δS alone;
`adapter.params()`, the saved δS file and a checkpoint's "delta_s" never contain δQ.

δQ is a leaf tensor whose requires_grad is False except inside `trains_quarantine`, where δS's is
False instead: a backward there sends ∂L/∂δ to δQ only, any other backward to δS only (∂L/∂δS =
∂L/∂δQ = ∂L/∂δ, so which one learns is a matter of which one asks for the gradient).
"""

from __future__ import annotations

import contextlib
import math

import torch


def attach(adapter) -> dict[str, torch.Tensor]:
    """Give every module of `adapter` a zero δQ (kept if it has one); returns {module key: δQ}."""
    for m in adapter.modules.values():
        if m.delta_q is None:
            m.delta_q = torch.zeros(m.rank, device=m.delta_s.device, dtype=torch.float32)
    return params(adapter)


def params(adapter) -> dict[str, torch.Tensor]:
    """{module key: δQ} of the modules that hold one (empty: no quarantine)."""
    return {k: m.delta_q for k, m in adapter.modules.items() if m.delta_q is not None}


@contextlib.contextmanager
def deployed(adapter):
    """δQ switched off in every module (δ = δS): the policy as evaluated and deployed. A no-op for
    an adapter without a quarantine (or None, as some tests hand evaluate)."""
    modules = list(adapter.modules.values()) if adapter is not None else []
    states = [m.quarantine_on for m in modules]
    for m in modules:
        m.quarantine_on = False
    try:
        yield
    finally:
        for m, on in zip(modules, states):
            m.quarantine_on = on


@contextlib.contextmanager
def trains_quarantine(adapter):
    """Inside, a backward reaches δQ and not δS (module doc)."""
    modules = [m for m in adapter.modules.values() if m.delta_q is not None]
    for m in modules:
        m.delta_s.requires_grad_(False)
        m.delta_q.requires_grad_(True)
    try:
        yield
    finally:
        for m in modules:
            m.delta_q.requires_grad_(False)
            m.delta_s.requires_grad_(True)


def norm(adapter) -> float:
    """‖δQ‖ over all modules (0.0 without a quarantine)."""
    return math.sqrt(sum(float((q.detach().double() ** 2).sum()) for q in params(adapter).values()))
