#!/usr/bin/env python3
"""Every run's curves under a sweep dir, unfinished runs included (the report plots finished runs only):
training hack rate, held-out eval hack rate (renamed evaluators), eval format rate and no-hint pass, one
colour per arm or variant (the run dir's name without `_s{seed}`), dashed where the run did not finish.

    python scripts/plot_runs.py docs/results/substrate --note "1 × NVIDIA H200" --out grid_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PANELS = (("train", "hack_rate", "training hack rate"), ("eval", "eval_hack_rate", "eval hack (renamed evaluators)"),
          ("eval", "eval_format_rate", "eval format rate"), ("eval", "eval_pass_nohint", "eval no-hint pass"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    ap.add_argument("root", type=Path)
    ap.add_argument("--note", default="", help="a line under the title (the card)")
    ap.add_argument("--out", default="grid_curves.png", help="file name, written inside ROOT")
    args = ap.parse_args()
    runs = sorted(p.parent for p in args.root.glob("*/metrics.jsonl"))
    names = sorted({r.name.rsplit("_s", 1)[0] for r in runs})
    colours = {n: plt.get_cmap("tab10")(i) for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6), sharex=True)
    for run in runs:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        steps = json.loads((run / "config.json").read_text())["steps"]
        done = sum(r.get("kind", "train") == "train" for r in rows)
        style = "-" if done >= steps else "--"
        for ax, (kind, key, _) in zip(axes, PANELS):
            pts = [(r["step"], r[key]) for r in rows if r.get("kind", "train") == kind and r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), style, color=colours[run.name.rsplit("_s", 1)[0]], linewidth=1.2,
                        marker="o" if kind == "eval" else None, ms=3, label=f"{run.name} ({done}/{steps})")
    for ax, (_, _, title) in zip(axes, PANELS):
        ax.set(title=title, xlabel="step", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.suptitle(f"Every run, dashed = not finished{' — ' + args.note if args.note else ''}", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.root / args.out, dpi=110)
    print(f"wrote {args.root / args.out}")


if __name__ == "__main__":
    main()
