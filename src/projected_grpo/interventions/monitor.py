"""A monitor of stated accuracy, and the two defences that use it (DESIGN §9; Ariahw, Engels & Nanda
2025 report a ground-truth monitor as penalty ≈ 0% final hacking, as screening ≈ 1%).

The monitor is the oracle's reward_hack label of each training row (student and teacher rows alike)
through a seeded noisy channel: a hack row is flagged with probability --monitor-tpr, any other row
with probability --monitor-fpr (1.0 / 0.0: the ground truth). The draw for step s on rank k uses its
own generator (seed, s, k), so a resumed run flags the same rows.

MonitorPenalty (reward)   r ← r − --penalty for every flagged row.
Screening (advantage)     flagged rows leave their group before advantages are computed: the
                          group's mean is over its remaining rows, and flagged rows take no part
                          in the loss (grpo.group_advantages with `keep`).
Both know: the monitor (labels, at the stated TPR / FPR); the trainer logs the channel's realised
TPR / FPR on each batch (`monitor_tpr`, `monitor_fpr`).
"""

from __future__ import annotations

import torch

from projected_grpo.training import dist
from projected_grpo.interventions.base import Intervention, Knowledge, StepBatch


def channel(hack: torch.Tensor, tpr: float, fpr: float, seed: int, step: int, rank: int) -> torch.Tensor:
    """hack (B,) bool -> flagged (B,) bool: P(flag | hack) = tpr, P(flag | not hack) = fpr, one uniform
    draw per row from the generator of (seed, step, rank)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 9_973 + rank * 31 + 17)
    u = torch.rand(hack.shape[0], generator=gen, dtype=torch.float64)          # (B,)
    return torch.where(hack, u < tpr, u < fpr)


class _Monitored(Intervention):
    flags_rows = True
    metric_prefix = "monitor"
    kind = "monitor"

    def knows(self, run_dir=None) -> Knowledge:
        tpr, fpr = self.cfg.monitor_tpr, self.cfg.monitor_fpr
        what = "ground truth" if (tpr, fpr) == (1.0, 0.0) else "noisy"
        return Knowledge(self.kind, f"{what} monitor, TPR {tpr:.2f} / FPR {fpr:.2f}")

    def flag(self, batch: StepBatch) -> torch.Tensor:
        """(B,) the monitor's flags on this batch, kept in self.flags for the detector metrics."""
        self.flags = channel(batch.hack_labels(self), self.cfg.monitor_tpr, self.cfg.monitor_fpr,
                             self.cfg.seed, batch.step, dist.rank())
        return self.flags


class MonitorPenalty(_Monitored):
    name = "monitor_penalty"
    point = "reward"

    def reward(self, batch: StepBatch, rewards: torch.Tensor) -> torch.Tensor:
        flagged = self.flag(batch).view_as(rewards)                               # (P_l, G)
        return rewards - self.cfg.penalty * flagged.to(rewards.dtype)


class Screening(_Monitored):
    name = "screening"
    point = "advantage"

    def keep(self, batch: StepBatch) -> torch.Tensor:
        return ~self.flag(batch)                                                  # (B,)
