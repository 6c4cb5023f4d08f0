"""Experiment drivers on top of `train`: the gated probe, the resumable sweep, and the demo.

    pgrpo probe  --preset P --seed N --out DIR   gate 1: extract V + held-out check;
                                                 gate 2: vanilla reaches a non-trivial hack rate;
                                                 gate 3: the projected arm's gradients lean on the real V
                                                 more than on a random V of the same m (mean cos_in >
                                                 mean cos_in_null, both logged by the projected run).
    pgrpo sweep  --preset P --arms A,B --seeds 41,42 --out DIR   every (arm, seed) into DIR/{arm}_s{seed},
                                                 one shared V (DIR/v_hack.safetensors), then the report.
    pgrpo demo   --out DIR                       smoke preset on the embedded model: extract → verify →
                                                 sweep (4 arms, seed 41) → report.
A sweep is resumable: a finished run is skipped, a cut-off run resumed, a missing one started.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from projected_grpo import runio
from projected_grpo.config import ARMS, PRESETS, TrainConfig, add_config_flags, config_from_args, preset
from projected_grpo.errors import UserError
from projected_grpo.report import window_mean, write_report

V_HACK = "v_hack.safetensors"
SPLIT = "split.json"                  # the sweep's split file, beside sweep.json
DEMO_ARMS = ("vanilla", "projected", "rebound", "random")
DEMO_SEEDS = (41,)


# ---- the shared artifact ----------------------------------------------------------------------
def prepare_v_hack(cfg: TrainConfig, path: Path, verify: bool, progress: bool = True) -> dict | None:
    """Extract V into `path` from cfg.pairs / cfg.vhack_m unless it exists; with `verify`, run the
    held-out check (per-module table beside V) and return its summary dict (no per-module rows)."""
    from projected_grpo import vhack
    from projected_grpo.pairs import load_pairs, parse_modes
    from projected_grpo.train import load_policy
    from projected_grpo.verify import verify_v_hack, write_table

    path = Path(path)
    if path.is_file() and not verify:
        return None
    modes = parse_modes(cfg.vhack_modes)
    model, tok, adapter = load_policy(cfg)
    if not path.is_file():
        t0 = time.time()
        v, train_pairs = vhack.extract_to_file(path, model, tok, adapter, cfg.pairs, cfg.vhack_modes,
                                               cfg.vhack_m, seed=cfg.seed, progress=progress)
        print(f"extracted V: {len(v)} modules, m={next(iter(v.values())).shape[0]}, "
              f"{len(train_pairs.pairs)} training pairs -> {path} ({time.time() - t0:.0f}s)")
    if not verify:
        return None
    heldout = load_pairs(cfg.pairs, split="heldout", modes=modes)
    result = verify_v_hack(model, tok, adapter, vhack.load_v_hack(path, adapter), heldout.pairs,
                           progress=progress)
    write_table(path.with_name(path.stem + ".verify.md"), result.pop("per_module"))
    return result


def verify_line(result: dict) -> str:
    """The held-out check's cosines, its margin check (when run) and the decision, as printed."""
    from projected_grpo.verify import margin_line

    margin = f"\n{margin_line(result)}" if "margin" in result else ""
    return (f"held-out check: frac>0={result['frac_pos']:.3f} mean={result['mean']:+.3f} "
            f"median={result['median']:+.3f} null_cos={result['null_cos']:.3f} "
            f"modules={result['n_modules']}{margin}\n-> {'PASS' if result['pass'] else 'FAIL'}")


def prepare_split(cfg: TrainConfig, path: Path) -> Path:
    """Derive the sweep's one split (from cfg.seed) into `path` unless it exists; every run of the sweep
    reads it, so all arms and seeds train and are evaluated on the same problems."""
    from projected_grpo import splits
    from projected_grpo.models import load_tokenizer

    if not path.is_file():
        split = splits.derive(splits.load_pool(cfg, load_tokenizer(cfg.model)),
                              splits.pair_problem_ids(cfg.pairs), cfg.eval_problems, cfg.seed)
        runio.write_atomic(path, split.to_json().encode())
        print(split.summary())
    return path.resolve()


# ---- one run, resumably -----------------------------------------------------------------------
def run_state(run_dir: Path, steps: int) -> str:
    """finished (delta_s written and metrics reach `steps`) | unfinished (config.json only) | missing."""
    if not (run_dir / runio.CONFIG).is_file():
        return "missing"
    rows = runio.train_rows(runio.read_jsonl(run_dir / runio.METRICS))
    done = max((r.get("step", 0) for r in rows), default=0)
    return "finished" if (run_dir / "delta_s.safetensors").is_file() and done >= steps else "unfinished"


def ensure_run(cfg: TrainConfig, run_dir: Path, progress: bool = True) -> str:
    """Skip, resume or start one run; returns what it did: skipped | resumed | started."""
    from projected_grpo import train as train_module   # looked up per call, so tests can swap `train`

    state = run_state(run_dir, cfg.steps)
    if state != "missing":
        diff = runio.config_diff(json.loads((run_dir / runio.CONFIG).read_text()), json.loads(cfg.to_json()))
        if diff:
            raise UserError(f"{run_dir} holds a run with another config ({', '.join(diff)} differ); "
                            "move it away or choose another --out")
    if state == "finished":
        print(f"[skip]   {run_dir} already finished ({cfg.steps} steps)")
        return "skipped"
    print(f"[{'resume' if state == 'unfinished' else 'start'}]  {cfg.arm} seed {cfg.seed} -> {run_dir}")
    train_module.train(cfg, run_dir, resume=state == "unfinished", progress=progress)
    return "resumed" if state == "unfinished" else "started"


# ---- sweep -----------------------------------------------------------------------------------
@dataclass
class SweepPlan:
    """What one sweep runs; written to DIR/sweep.json."""

    preset: str                       # preset name the runs start from
    arms: list[str]                   # arms, in run order
    seeds: list[int]                  # seeds, each arm runs every seed
    overrides: dict                   # config fields set on the command line
    v_hack: str                       # the one V artifact every run uses
    out: str                          # sweep directory


def parse_list(text: str, kind: type, what: str) -> list:
    items = [x.strip() for x in text.split(",") if x.strip()]
    try:
        values = [kind(x) for x in items]
    except ValueError as err:
        raise UserError(f"--{what}: {err}") from err
    if not values:
        raise UserError(f"--{what} is empty")
    if what == "arms":
        bad = [a for a in values if a not in ARMS]
        if bad:
            raise UserError(f"--arms: unknown arm(s) {', '.join(bad)}; choose from {', '.join(ARMS)}")
    return values


def sweep(plan: SweepPlan, base: TrainConfig, progress: bool = True) -> dict[str, str]:
    """Run every (arm, seed) of the plan one after another; -> {run dir name: skipped|resumed|started}."""
    out = Path(plan.out)
    out.mkdir(parents=True, exist_ok=True)
    v_path = Path(plan.v_hack)
    if not v_path.is_file():
        if v_path != out / V_HACK:
            raise UserError(f"--v-hack {v_path} does not exist")
        prepare_v_hack(base, v_path, verify=False, progress=progress)
    runio.write_atomic(out / "sweep.json", (json.dumps(asdict(plan), indent=2) + "\n").encode())
    split_file = Path(base.split_file).resolve() if base.split_file else prepare_split(base, out / SPLIT)
    done = {}
    total = len(plan.arms) * len(plan.seeds)
    for i, (arm, seed) in enumerate(((a, s) for a in plan.arms for s in plan.seeds), start=1):
        cfg = replace(base, arm=arm, seed=seed, v_hack=str(v_path.resolve()), split_file=str(split_file))
        cfg.validate()
        print(f"--- run {i}/{total}: {arm} seed {seed}")
        t0 = time.time()
        done[f"{arm}_s{seed}"] = ensure_run(cfg, out / f"{arm}_s{seed}", progress)
        print(f"    {done[f'{arm}_s{seed}']} in {time.time() - t0:.0f}s")
    return done


def overrides_of(args: argparse.Namespace) -> dict:
    """Config fields given explicitly on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}


def _cmd_sweep(args) -> int:
    base = config_from_args(args, preset(args.preset))
    out = Path(args.out)
    plan = SweepPlan(preset=args.preset, arms=parse_list(args.arms, str, "arms"),
                     seeds=parse_list(args.seeds, int, "seeds"), overrides=overrides_of(args),
                     v_hack=str(Path(base.v_hack).resolve() if base.v_hack else (out / V_HACK).resolve()),
                     out=str(out))
    t0 = time.time()
    sweep(plan, base)
    print(f"sweep done in {time.time() - t0:.0f}s: {len(plan.arms) * len(plan.seeds)} runs in {out}")
    if args.report:
        print(f"report: {write_report(out, args.last_k)}")
    return 0


# ---- probe -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeThresholds:
    """What the probe's gates require."""

    min_hack_rate: float = 0.3        # gate 2: least vanilla hack rate (mean of the last k steps)
    last_k: int = 5                   # gate 2: steps at the end of the vanilla run to average
    min_cos_margin: float = 0.0       # gate 3: mean cos_in − mean cos_in_null must exceed this


def probe_verdict(verify_result: dict | None, vanilla_metrics: list[dict] | None,
                  projected_metrics: list[dict] | None,
                  thresholds: ProbeThresholds = ProbeThresholds()) -> tuple[bool, int | None, str]:
    """Decide the gates in order -> (passed, first failed gate or None, one-line message).
    An input that is None means its stage did not run, which fails that gate."""
    if verify_result is None:
        return False, 1, "gate 1 (held-out check of V) did not run"
    if not verify_result.get("pass"):
        return False, 1, (f"gate 1 (held-out check failed: frac>0 {verify_result.get('frac_pos', 0):.3f}, "
                          f"median {verify_result.get('median', 0):+.3f} vs null "
                          f"{verify_result.get('null_cos', 0):.3f})")
    if not vanilla_metrics:
        return False, 2, "gate 2 (vanilla run logged no steps)"
    hack = window_mean(vanilla_metrics, "hack_rate", thresholds.last_k)
    if hack is None or hack < thresholds.min_hack_rate:
        shown = "none logged" if hack is None else f"{hack:.2f}"
        return False, 2, (f"gate 2 (vanilla hack rate {shown} < {thresholds.min_hack_rate:.2f} "
                          f"over the last {thresholds.last_k} steps)")
    if not projected_metrics:
        return False, 3, "gate 3 (projected run logged no steps)"
    # A random V of the same m also "fires" (frac_fired ≈ 0.5) and removes ≈ sqrt(m / 2r) of every
    # gradient, so gate 3 asks for more than firing: the real V must remove more than the null V does
    # on the same gradients.
    real, null = window_mean(projected_metrics, "cos_in"), window_mean(projected_metrics, "cos_in_null")
    if real is None or null is None or real - null <= thresholds.min_cos_margin:
        return False, 3, (f"gate 3 (projected mean cos_in {_show(real)} does not exceed the random V's "
                          f"cos_in_null {_show(null)} by more than {thresholds.min_cos_margin:g})")
    return True, None, (f"all gates passed (V check passed; vanilla hack rate {hack:.2f} >= "
                        f"{thresholds.min_hack_rate:.2f}; projected cos_in {real:.3f} > random V's "
                        f"cos_in_null {null:.3f})")


def probe(cfg: TrainConfig, out: Path, thresholds: ProbeThresholds, progress: bool = True) -> dict:
    """Run the gates in order, stopping at the first failure; writes and returns DIR/probe.json."""
    out.mkdir(parents=True, exist_ok=True)
    v_path = Path(cfg.v_hack).resolve() if cfg.v_hack else (out / V_HACK).resolve()
    if cfg.v_hack and not v_path.is_file():
        raise UserError(f"--v-hack {v_path} does not exist (leave it out to extract into {out / V_HACK})")
    record = {"config": json.loads(cfg.to_json()), "thresholds": asdict(thresholds), "v_hack": str(v_path)}
    stages: dict = {"verify": None, "vanilla": None, "projected": None}

    def decide() -> tuple[bool, int | None, str]:
        passed, gate, message = probe_verdict(stages["verify"], stages["vanilla"], stages["projected"],
                                              thresholds)
        record.update(passed=passed, failed_gate=gate, message=message)
        runio.write_atomic(out / "probe.json", (json.dumps(record, indent=2) + "\n").encode())
        return passed, gate, message

    print("=== gate 1: extract V and check it on held-out pairs")
    stages["verify"] = prepare_v_hack(cfg, v_path, verify=True, progress=progress)
    record["gate1"] = stages["verify"]
    print(verify_line(stages["verify"]))
    for gate, arm in ((2, "vanilla"), (3, "projected")):
        passed, failed, _ = decide()
        if failed is not None and failed < gate:
            return record
        run_cfg = replace(cfg, arm=arm, v_hack=str(v_path))
        run_dir = out / f"{arm}_s{cfg.seed}"
        print(f"=== gate {gate}: {arm} run")
        ensure_run(run_cfg, run_dir, progress)
        stages[arm] = runio.train_rows(runio.read_jsonl(run_dir / runio.METRICS))
        if arm == "vanilla":
            record["gate2"] = {"run": str(run_dir), "steps": len(stages[arm]), "last_k": thresholds.last_k,
                               "hack_rate_last_k": window_mean(stages[arm], "hack_rate", thresholds.last_k),
                               "pass_rate_last_k": window_mean(stages[arm], "pass_rate", thresholds.last_k)}
            print(f"vanilla hack rate over the last {thresholds.last_k} steps: "
                  f"{_show(record['gate2']['hack_rate_last_k'])} (threshold {thresholds.min_hack_rate:.2f})")
        else:
            record["gate3"] = {"run": str(run_dir), "steps": len(stages[arm]),
                               "cos_in_mean": window_mean(stages[arm], "cos_in"),
                               "cos_in_null_mean": window_mean(stages[arm], "cos_in_null"),
                               "cos_out_mean": window_mean(stages[arm], "cos_out"),
                               "frac_fired_mean": window_mean(stages[arm], "frac_fired")}
            g3 = record["gate3"]
            print(f"projected mean cos_in {_show(g3['cos_in_mean'])} (real V) vs cos_in_null "
                  f"{_show(g3['cos_in_null_mean'])} (a random V of the same m, same gradients); "
                  f"cos_out {_show(g3['cos_out_mean'])}, frac_fired {_show(g3['frac_fired_mean'])}")
    decide()
    return record


def _show(x: float | None) -> str:
    return "none logged" if x is None else f"{x:.3f}"


def _cmd_probe(args) -> int:
    cfg = config_from_args(args, preset(args.preset))
    record = probe(cfg, Path(args.out), ProbeThresholds(args.min_hack_rate, args.last_k))
    print(f"VERDICT: PASS, {record['message']}" if record["passed"] else f"VERDICT: FAIL at {record['message']}")
    print(f"wrote {Path(args.out) / 'probe.json'}")
    return 0 if record["passed"] else 1


# ---- demo ------------------------------------------------------------------------------------
def _cmd_demo(args) -> int:
    t0 = time.time()
    base = config_from_args(args, preset("smoke"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    v_path = (out / V_HACK).resolve()
    given = overrides_of(args)
    print(f"demo: smoke preset on {base.model} ({base.device}), {base.steps} steps, arms "
          f"{', '.join(DEMO_ARMS)}, seed {', '.join(map(str, DEMO_SEEDS))}"
          + (f"; overrides {given}" if given else ""))
    print("=== 1/3 extract V and check it on held-out pairs")
    result = prepare_v_hack(base, v_path, verify=True)
    print(verify_line(result) + ("" if result["pass"] else
                                 "  (the demo goes on: the embedded tiny model is random-weight)"))
    runio.write_atomic(out / "verify.json", (json.dumps(result, indent=2) + "\n").encode())
    print("=== 2/3 sweep")
    plan = SweepPlan(preset="smoke", arms=list(DEMO_ARMS), seeds=list(DEMO_SEEDS), overrides=given,
                     v_hack=str(v_path), out=str(out))
    sweep(plan, base)
    print("=== 3/3 report")
    report = write_report(out, args.last_k)
    print(report.read_text())
    print(f"demo done in {time.time() - t0:.0f}s.")
    print(f"results: {report}")
    print(f"plots:   {', '.join(str(out / n) for n in ('hack_rate.png', 'pass_rate.png', 'cosine.png'))}")
    return 0


# ---- CLI -------------------------------------------------------------------------------------
def add_commands(sub) -> None:
    from projected_grpo import report

    presets = ", ".join(PRESETS)
    p = sub.add_parser("probe", help="gated probe: V check → vanilla hacks → projected fires; exit 1 on a fail")
    p.add_argument("--preset", default="smoke", help=f"one of {presets}")
    p.add_argument("--out", required=True, help="probe directory")
    p.add_argument("--min-hack-rate", type=float, default=ProbeThresholds.min_hack_rate,
                   help="gate 2: least vanilla hack rate over the last k steps")
    p.add_argument("--last-k", type=int, default=ProbeThresholds.last_k, help="gate 2's window")
    add_config_flags(p, skip=("arm",))
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("sweep", help="every (arm, seed) with one shared V, resumable, then the report")
    p.add_argument("--preset", default="smoke", help=f"one of {presets}")
    p.add_argument("--arms", default="vanilla,projected,rebound,random", help=f"comma list of {', '.join(ARMS)}")
    p.add_argument("--seeds", default="41,42,43", help="comma list of seeds")
    p.add_argument("--out", required=True, help="sweep directory (run dirs go in it)")
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

    report.add_commands(sub)

