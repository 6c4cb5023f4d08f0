"""`pgrpo train`: one GRPO run into --out; every TrainConfig field is a flag."""

from __future__ import annotations

import json
from pathlib import Path

from projected_grpo.training import runio
from projected_grpo.cli.flags import add_config_flags, add_preset_flag
from projected_grpo.errors import UserError


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="one GRPO run (one arm, one seed) into --out")
    add_preset_flag(p, default=None, extra=" (default smoke; with --resume the run's config.json is the base "
                                           "and a preset is not needed)")
    p.add_argument("--out", default=None, help="run directory (required unless --print-config)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with its config.json; flags "
                        "given beside it must agree with that config")
    p.add_argument("--fleet-seeds", default=None,
                   help="comma list of seeds: run them as one fleet in this process, stepped together on one "
                        "model copy (training/lockstep.py; sets --fleet-runs and --row-noise); --out must "
                        "hold {seed}")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as JSON (the run's, with --resume) and exit")
    add_config_flags(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from projected_grpo.training import dist
    from projected_grpo.config import config_from_args, preset, resumed_config
    from projected_grpo.training.train import train

    if args.out is None and (args.resume or not args.print_config):
        raise UserError("--out DIR is required" + (" with --resume" if args.resume else ""))
    if args.fleet_seeds is not None:
        return _cmd_train_fleet(args)
    if args.resume:  # the run's own config.json is the base; flags beside --resume must agree with it
        stored = runio.read_config(Path(args.out))
        if stored is None:
            raise UserError(f"--resume: {args.out} holds no run ({runio.CONFIG} missing); "
                            "start it without --resume")
        cfg = resumed_config(stored, args, source=str(Path(args.out) / runio.CONFIG),
                             files=not args.print_config)
    else:
        cfg = config_from_args(args, preset(args.preset or "smoke"), files=not args.print_config)
    if args.print_config:
        print(cfg.to_json())
        return 0
    if cfg.fleet_runs > 1 and args.resume:
        raise UserError(f"{args.out}: the run was started in a fleet of {cfg.fleet_runs} "
                        "(--fleet-seeds); resume it with that fleet's --fleet-seeds and --out")
    if cfg.fleet_runs > 1:
        raise UserError(f"--fleet-runs {cfg.fleet_runs}: a fleet is started with --fleet-seeds, which sets it")
    dist.init_from_env()
    out = train(cfg, args.out, resume=args.resume)
    if dist.rank() == 0:
        rows = runio.read_jsonl(out / runio.METRICS)
        last = runio.train_rows(rows)[-1]
        print(f"run finished: {out}")
        print(json.dumps({k: last.get(k) for k in ("step", "reward_mean", "hack_rate", "pass_rate", "cos_in",
                                                  "cos_out", "frac_fired")}))
        evals = runio.eval_rows(rows)
        print("held-out eval: " + (json.dumps({k: v for k, v in evals[-1].items() if k != "kind"}) if evals
                                   else "none (no eval problems or --eval-samples 0; see split.json)"))
    dist.finish()
    return 0


def _cmd_train_fleet(args) -> int:
    """`train --fleet-seeds S1,S2,... --out 'DIR_{seed}'`: the runs of one arm as one fleet."""
    from dataclasses import replace

    from projected_grpo.config import config_from_args, preset, resumed_config
    from projected_grpo.training.lockstep import train_fleet

    try:
        seeds = [int(x) for x in args.fleet_seeds.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--fleet-seeds {args.fleet_seeds!r}: expected a comma list of integers") from None
    if len(seeds) < 2:
        raise UserError(f"--fleet-seeds {args.fleet_seeds!r}: a fleet needs at least two seeds")
    if "{seed}" not in args.out:
        raise UserError(f"--out {args.out!r}: with --fleet-seeds it must hold {{seed}} (one run dir per seed)")
    outs = [Path(args.out.replace("{seed}", str(s))) for s in seeds]
    if args.resume:
        cfgs = []
        for out in outs:
            stored = runio.read_config(out)
            if stored is None:
                raise UserError(f"--resume: {out} holds no run ({runio.CONFIG} missing); start the fleet "
                                "without --resume")
            cfgs.append(resumed_config(stored, args, source=str(out / runio.CONFIG), files=not args.print_config))
    else:
        base = config_from_args(args, preset(args.preset or "smoke"), files=not args.print_config)
        cfgs = [replace(base, seed=s, fleet_runs=len(seeds), row_noise=True) for s in seeds]
        for cfg in cfgs:
            cfg.validate(files=not args.print_config)
    if args.print_config:
        print("\n".join(cfg.to_json() for cfg in cfgs))
        return 0
    if args.resume:                      # a run of the fleet that already finished is left as it is
        todo = [i for i, out in enumerate(outs) if runio.run_state(out) != "finished"]
        for i in sorted(set(range(len(outs))) - set(todo)):
            print(f"{outs[i]}: already finished")
        cfgs, outs = [cfgs[i] for i in todo], [outs[i] for i in todo]
        if not cfgs:
            return 0
    result = train_fleet(cfgs, outs, resume=args.resume)
    for r, out in enumerate(outs):
        err = result.errors.get(r)
        print(f"{out}: " + ("finished" if err is None else f"FAILED: {type(err).__name__}: {err}"))
    print(f"meetings: {result.meetings}, seconds in them: {result.seconds}")
    return 1 if result.errors else 0
