"""`pgrpo probe`, `pgrpo sweep` and `pgrpo demo` (experiments.py, sweep.py): each takes every config
field as a flag on top of its preset (probe: less --arm; sweep and demo: less --arm and --seed)."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

from projected_grpo.cli.flags import add_config_flags, add_preset_flag
from projected_grpo.config import ARMS, config_from_args, explicit_flags, preset
from projected_grpo.errors import UserError
from projected_grpo.studies.experiments import ProbeThresholds, demo, probe
from projected_grpo.studies.launchers import LAUNCHERS, LaunchOptions
from projected_grpo.studies.sweep import NOT_FINISHED, V_HACK, VARIANTS, SweepPlan, parse_list, parse_variant, sweep


def add_commands(sub) -> None:
    p = sub.add_parser("probe", help="gated probe: V check → vanilla hacks → projected fires; exit 1 on a fail")
    add_preset_flag(p)
    p.add_argument("--out", required=True, help="probe directory")
    p.add_argument("--min-hack-rate", type=float, default=ProbeThresholds.min_hack_rate,
                   help="gate 2: least vanilla hack rate over the last k steps")
    p.add_argument("--last-k", type=int, default=ProbeThresholds.last_k, help="gate 2's window")
    add_config_flags(p, skip=("arm",))
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("sweep", help="every (arm, seed) with one shared V, resumable, then the report; "
                                     "--gpus N runs them as a queue of processes over N GPUs")
    add_preset_flag(p)
    p.add_argument("--arms", default="vanilla,projected,rebound,random",
                   help=f"comma list of arms ({', '.join(ARMS)}) or variants ({', '.join(VARIANTS)}, "
                        "or one defined with --variant)")
    p.add_argument("--seeds", default="41,42,43", help="comma list of seeds")
    p.add_argument("--seeds-for", action="append", default=[], metavar="NAME=SEEDS",
                   help="an arm's own seeds instead of --seeds (repeatable), e.g. vanilla=1,2,3,4,5")
    p.add_argument("--out", required=True, help="sweep directory (run dirs go in it)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ARM:field=value,...",
                   help="define an arm variant for --arms (repeatable), e.g. projected_lr2=projected:lr=0.02")
    p.add_argument("--gpus", type=int, default=0,
                   help="0: runs one after another in this process; N: one child process per run, "
                        "pinned to one of N GPUs (the first N of CUDA_VISIBLE_DEVICES when set)")
    p.add_argument("--runs-per-gpu", type=int, default=1, help="with --gpus: runs at once on one GPU")
    p.add_argument("--fleet", type=int, default=1,
                   help="each arm's seeds in fleets of this many: one process per fleet, its runs stepped "
                        "together on one model copy (training/lockstep.py; sets --row-noise); 1 = alone")
    p.add_argument("--max-attempts", type=int, default=2,
                   help="with --gpus or a cluster launcher: a run that failed this many times (over invocations) "
                        "is skipped")
    add_launcher_flags(p)
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write the report at the end (--no-report to skip)")
    p.add_argument("--last-k", type=int, default=5, help="report window")
    add_config_flags(p, skip=("arm", "seed"))
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("demo", help="smoke preset end to end on CPU: extract → verify → sweep → report")
    p.add_argument("--out", default="runs/demo", help="demo directory")
    p.add_argument("--last-k", type=int, default=5, help="report window")
    add_config_flags(p, skip=("arm", "seed"))
    p.set_defaults(func=_cmd_demo)


def add_launcher_flags(p) -> None:
    """--launcher and the cluster launchers' flags (studies/launchers.py)."""
    d = LaunchOptions()
    p.add_argument("--launcher", choices=tuple(LAUNCHERS), default="local",
                   help="where runs go: local (this host: --gpus), slurm (a submitit job array), ray (Ray tasks)")
    p.add_argument("--gpus-per-run", type=int, default=d.gpus_per_run,
                   help="slurm/ray: GPUs each run's job asks for (0 = a CPU job)")
    p.add_argument("--cpus-per-run", type=int, default=d.cpus_per_run,
                   help="slurm/ray: CPU cores each run's job asks for (its worker's thread count)")
    p.add_argument("--time-min", type=int, default=d.time_min, help="slurm: each run's time limit in minutes")
    p.add_argument("--slurm-partition", default=d.slurm_partition, help="slurm: partition (default: the cluster's)")
    p.add_argument("--array-parallelism", type=int, default=d.array_parallelism,
                   help="slurm: array tasks (runs) running at once")
    p.add_argument("--slurm-cluster", choices=("slurm", "local"), default=d.slurm_cluster,
                   help="slurm: submitit executor; local runs each job as a subprocess here (for tests)")
    p.add_argument("--ray-address", default=d.ray_address,
                   help='ray: cluster address, e.g. auto or ray://head:10001 ("" = start Ray in this process)')


def launch_options(args) -> dict:
    """The launcher flags as LaunchOptions' dict; refuses the local queue's flags with a cluster launcher."""
    if args.launcher == "local":
        return {}
    if args.gpus or args.runs_per_gpu != 1:
        raise UserError(f"--gpus and --runs-per-gpu are for --launcher local; with --launcher {args.launcher} "
                        "use --gpus-per-run")
    opts = LaunchOptions(args.gpus_per_run, args.cpus_per_run, args.time_min, args.slurm_partition,
                         args.array_parallelism, args.slurm_cluster, args.ray_address)
    for flag, value, least in (("--gpus-per-run", opts.gpus_per_run, 0), ("--cpus-per-run", opts.cpus_per_run, 1),
                               ("--time-min", opts.time_min, 1), ("--array-parallelism", opts.array_parallelism, 1)):
        if value < least:
            raise UserError(f"{flag} must be >= {least}")
    launcher = LAUNCHERS[args.launcher]
    assert launcher is not None
    launcher.require(opts)                   # a missing package: one line, before anything is written
    return asdict(opts)


def _cmd_probe(args) -> int:
    cfg = config_from_args(args, preset(args.preset))
    record = probe(cfg, Path(args.out), ProbeThresholds(args.min_hack_rate, args.last_k))
    print(f"VERDICT: PASS, {record['message']}" if record["passed"] else f"VERDICT: FAIL at {record['message']}")
    print(f"wrote {Path(args.out) / 'probe.json'}")
    return 0 if record["passed"] else 1


def _cmd_sweep(args) -> int:
    from projected_grpo.studies.report import write_report

    base = config_from_args(args, preset(args.preset))
    out = Path(args.out)
    variants = dict(parse_variant(v) for v in args.variant)
    arms = parse_list(args.arms, str, "arms")
    seeds_for = {}
    for item in args.seeds_for:
        name, eq, seeds = item.partition("=")
        if not eq or name.strip() not in arms:
            raise UserError(f"--seeds-for {item!r}: expected NAME=SEEDS with NAME one of --arms ({args.arms})")
        seeds_for[name.strip()] = parse_list(seeds, int, "seeds-for")
    if args.gpus < 0 or args.runs_per_gpu < 1 or args.max_attempts < 1:
        raise UserError("--gpus must be >= 0, --runs-per-gpu and --max-attempts >= 1")
    launch = launch_options(args)
    plan = SweepPlan(preset=args.preset, arms=arms,
                     seeds=parse_list(args.seeds, int, "seeds"), overrides=explicit_flags(args),
                     v_hack=str(Path(base.v_hack).resolve() if base.v_hack else (out / V_HACK).resolve()),
                     out=str(out), variants=variants, gpus=args.gpus, runs_per_gpu=args.runs_per_gpu,
                     max_attempts=args.max_attempts, seeds_for=seeds_for,
                     launcher=args.launcher, launch=launch, fleet=args.fleet)
    if args.fleet < 1 or (args.fleet > 1 and args.launcher != "local"):
        raise UserError(f"--fleet {args.fleet}: must be >= 1, and fleets run with --launcher local only")
    t0 = time.time()
    done = sweep(plan, base)
    bad = sorted(n for n, s in done.items() if s in NOT_FINISHED)
    print(f"sweep done in {time.time() - t0:.0f}s: {len(done) - len(bad)} of {len(done)} runs finished in {out}"
          + (f"; NOT finished: {', '.join(bad)}" if bad else ""))
    if args.report:
        print(f"report: {write_report(out, args.last_k)}")
    return 1 if bad else 0


def _cmd_demo(args) -> int:
    out = Path(args.out)
    report = demo(config_from_args(args, preset("smoke")), out, args.last_k, explicit_flags(args))
    print(f"results: {report}")
    print(f"plots:   {', '.join(str(out / n) for n in ('hack_rate.png', 'pass_rate.png', 'cosine.png'))}")
    return 0
