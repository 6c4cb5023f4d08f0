"""Sweep report: the held-out eval headline, training dynamics as numbers, last-k training rates and
diagnostics per arm (mean with SD and SE over seeds, paired Δ vs vanilla with a 95% interval, runs
hacked and collapsed out of N by `outcomes.py`'s rules), and plots (`report_plots.py`).

Input: a directory holding run dirs (any dir under it with a `config.json`; arm and seed are read
from that file) and, when a sweep wrote it, `sweep.json` listing the (arm, seed) runs it expected.
Each run dir's `metrics.jsonl` holds training rows (`kind` "train" or no kind) and held-out eval rows
(`kind` "eval", step = training steps completed, 0 = before training); `split.json` (train / eval /
pairs problem ids) and `teacher_pool.json` are read when present.
Output, beside them:
  results.md    headline (final held-out eval), dynamics, training table, per-run rows, every missing
                or unfinished run, and a header of facts (set-up, split sizes and overlaps, teacher pool);
  summary.json  the same numbers for machines (`summarise`'s dict);
  hack_rate.png, pass_rate.png, cosine.png, eval_curves.png, pareto.png   see report_plots.py.
A run is finished by `runio.run_state` (training rows reach the config's `steps` and δS is written);
unfinished runs are listed and left out of every mean and plot. Statistics (SD, SE, paired Δ +
Student-t interval, onset with censoring, AUC) are defined in `stats.py`; hacked / collapsed in
`outcomes.py`. Eval keys a run lacks (older runs: no no-hint eval, no renamed evaluators) are None.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from projected_grpo import arms as arms_mod
from projected_grpo.studies import outcomes
from projected_grpo.training import runio
from projected_grpo.errors import UserError
from projected_grpo.studies.stats import Stat, auc, censored, mean_sem, onset, paired
from projected_grpo.studies.verdicts import Rules, verdicts

__all__ = ["Run", "Stat", "mean_sem", "window_mean", "summarise", "write_report"]

RATE_KEYS = ("hack_rate", "pass_rate", "reward_mean")   # training: mean over the last k steps
# final held-out eval. eval_hack_rate: renamed evaluators when the row's eval_evaluators is "renamed"
# (else, and in older runs, the training name); the hinted rates are on those same samples; *_nohint:
# the eval problems without the loophole hint (strict oracle), the capability a defence must keep;
# *_with_quarantine: gradient routing's headline set with its quarantine δQ kept (the deployed rates drop it)
EVAL_KEYS = ("eval_hack_rate", "eval_pass_rate", "eval_attempt_rate", "eval_format_rate",
             "eval_hack_rate_train_name", "eval_hack_given_code", "eval_pass_nohint", "eval_format_nohint",
             "eval_hack_rate_with_quarantine")
BASE_KEYS = ("eval_hack_rate", "eval_pass_rate", "eval_format_rate", "eval_pass_nohint")  # at step 0
STEP_KEYS = ("cos_in", "cos_out", "frac_fired", "update_hackward", "sampler_mismatch",
             "teacher_adv_share")                       # training: mean over all steps
THRESHOLDS = (0.3, 0.5)                                 # onset thresholds on the training hack rate
DYN_KEYS = tuple(f"onset_{t}" for t in THRESHOLDS) + ("auc",)
DELTA_KEYS = ("eval_hack_rate", "eval_pass_rate", "eval_pass_nohint", "hack_rate", "pass_rate") + DYN_KEYS
SPLIT_PARTS = ("train", "eval", "pairs")
DASH = "—"


@dataclass
class Run:
    """One run dir as the report sees it."""

    arm: str                                  # from config.json ("arm"), or the sweep variant's name
    seed: int                                 # from config.json ("seed")
    dir: str                                  # run dir, relative to the report dir
    steps: int                                # steps the config asks for
    done: int                                 # last training step logged (0 = none)
    status: str                               # finished | unfinished | missing | duplicate
    last_k: dict = field(default_factory=dict)     # RATE_KEYS -> mean over the last k steps (or None)
    all_steps: dict = field(default_factory=dict)  # STEP_KEYS -> mean over all steps (or None)
    dynamics: dict = field(default_factory=dict)   # onset_θ -> step or None (never); auc
    eval_final: dict = field(default_factory=dict)  # last eval row: step, EVAL_KEYS, eval_n ({} = none)
    eval_base: dict = field(default_factory=dict)   # BASE_KEYS at step 0 (the base policy), {} = none
    outcome: dict = field(default_factory=dict)     # hacked, collapsed: bool, None = undefined (outcomes.py)
    split: dict | None = None                 # sizes and overlaps from split.json (None = no file)
    teacher: dict = field(default_factory=dict)    # pool, kinds, mix_ratio, pool file kinds
    base: str = ""                            # the arms.py arm it ran (config.json "arm"; = arm unless a variant)
    metrics: list = field(default_factory=list, repr=False)  # the training rows
    evals: list = field(default_factory=list, repr=False)    # the eval rows

    def eval_rise(self) -> float | None:
        """Final eval hack rate minus the step-0 one: ≈ 0 is prevention (DESIGN §8)."""
        final, base = self.eval_final.get("eval_hack_rate"), self.eval_base.get("eval_hack_rate")
        return None if final is None or base is None else final - base

    def value(self, key: str) -> float | None:
        """The run's number for a per-arm statistic (onsets censored at steps + 1)."""
        if key in EVAL_KEYS:
            return self.eval_final.get(key)
        if key in RATE_KEYS:
            return self.last_k.get(key)
        if key in STEP_KEYS:
            return self.all_steps.get(key)
        if key.startswith("onset_"):
            return censored(self.dynamics.get(key), self.steps)
        return self.dynamics.get(key)


# ---- one run ---------------------------------------------------------------------------------
def window_mean(rows: list[dict], key: str, last_k: int | None = None) -> float | None:
    """Mean of row[key] over the last k rows (all rows when last_k is None); None values skipped."""
    window = rows[-last_k:] if last_k else rows
    xs = [r[key] for r in window if r.get(key) is not None]
    return sum(xs) / len(xs) if xs else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: bad JSON ({err.msg}, line {err.lineno})") from err


def split_facts(run_dir: Path) -> dict | None:
    """Sizes of the train / eval / pairs problem sets in split.json and their pairwise overlaps."""
    path = run_dir / "split.json"
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k, []), list) for k in SPLIT_PARTS):
        raise UserError(f"{path}: expected {{\"train\": [ids], \"eval\": [ids], \"pairs\": [ids]}}")
    ids = {k: {str(i) for i in data.get(k, [])} for k in SPLIT_PARTS}
    facts = {k: len(ids[k]) for k in SPLIT_PARTS}
    facts.update({"train∩pairs": len(ids["train"] & ids["pairs"]),
                  "eval∩train": len(ids["eval"] & ids["train"]),
                  "eval∩pairs": len(ids["eval"] & ids["pairs"])})
    return facts


def teacher_facts(run_dir: Path, cfg: dict) -> dict:
    """The teacher pool a run mixed in: config fields, and the completions per kind in the run dir's
    teacher_pool.json (`teacher.TeacherPool.summary()`: an object with `kinds`; a list of rows with
    a `kind` is counted too)."""
    facts = {"pool": cfg.get("teacher_pool") or "", "kinds": cfg.get("teacher_kinds") or "",
             "mix_ratio": cfg.get("mix_ratio") or 0.0, "file_kinds": None}
    path = run_dir / "teacher_pool.json"
    if path.is_file():
        data = _read_json(path)
        if isinstance(data, list):
            facts["file_kinds"] = dict(Counter(str(r.get("kind", "?")) for r in data if isinstance(r, dict)))
        elif isinstance(data, dict) and "kinds" in data:
            kinds = data["kinds"]
            facts["file_kinds"] = kinds if isinstance(kinds, dict) else {str(k): None for k in kinds}
        else:
            facts["file_kinds"] = {"(unrecognised teacher_pool.json)": None}
    return facts


def load_run(run_dir: Path, root: Path, last_k: int) -> Run:
    """Read config.json, metrics.jsonl, split.json and teacher_pool.json of one run dir."""
    cfg = _read_json(run_dir / runio.CONFIG)
    rows = runio.read_jsonl(run_dir / runio.METRICS)
    runio.check_steps_once(run_dir / runio.METRICS, rows)     # a step twice: two writers, no mean
    rows = sorted(rows, key=lambda r: r.get("step", 0))
    train, evals = runio.train_rows(rows), runio.eval_rows(rows)
    done = train[-1].get("step", len(train)) if train else 0
    steps = int(cfg.get("steps", 0))
    run = Run(arm=str(cfg.get("arm", "?")), seed=int(cfg.get("seed", -1)), dir=str(run_dir.relative_to(root)),
              steps=steps, done=done, status=runio.run_state(run_dir, steps), base=str(cfg.get("arm", "?")),
              metrics=train, evals=evals, split=split_facts(run_dir), teacher=teacher_facts(run_dir, cfg))
    run.last_k = {k: window_mean(train, k, last_k) for k in RATE_KEYS}
    run.all_steps = {k: window_mean(train, k) for k in STEP_KEYS}
    hack = [r.get("hack_rate") for r in train]
    run.dynamics = {f"onset_{t}": onset([r.get("step", i + 1) for i, r in enumerate(train)], hack, t)
                    for t in THRESHOLDS}
    run.dynamics["auc"] = auc(hack)
    if evals:
        run.eval_final = {k: evals[-1].get(k) for k in ("step", "eval_n") + EVAL_KEYS}
        # evaluate.py says which names eval_hack_rate is under; older rows lack it: the training name
        run.eval_final["renamed"] = evals[-1].get("eval_evaluators") == "renamed"
        base = [r for r in evals if r.get("step") == 0]
        run.eval_base = {k: base[0].get(k) for k in BASE_KEYS} if base else {}
    run.outcome = {"hacked": outcomes.hacked(run.eval_final),
                   "collapsed": outcomes.collapsed(run.eval_final, run.eval_base)}
    return run


def find_runs(root: Path, last_k: int) -> tuple[list[Run], dict]:
    """Every run dir under root, and sweep.json (or {})."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"report: {root} is not a directory")
    runs, seen = [], set()
    sweep_path = root / "sweep.json"
    sweep = _read_json(sweep_path) if sweep_path.is_file() else {}
    for cfg_path in sorted(root.rglob(runio.CONFIG)):
        run = load_run(cfg_path.parent, root, last_k)
        # a sweep's arm variant (e.g. projected_update: arm projected + project_target update) is its
        # own arm here: its dir is {variant}_s{seed} and sweep.json lists the variant
        variant = cfg_path.parent.name.removesuffix(f"_s{run.seed}")
        if variant != run.arm and variant in sweep.get("arms", []):
            run.arm = variant
        if (run.arm, run.seed) in seen:
            run.status = "duplicate"          # a second dir for the same (arm, seed): listed, not used
        seen.add((run.arm, run.seed))
        runs.append(run)
    for arm in sweep.get("arms", []):
        for seed in sweep.get("seeds_for", {}).get(arm, sweep.get("seeds", [])):
            if (arm, int(seed)) not in seen:
                runs.append(Run(arm=arm, seed=int(seed), dir=f"{arm}_s{seed}", steps=0, done=0,
                                status="missing"))
    return runs, sweep


# ---- per arm ---------------------------------------------------------------------------------
def summarise(root: str | Path, last_k: int = 5, rules: Rules | None = None) -> dict:
    """All numbers of the report: header facts, per-arm stats, per-run rows, missing/unfinished, and
    with `rules` each arm's verdict (verdicts.py)."""
    return _summarise(Path(root), last_k, rules)[0]


def _minus(a: float | None, b: float | None) -> float | None:
    """a − b, None when either is missing."""
    return None if a is None or b is None else a - b


def arm_row(arm: str, mine: list[Run], vanilla: dict[int, Run], n_not_finished: int) -> dict:
    """Per-arm numbers: Stat over seeds for every key, paired Δ vs vanilla for DELTA_KEYS."""
    row = {"seeds": sorted(r.seed for r in mine), "not_finished": n_not_finished,
           "n_eval": sum(bool(r.eval_final) for r in mine),
           "eval_hack_rise": asdict(mean_sem([r.eval_rise() for r in mine])),
           "hacked": outcomes.count([r.outcome.get("hacked") for r in mine]),
           "collapsed": outcomes.count([r.outcome.get("collapsed") for r in mine])}
    for key in BASE_KEYS:                     # eval_base_hack_rate, eval_base_pass_nohint, ...
        row[key.replace("eval_", "eval_base_", 1)] = asdict(mean_sem([r.eval_base.get(key) for r in mine]))
    for key in EVAL_KEYS + RATE_KEYS + STEP_KEYS + DYN_KEYS:
        row[key] = asdict(mean_sem([r.value(key) for r in mine]))
    for t in THRESHOLDS:
        row[f"never_{t}"] = sum(r.dynamics.get(f"onset_{t}") is None for r in mine)
    for key in DELTA_KEYS:
        diffs = [] if arm == "vanilla" else [_minus(r.value(key), vanilla[r.seed].value(key))
                                             for r in mine if r.seed in vanilla]
        row[f"delta_{key}"] = asdict(paired(diffs))  # (a None difference is dropped there)
    return row


def _distinct(items: list) -> list[dict]:
    """Distinct values with the number of runs that have each."""
    counts = Counter(json.dumps(i, sort_keys=True) for i in items)
    return [{"value": json.loads(k), "runs": n} for k, n in counts.items()] if items else []


def _summarise(root: Path, last_k: int, rules: Rules | None = None) -> tuple[dict, list[Run]]:
    if last_k < 1:
        raise UserError(f"--last-k must be >= 1, got {last_k}")
    runs, sweep = find_runs(root, last_k)
    finished = [r for r in runs if r.status == "finished"]
    vanilla = {r.seed: r for r in finished if r.arm == "vanilla"}
    arms = {arm: arm_row(arm, [r for r in finished if r.arm == arm], vanilla,
                         sum(r.arm == arm and r.status != "finished" for r in runs))
            for arm in sorted({r.arm for r in runs}, key=arms_mod.sort_key)}
    present = [r for r in runs if r.status != "missing"]
    configs = [_read_json(root / r.dir / runio.CONFIG) for r in present]
    header = {"preset": sweep.get("preset"), "last_k": last_k, "thresholds": list(THRESHOLDS),
              "n_finished": len(finished), "n_listed": len(runs),
              "n_eval": sum(bool(r.eval_final) for r in finished),
              "no_eval": [r.dir for r in finished if not r.eval_final],
              "eval_train_name_only": [r.dir for r in finished if r.eval_final and not r.eval_final["renamed"]],
              "rules": {"hacked_at": outcomes.HACKED_AT, "collapse_fraction": outcomes.COLLAPSE_FRACTION},
              "splits": _distinct([r.split for r in present if r.split is not None]),
              "no_split": [r.dir for r in present if r.split is None],
              "teachers": _distinct([r.teacher for r in present]),
              "teacher_adv_share": asdict(mean_sem([r.all_steps.get("teacher_adv_share") for r in finished])),
              "logged": [k for k in STEP_KEYS if any(r.all_steps.get(k) is not None for r in finished)],
              "sandbox_backend": sorted({b for r in present for b in sandbox_backends(r.metrics)})}
    for key in ("model", "mode", "hint", "steps", "dtype", "group_size", "prompts_per_step", "vhack_m",
                "teacher_pool", "mix_ratio", "enable_thinking", "problems"):
        header[key] = sorted({c.get(key) for c in configs if key in c}, key=str)
    bases = {r.arm: r.base or r.arm for r in present}
    for arm, row in arms.items():            # what each arm knew (interventions.label_use), from its runs' configs
        row["base"] = bases.get(arm, arm)
        row["knows"] = sorted({label_use(r.base or arm, c, root / r.dir)
                               for r, c in zip(present, configs) if r.arm == arm})
    summary = {"header": header, "arms": arms,
               "runs": [{k: v for k, v in asdict(r).items() if k not in ("metrics", "evals")} for r in runs],
               "not_finished": [{"arm": r.arm, "seed": r.seed, "dir": r.dir, "status": r.status,
                                 "done": r.done, "steps": r.steps} for r in runs if r.status != "finished"]}
    if rules is not None:
        summary["verdicts"] = verdicts(finished, bases, rules)
    return summary, runs


def label_use(arm: str, config: dict, run_dir: Path) -> str:
    """What `arm` knew in the run of `config` (interventions.label_use); "" for a name not in the arms table."""
    from projected_grpo.config import TrainConfig

    if arm not in arms_mod.BY_NAME:
        return ""
    try:
        cfg = TrainConfig.from_dict(config, str(run_dir / runio.CONFIG))
    except UserError as err:                 # the rest of the report does not need the whole config
        return f"not stated ({err})"
    from projected_grpo.interventions import label_use as knows

    return knows(arm, cfg, run_dir)


def sandbox_backends(rows: list[dict]) -> set[str]:
    """Sandbox backends that graded a run's training rows (`sandbox_backend`, comma-joined per row);
    {"not recorded"} for a run logged before the field existed or where no program ever ran."""
    found = {b for r in rows for b in (r.get("sandbox_backend") or "").split(",") if b}
    return found or {"not recorded"}


# ---- entry point ----------------------------------------------------------------------------
def write_report(root: str | Path, last_k: int = 5, note: str = "", rules: Rules | None = None) -> Path:
    """Write results.md, summary.json and the plots into root (`note`, e.g. the card, under each
    plot's title; `rules`: add each arm's verdict, verdicts.py); returns results.md's path."""
    from projected_grpo.studies.report_md import markdown
    from projected_grpo.studies.report_plots import plot

    root = Path(root)
    summary, runs = _summarise(root, last_k, rules)
    plot(root, runs, note)
    runio.write_atomic(root / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    out = root / "results.md"
    runio.write_atomic(out, markdown(summary).encode())
    return out
