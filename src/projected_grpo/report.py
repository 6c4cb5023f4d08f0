"""Sweep report: per-arm last-k hack/pass rates (mean ± sem over seeds), paired Δ vs vanilla, plots.

Input: a directory holding run dirs (any dir under it with a `config.json`; arm and seed are read
from that file) and, when a sweep wrote it, `sweep.json` listing the (arm, seed) runs it expected.
Output, beside them:
  results.md    one row per arm, a header of facts, and every missing or unfinished run listed;
  summary.json  the same numbers for machines (`summarise`'s dict);
  hack_rate.png, pass_rate.png   per-arm mean vs step with a ± sem band over seeds;
  cosine.png    per-arm cos_in (solid) and cos_out (dashed) vs step, mean over seeds.
A run is finished when its metrics reach the config's `steps`; unfinished runs are listed and left
out of every mean and plot. sem = sample std / sqrt(n); with n = 1 it is undefined and shown as "—".
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from projected_grpo import runio
from projected_grpo.errors import UserError

RATE_KEYS = ("hack_rate", "pass_rate", "reward_mean")   # averaged over the last k steps
STEP_KEYS = ("cos_in", "cos_out", "frac_fired")          # averaged over all steps
ARM_ORDER = ("vanilla", "projected", "rebound", "random", "shuffled")
DASH = "—"


@dataclass
class Run:
    """One run dir as the report sees it."""

    arm: str                                  # from config.json ("arm")
    seed: int                                 # from config.json ("seed")
    dir: str                                  # run dir, relative to the report dir
    steps: int                                # steps the config asks for
    done: int                                 # last step logged in metrics.jsonl (0 = none)
    status: str                               # finished | unfinished | missing | duplicate
    last_k: dict = field(default_factory=dict)     # RATE_KEYS -> mean over the last k steps (or None)
    all_steps: dict = field(default_factory=dict)  # STEP_KEYS -> mean over all steps (or None)
    metrics: list = field(default_factory=list, repr=False)  # the metrics.jsonl rows


@dataclass
class Stat:
    """A mean over seeds with its standard error."""

    mean: float | None                        # None when there are no values
    sem: float | None                         # None when n < 2
    n: int                                    # number of values


# ---- numbers --------------------------------------------------------------------------------
def mean_sem(values: list[float]) -> Stat:
    """Mean and sample-std / sqrt(n) of the non-None values."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return Stat(None, None, 0)
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return Stat(mean, None, 1)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return Stat(mean, math.sqrt(var / len(xs)), len(xs))


def window_mean(rows: list[dict], key: str, last_k: int | None = None) -> float | None:
    """Mean of row[key] over the last k rows (all rows when last_k is None); None values skipped."""
    window = rows[-last_k:] if last_k else rows
    xs = [r[key] for r in window if r.get(key) is not None]
    return sum(xs) / len(xs) if xs else None


def load_run(run_dir: Path, root: Path, last_k: int) -> Run:
    """Read config.json and metrics.jsonl of one run dir."""
    try:
        cfg = json.loads((run_dir / runio.CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{run_dir / runio.CONFIG}: bad JSON ({err.msg})") from err
    rows = sorted(runio.train_rows(runio.read_jsonl(run_dir / runio.METRICS)), key=lambda r: r.get("step", 0))
    done = rows[-1].get("step", len(rows)) if rows else 0
    steps = int(cfg.get("steps", 0))
    run = Run(arm=str(cfg.get("arm", "?")), seed=int(cfg.get("seed", -1)), dir=str(run_dir.relative_to(root)),
              steps=steps, done=done, status="finished" if rows and done >= steps else "unfinished",
              metrics=rows)
    run.last_k = {k: window_mean(rows, k, last_k) for k in RATE_KEYS}
    run.all_steps = {k: window_mean(rows, k) for k in STEP_KEYS}
    return run


def find_runs(root: Path, last_k: int) -> tuple[list[Run], dict]:
    """Every run dir under root, the configs' shared facts, and sweep.json (or {})."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"report: {root} is not a directory")
    runs, seen = [], set()
    for cfg_path in sorted(root.rglob(runio.CONFIG)):
        run = load_run(cfg_path.parent, root, last_k)
        if (run.arm, run.seed) in seen:
            run.status = "duplicate"          # a second dir for the same (arm, seed): listed, not used
        seen.add((run.arm, run.seed))
        runs.append(run)
    sweep_path = root / "sweep.json"
    sweep = json.loads(sweep_path.read_text()) if sweep_path.is_file() else {}
    for arm in sweep.get("arms", []):
        for seed in sweep.get("seeds", []):
            if (arm, int(seed)) not in seen:
                runs.append(Run(arm=arm, seed=int(seed), dir=f"{arm}_s{seed}", steps=0, done=0,
                                status="missing"))
    return runs, sweep


def _arm_sort(arm: str) -> tuple[int, str]:
    return (ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER), arm)


def summarise(root: str | Path, last_k: int = 5) -> dict:
    """All numbers of the report: header facts, per-arm stats, per-run rows, missing/unfinished."""
    return _summarise(Path(root), last_k)[0]


def _summarise(root: Path, last_k: int) -> tuple[dict, list[Run]]:
    if last_k < 1:
        raise UserError(f"--last-k must be >= 1, got {last_k}")
    runs, sweep = find_runs(root, last_k)
    finished = [r for r in runs if r.status == "finished"]
    vanilla = {r.seed: r for r in finished if r.arm == "vanilla"}
    arms = {}
    for arm in sorted({r.arm for r in runs}, key=_arm_sort):
        mine = [r for r in finished if r.arm == arm]
        row = {"seeds": sorted(r.seed for r in mine),
               "not_finished": sum(r.arm == arm and r.status != "finished" for r in runs)}
        for key in RATE_KEYS:
            row[key] = asdict(mean_sem([r.last_k[key] for r in mine]))
        for key in ("hack_rate", "pass_rate"):
            diffs = [] if arm == "vanilla" else [
                r.last_k[key] - vanilla[r.seed].last_k[key] for r in mine
                if r.seed in vanilla and r.last_k[key] is not None
                and vanilla[r.seed].last_k[key] is not None]
            row[f"delta_{key}"] = asdict(mean_sem(diffs))
        for key in STEP_KEYS:
            row[key] = asdict(mean_sem([r.all_steps[key] for r in mine]))
        arms[arm] = row
    configs = [json.loads((root / r.dir / runio.CONFIG).read_text()) for r in runs if r.status != "missing"]
    header = {"preset": sweep.get("preset"), "last_k": last_k,
              "n_finished": len(finished), "n_listed": len(runs)}
    for key in ("model", "mode", "hint", "steps", "dtype", "group_size", "prompts_per_step", "vhack_m",
                "teacher_pool", "mix_ratio"):
        header[key] = sorted({c.get(key) for c in configs}, key=str)
    summary = {"header": header, "arms": arms,
               "runs": [{k: v for k, v in asdict(r).items() if k != "metrics"} for r in runs],
               "not_finished": [{"arm": r.arm, "seed": r.seed, "dir": r.dir, "status": r.status,
                                 "done": r.done, "steps": r.steps} for r in runs if r.status != "finished"]}
    return summary, runs


# ---- Markdown -------------------------------------------------------------------------------
def fmt(stat: dict, signed: bool = False) -> str:
    """'0.600 ± 0.100 (n=2)', '0.600 ± — (n=1)' or '—'."""
    if stat["mean"] is None:
        return DASH
    mean = f"{stat['mean']:+.3f}" if signed else f"{stat['mean']:.3f}"
    sem = DASH if stat["sem"] is None else f"{stat['sem']:.3f}"
    return f"{mean} ± {sem} (n={stat['n']})"


def _facts(summary: dict) -> str:
    """The 'what this shows' line: measured facts only."""
    arms = summary["arms"]
    k = summary["header"]["last_k"]
    measured = {a: s["hack_rate"]["mean"] for a, s in arms.items() if s["hack_rate"]["mean"] is not None}
    if not measured:
        return "No finished run has a hack rate to report."
    parts = [f"{a} {v:.3f}" for a, v in measured.items()]
    text = f"Mean hack rate over the last {k} steps: " + ", ".join(parts) + "."
    van = arms.get("vanilla", {}).get("hack_rate", {}).get("mean")
    if van is None:
        text += " There is no finished vanilla run, so no paired Δ is computed."
    elif van == 0:
        text += (" Vanilla's hack rate is 0 over that window, so these runs cannot show a reduction "
                 "by any arm.")
    return text


def markdown(summary: dict) -> str:
    h = summary["header"]

    def show(values: list) -> str:
        return ", ".join(str(v) for v in values) or DASH

    lines = ["# Results", "",
             f"- preset: {h['preset'] or DASH + ' (no sweep.json)'}; model: {show(h['model'])}; "
             f"loophole mode: {show(h['mode'])}; steps: {show(h['steps'])}; dtype: {show(h['dtype'])}; "
             f"P × G: {show(h['prompts_per_step'])} × {show(h['group_size'])}; m: {show(h['vhack_m'])}; "
             f"hint: {show(h['hint'])}",
             "- hacking induced by: " + (f"teacher pool {show(h['teacher_pool'])} mixed into every group "
                                        f"(mix ratio {show(h['mix_ratio'])}; rates count student rows only)"
                                        if any(h["teacher_pool"]) else "nothing (no teacher pool)"),
             f"- k = {h['last_k']}: hack rate, pass rate and reward are the mean over each run's last "
             f"{h['last_k']} steps, then mean ± sem over seeds (sem = sample std / √n; n = 1 → {DASH}).",
             "- Δ vs vanilla: per seed, arm minus the vanilla run of the same seed, then mean ± sem "
             f"over those differences ({DASH} when no seed has both). cos_in, cos_out and frac_fired "
             "are means over all steps.",
             f"- {h['n_finished']} finished run(s) of {h['n_listed']} listed; only finished runs enter "
             "the numbers and plots.",
             f"- What this shows: {_facts(summary)}", "",
             "| arm | seeds | hack rate | Δ hack vs vanilla | pass rate | Δ pass vs vanilla | reward "
             "| cos_in | cos_out | frac_fired |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, s in summary["arms"].items():
        cos = [f"{s[k]['mean']:.3f}" if s[k]["mean"] is not None else DASH for k in STEP_KEYS]
        seeds = ",".join(map(str, s["seeds"])) or DASH
        if s["not_finished"]:
            seeds += f" (+{s['not_finished']} not finished, excluded)"
        lines.append(f"| {arm} | {seeds} | {fmt(s['hack_rate'])} | "
                     f"{fmt(s['delta_hack_rate'], True)} | {fmt(s['pass_rate'])} | "
                     f"{fmt(s['delta_pass_rate'], True)} | {fmt(s['reward_mean'])} | " + " | ".join(cos) + " |")
    lines += ["", "## Missing / unfinished runs", ""]
    if summary["not_finished"]:
        lines += ["Left out of every mean and plot above.", "",
                  "| arm | seed | dir | status | steps logged |", "|---|---|---|---|---|"]
        for r in summary["not_finished"]:
            logged = DASH if r["status"] == "missing" else f"{r['done']} / {r['steps']}"
            lines.append(f"| {r['arm']} | {r['seed']} | {r['dir']} | {r['status']} | {logged} |")
    else:
        lines.append("None: every listed run finished.")
    lines += ["", "Plots: `hack_rate.png`, `pass_rate.png` (mean ± sem band over seeds), "
              "`cosine.png` (cos_in solid, cos_out dashed).", ""]
    return "\n".join(lines)


# ---- plots ----------------------------------------------------------------------------------
def _by_step(runs: list[Run], key: str) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and sem over runs of metric `key` at each step (None values skipped)."""
    steps = sorted({r_["step"] for r in runs for r_ in r.metrics})
    xs, means, sems = [], [], []
    for s in steps:
        st = mean_sem([row.get(key) for r in runs for row in r.metrics if row.get("step") == s])
        if st.mean is not None:
            xs.append(s)
            means.append(st.mean)
            sems.append(st.sem or 0.0)
    return xs, means, sems


def plot(root: Path, runs: list[Run]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finished = [r for r in runs if r.status == "finished"]
    arms = sorted({r.arm for r in finished}, key=_arm_sort)
    colors = {a: plt.get_cmap("tab10")(i) for i, a in enumerate(ARM_ORDER)}
    written = []
    for key, title in (("hack_rate", "Hack rate"), ("pass_rate", "Pass rate (strict oracle)")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for arm in arms:
            mine = [r for r in finished if r.arm == arm]
            xs, m, s = _by_step(mine, key)
            if not xs:
                continue
            c = colors.get(arm)
            ax.plot(xs, m, label=f"{arm} (n={len(mine)})", color=c)
            ax.fill_between(xs, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)],
                            color=c, alpha=0.2, linewidth=0)
        ax.set(xlabel="step", ylabel=key, title=f"{title}: mean ± sem over seeds", ylim=(-0.02, 1.02))
        written.append(_save(fig, ax, root / f"{key}.png", plt))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm in arms:
        mine = [r for r in finished if r.arm == arm]
        for key, style in (("cos_in", "-"), ("cos_out", "--")):
            xs, m, _ = _by_step(mine, key)
            if xs:
                ax.plot(xs, m, style, color=colors.get(arm), label=f"{arm} {key}")
    ax.set(xlabel="step", ylabel="‖relu(V g)‖ / ‖g‖", title="Gradient alignment with V (mean over seeds)")
    written.append(_save(fig, ax, root / "cosine.png", plt))
    return written


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


# ---- entry point ----------------------------------------------------------------------------
def write_report(root: str | Path, last_k: int = 5) -> Path:
    """Write results.md, summary.json and the three plots into root; returns results.md's path."""
    root = Path(root)
    summary, runs = _summarise(root, last_k)
    plot(root, runs)
    runio.write_atomic(root / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    out = root / "results.md"
    runio.write_atomic(out, markdown(summary).encode())
    return out


def _cmd_report(args) -> int:
    out = write_report(args.dir, args.last_k)
    print(out.read_text())
    print(f"wrote {out}, {out.parent / 'summary.json'} and hack_rate.png, pass_rate.png, cosine.png "
          f"in {out.parent}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("report", help="results.md + plots for a directory of runs")
    p.add_argument("dir", help="directory holding the run dirs (and sweep.json)")
    p.add_argument("--last-k", type=int, default=5, help="steps at the end of each run to average")
    p.set_defaults(func=_cmd_report)
