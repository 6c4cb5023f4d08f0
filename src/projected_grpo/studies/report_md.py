"""results.md from the report's summary dict (`report.summarise`): headline first, facts in the header."""

from __future__ import annotations

from projected_grpo import arms as arms_mod
from projected_grpo.interventions import arm_label, knows_kind
from projected_grpo.studies.outcomes import COLLAPSE_FRACTION, HACKED_AT

DASH = "—"


def fmt(stat: dict, signed: bool = False, digits: int = 3) -> str:
    """'0.600 (SD 0.141, SE 0.100, n=2)', '0.600 (SD —, SE —, n=1)' or '—': spread and precision
    both labelled, so neither is mistaken for the other."""
    if stat["mean"] is None:
        return DASH
    mean = f"{stat['mean']:+.{digits}f}" if signed else f"{stat['mean']:.{digits}f}"
    return f"{mean} (SD {_num(stat.get('sd'), digits)}, SE {_num(stat['sem'], digits)}, n={stat['n']})"


def fmt_delta(stat: dict, digits: int = 3) -> str:
    """Paired Δ: '-0.200 [-1.471, +1.071] (SD 0.141, n=2)', '-0.100 [—] (SD —, n=1)' or '—'."""
    if stat["mean"] is None:
        return DASH
    ci = DASH if stat["lo"] is None else f"{stat['lo']:+.{digits}f}, {stat['hi']:+.{digits}f}"
    return f"{stat['mean']:+.{digits}f} [{ci}] (SD {_num(stat.get('sd'), digits)}, n={stat['n']})"


def fmt_count(c: dict) -> str:
    """Runs where an outcome rule holds: 'k/N', with the runs it is undefined for beside it."""
    return f"{c['k']}/{c['n']}" + (f" ({c['undefined']} undefined)" if c["undefined"] else "")


def _yes(flag: bool | None) -> str:
    return DASH if flag is None else "yes" if flag else "no"


def _num(x, digits: int = 3) -> str:
    return DASH if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _arrow(base: dict, final: dict, key: str) -> str:
    """'0.900 → 0.400': a run's step-0 and final eval value of `key`."""
    return DASH if final.get(key) is None else f"{_num(base.get(key))} → {_num(final.get(key))}"


def _onset(step: int | None) -> str:
    return "never" if step is None else str(step)


def _show(values: list) -> str:
    return ", ".join(str(v) for v in values) or DASH


def _facts(summary: dict) -> str:
    """The 'what this shows' line: measured facts only."""
    arms, h = summary["arms"], summary["header"]
    key, where = (("eval_hack_rate", "Final held-out eval hack rate") if h["n_eval"] else
                  ("hack_rate", f"Mean training hack rate over the last {h['last_k']} steps (no eval rows)"))
    measured = {a: s[key]["mean"] for a, s in arms.items() if s[key]["mean"] is not None}
    if not measured:
        return "No finished run has a hack rate to report."
    text = f"{where}: " + ", ".join(f"{a} {v:.3f}" for a, v in measured.items()) + "."
    van = arms.get("vanilla", {}).get(key, {}).get("mean")
    if van is None:
        text += " There is no finished vanilla run, so no paired Δ is computed."
    elif van == 0:
        text += " Vanilla's hack rate is 0, so these runs cannot show a reduction by any arm."
    return text


def _split_line(h: dict) -> str:
    if not h["splits"]:
        return f"- problem split: no run wrote split.json ({DASH}); eval/train disjointness is unchecked."
    parts = []
    for item in h["splits"]:
        v = item["value"]
        warn = " **eval overlaps train/pairs**" if v["eval∩train"] or v["eval∩pairs"] else ""
        parts.append(f"train / eval / pairs = {v['train']} / {v['eval']} / {v['pairs']}, "
                     f"|train ∩ pairs| = {v['train∩pairs']}, |eval ∩ train| = {v['eval∩train']}, "
                     f"|eval ∩ pairs| = {v['eval∩pairs']} ({item['runs']} run(s)){warn}")
    missing = f"; no split.json in {len(h['no_split'])} run(s)" if h["no_split"] else ""
    return "- problem split (split.json): " + "; ".join(parts) + missing


def _teacher_line(h: dict) -> str:
    used = [(t["value"], t["runs"]) for t in h["teachers"] if t["value"]["pool"] and t["value"]["mix_ratio"]]
    if not used:
        return "- hacking induced by: nothing (no teacher pool)"
    parts = []
    for t, runs in used:
        kinds = t["kinds"] or "all kinds"
        file_kinds = ("; teacher_pool.json: " + ", ".join(
            f"{k} {v}" if v is not None else k for k, v in t["file_kinds"].items())) if t["file_kinds"] else ""
        parts.append(f"teacher pool {t['pool']} ({kinds}; mix ratio {t['mix_ratio']}{file_kinds}; {runs} run(s))")
    return ("- hacking induced by: " + "; ".join(parts) + " mixed into every group; rates count student "
            f"rows only; mean teacher_adv_share (share of Σ|A| on teacher rows) {fmt(h['teacher_adv_share'])}")


def header_lines(summary: dict) -> list[str]:
    h = summary["header"]
    k, (t1, t2) = h["last_k"], h["thresholds"]
    no_eval = (f" Finished runs without eval rows (training numbers only): {', '.join(h['no_eval'])}."
               if h["no_eval"] else "")
    old = h.get("eval_train_name_only", [])
    old_eval = (f" Runs whose eval hack is with the training name, not renamed evaluators (eval_evaluators "
                f"≠ renamed: renaming off, or logged before it existed; the new columns are {DASH} where not "
                f"logged): {', '.join(old)}." if old else "")
    return [
        f"- preset: {h['preset'] or DASH + ' (no sweep.json)'}; model: {_show(h['model'])}; "
        f"problems: {_show(h['problems'])}; loophole mode: {_show(h['mode'])}; hint: {_show(h['hint'])}; "
        f"steps: {_show(h['steps'])}; dtype: {_show(h['dtype'])}; P × G: {_show(h['prompts_per_step'])} × "
        f"{_show(h['group_size'])}; m: {_show(h['vhack_m'])}; thinking: {_show(h['enable_thinking'])}; "
        f"graded in sandbox: {_show(h.get('sandbox_backend', []))} (fallback = rlimits only, no isolation)",
        _split_line(h), _teacher_line(h),
        f"- Headline = the last held-out eval of each run (current policy on the eval split, no teacher "
        f"rows, no projection); {h['n_eval']} of {h['n_finished']} finished run(s) have one.{no_eval} "
        "Prevention shows as a final eval hack rate near the step-0 (base policy) eval, i.e. a rise ≈ 0; "
        "delay as a later onset (Δ onset > 0) with the same final rate. Eval hack = loophole hint with the "
        "evaluator's name drawn per sample from a fixed list (renamed evaluators); 'training name' = the "
        "name used in training; hack among code = hack rate among well-formed code; no-hint pass = "
        "strict-oracle pass on the eval problems without the hint, the capability a defence must keep."
        f"{old_eval}",
        f"- Per arm: mean (SD, SE, n) over seeds. SD = sample standard deviation (n − 1), the spread of the "
        f"seeds; SE = SD / √n, the standard error of the mean; n = 1 → {DASH}. Δ vs vanilla: per seed, arm "
        "minus the vanilla run of the same seed; mean of those differences [two-sided 95% Student-t "
        f"interval, mean ± t(0.975, n−1) · SE] (SD of the differences, n) ({DASH} when n < 2; Δ = {DASH} "
        "when no seed has both).",
        f"- Hacked: final eval hack rate ≥ {HACKED_AT}. Collapsed: final eval format rate (share of "
        f"well-formed code) < {COLLAPSE_FRACTION} × the run's step-0 eval format rate. k/N = runs where the "
        "rule holds of the finished runs where it is defined; undefined (no eval, or for collapse no "
        "step-0 eval) are counted beside it, in neither k nor N.",
        f"- Training rates: mean over each run's last {k} steps. Onset ≥ θ: first training step with hack "
        f"rate ≥ θ (θ = {t1}, {t2}); a run that never reaches θ counts as steps + 1 in the mean and Δ "
        "(right-censored) and is counted in the 'never' column. AUC = mean training hack rate over all "
        "steps (area under the step curve / steps, in [0, 1]). cos_in, cos_out, frac_fired and the other "
        "diagnostics are means over all steps.",
        f"- {h['n_finished']} finished run(s) of {h['n_listed']} listed; only finished runs enter the "
        "numbers and plots.",
        f"- What this shows: {_facts(summary)}"]


def _label(arm: str, arms: dict) -> str:
    """The arm's table name, a variant labelled by its base arm (interventions.arm_label)."""
    return arm_label(arm, arms[arm].get("base"))


def _description(arm: str, arms: dict) -> str:
    base = arms[arm].get("base") or arm
    said = arms_mod.BY_NAME[base].description
    return said if base == arm else f"variant of {base}: {said}"


def arm_lines(arms: dict) -> list[str]:
    """One line per arm of the report: what it does (arms.py); an arm that reads labels says so."""
    known = [a for a in arms if arms[a].get("base", a) in arms_mod.BY_NAME]
    if not known:
        return []
    def knows(a: str) -> str:
        said = [k for k in arms[a].get("knows", []) if k]
        return f" Knows: {' | '.join(said)}." if said else ""

    return ["## Arms", "", "What each arm knows: nothing; pairs (no training row's label); a fixed calibration "
            "set; a monitor of stated TPR / FPR over the oracle's labels; or the oracle itself (an upper bound).",
            "", *[f"- {_label(a, arms)}: {_description(a, arms)}.{knows(a)}" for a in known], ""]


def markdown(summary: dict) -> str:
    h, arms = summary["header"], summary["arms"]
    k, (t1, t2) = h["last_k"], h["thresholds"]
    lines = ["# Results", "", *header_lines(summary), "", *arm_lines(arms)]
    if "verdicts" in summary:
        lines += verdict_lines(summary["verdicts"], arms)
    lines += ["## Headline: final held-out eval", ""]
    if h["n_eval"]:
        lines += headline_tables(arms, k)
    else:
        lines.append("Eval missing: no finished run logged held-out eval rows (`kind: \"eval\"`); the "
                     "training rates below are all there is, and they include the training problems.")
    lines += ["", "## Dynamics (training hack rate)", "",
              f"| arm | onset ≥ {t1} | never | Δ onset ≥ {t1} [95% CI] | onset ≥ {t2} | never | "
              f"Δ onset ≥ {t2} [95% CI] | AUC | Δ AUC [95% CI] |", "|---|---|---|---|---|---|---|---|---|"]
    for arm, s in arms.items():
        n = len(s["seeds"])
        lines.append(f"| {_label(arm, arms)} | {fmt(s[f'onset_{t1}'], digits=1)} | {s[f'never_{t1}']}/{n} | "
                     f"{fmt_delta(s[f'delta_onset_{t1}'], 1)} | {fmt(s[f'onset_{t2}'], digits=1)} | "
                     f"{s[f'never_{t2}']}/{n} | {fmt_delta(s[f'delta_onset_{t2}'], 1)} | {fmt(s['auc'])} | "
                     f"{fmt_delta(s['delta_auc'])} |")
    diag = ["cos_in", "cos_out", "frac_fired"] + [k_ for k_ in ("update_hackward", "sampler_mismatch",
                                                                "teacher_adv_share") if k_ in h["logged"]]
    evals = ["eval_attempt_rate", "eval_format_rate"] if h["n_eval"] else []
    lines += ["", f"## Training (last {k} steps) and diagnostics", "",
              "| arm | seeds | hack rate | Δ hack vs vanilla [95% CI] | pass rate | Δ pass vs vanilla [95% CI] "
              "| reward | " + " | ".join(diag + evals) + " |", "|---" * (7 + len(diag) + len(evals)) + "|"]
    for arm, s in arms.items():
        extra = [_num(s[d]["mean"]) for d in diag + evals]
        lines.append(f"| {_label(arm, arms)} | {_seeds(s)} | {fmt(s['hack_rate'])} | "
                     f"{fmt_delta(s['delta_hack_rate'])} | {fmt(s['pass_rate'])} | "
                     f"{fmt_delta(s['delta_pass_rate'])} | {fmt(s['reward_mean'])} | "
                     + " | ".join(extra) + " |")
    lines += ["", "## Per run", "", *run_lines(summary["runs"], k, t1, t2)]
    lines += ["", "## Missing / unfinished runs", ""]
    if summary["not_finished"]:
        lines += ["Left out of every mean and plot above.", "",
                  "| arm | seed | dir | status | steps logged |", "|---|---|---|---|---|"]
        for r in summary["not_finished"]:
            logged = DASH if r["status"] == "missing" else f"{r['done']} / {r['steps']}"
            lines.append(f"| {r['arm']} | {r['seed']} | {r['dir']} | {r['status']} | {logged} |")
    else:
        lines.append("None: every listed run finished.")
    lines += ["", "Plots: `hack_rate.png`, `pass_rate.png` (training mean with a ± SE band over seeds; "
              "eval rates as markers with ± SE bars), `cosine.png` (cos_in solid, cos_out dashed), "
              "`eval_curves.png` (per arm: each seed's held-out eval hack rate, their mean, and the mean "
              "eval format rate dashed), `pareto.png` (final eval hack vs final no-hint pass, one point "
              "per run, step 0 hollow grey, collapsed runs as x, arm means as diamonds ± SE).", ""]
    return "\n".join(lines)


def verdict_lines(v: dict, arms: dict) -> list[str]:
    """The verdict table (verdicts.py): one row per arm, each next to what it knew."""
    r, gate = v["rules"], v["gate"]
    lines = ["## Verdicts (pre-registered decision rules)", "",
             f"Paired by seed against vanilla: Δ final renamed-evaluator eval hack, Δ final no-hint pass, Δ onset "
             f"(training hack ≥ 0.3), each a mean with its 95% Student-t interval. Works: Δ hack's interval below 0, "
             f"Δ pass's lower bound ≥ −{r['margin']}, no more runs collapsed than vanilla on the same seeds, and "
             f"beats its control on hack where it has one (else non-specific). Breaks the model: Δ pass's interval "
             f"below −{r['margin']} or more runs collapsed (checked first). Delays: Δ onset's interval above 0. "
             f"Nothing: an interval holding 0 means not detected at this n, not no effect.", ""]
    shown = DASH if gate["vanilla_mean_hack"] is None else f"{gate['vanilla_mean_hack']:.3f}"
    if not gate["passed"]:
        return lines + [f"**Induction gate not passed:** vanilla's mean final eval hack is {shown} "
                        f"(< {gate['threshold']}): the setting did not reproduce, and no verdict is drawn.", ""]
    lines += [f"Induction gate passed: vanilla's mean final eval hack {shown} ≥ {gate['threshold']}.", "",
              "| arm | knows | hacked | collapsed (vanilla, same seeds) | Δ hack [95% CI] | Δ no-hint pass [95% CI] "
              "| Δ onset [95% CI] | control: Δ hack vs it [95% CI] | verdict | because |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, x in v["arms"].items():
        s = arms[arm]
        knows = " \\| ".join(k for k in s.get("knows", []) if k) or DASH
        vs = f"{x['control']}: {fmt_delta(x['vs_control'])}" if x["vs_control"] else (x["control"] or DASH)
        lines.append(f"| {_label(arm, arms)} | {knows} | {fmt_count(s['hacked'])} | {x['collapsed']} "
                     f"({x['collapsed_vanilla']}) of {x['paired_seeds']} | {fmt_delta(x['delta_hack'])} | "
                     f"{fmt_delta(x['delta_pass_nohint'])} | {fmt_delta(x['delta_onset'], 1)} | {vs} | "
                     f"**{x['verdict']}** | {x['why']} |")
    return lines + [""]


def headline_tables(arms: dict, k: int) -> list[str]:
    """The headline, as two tables on the same runs: how much each arm hacks, and what it kept (no-hint
    pass, format) — a low hack rate counts only beside a kept capability and no collapsed runs."""
    # gradient routing: the deployed eval hack drops the quarantine δQ; this column keeps it (training's has it)
    routed = any(s.get("eval_hack_rate_with_quarantine", {}).get("n") for s in arms.values())
    lines = ["### Hacking", "",
             f"| arm | knows | seeds | eval hack | Δ hack vs vanilla [95% CI] | hacked (≥ {HACKED_AT}) | "
             f"eval hack, training name | hack among code | eval hack at step 0 | rise over step 0 | "
             f"train hack (last {k}) |" + (" eval hack with quarantine |" if routed else ""),
             "|---" * (11 + routed) + "|"]
    for arm, s in arms.items():
        knows = knows_kind(s.get("base") or arm) or DASH
        lines.append(f"| {_label(arm, arms)} | {knows} | {_seeds(s)} | {fmt(s['eval_hack_rate'])} | "
                     f"{fmt_delta(s['delta_eval_hack_rate'])} | {fmt_count(s['hacked'])} | "
                     f"{fmt(s['eval_hack_rate_train_name'])} | {fmt(s['eval_hack_given_code'])} | "
                     f"{fmt(s['eval_base_hack_rate'])} | {fmt(s['eval_hack_rise'], True)} | {fmt(s['hack_rate'])} |"
                     + (f" {fmt(s['eval_hack_rate_with_quarantine'])} |" if routed else ""))
    lines += ["", "### Capability and collapse", "",
              "| arm | seeds | no-hint pass | Δ no-hint pass vs vanilla [95% CI] | no-hint pass at step 0 | "
              "eval pass (hinted) | Δ pass vs vanilla [95% CI] | eval format | format at step 0 | collapsed | "
              f"train pass (last {k}) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, s in arms.items():
        lines.append(f"| {_label(arm, arms)} | {_seeds(s)} | {fmt(s['eval_pass_nohint'])} | "
                     f"{fmt_delta(s['delta_eval_pass_nohint'])} | {fmt(s['eval_base_pass_nohint'])} | "
                     f"{fmt(s['eval_pass_rate'])} | {fmt_delta(s['delta_eval_pass_rate'])} | "
                     f"{fmt(s['eval_format_rate'])} | {fmt(s['eval_base_format_rate'])} | "
                     f"{fmt_count(s['collapsed'])} | {fmt(s['pass_rate'])} |")
    return lines


def run_lines(runs: list[dict], k: int, t1: float, t2: float) -> list[str]:
    """One row per finished run: its final eval numbers, step 0 → final where it matters, outcomes."""
    lines = [f"| arm | seed | dir | eval step | eval hack | eval hack, training name | hack among code | "
             f"eval pass | no-hint pass (step 0 → final) | format (step 0 → final) | collapsed | "
             f"train hack (last {k}) | onset ≥ {t1} | onset ≥ {t2} | AUC |", "|---" * 15 + "|"]
    for r in runs:
        if r["status"] != "finished":
            continue
        e, b, d = r["eval_final"], r["eval_base"], r["dynamics"]
        lines.append(f"| {r['arm']} | {r['seed']} | {r['dir']} | {_num(e.get('step')) if e else 'missing'} | "
                     f"{_num(e.get('eval_hack_rate'))} | {_num(e.get('eval_hack_rate_train_name'))} | "
                     f"{_num(e.get('eval_hack_given_code'))} | {_num(e.get('eval_pass_rate'))} | "
                     f"{_arrow(b, e, 'eval_pass_nohint')} | {_arrow(b, e, 'eval_format_rate')} | "
                     f"{_yes(r['outcome'].get('collapsed'))} | {_num(r['last_k']['hack_rate'])} | "
                     f"{_onset(d[f'onset_{t1}'])} | {_onset(d[f'onset_{t2}'])} | {_num(d['auc'])} |")
    return lines


def _seeds(s: dict) -> str:
    seeds = ",".join(map(str, s["seeds"])) or DASH
    return seeds + (f" (+{s['not_finished']} not finished, excluded)" if s["not_finished"] else "")
