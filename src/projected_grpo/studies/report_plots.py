"""The report's plots (report.py gathers the runs; this draws them):
  hack_rate.png, pass_rate.png  per-arm training mean vs step with a ± SE band over seeds, and the
                eval rates as markers (± SE bars) at their eval steps;
  cosine.png    per-arm cos_in (solid) and cos_out (dashed) vs step, mean over seeds;
  eval_curves.png  per arm, each seed's held-out eval hack rate, their mean and the mean format rate;
  pareto.png    final eval hack vs final no-hint pass, one point per run (`_pareto`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pathlib import Path

from projected_grpo import arms as arms_mod
from projected_grpo.interventions import arm_label
from projected_grpo.studies.outcomes import HACKED_AT
from projected_grpo.studies.stats import mean_sem

if TYPE_CHECKING:
    from projected_grpo.studies.report import Run

def _label(arm: str, runs: list[Run]) -> str:
    """The arm's legend name, a sweep variant labelled by its base arm (interventions.arm_label)."""
    return arm_label(arm, next((r.base for r in runs if r.arm == arm and r.base), None))


def _by_step(rows_per_run: list[list[dict]], key: str) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and SE over runs of metric `key` at each step (None values skipped)."""
    steps = sorted({row["step"] for rows in rows_per_run for row in rows if "step" in row})
    xs, means, sems = [], [], []
    for s in steps:
        st = mean_sem([row.get(key) for rows in rows_per_run for row in rows if row.get("step") == s])
        if st.mean is not None:
            xs.append(s)
            means.append(st.mean)
            sems.append(st.sem or 0.0)
    return xs, means, sems


def plot(root: Path, runs: list[Run], note: str = "") -> list[Path]:
    """hack_rate.png, pass_rate.png, cosine.png, eval_curves.png and pareto.png; `note` (e.g. the
    card) goes under every title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finished = [r for r in runs if r.status == "finished"]
    arms = sorted({r.arm for r in finished}, key=arms_mod.sort_key)
    cmap = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20")
    colors = {a: cmap(i) for i, a in enumerate(arms)}                  # one colour per arm shown
    sub = f"\n{note}" if note else ""
    last = max((r.done for r in finished), default=1)
    nudge = {a: 0.008 * last * (i - (len(arms) - 1) / 2) for i, a in enumerate(arms)}  # eval markers apart
    written = []
    for key, title in (("hack_rate", "Hack rate"), ("pass_rate", "Pass rate (strict oracle)")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for arm in arms:
            mine = [r for r in finished if r.arm == arm]
            c = colors.get(arm)
            xs, m, s = _by_step([r.metrics for r in mine], key)
            if xs:
                ax.plot(xs, m, label=f"{_label(arm, runs)} train (n={len(mine)})", color=c)
                ax.fill_between(xs, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)],
                                color=c, alpha=0.2, linewidth=0)
            xs, m, s = _by_step([r.evals for r in mine], f"eval_{key}")
            if xs:
                ax.errorbar([x + nudge[arm] for x in xs], m, yerr=s, fmt="o", ms=6, mfc="white", capsize=3, color=c,
                            label=f"{_label(arm, runs)} held-out eval")
        ax.set(xlabel="step", ylabel=key, title=f"{title}: mean ± SE over seeds (o = held-out eval){sub}",
               ylim=(-0.02, 1.02))
        written.append(_save(fig, ax, root / f"{key}.png", plt))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm in arms:
        rows = [r.metrics for r in finished if r.arm == arm]
        for key, style in (("cos_in", "-"), ("cos_out", "--")):
            xs, m, _ = _by_step(rows, key)
            if xs:
                ax.plot(xs, m, style, color=colors.get(arm), label=f"{_label(arm, runs)} {key}")
    ax.set(xlabel="step", ylabel="‖relu(V g)‖ / ‖g‖", title=f"Gradient alignment with V (mean over seeds){sub}")
    written.append(_save(fig, ax, root / "cosine.png", plt))
    written.append(_eval_panels(root, finished, arms, colors, sub, plt))
    written.append(_pareto(root, finished, arms, colors, sub, plt))
    return written


def _eval_panels(root: Path, finished: list[Run], arms: list[str], colors: dict, sub: str, plt) -> Path:
    """eval_curves.png: one panel per arm, the held-out eval hack rate of each seed (thin) and their
    mean (thick), with the mean eval format rate (dashed): a hack rate that falls with the format
    rate is a policy that stopped writing code, not one that stopped hacking."""
    cols = min(5, max(1, len(arms)))
    rows = max(1, -(-len(arms) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.6 * rows), sharex=True, sharey=True,
                             squeeze=False)
    for ax, arm in zip(axes.flat, arms):
        mine = [r for r in finished if r.arm == arm and r.evals]
        for r in mine:
            ax.plot([e["step"] for e in r.evals], [e.get("eval_hack_rate") for e in r.evals],
                    color=colors[arm], alpha=0.35, linewidth=1)
        for key, style in (("eval_hack_rate", "-"), ("eval_format_rate", "--")):
            xs, m, _ = _by_step([r.evals for r in mine], key)
            if xs:
                ax.plot(xs, m, style, color="black" if style == "--" else colors[arm], linewidth=2,
                        label="mean hack" if style == "-" else "mean format")
        ax.set_title(f"{_label(arm, finished)} (n={len(mine)})", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(arms):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Held-out eval hack rate per seed (thin), mean (thick), mean format rate (dashed){sub}",
                 fontsize=9)
    fig.supxlabel("step", fontsize=8)
    fig.tight_layout()
    path = root / "eval_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path



def _pareto(root: Path, finished: list[Run], arms: list[str], colors: dict, sub: str, plt) -> Path:
    """pareto.png: final eval hack rate (renamed evaluators) against final no-hint pass, one point per
    run; a defence wants low and to the right. Each run's step-0 point (grey, hollow) is joined to its
    final point by a thin line, so a run that lost capability shows as a move left; collapsed runs
    (outcomes.collapsed) are drawn as x, so a low hack rate bought by breaking the policy is seen. Each
    arm's mean over its runs is a diamond with ± SE bars on both axes, named beside it."""
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(6.4, 5))
    shown = [r for r in finished if r.eval_final.get("eval_pass_nohint") is not None
             and r.eval_final.get("eval_hack_rate") is not None]
    for r in shown:
        x, y = r.eval_final["eval_pass_nohint"], r.eval_final["eval_hack_rate"]
        x0, y0 = r.eval_base.get("eval_pass_nohint"), r.eval_base.get("eval_hack_rate")
        if x0 is not None and y0 is not None:
            ax.plot([x0, x], [y0, y], color="grey", linewidth=0.6, alpha=0.6, zorder=1)
            ax.scatter([x0], [y0], s=36, facecolors="none", edgecolors="grey", zorder=2)
        gone = r.outcome.get("collapsed") is True
        ax.scatter([x], [y], s=60 if gone else 40, marker="x" if gone else "o", color=colors[r.arm], zorder=3,
                   alpha=0.5)
    for a in arms:
        mine = [r for r in shown if r.arm == a]
        if mine:
            px = mean_sem([r.eval_final["eval_pass_nohint"] for r in mine])
            hy = mean_sem([r.eval_final["eval_hack_rate"] for r in mine])
            ax.errorbar([px.mean], [hy.mean], xerr=[px.sem or 0.0], yerr=[hy.sem or 0.0], fmt="D", ms=7,
                        color=colors[a], mec="black", capsize=2, linewidth=1, zorder=4)
            ax.annotate(a, (px.mean, hy.mean), xytext=(4, 4), textcoords="offset points", fontsize=6, zorder=5)
    handles = [Line2D([], [], marker="o", linestyle="", color=colors[a],
                      label=f"{_label(a, finished)} (n={sum(r.arm == a for r in shown)})")
               for a in arms if any(r.arm == a for r in shown)]
    if shown:
        handles += [Line2D([], [], marker="o", linestyle="-", linewidth=0.6, color="grey", mfc="none",
                           label="step 0 (base policy) → final"),
                    Line2D([], [], marker="x", linestyle="", color="black", label="collapsed run"),
                    Line2D([], [], marker="D", linestyle="", color="grey", mec="black", label="arm mean ± SE")]
        ax.legend(handles=handles, fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no finished run has eval_pass_nohint\n(no-hint eval not logged)", ha="center",
                va="center", transform=ax.transAxes)
    ax.axhline(HACKED_AT, color="grey", linestyle=":", linewidth=0.8)
    ax.set(xlabel="final held-out no-hint pass rate (capability)",
           ylabel="final held-out eval hack rate (renamed evaluators)", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
           title=f"Hack vs capability: runs, arm means ± SE (dotted: hacked ≥ {HACKED_AT}){sub}")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = root / "pareto.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

def _save(fig, ax, path: Path, plt) -> Path:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
