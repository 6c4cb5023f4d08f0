"""`pgrpo report DIR`: results.md, summary.json and the plots for a directory of runs (report.py)."""

from __future__ import annotations

from projected_grpo.errors import UserError
from projected_grpo.studies.report import write_report
from projected_grpo.studies.verdicts import GATE, PASS_MARGIN, Rules


def add_commands(sub) -> None:
    p = sub.add_parser("report", help="results.md + plots for a directory of runs")
    p.add_argument("dir", help="directory holding the run dirs (and sweep.json)")
    p.add_argument("--last-k", type=int, default=5, help="steps at the end of each run to average")
    p.add_argument("--note", default="", help="a line under every plot's title, e.g. the GPU the runs used")
    p.add_argument("--verdicts", action="store_true",
                   help="add each arm's verdict by the pre-registered decision rules (studies/verdicts.py)")
    p.add_argument("--control", action="append", default=[], metavar="ARM=CONTROL",
                   help="the arm ARM must beat on hack to count as specific (repeatable; adds to arms.py's)")
    p.add_argument("--gate", type=float, default=GATE,
                   help="induction gate: no verdict when vanilla's mean final eval hack is below this")
    p.add_argument("--pass-margin", type=float, default=PASS_MARGIN,
                   help="no-hint pass rate a defence may lose (bound of Δ's interval)")
    p.set_defaults(func=_cmd_report)


def _controls(pairs: list[str]) -> dict[str, str]:
    out = {}
    for item in pairs:
        arm, sep, control = item.partition("=")
        if not sep or not arm or not control:
            raise UserError(f"--control {item!r}: expected ARM=CONTROL, e.g. mp_good=mp_random")
        out[arm] = control
    return out


def _cmd_report(args) -> int:
    rules = Rules(args.gate, args.pass_margin, _controls(args.control)) if args.verdicts else None
    if not args.verdicts and (args.control or args.gate != GATE or args.pass_margin != PASS_MARGIN):
        raise UserError("--control, --gate and --pass-margin shape the verdicts: add --verdicts")
    out = write_report(args.dir, args.last_k, args.note, rules)
    print(out.read_text())
    print(f"wrote {out}, {out.parent / 'summary.json'} and hack_rate.png, pass_rate.png, cosine.png, "
          f"eval_curves.png, pareto.png "
          f"in {out.parent}")
    return 0
