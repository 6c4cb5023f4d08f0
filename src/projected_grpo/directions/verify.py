"""The held-out check of V (DESIGN §2): cosines of held-out pair differences with V, and the margin check.

Cosines: for each held-out pair and module, d = ∇NLL(hack) − ∇NLL(clean) as in extraction
(vhack.pair_differences); per module the mean over pairs of cos(d, v_top) (signed) and of
‖V d‖/‖d‖ (the share of d inside span V), then frac > 0, mean and median over modules against the
null sqrt(1/r) of a random direction.
Margin check: the held-out margin M = mean of logp(hack) − logp(clean) must rise for a small step
to V's hack-ward side (V·step < 0, the side the update projection removes) and fall for the step
the other way, so V is shown to point the right way in log-probs, not only by positive cosines.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from projected_grpo.core.adapter import DeltaSAdapter
from projected_grpo.errors import UserError
from projected_grpo.directions.pairs import Pair, chunks, pair_batch
from projected_grpo.directions.vhack import completion_nll, pair_differences


@dataclass(frozen=True)
class VerifyThresholds:
    """What a held-out check must reach to pass."""

    min_frac_pos: float = 0.8   # least share of modules whose mean signed top-axis cos is > 0


def heldout_cosines(V: torch.Tensor, D: torch.Tensor) -> tuple[float, float, int]:
    """Mean over held-out pairs of cos = (v_top · d)/‖d‖ and frac_in_span = ‖V d‖/‖d‖, and the
    number of pairs used (pairs with d = 0 carry no direction and are skipped)."""
    norms = D.norm(dim=1)                                               # (n,)
    d = D[norms > 0].double()
    if not len(d) or V.abs().max() == 0:
        return 0.0, 0.0, len(d)
    norms = d.norm(dim=1)
    cos = (d @ V[0].double()) / norms                                   # (n,)
    span = (d @ V.double().T).norm(dim=1) / norms                       # (n,)
    return cos.mean().item(), span.mean().item(), len(d)


def verification_stats(cos_per_module: dict[str, float], ranks: dict[str, int], m: int,
                       thresholds: VerifyThresholds = VerifyThresholds(),
                       span_per_module: dict[str, float] | None = None) -> dict:
    """Summary over modules of the mean signed top-axis cos, and the pass decision.

    null_cos = median over modules of sqrt(1/r): the RMS cos of a random unit vector with a fixed
    axis in R^r. `pass` = frac_pos ≥ min_frac_pos and median(cos) > null_cos. For m > 1 the span
    share is reported beside its own null, null_span = median sqrt(m/r) (not used by `pass`)."""
    if not cos_per_module:
        raise UserError("no modules to verify")
    cos = list(cos_per_module.values())
    frac_pos = sum(c > 0 for c in cos) / len(cos)
    median = statistics.median(cos)
    null_cos = statistics.median(math.sqrt(1 / ranks[k]) for k in cos_per_module)
    stats = {"frac_pos": frac_pos, "mean": statistics.fmean(cos), "median": median,
             "n_modules": len(cos), "null_cos": null_cos}
    if span_per_module and m > 1:
        stats["span_median"] = statistics.median(span_per_module.values())
        stats["null_span"] = statistics.median(math.sqrt(m / ranks[k]) for k in span_per_module)
    stats["pass"] = bool(frac_pos >= thresholds.min_frac_pos and median > null_cos)
    return stats


def heldout_margin(model, tok, pairs: list[Pair], batch_size: int = 8) -> float:
    """M = mean over pairs of logp(hack) − logp(clean), each the mean per-token log-likelihood of the
    completion (= NLL(clean) − NLL(hack), the NLL that defines d), at the adapter's current δS."""
    margins = []
    with torch.no_grad():
        for group in chunks(pairs, batch_size):
            nll = completion_nll(model, pair_batch(tok, group))         # (2B,): hacks, then cleans
            margins += (nll[len(group):] - nll[:len(group)]).tolist()
    return statistics.fmean(margins)


def margin_along_v(model, tok, adapter: DeltaSAdapter, v: dict[str, torch.Tensor], pairs: list[Pair],
                   eps: float = 0.01, batch_size: int = 8) -> dict:
    """The behavioural check of V's orientation: the change of the held-out margin M (heldout_margin)
    for one small step each way along V. Per module, u = ΣV rows / ‖ΣV rows‖ (0 for a zero V) and
        hack-ward step:  δS ← δS − ε·√r·u   (V·step < 0: the side the update projection removes)
        anti-hack step:  δS ← δS + ε·√r·u,
    ε·√r being the norm of one sign-like AdamW step of learning rate ε. A V that points hack-ward
    gives margin_step_hackward > 0 > margin_step_antihack. δS is restored afterwards."""
    params = adapter.params()
    saved = {k: p.detach().clone() for k, p in params.items()}
    step = {}
    for k, V in v.items():
        s = V.sum(0).to(params[k].device)                               # (r,)
        norm = s.norm()
        step[k] = s * (eps * V.shape[1] ** 0.5 / norm) if norm > 0 else torch.zeros_like(s)
    base = heldout_margin(model, tok, pairs, batch_size)
    change = {}
    try:
        for name, sign in (("hackward", -1.0), ("antihack", 1.0)):
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(saved[k] + sign * step[k])
            change[name] = heldout_margin(model, tok, pairs, batch_size) - base
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])
    return {"margin": base, "margin_step_hackward": change["hackward"],
            "margin_step_antihack": change["antihack"], "margin_eps": eps}


def verify_v_hack(model, tok, adapter: DeltaSAdapter, v: dict[str, torch.Tensor], pairs: list[Pair],
                  thresholds: VerifyThresholds = VerifyThresholds(), batch_size: int = 8,
                  progress: bool = True, margin_eps: float = 0.01) -> dict:
    """Held-out check of V: verification_stats, the margin check (margin_along_v), zero_norm_modules,
    n_pairs and `per_module` rows {module, r, cos, frac_in_span, n}. `pass` needs both the cosines
    (verification_stats) and the orientation: margin_step_hackward > 0 > margin_step_antihack."""
    if not pairs:
        raise UserError("no held-out pairs to verify on (check --pairs and --modes)")
    D = pair_differences(model, tok, adapter, pairs, batch_size, progress)
    rows, cos, span = [], {}, {}
    for k, V in v.items():
        cos[k], span[k], n = heldout_cosines(V.cpu(), D[k])
        rows.append({"module": k, "r": V.shape[1], "cos": cos[k], "frac_in_span": span[k], "n": n})
    m = next(iter(v.values())).shape[0]
    stats = verification_stats(cos, adapter.ranks(), m, thresholds, span)
    margins = margin_along_v(model, tok, adapter, v, pairs, margin_eps, batch_size)
    stats["pass"] = bool(stats["pass"] and margins["margin_step_hackward"] > 0 > margins["margin_step_antihack"])
    zero = sum(int(V.abs().max() == 0) for V in v.values())
    return stats | margins | {"zero_norm_modules": zero, "n_pairs": len(pairs), "per_module": rows}


def margin_line(result: dict) -> str:
    """The margin check (margin_along_v) as a user reads it."""
    up, down = result["margin_step_hackward"], result["margin_step_antihack"]
    verdict = "V points hack-ward" if up > 0 > down else "V does NOT point hack-ward"
    return (f"held-out logp(hack) − logp(clean) = {result['margin']:+.4f}; a step of ε={result['margin_eps']:g} "
            f"to V's hack-ward side changes it by {up:+.4f}, to the other side by {down:+.4f} ({verdict})")


def write_table(path: Path, rows: list[dict]) -> None:
    """Per-module verification table, CSV for a .csv path and Markdown otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["module", "r", "cos", "frac_in_span", "n"])
            writer.writeheader()
            writer.writerows(rows)
        return
    lines = ["| module | r | cos mean | frac_in_span | n |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {x['module']} | {x['r']} | {x['cos']:+.4f} | {x['frac_in_span']:.4f} | {x['n']} |"
              for x in rows]
    path.write_text("\n".join(lines) + "\n")
