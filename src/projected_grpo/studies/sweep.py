"""`pgrpo sweep`: every (arm variant, seed) run of a study, sequentially in this process or as a queue
of child processes pinned to GPUs; resumable; then the report.

    pgrpo sweep --preset P --arms A,B --seeds 41,42 --out DIR [--gpus N [--runs-per-gpu k]]

Plan. Each name in --arms is a plain arm (config.ARMS) or an *arm variant*: a base arm plus config
overrides (VARIANTS below, or ad hoc with --variant NAME=ARM:field=value,...). Run dirs are
DIR/{name}_s{seed}. Every run reads one shared split (DIR/split.json) and one shared V
(DIR/v_hack.safetensors, or --v-hack); a variant that changes what V is (V_FIELDS) gets its own
DIR/v_hack_{name}.safetensors. DIR/sweep.json records the plan, variants resolved.

Execution.
  --gpus 0 (default)  one run after another in this process (`ensure_run`); a failing run stops the sweep.
  --gpus N            the shared V file(s) are extracted first in a child process (so this process never
                      holds a CUDA context); then a queue (sweep_pool.py) runs every run as its own child,
                      `python -m projected_grpo.studies.sweep_worker`, with CUDA_VISIBLE_DEVICES=<one GPU>, at most
                      k per GPU at once, output in DIR/logs/{name}.log. A failed run is reported and the
                      others go on; see sweep_pool.py for retries and Ctrl-C.
  --launcher slurm|ray  every run a job of a Slurm array (submitit) or a Ray task; see launch.py and
                      launchers.py (the same resume, retry and log rules as the --gpus queue).
  --fleet R           each arm's seeds in fleets of R (the last may be smaller): one process per fleet, its
                      runs stepped together on one model copy (training/lockstep.py), with row noise; in
                      this process, or one queued child per fleet (DIR/logs/{name}_s{first}-s{last}.log).
Resuming is the same command again: finished runs are skipped, cut-off runs resume from their
checkpoint, missing ones start. A finished run under another config is refused, naming the fields.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from projected_grpo.training import runio, runlock
from projected_grpo.config import ARMS, CONFIG_FIELDS, TrainConfig, parse_value
from projected_grpo.errors import UserError
from projected_grpo.studies.sweep_pool import LOGS
from projected_grpo.training.lockstep import can_fleet

V_HACK = "v_hack.safetensors"
SPLIT = "split.json"                  # the sweep's split file, beside sweep.json

# Arm variants: name -> (base arm, config overrides). 47 = the training pairs of the bundled pair
# file, so V spans every training pair difference (extraction caps m at the pairs it kept).
VARIANTS: dict[str, tuple[str, dict]] = {
    "projected_update": ("projected", {"project_target": "update"}),
    "projected_m47": ("projected", {"vhack_m": 47}),
}
# Fields that change what V is: a variant overriding one gets its own V file.
V_FIELDS = ("dtype", "targets", "enable_thinking", "vhack_m", "vhack_modes")
# Fields every run of a sweep shares (the split and the V file depend on them, or the sweep sets them).
SHARED_FIELDS = ("model", "problems", "n_problems", "max_prompt_tokens", "eval_problems", "pairs",
                 "split_file", "v_hack", "arm", "seed")
NAME = re.compile(r"[a-z][a-z0-9_]*")
NOT_FINISHED = ("failed", "gave up", "busy")   # what sweep() returns for a run it did not finish


# ---- the shared artifacts ---------------------------------------------------------------------
def prepare_v_hack(cfg: TrainConfig, path: Path, verify: bool, progress: bool = True) -> dict | None:
    """Extract V into `path` from cfg.pairs / cfg.vhack_m unless it exists; with `verify`, run the
    held-out check (per-module table beside V) and return its summary dict (no per-module rows)."""
    from projected_grpo.directions import vhack
    from projected_grpo.directions.pairs import load_pairs, parse_modes
    from projected_grpo.training.policy import load_policy
    from projected_grpo.directions.verify import verify_v_hack, write_table

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


def prepare_split(cfg: TrainConfig, path: Path) -> Path:
    """Derive the sweep's one split (from cfg.seed) into `path` unless it exists; every run of the sweep
    reads it, so all arms and seeds train and are evaluated on the same problems. Needs the tokenizer
    only (prompt lengths), never the model."""
    from projected_grpo.training import splits
    from projected_grpo.models import load_tokenizer

    if not path.is_file():
        split = splits.derive(splits.load_pool(cfg, load_tokenizer(cfg.model)),
                              splits.pair_problem_ids(cfg.pairs), cfg.eval_problems, cfg.seed)
        runio.write_atomic(path, split.to_json().encode())
        print(split.summary())
    return path.resolve()


# ---- one run, resumably -----------------------------------------------------------------------
def check_run(cfg: TrainConfig, run_dir: Path) -> str:
    """run_state, refusing a dir that holds a run under another config (naming the fields)."""
    state = runio.run_state(run_dir, cfg.steps)
    if state != "missing":
        diff = runio.config_diff(json.loads((run_dir / runio.CONFIG).read_text()), json.loads(cfg.to_json()))
        if diff:
            raise UserError(f"{run_dir} holds a run with another config ({', '.join(diff)} differ); "
                            "move it away or choose another --out")
    return state


def ensure_run(cfg: TrainConfig, run_dir: Path, progress: bool = True) -> str:
    """Skip, resume or start one run; returns what it did: skipped | resumed | started."""
    from projected_grpo.training import train as train_module

    state = check_run(cfg, run_dir)
    if state == "finished":
        print(f"[skip]   {run_dir} already finished ({cfg.steps} steps)")
        return "skipped"
    print(f"[{'resume' if state == 'unfinished' else 'start'}]  {cfg.arm} seed {cfg.seed} -> {run_dir}")
    train_module.train(cfg, run_dir, resume=state == "unfinished", progress=progress)
    return "resumed" if state == "unfinished" else "started"


# ---- the plan ----------------------------------------------------------------------------------
@dataclass
class SweepPlan:
    """What one sweep runs; written to DIR/sweep.json."""

    preset: str                       # preset name the runs start from
    arms: list[str]                   # arm or variant names, in run order (run dirs {name}_s{seed})
    seeds: list[int]                  # seeds, each arm runs every seed
    overrides: dict                   # config fields set on the command line
    v_hack: str                       # the V artifact every run shares (unless its variant changes V)
    out: str                          # sweep directory
    variants: dict = field(default_factory=dict)  # ad hoc variants: name -> {"arm", "overrides"}
    gpus: int = 0                     # 0 = sequential in this process; N = a queue over N GPUs
    runs_per_gpu: int = 1             # k: runs at once on one GPU
    max_attempts: int = 2             # failed attempts after which a run is skipped
    seeds_for: dict = field(default_factory=dict)  # arm/variant name -> its own seeds (else `seeds`)
    launcher: str = "local"           # local (this process / the --gpus queue) | slurm | ray (launchers.py)
    launch: dict = field(default_factory=dict)  # the cluster launcher's options (launchers.LaunchOptions)
    fleet: int = 1                    # an arm's seeds in fleets of this many, one process each (lockstep.py)


@dataclass
class RunSpec:
    """One planned run: its dir name ({name}_s{seed}), full config, and the V file it needs."""

    name: str
    cfg: TrainConfig
    run_dir: Path

    @property
    def members(self) -> list[RunSpec]:
        """The runs one worker runs: this one (a FleetSpec: several)."""
        return [self]


@dataclass
class FleetSpec:
    """Runs of one arm stepped together in one process (training/lockstep.py): its `members`; `cfg` and
    `run_dir` are the first member's (what a queue prints and pins)."""

    name: str
    members: list[RunSpec]

    @property
    def cfg(self) -> TrainConfig:
        return self.members[0].cfg

    @property
    def run_dir(self) -> Path:
        return self.members[0].run_dir


def resolve(name: str, ad_hoc: dict) -> tuple[str, dict]:
    """Arm or variant name -> (base arm, config overrides)."""
    if name in ad_hoc:
        return ad_hoc[name]["arm"], dict(ad_hoc[name]["overrides"])
    if name in VARIANTS:
        arm, overrides = VARIANTS[name]
        return arm, dict(overrides)
    if name in ARMS:
        return name, {}
    raise UserError(f"--arms: unknown arm or variant {name!r}; choose from arms {', '.join(ARMS)}, "
                    f"variants {', '.join(VARIANTS)}, or define it with --variant {name}=ARM:field=value")


def v_path_for(plan: SweepPlan, name: str, overrides: dict) -> Path:
    """The V file of one arm variant: its own when it changes V, else the plan's shared one."""
    changed = sorted(set(overrides) & set(V_FIELDS))
    if not changed:
        return Path(plan.v_hack).resolve()
    if plan.v_hack != str((Path(plan.out) / V_HACK).resolve()):
        raise UserError(f"variant {name} changes V ({', '.join(changed)}), so it cannot share --v-hack "
                        f"{plan.v_hack}; leave --v-hack out to extract every V into {plan.out}")
    return (Path(plan.out) / f"v_hack_{name}.safetensors").resolve()


def seeds_of(plan: SweepPlan, name: str) -> list[int]:
    """The seeds one arm or variant runs: its --seeds-for entry, else --seeds."""
    return list(plan.seeds_for.get(name, plan.seeds))


def plan_runs(plan: SweepPlan, base: TrainConfig, split_file: str = "") -> list[RunSpec]:
    """Every (variant, seed) run of the plan with its config (validated), seed-major: every arm's
    first seed, then every arm's second, ... so a sweep cut off part-way leaves whole seeds of
    every arm rather than every seed of the first arms."""
    specs = []
    for name in plan.arms:
        arm, overrides = resolve(name, plan.variants)
        v_path = v_path_for(plan, name, overrides)
        seeds = seeds_of(plan, name)
        for rank, seed in enumerate(seeds):
            cfg = replace(base, **overrides, arm=arm, seed=seed, v_hack=str(v_path), split_file=split_file)
            if plan.fleet > 1:           # the size of its fleet, recorded; every run of the sweep draws row noise
                first = rank - rank % plan.fleet
                cfg = replace(cfg, row_noise=True)
                if can_fleet(cfg):       # routing runs alone (lockstep.can_fleet)
                    cfg = replace(cfg, fleet_runs=len(seeds[first:first + plan.fleet]))
            cfg.validate()
            specs.append((rank, RunSpec(f"{name}_s{seed}", cfg, Path(plan.out) / f"{name}_s{seed}")))
    return [spec for _, spec in sorted(specs, key=lambda x: x[0])]   # stable: arm order within a rank


def fleets(plan: SweepPlan, specs: list[RunSpec]) -> list[RunSpec | FleetSpec]:
    """The runs as they execute: with --fleet R, each arm's seeds in order in fleets of R (the last may be
    smaller; a fleet of one runs alone), fleet by fleet in arm order; else `specs` as they are."""
    if plan.fleet <= 1:
        return list(specs)
    by_name = {s.name: s for s in specs}
    out: list[tuple[int, int, RunSpec | FleetSpec]] = []
    for a, name in enumerate(plan.arms):
        seeds = seeds_of(plan, name)
        size = plan.fleet if can_fleet(by_name[f"{name}_s{seeds[0]}"].cfg) else 1
        for i in range(0, len(seeds), size):
            members = [by_name[f"{name}_s{seed}"] for seed in seeds[i:i + size]]
            out.append((i, a, members[0] if len(members) == 1 else
                        FleetSpec(f"{name}_s{seeds[i]}-s{seeds[i + len(members) - 1]}", members)))
    return [spec for _, _, spec in sorted(out, key=lambda x: (x[0], x[1]))]


def ensure_fleet(spec: FleetSpec, progress: bool = True) -> str:
    """Skip a fleet whose runs all finished, else run the unfinished ones as one fleet (each resumed or
    started as its dir says); -> skipped | resumed | started. A failed run raises after the others end."""
    from projected_grpo.training.lockstep import train_fleet

    states = [check_run(m.cfg, m.run_dir) for m in spec.members]
    todo = [(m, st) for m, st in zip(spec.members, states) if st != "finished"]
    if not todo:
        print(f"[skip]   {spec.name} already finished")
        return "skipped"
    print(f"[fleet]  {spec.cfg.arm} seeds {','.join(str(m.cfg.seed) for m, _ in todo)} -> "
          f"{', '.join(str(m.run_dir) for m, _ in todo)}")
    result = train_fleet([m.cfg for m, _ in todo], [m.run_dir for m, _ in todo],
                         resume=[st == "unfinished" for _, st in todo], progress=progress)
    print(f"[fleet]  {spec.name}: meetings {result.meetings}, seconds in them {result.seconds}")
    for r, err in sorted(result.errors.items()):
        print(f"[FAILED] {todo[r][0].name}: {type(err).__name__}: {err}")
    if result.errors:
        raise next(iter(result.errors.values()))
    return "resumed" if any(st == "unfinished" for _, st in todo) else "started"


def v_files(plan: SweepPlan, base: TrainConfig) -> dict[Path, TrainConfig]:
    """The V files the plan needs -> the config to extract each from (base + the variant's overrides)."""
    need: dict[Path, TrainConfig] = {}
    for name in plan.arms:
        _, overrides = resolve(name, plan.variants)
        path = v_path_for(plan, name, overrides)
        need.setdefault(path, replace(base, **{k: v for k, v in overrides.items() if k in V_FIELDS}))
    return need


def plan_record(plan: SweepPlan) -> dict:
    """sweep.json: the plan, and every name of --arms resolved to its base arm, overrides and V file."""
    resolved = {}
    for name in plan.arms:
        arm, overrides = resolve(name, plan.variants)
        resolved[name] = {"arm": arm, "overrides": overrides, "v_hack": str(v_path_for(plan, name, overrides))}
    return asdict(plan) | {"resolved": resolved}


def parse_variant(text: str) -> tuple[str, dict]:
    """`NAME=ARM:field=value,...` -> (NAME, {"arm", "overrides"}), values typed as the config field."""
    head, _, body = text.partition(":")
    name, _, arm = head.partition("=")
    name, arm = name.strip(), arm.strip()
    where = f"--variant {text!r}"
    if not NAME.fullmatch(name) or not arm:
        raise UserError(f"{where}: expected NAME=ARM:field=value,... with NAME in [a-z0-9_]")
    if name in ARMS or name in VARIANTS:
        raise UserError(f"{where}: {name} is already an arm or a built-in variant; choose another name")
    if arm not in ARMS:
        raise UserError(f"{where}: unknown base arm {arm!r}; choose from {', '.join(ARMS)}")
    overrides = {}
    for item in filter(None, (x.strip() for x in body.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in CONFIG_FIELDS:
            raise UserError(f"{where}: {item!r} is not field=value with a config field")
        if key in SHARED_FIELDS:
            raise UserError(f"{where}: {key} is shared by every run of a sweep (the split or V depend on "
                            "it); run another sweep for it")
        try:
            overrides[key] = parse_value(key, value)
        except UserError as err:
            raise UserError(f"{where}: {key}: {err}") from err
    return name, {"arm": arm, "overrides": overrides}


def parse_list(text: str, kind: type, what: str) -> list:
    items = [x.strip() for x in text.split(",") if x.strip()]
    try:
        values = [kind(x) for x in items]
    except ValueError as err:
        raise UserError(f"--{what}: {err}") from err
    if not values:
        raise UserError(f"--{what} is empty")
    if len(set(values)) != len(values):
        raise UserError(f"--{what}: {text} names an item twice")
    return values


# ---- the sweep -------------------------------------------------------------------------------
def sweep(plan: SweepPlan, base: TrainConfig, progress: bool = True) -> dict[str, str]:
    """Run every (variant, seed) of the plan; -> {run dir name: what happened}: skipped | resumed |
    started, and with --gpus also failed | gave up | busy. Sequential runs raise on the first failure.
    One sweep at a time writes DIR (its lock, runlock.py), and each run has its own writer's lock."""
    with runlock.held(Path(plan.out), "sweep"):
        return _sweep(plan, base, progress)


def _sweep(plan: SweepPlan, base: TrainConfig, progress: bool) -> dict[str, str]:
    if plan.launcher == "local":
        return _sweep_with(plan, base, progress, None)
    from projected_grpo.studies.launch import make_launcher
    from projected_grpo.studies.launchers import LaunchOptions

    launcher = make_launcher(plan.launcher, LaunchOptions(**plan.launch), Path(plan.out))
    try:
        return _sweep_with(plan, base, progress, launcher)
    finally:
        launcher.close()


def _sweep_with(plan: SweepPlan, base: TrainConfig, progress: bool, launcher) -> dict[str, str]:
    out = Path(plan.out)
    plan_runs(plan, base)                                  # refuse a bad variant before any work
    needed = v_files(plan, base)
    for path, v_cfg in needed.items():
        if path.is_file():
            continue
        if path.parent != out.resolve():
            raise UserError(f"--v-hack {path} does not exist")
        if launcher is not None:
            from projected_grpo.studies.launch import extract

            extract(launcher, v_cfg, path, out)
        elif plan.gpus:
            extract_in_child(v_cfg, path, out)
        else:
            prepare_v_hack(v_cfg, path, verify=False, progress=progress)
    record = plan_record(plan)
    if (out / "sweep.json").is_file():              # the job ids of earlier submissions (launch.record_jobs)
        record |= {k: v for k, v in json.loads((out / "sweep.json").read_text()).items() if k == "jobs"}
    runio.write_atomic(out / "sweep.json", (json.dumps(record, indent=2) + "\n").encode())
    split_file = str(Path(base.split_file).resolve() if base.split_file else prepare_split(base, out / SPLIT))
    specs = plan_runs(plan, base, split_file)
    if launcher is not None:
        from projected_grpo.studies.launch import launch_runs

        return launch_runs(specs, out, launcher, plan.max_attempts, check_run)
    units = fleets(plan, specs)
    if plan.gpus:
        from projected_grpo.studies.sweep_pool import gpu_ids, run_queue

        return run_queue(units, out, gpu_ids(plan.gpus), plan.runs_per_gpu, plan.max_attempts, check_run)
    done = {}
    for i, spec in enumerate(units, start=1):
        print(f"--- run {i}/{len(units)}: {spec.name}")
        t0 = time.time()
        done[spec.name] = (ensure_fleet(spec, progress) if isinstance(spec, FleetSpec)
                           else ensure_run(spec.cfg, spec.run_dir, progress))
        print(f"    {done[spec.name]} in {time.time() - t0:.0f}s")
    return done


def extract_in_child(cfg: TrainConfig, path: Path, out: Path) -> None:
    """Extract one V file in a child process on the first GPU, so this process never holds a CUDA
    context while the runs go. Output in DIR/logs/extract_{stem}.log."""
    from projected_grpo.studies.sweep_pool import gpu_ids, log_tail

    logs = out / LOGS
    logs.mkdir(exist_ok=True)
    spec, log = logs / f"extract_{path.stem}.run.json", logs / f"extract_{path.stem}.log"
    runio.write_atomic(spec, json.dumps({"config": asdict(cfg), "v_hack": str(path)}).encode())
    print(f"[extract] {path.name} (m={cfg.vhack_m}) in a child process, log {log}")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu_ids(1)[0]), PYTHONUNBUFFERED="1")
    with open(log, "ab") as f:
        code = subprocess.call([sys.executable, "-m", "projected_grpo.studies.sweep_worker", "extract", str(spec)],
                               stdout=f, stderr=subprocess.STDOUT, env=env)
    if code != 0 or not path.is_file():
        raise UserError(f"extracting {path} failed (exit {code}); log {log}:\n{log_tail(log)}")
