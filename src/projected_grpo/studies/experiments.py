"""Experiment drivers on top of `train`: the gated probe and the demo (the sweep is in sweep.py).

    pgrpo probe  --preset P --seed N --out DIR   gate 1: extract V + held-out check;
                                                 gate 2: vanilla reaches a non-trivial hack rate;
                                                 gate 3: the projected arm's gradients lean on the real V
                                                 more than on a random V of the same m (mean cos_in >
                                                 mean cos_in_null, both logged by the projected run).
    pgrpo sweep  (sweep.py)                      every (arm variant, seed) into DIR/{name}_s{seed}, one
                                                 shared V, in this process or as a queue over GPUs.
    pgrpo demo   --out DIR                       smoke preset on the embedded model: extract → verify →
                                                 sweep (4 arms, seed 41) → report.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from projected_grpo.training import runio
from projected_grpo.config import TrainConfig
from projected_grpo.errors import UserError
from projected_grpo.studies.report import window_mean, write_report
from projected_grpo.studies.sweep import V_HACK, SweepPlan, ensure_run, prepare_v_hack, sweep
from projected_grpo.studies.sweep import SPLIT  # noqa: F401  (re-exported: older imports name it here)

DEMO_ARMS = ("vanilla", "projected", "rebound", "random")
DEMO_SEEDS = (41,)


# ---- the held-out check's line ----------------------------------------------------------------
def verify_line(result: dict) -> str:
    """The held-out check's cosines, its margin check (when run) and the decision, as printed."""
    from projected_grpo.directions.verify import margin_line

    margin = f"\n{margin_line(result)}" if "margin" in result else ""
    return (f"held-out check: frac>0={result['frac_pos']:.3f} mean={result['mean']:+.3f} "
            f"median={result['median']:+.3f} null_cos={result['null_cos']:.3f} "
            f"modules={result['n_modules']}{margin}\n-> {'PASS' if result['pass'] else 'FAIL'}")


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


# ---- demo ------------------------------------------------------------------------------------
def demo(base: TrainConfig, out: Path, last_k: int = 5, given: dict | None = None) -> Path:
    """The smoke preset end to end: extract V and check it, sweep DEMO_ARMS × DEMO_SEEDS with it, write
    the report (-> results.md). `given`: the flags the user set on top of `base`, recorded in sweep.json."""
    t0 = time.time()
    given = given or {}
    out.mkdir(parents=True, exist_ok=True)
    v_path = (out / V_HACK).resolve()
    print(f"demo: smoke preset on {base.model} ({base.device}), {base.steps} steps, arms "
          f"{', '.join(DEMO_ARMS)}, seed {', '.join(map(str, DEMO_SEEDS))}"
          + (f"; overrides {given}" if given else ""))
    print("=== 1/3 extract V and check it on held-out pairs")
    result = prepare_v_hack(base, v_path, verify=True)
    assert result is not None  # (verify=True returns the check's summary)
    print(verify_line(result) + ("" if result["pass"] else
                                 "  (the demo goes on: the embedded tiny model is random-weight)"))
    runio.write_atomic(out / "verify.json", (json.dumps(result, indent=2) + "\n").encode())
    print("=== 2/3 sweep")
    plan = SweepPlan(preset="smoke", arms=list(DEMO_ARMS), seeds=list(DEMO_SEEDS), overrides=given,
                     v_hack=str(v_path), out=str(out))
    sweep(plan, base)
    print("=== 3/3 report")
    report = write_report(out, last_k)
    print(report.read_text())
    print(f"demo done in {time.time() - t0:.0f}s.")
    return report
