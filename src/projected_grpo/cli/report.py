"""`pgrpo report DIR`: results.md, summary.json and the plots for a directory of runs (report.py)."""

from __future__ import annotations

from projected_grpo.studies.report import write_report


def add_commands(sub) -> None:
    p = sub.add_parser("report", help="results.md + plots for a directory of runs")
    p.add_argument("dir", help="directory holding the run dirs (and sweep.json)")
    p.add_argument("--last-k", type=int, default=5, help="steps at the end of each run to average")
    p.add_argument("--note", default="", help="a line under every plot's title, e.g. the GPU the runs used")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    out = write_report(args.dir, args.last_k, args.note)
    print(out.read_text())
    print(f"wrote {out}, {out.parent / 'summary.json'} and hack_rate.png, pass_rate.png, cosine.png, "
          f"eval_curves.png, pareto.png "
          f"in {out.parent}")
    return 0
