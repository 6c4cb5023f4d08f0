"""The learning-rate factor of step t (LambdaLR multiplies cfg.lr by it).

    t < w:            (t + 1) / w                              linear warm-up over w steps
    cosine, t ≥ w:    ½ (1 + cos(π (t − w) / (T − w)))          to 0 at the last step T
    constant, t ≥ w:  1

A constant rate after the warm-up lets hacking that a defence delays still emerge late in the run;
under the cosine schedule the rate itself falls towards 0 there.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "constant")


def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine") -> float:
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    raise ValueError(f"unknown lr schedule {schedule!r}; one of {', '.join(SCHEDULES)}")
