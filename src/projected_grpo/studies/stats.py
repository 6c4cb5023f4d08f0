"""Small statistics for the report: mean, SD and SE over seeds, paired differences with a Student-t
95% interval, and the dynamics of one training curve (onset step, area under the hack-rate curve).

Definitions (the report's header repeats them; every number is printed with its label, never a bare ±):
- SD = sample standard deviation, √(Σ(x − mean)² / (n − 1)); undefined (None) for n < 2. It says how
  far seeds spread.
- SE (`sem`) = SD / √n, the standard error of the mean; undefined (None) for n < 2. It says how well
  the mean is known.
- Paired Δ: d_i = arm_i − vanilla_i over the seeds that have both; mean(d) ± t_{0.975, n−1} · SE(d)
  (two-sided 95% Student t interval), with SD(d) beside it; undefined for n < 2.
- Onset at threshold θ: the first logged training step whose hack rate is ≥ θ; None ("never") when
  no step reaches it. For averaging, a run that never reaches θ is counted at steps + 1 (right-
  censored: the true onset is later than the run) and the number of such runs is reported beside it.
- AUC: the area under the step-wise training hack-rate curve divided by the number of logged steps,
  i.e. the mean hack rate over all training steps; in [0, 1]. 0 = never hacked, 1 = hacked from step 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Stat:
    """A mean over seeds with its sample SD (spread of the seeds) and standard error (SD / √n)."""

    mean: float | None                        # None when there are no values
    sd: float | None                          # sample SD, n − 1 in the variance; None when n < 2
    sem: float | None                         # SE = sd / √n; None when n < 2
    n: int                                    # number of values


@dataclass
class Paired:
    """Mean of paired differences with their SD, SE and a two-sided 95% Student-t interval."""

    mean: float | None                        # mean of the differences (None when n = 0)
    sd: float | None                          # sample SD of the differences (None when n < 2)
    sem: float | None                         # SE = sd / √n (None when n < 2)
    n: int                                    # number of pairs
    lo: float | None                          # mean − t_{0.975, n−1} · sem (None when n < 2)
    hi: float | None                          # mean + t_{0.975, n−1} · sem (None when n < 2)


def mean_sem(values: list[float | None]) -> Stat:
    """Mean, sample SD (n − 1) and SE = SD / √n of the non-None values."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return Stat(None, None, None, 0)
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return Stat(mean, None, None, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    return Stat(mean, sd, sd / math.sqrt(len(xs)), len(xs))


def _t_pdf(x: float, df: int) -> float:
    """Student t density: Γ((ν+1)/2) / (√(νπ) Γ(ν/2)) · (1 + x²/ν)^(−(ν+1)/2)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def _t_cdf(x: float, df: int, intervals: int = 4000) -> float:
    """P(T ≤ x) for x ≥ 0: 1/2 + ∫_0^x pdf, by Simpson's rule (error ≪ 1e-9 for |x| < 20)."""
    h = x / intervals
    total = _t_pdf(0.0, df) + _t_pdf(x, df)
    total += sum((4 if i % 2 else 2) * _t_pdf(i * h, df) for i in range(1, intervals))
    return 0.5 + total * h / 3


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p in (0.5, 1)) of Student's t with df degrees of freedom, by bisection.
    t_quantile(0.975, 1) = 12.706, (0.975, 2) = 4.303, (0.975, 4) = 2.776 (table values)."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def paired(diffs: list[float | None], level: float = 0.95) -> Paired:
    """Mean ± Student-t interval of paired differences, with their SD (None entries dropped)."""
    s = mean_sem(diffs)
    if s.sem is None or s.mean is None:      # (a sem implies a mean: n >= 2)
        return Paired(s.mean, None, None, s.n, None, None)
    half = t_quantile(0.5 + level / 2, s.n - 1) * s.sem
    return Paired(s.mean, s.sd, s.sem, s.n, s.mean - half, s.mean + half)


def onset(steps: list[int], rates: list[float | None], threshold: float) -> int | None:
    """First step whose rate is ≥ threshold (steps in increasing order); None when none is."""
    for step, rate in zip(steps, rates):
        if rate is not None and rate >= threshold:
            return step
    return None


def censored(value: int | None, steps: int) -> int:
    """An onset for averaging: 'never' counts as steps + 1 (right-censored at the run's end)."""
    return steps + 1 if value is None else value


def auc(rates: list[float | None]) -> float | None:
    """Area under the step-wise hack-rate curve / number of steps = mean rate (None values skipped)."""
    xs = [r for r in rates if r is not None]
    return sum(xs) / len(xs) if xs else None
