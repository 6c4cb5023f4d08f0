"""results.md from the report's summary dict (`report.summarise`): headline first, facts in the header."""

from __future__ import annotations

from projected_grpo import arms as arms_mod

DASH = "—"


def fmt(stat: dict, signed: bool = False, digits: int = 3) -> str:
    """'0.600 ± 0.100 (n=2)', '0.600 ± — (n=1)' or '—'."""
    if stat["mean"] is None:
        return DASH
    mean = f"{stat['mean']:+.{digits}f}" if signed else f"{stat['mean']:.{digits}f}"
    sem = DASH if stat["sem"] is None else f"{stat['sem']:.{digits}f}"
    return f"{mean} ± {sem} (n={stat['n']})"


def fmt_delta(stat: dict, digits: int = 3) -> str:
    """Paired Δ: '-0.200 [-1.471, +1.071] (n=2)', '-0.100 [—] (n=1)' or '—'."""
    if stat["mean"] is None:
        return DASH
    ci = DASH if stat["lo"] is None else f"{stat['lo']:+.{digits}f}, {stat['hi']:+.{digits}f}"
    return f"{stat['mean']:+.{digits}f} [{ci}] (n={stat['n']})"


def _num(x, digits: int = 3) -> str:
    return DASH if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


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
        "delay as a later onset (Δ onset > 0) with the same final rate.",
        f"- Per arm: mean ± sem over seeds (sem = sample std / √n; n = 1 → {DASH}). Δ vs vanilla: per seed, "
        "arm minus the vanilla run of the same seed; mean of those differences with a two-sided 95% "
        f"Student-t interval [mean ± t(0.975, n−1) · sem] ({DASH} when n < 2; Δ = {DASH} when no seed has both).",
        f"- Training rates: mean over each run's last {k} steps. Onset ≥ θ: first training step with hack "
        f"rate ≥ θ (θ = {t1}, {t2}); a run that never reaches θ counts as steps + 1 in the mean and Δ "
        "(right-censored) and is counted in the 'never' column. AUC = mean training hack rate over all "
        "steps (area under the step curve / steps, in [0, 1]). cos_in, cos_out, frac_fired and the other "
        "diagnostics are means over all steps.",
        f"- {h['n_finished']} finished run(s) of {h['n_listed']} listed; only finished runs enter the "
        "numbers and plots.",
        f"- What this shows: {_facts(summary)}"]


def arm_lines(arms: dict) -> list[str]:
    """One line per arm of the report: what it does (arms.py); an arm that reads labels says so."""
    known = [a for a in arms if a in arms_mod.BY_NAME]
    if not known:
        return []
    return ["## Arms", "", *[f"- {arms_mod.label(a)}: {arms_mod.BY_NAME[a].description}" for a in known], ""]


def markdown(summary: dict) -> str:
    h, arms = summary["header"], summary["arms"]
    k, (t1, t2) = h["last_k"], h["thresholds"]
    lines = ["# Results", "", *header_lines(summary), "", *arm_lines(arms),
             "## Headline: final held-out eval", ""]
    if h["n_eval"]:
        lines += [f"| arm | seeds | eval hack | Δ hack vs vanilla [95% CI] | eval pass | Δ pass vs vanilla "
                  f"[95% CI] | eval hack at step 0 | rise over step 0 | train hack (last {k}) | "
                  f"train pass (last {k}) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for arm, s in arms.items():
            lines.append(f"| {arms_mod.label(arm)} | {_seeds(s)} | {fmt(s['eval_hack_rate'])} | "
                         f"{fmt_delta(s['delta_eval_hack_rate'])} | {fmt(s['eval_pass_rate'])} | "
                         f"{fmt_delta(s['delta_eval_pass_rate'])} | {fmt(s['eval_base_hack_rate'])} | "
                         f"{fmt(s['eval_hack_rise'], True)} | {fmt(s['hack_rate'])} | {fmt(s['pass_rate'])} |")
    else:
        lines.append("Eval missing: no finished run logged held-out eval rows (`kind: \"eval\"`); the "
                     "training rates below are all there is, and they include the training problems.")
    lines += ["", "## Dynamics (training hack rate)", "",
              f"| arm | onset ≥ {t1} | never | Δ onset ≥ {t1} [95% CI] | onset ≥ {t2} | never | "
              f"Δ onset ≥ {t2} [95% CI] | AUC | Δ AUC [95% CI] |", "|---|---|---|---|---|---|---|---|---|"]
    for arm, s in arms.items():
        n = len(s["seeds"])
        lines.append(f"| {arms_mod.label(arm)} | {fmt(s[f'onset_{t1}'], digits=1)} | {s[f'never_{t1}']}/{n} | "
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
        lines.append(f"| {arms_mod.label(arm)} | {_seeds(s)} | {fmt(s['hack_rate'])} | "
                     f"{fmt_delta(s['delta_hack_rate'])} | {fmt(s['pass_rate'])} | "
                     f"{fmt_delta(s['delta_pass_rate'])} | {fmt(s['reward_mean'])} | "
                     + " | ".join(extra) + " |")
    lines += ["", "## Per run", "",
              f"| arm | seed | dir | eval step | eval hack | eval pass | train hack (last {k}) | "
              f"onset ≥ {t1} | onset ≥ {t2} | AUC |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["runs"]:
        if r["status"] != "finished":
            continue
        e, d = r["eval_final"], r["dynamics"]
        lines.append(f"| {r['arm']} | {r['seed']} | {r['dir']} | {_num(e.get('step')) if e else 'missing'} | "
                     f"{_num(e.get('eval_hack_rate'))} | {_num(e.get('eval_pass_rate'))} | "
                     f"{_num(r['last_k']['hack_rate'])} | {_onset(d[f'onset_{t1}'])} | "
                     f"{_onset(d[f'onset_{t2}'])} | {_num(d['auc'])} |")
    lines += ["", "## Missing / unfinished runs", ""]
    if summary["not_finished"]:
        lines += ["Left out of every mean and plot above.", "",
                  "| arm | seed | dir | status | steps logged |", "|---|---|---|---|---|"]
        for r in summary["not_finished"]:
            logged = DASH if r["status"] == "missing" else f"{r['done']} / {r['steps']}"
            lines.append(f"| {r['arm']} | {r['seed']} | {r['dir']} | {r['status']} | {logged} |")
    else:
        lines.append("None: every listed run finished.")
    lines += ["", "Plots: `hack_rate.png`, `pass_rate.png` (training mean ± sem band over seeds; eval "
              "rates as markers with ± sem bars), `cosine.png` (cos_in solid, cos_out dashed), "
              "`eval_curves.png` (per arm: each seed's held-out eval hack rate, their mean, and the mean "
              "eval format rate dashed).", ""]
    return "\n".join(lines)


def _seeds(s: dict) -> str:
    seeds = ",".join(map(str, s["seeds"])) or DASH
    return seeds + (f" (+{s['not_finished']} not finished, excluded)" if s["not_finished"] else "")
