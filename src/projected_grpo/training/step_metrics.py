"""The training row of one step (metrics.jsonl, `kind` "train"): rates, rewards, loss and the
projection's measurements, over all ranks. The trainer adds timings, the sampler / clip counters
(passes.BatchState), coverage and refresh columns to it."""

from __future__ import annotations

import numpy as np
import torch

from projected_grpo.training import dist
from projected_grpo.core.projection import ProjectionStats


def train_row(step: int, grades: list, is_teacher: list[bool], rewards: torch.Tensor, adv: torch.Tensor,
              n_tokens: int, loss_sum: float, kl_sum: float, stats: ProjectionStats, real: ProjectionStats,
              grad_norm: float, upd_hackward: float, lr: float, *, modified: bool, beta: float) -> dict:
    """Step metrics over all ranks. `rewards` (P_l, G) are the rewards the advantages `adv` (B,) came from
    (changed by the arm's reward interventions, if any: `modified`). Student rows only in
    reward_mean/std (the flawed grade's reward, unmodified), reward_mod_mean (the modified one, else None) and
    the rates; teacher rows in their own columns, and
    teacher_adv_share = Σ_teacher |A| / Σ_all |A| (0 when every A is 0): the share of the
    gradient's weight that rows the policy did not sample carried."""
    local = [{"reward": g.reward, "reward_mod": r, "abs_adv": abs(a), "hack": g.label == "reward_hack",
              "pass": g.gt_correct, "format": g.format_ok, "teacher": t}
             for r, a, g, t in zip(rewards.view(-1).tolist(), adv.tolist(), grades, is_teacher)]
    rows_all = dist.gather_rows(local)
    groups = dist.gather_rows([{"zero": bool((grp == grp[0]).all())} for grp in rewards])
    loss_sum, kl_sum, tokens = dist.sum_scalars([loss_sum, kl_sum, float(n_tokens)])
    student = [r for r in rows_all if not r["teacher"]]
    teacher = [r for r in rows_all if r["teacher"]]
    abs_all = sum(r["abs_adv"] for r in rows_all)
    rec = {"step": step + 1, "reward_mean": _rate(student, "reward"),
           "reward_std": float(np.std([r["reward"] for r in student])) if student else None,
           "reward_mod_mean": _rate(student, "reward_mod") if modified else None,
           "hack_rate": _rate(student, "hack"), "pass_rate": _rate(student, "pass"),
           "format_rate": _rate(student, "format"),
           "frac_zero_adv": float(np.mean([g["zero"] for g in groups])),
           "teacher_adv_share": sum(r["abs_adv"] for r in teacher) / abs_all if abs_all > 0 else 0.0,
           "kl": kl_sum / max(tokens, 1.0) if beta > 0 else None, "loss": loss_sum,
           "grad_norm": grad_norm, "cos_in": stats.cos_in, "cos_out": stats.cos_out,
           "frac_fired": stats.frac_fired, "update_hackward": upd_hackward, "cos_in_real": real.cos_in,
           "lr": lr, "tokens": int(tokens), "n_student": len(student), "n_teacher": len(teacher)}
    if teacher:
        rec.update(teacher_hack_rate=_rate(teacher, "hack"), teacher_pass_rate=_rate(teacher, "pass"),
                   teacher_reward_mean=_rate(teacher, "reward"))
    return rec


def detector_metrics(prefix: str, flags: list[bool], hack: list[bool]) -> dict:
    """A detector's realised rates on the step's batch over all ranks (every row, teacher rows too),
    against the oracle's labels (logged only): <prefix>_tpr = flagged hack rows / hack rows (its
    recall; None without hack rows), <prefix>_fpr = flagged other rows / other rows (None without
    any), <prefix>_flag_rate = flagged rows / rows, <prefix>_hack_rows = hack rows."""
    tp, pos, fp, neg = dist.sum_scalars([float(sum(f and h for f, h in zip(flags, hack))), float(sum(hack)),
                                         float(sum(f and not h for f, h in zip(flags, hack))),
                                         float(sum(not h for h in hack))])
    return {f"{prefix}_tpr": tp / pos if pos else None, f"{prefix}_fpr": fp / neg if neg else None,
            f"{prefix}_flag_rate": (tp + fp) / (pos + neg) if pos + neg else None, f"{prefix}_hack_rows": int(pos)}


def _rate(rows: list[dict], key: str) -> float | None:
    """Mean of `key` over rows (a rate for a bool column); None over no rows."""
    return float(np.mean([r[key] for r in rows])) if rows else None
