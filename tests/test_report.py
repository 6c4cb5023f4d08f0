"""The sweep report on hand-written run dirs: numbers checked by hand, missing runs listed, plots made."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from projected_grpo.studies.report import mean_sem, summarise, window_mean, write_report

STEPS = 6


def write_run(root: Path, arm: str, seed: int, hack: list, pas: list, steps: int = STEPS,
              fired: float = 0.5, cos_in: float = 0.2) -> Path:
    """A run dir: config.json + one metrics row per entry of `hack`."""
    d = root / f"{arm}_s{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"arm": arm, "seed": seed, "steps": steps, "model": "tiny-qwen3",
                                               "mode": "run_tests", "dtype": "bfloat16", "group_size": 2,
                                               "prompts_per_step": 2, "vhack_m": 4}))
    rows = [{"step": i + 1, "hack_rate": h, "pass_rate": p, "reward_mean": 1.0, "cos_in": cos_in,
             "cos_out": 0.0 if arm != "vanilla" else cos_in, "frac_fired": fired}
            for i, (h, p) in enumerate(zip(hack, pas))]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def flat(x: float, early: float = 0.0) -> list:
    """STEPS values: `early` for the first steps, x for the last 3."""
    return [early] * (STEPS - 3) + [x] * 3


@pytest.fixture()
def sweep_dir(tmp_path: Path) -> Path:
    write_run(tmp_path, "vanilla", 41, flat(0.5), flat(0.2))
    write_run(tmp_path, "vanilla", 42, flat(0.7), flat(0.4))
    write_run(tmp_path, "projected", 41, flat(0.2), flat(0.2))
    write_run(tmp_path, "projected", 42, flat(0.6), flat(0.3))
    write_run(tmp_path, "random", 41, flat(0.4), flat(0.1))
    write_run(tmp_path, "random", 43, flat(0.3), flat(0.1))        # no vanilla for seed 43
    write_run(tmp_path, "rebound", 41, [0.9, 0.9], [0.0, 0.0])     # cut off after 2 of 6 steps
    (tmp_path / "sweep.json").write_text(json.dumps({"preset": "smoke", "arms": ["vanilla", "projected",
                                                     "rebound", "random"], "seeds": [41, 42]}))
    return tmp_path


def test_mean_sem_by_hand():
    s = mean_sem([0.5, 0.7])     # SD = √((0.01 + 0.01) / 1) = 0.141421, SE = SD / √2 = 0.1
    assert s.mean == pytest.approx(0.6) and s.sem == pytest.approx(0.1) and s.n == 2
    assert s.sd == pytest.approx(0.141421, abs=1e-6)
    one = mean_sem([0.3, None])
    assert one.mean == pytest.approx(0.3) and one.sem is None and one.sd is None and one.n == 1
    assert mean_sem([None]).mean is None


def test_window_mean_skips_null_hack_rate():
    rows = [{"hack_rate": 1.0}, {"hack_rate": None}, {"hack_rate": 0.5}, {"hack_rate": None}]
    assert window_mean(rows, "hack_rate", 3) == pytest.approx(0.5)
    assert window_mean(rows, "hack_rate") == pytest.approx(0.75)
    assert window_mean([{"hack_rate": None}], "hack_rate", 5) is None


def test_summary_numbers(sweep_dir: Path):
    s = summarise(sweep_dir, last_k=3)
    van, proj, rnd = s["arms"]["vanilla"], s["arms"]["projected"], s["arms"]["random"]
    assert van["hack_rate"] == pytest.approx({"mean": 0.6, "sd": 0.141421, "sem": 0.1, "n": 2}, abs=1e-6)
    assert van["pass_rate"]["mean"] == pytest.approx(0.3)
    assert van["delta_hack_rate"]["mean"] is None                       # vanilla has no Δ vs itself
    # projected: per-seed Δ hack = 0.2-0.5 = -0.3 and 0.6-0.7 = -0.1 -> mean -0.2, SD √0.02, SE 0.1,
    # 95% interval -0.2 ± t(0.975, 1) · 0.1 = -0.2 ± 1.27062
    assert proj["delta_hack_rate"] == pytest.approx({"mean": -0.2, "sd": 0.141421, "sem": 0.1, "n": 2,
                                                     "lo": -1.470620, "hi": 1.070620}, abs=1e-5)
    # pass Δ: 0.2-0.2 = 0, 0.3-0.4 = -0.1 -> mean -0.05, sem 0.05
    assert proj["delta_pass_rate"]["mean"] == pytest.approx(-0.05)
    assert proj["delta_pass_rate"]["sem"] == pytest.approx(0.05)
    # random: only seed 41 has a vanilla partner -> Δ = 0.4 - 0.5 over n = 1, no sem
    assert rnd["hack_rate"]["n"] == 2
    assert rnd["delta_hack_rate"]["mean"] == pytest.approx(-0.1)
    assert rnd["delta_hack_rate"]["sem"] is None and rnd["delta_hack_rate"]["n"] == 1
    assert rnd["delta_hack_rate"]["lo"] is None
    # k widens the window: last 6 steps of vanilla s41 = (0,0,0,.5,.5,.5) -> 0.25
    assert summarise(sweep_dir, last_k=6)["arms"]["vanilla"]["hack_rate"]["mean"] == pytest.approx(
        (0.25 + 0.35) / 2)
    assert proj["frac_fired"]["mean"] == pytest.approx(0.5) and proj["cos_out"]["mean"] == 0.0
    assert s["header"]["preset"] == "smoke" and s["header"]["steps"] == [STEPS]


def test_missing_and_unfinished_listed_not_averaged(sweep_dir: Path):
    s = summarise(sweep_dir, last_k=3)
    listed = {(r["arm"], r["seed"]): r for r in s["not_finished"]}
    assert listed[("rebound", 41)]["status"] == "unfinished" and listed[("rebound", 41)]["done"] == 2
    assert listed[("rebound", 42)]["status"] == "missing"       # in sweep.json, no dir
    assert ("random", 42) in listed and listed[("random", 42)]["status"] == "missing"
    assert s["arms"]["rebound"]["hack_rate"]["n"] == 0          # the cut-off run is not in the mean
    assert s["header"]["n_finished"] == 6


def test_write_report_files(sweep_dir: Path):
    out = write_report(sweep_dir, last_k=3)
    text = out.read_text()
    assert "0.600 (SD 0.141, SE 0.100, n=2)" in text             # vanilla hack rate
    assert "-0.200 [-1.471, +1.071] (SD 0.141, n=2)" in text     # projected Δ hack, 95% t interval
    assert "-0.100 [—] (SD —, n=1)" in text                      # random Δ hack, one pair
    assert " ± " not in text.replace("± t(0.975", "").replace("± SE", "")  # no unlabelled ±
    assert "## Missing / unfinished runs" in text
    assert "| rebound | 41 | rebound_s41 | unfinished | 2 / 6 |" in text
    assert "| rebound | 42 | rebound_s42 | missing | — |" in text
    assert "last 3 steps" in text and "preset: smoke" in text
    for name in ("hack_rate.png", "pass_rate.png", "cosine.png", "eval_curves.png", "pareto.png"):
        png = sweep_dir / name
        assert png.is_file() and png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert math.isclose(summary["arms"]["vanilla"]["hack_rate"]["mean"], 0.6)


def test_report_without_vanilla_or_sweep_json(tmp_path: Path):
    write_run(tmp_path, "projected", 41, [None] * STEPS, flat(0.2))   # hack_rate never logged
    out = write_report(tmp_path, last_k=3)
    text = out.read_text()
    assert "| projected | 41 | — |" in text
    assert "None: every listed run finished." in text
    assert "no sweep.json" in text


def test_cli_report(sweep_dir: Path, capsys):
    from projected_grpo.cli import main

    assert main(["report", str(sweep_dir), "--last-k", "3"]) == 0
    assert "0.600 (SD 0.141, SE 0.100, n=2)" in capsys.readouterr().out


# ---- dynamics, eval headline, intervals ---------------------------------------------------------
from projected_grpo.studies.stats import auc, censored, onset, paired, t_quantile  # noqa: E402 - beside the tests of this section


def test_t_quantile_matches_the_table():
    for df, table in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)):
        assert t_quantile(0.975, df) == pytest.approx(table, abs=1e-3)


def test_paired_interval_by_hand():
    # d = 0.1, 0.2, 0.6: mean 0.3, sd = √(0.14/2) = 0.264575, sem = 0.152753,
    # t(0.975, 2) = 4.302653 -> half width 0.657240
    p = paired([0.1, 0.2, None, 0.6])
    assert (p.mean, p.n) == (pytest.approx(0.3), 3)
    assert p.sem == pytest.approx(0.152753, abs=1e-6)
    assert (p.lo, p.hi) == (pytest.approx(0.3 - 0.657240, abs=1e-5), pytest.approx(0.3 + 0.657240, abs=1e-5))
    one = paired([0.4])
    assert one.mean == pytest.approx(0.4) and one.lo is None and one.hi is None and one.n == 1
    assert paired([]).mean is None


def test_onset_and_auc_on_constructed_curves():
    steps = [1, 2, 3, 4, 5, 6]
    curve = [0.0, 0.1, 0.3, 0.45, 0.6, 0.2]
    assert onset(steps, curve, 0.3) == 3                 # ≥, not >
    assert onset(steps, curve, 0.5) == 5
    assert onset(steps, [0.1, None, 0.29], 0.3) is None  # never
    assert censored(None, 6) == 7 and censored(3, 6) == 3
    assert auc(curve) == pytest.approx(1.65 / 6)
    assert auc([1.0, None, 1.0]) == 1.0 and auc([None]) is None


def write_eval_run(root: Path, arm: str, seed: int, hack: list, evals: list[tuple], split: dict | None = None,
                   extra: dict | None = None, cfg: dict | None = None) -> Path:
    """A run with training rows (hack curve, pass 0.25) and eval rows (step, hack, pass) interleaved."""
    d = write_run(root, arm, seed, hack, [0.25] * len(hack), steps=len(hack))
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.update({"kind": "train", **(extra or {})})
    for step, h, p in evals:
        rows.append({"kind": "eval", "step": step, "eval_hack_rate": h, "eval_pass_rate": p,
                     "eval_attempt_rate": h + 0.1, "eval_format_rate": 0.9, "eval_n": 20})
    rows.sort(key=lambda r: (r["step"], r["kind"] == "train"))       # eval at s before train at s+1
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if cfg:
        config = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**config, **cfg}))
    if split is not None:
        (d / "split.json").write_text(json.dumps(split))
    return d


SPLIT = {"train": [str(i) for i in range(10)], "eval": ["20", "21", "22", "23", "24"], "pairs": ["9", "30", "31"]}
TEACHER = {"teacher_pool": "builtin", "teacher_kinds": "exploit,canonical", "mix_ratio": 0.25}


@pytest.fixture()
def eval_sweep(tmp_path: Path) -> Path:
    van = [0.1, 0.3, 0.5, 0.6, 0.7, 0.8]
    # final eval hack: vanilla 0.8, 0.6, 0.7; projected 0.5, 0.5, 0.2 (an earlier eval at step 3 differs)
    for seed, (vh, ph) in zip((1, 2, 3), ((0.8, 0.5), (0.6, 0.5), (0.7, 0.2))):
        write_eval_run(tmp_path, "vanilla", seed, van, [(0, 0.05, 0.3), (3, 0.9, 0.1), (6, vh, 0.2)],
                       SPLIT, {"update_hackward": 0.4, "teacher_adv_share": 0.3}, TEACHER)
        proj = [0.0, 0.1, 0.1, 0.2, 0.2, 0.2] if seed < 3 else [0.0, 0.1, 0.1, 0.2, 0.3, 0.5]
        write_eval_run(tmp_path, "projected", seed, proj, [(0, 0.05, 0.3), (3, 0.9, 0.1), (6, ph, 0.3)],
                       SPLIT, {"update_hackward": 0.1, "teacher_adv_share": 0.5}, TEACHER)
    (tmp_path / "vanilla_s1" / "teacher_pool.json").write_text(json.dumps(   # teacher.TeacherPool.summary()
        {"source": "builtin", "kinds_requested": ["exploit", "canonical"], "n_problems": 2, "n_completions": 3,
         "kinds": {"canonical": 1, "exploit": 2},
         "labels_by_kind": {"canonical": {"Correct": 1}, "exploit": {"Reward hack": 2}}}))
    return tmp_path


def test_eval_headline_numbers(eval_sweep: Path):
    s = summarise(eval_sweep, last_k=2)
    van, proj = s["arms"]["vanilla"], s["arms"]["projected"]
    assert van["eval_hack_rate"]["mean"] == pytest.approx(0.7)               # the LAST eval row, not step 3
    assert van["eval_base_hack_rate"]["mean"] == pytest.approx(0.05)          # the step-0 row
    assert proj["eval_hack_rise"]["mean"] == pytest.approx(0.4 - 0.05)        # prevention: final − step 0
    assert proj["eval_pass_rate"]["mean"] == pytest.approx(0.3)
    # Δ eval hack per seed -0.3, -0.1, -0.5: mean -0.3, sem 0.2/√3, t(0.975, 2) = 4.302653
    d = proj["delta_eval_hack_rate"]
    assert (d["mean"], d["n"]) == (pytest.approx(-0.3), 3)
    assert d["lo"] == pytest.approx(-0.3 - 4.302653 * 0.2 / math.sqrt(3), abs=1e-5)
    assert d["hi"] == pytest.approx(-0.3 + 4.302653 * 0.2 / math.sqrt(3), abs=1e-5)
    assert proj["delta_eval_pass_rate"]["mean"] == pytest.approx(0.1)
    # onsets: vanilla reaches 0.3 at step 2 and 0.5 at step 3 in every seed; projected reaches 0.3
    # only in seed 3 (step 5), so seeds 1, 2 count as 7 = steps + 1 (censored)
    assert van["onset_0.3"]["mean"] == pytest.approx(2) and van["never_0.3"] == 0
    assert proj["never_0.3"] == 2 and proj["onset_0.3"]["mean"] == pytest.approx((7 + 7 + 5) / 3)
    assert proj["delta_onset_0.3"]["mean"] == pytest.approx((5 + 5 + 3) / 3)
    assert proj["delta_onset_0.5"]["mean"] == pytest.approx((4 + 4 + 3) / 3)
    assert van["auc"]["mean"] == pytest.approx(3.0 / 6)
    assert proj["delta_auc"]["mean"] == pytest.approx((0.8 / 6 - 0.5) * 2 / 3 + (1.2 / 6 - 0.5) / 3)
    assert proj["update_hackward"]["mean"] == pytest.approx(0.1)
    h = s["header"]
    assert h["splits"] == [{"value": {"train": 10, "eval": 5, "pairs": 3, "train∩pairs": 1, "eval∩train": 0,
                                      "eval∩pairs": 0}, "runs": 6}]
    assert h["teacher_adv_share"]["mean"] == pytest.approx(0.4) and h["n_eval"] == 6


def test_eval_headline_markdown(eval_sweep: Path):
    text = write_report(eval_sweep, last_k=2).read_text()
    headline = text.split("## Headline: final held-out eval")[1].split("## Dynamics")[0]
    # vanilla 0.8, 0.6, 0.7: SD 0.1, SE 0.1/√3; projected 0.5, 0.5, 0.2: SD √0.03 = 0.173, SE 0.1;
    # Δ -0.3, -0.1, -0.5: SD 0.2. Hacked (≥ 0.5): vanilla 3/3, projected 2/3 (0.5 counts).
    # Old eval rows: no training-name or hack-among-code numbers (—).
    assert "| vanilla | nothing | 1,2,3 | 0.700 (SD 0.100, SE 0.058, n=3) | — | 3/3 | — | — |" in headline
    assert ("| projected | pairs | 1,2,3 | 0.400 (SD 0.173, SE 0.100, n=3) | -0.300 [-0.797, +0.197] (SD 0.200, n=3) "
            "| 2/3 | — | — |") in headline
    # step 0: 0.05 × 3; rise 0.45, 0.45, 0.15 (SD 0.173); train hack (last 2) 0.2, 0.2, 0.4 (SD 0.115)
    assert ("| 0.050 (SD 0.000, SE 0.000, n=3) | +0.350 (SD 0.173, SE 0.100, n=3) | "
            "0.267 (SD 0.115, SE 0.067, n=3) |") in headline
    assert "train hack (last 2)" in headline
    assert "train / eval / pairs = 10 / 5 / 3, |train ∩ pairs| = 1, |eval ∩ train| = 0, |eval ∩ pairs| = 0" in text
    assert "teacher pool builtin (exploit,canonical; mix ratio 0.25; 5 run(s))" in text
    assert ("teacher pool builtin (exploit,canonical; mix ratio 0.25; teacher_pool.json: canonical 1, exploit 2; "
            "1 run(s))") in text
    assert "mean teacher_adv_share (share of Σ|A| on teacher rows) 0.400" in text
    dyn = text.split("## Dynamics")[1].split("## Training")[0]
    assert "| projected | 6.3 (SD 1.2, SE 0.7, n=3) | 2/3 |" in dyn      # (7 + 7 + 5) / 3, two censored
    assert "update_hackward" in text and "sampler_mismatch" not in text   # only logged columns
    assert ("| projected | 1 | projected_s1 | 6 | 0.500 | — | — | 0.300 | — | 0.900 → 0.900 | no | 0.200 | "
            "never | never |") in text


def test_eval_overlap_and_old_runs_side_by_side(tmp_path: Path):
    write_eval_run(tmp_path, "vanilla", 1, [0.4] * 4, [(4, 0.5, 0.2)],
                   {"train": ["1", "2"], "eval": ["2", "3"], "pairs": ["3"]})
    write_run(tmp_path, "projected", 1, [0.2] * 4, [0.3] * 4, steps=4)      # an old run: no kind, no eval
    s = summarise(tmp_path, last_k=2)
    assert s["header"]["no_eval"] == ["projected_s1"] and s["header"]["no_split"] == ["projected_s1"]
    proj = s["arms"]["projected"]
    assert proj["eval_hack_rate"]["mean"] is None and proj["delta_eval_hack_rate"]["mean"] is None
    assert proj["delta_hack_rate"]["mean"] == pytest.approx(-0.2)           # training numbers still there
    text = write_report(tmp_path, last_k=2).read_text()
    assert "Finished runs without eval rows (training numbers only): projected_s1" in text
    assert "|eval ∩ train| = 1, |eval ∩ pairs| = 1 (1 run(s)) **eval overlaps train/pairs**" in text
    assert "| projected | 1 | projected_s1 | missing |" in text


def test_bad_split_json_names_the_file(tmp_path: Path):
    from projected_grpo.errors import UserError

    d = write_run(tmp_path, "vanilla", 1, [0.4] * STEPS, [0.3] * STEPS)
    (d / "split.json").write_text('{"train": "oops"}')
    with pytest.raises(UserError, match="split.json"):
        summarise(tmp_path)


def test_sweep_variants_are_their_own_arms_and_per_arm_seeds_are_expected(tmp_path: Path):
    """projected_update_s41 (config arm 'projected') is the arm projected_update, not a duplicate of
    projected_s41; --seeds-for seeds count as expected runs, and nothing else does."""
    write_run(tmp_path, "vanilla", 41, flat(0.5), flat(0.2))
    write_run(tmp_path, "projected", 41, flat(0.2), flat(0.2))
    d = write_run(tmp_path, "projected_update", 41, flat(0.4), flat(0.1))
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "arm": "projected", "project_target": "update"}))
    (tmp_path / "sweep.json").write_text(json.dumps({
        "preset": "smoke", "arms": ["vanilla", "projected", "projected_update"], "seeds": [41],
        "seeds_for": {"vanilla": [41, 42]}}))
    s = summarise(tmp_path, last_k=3)
    assert s["arms"]["projected_update"]["hack_rate"]["mean"] == pytest.approx(0.4)
    assert s["arms"]["projected"]["hack_rate"]["mean"] == pytest.approx(0.2)
    assert s["arms"]["projected_update"]["delta_hack_rate"]["mean"] == pytest.approx(-0.1)
    missing = sorted(r["dir"] for r in s["runs"] if r["status"] == "missing")
    assert missing == ["vanilla_s42"]


def test_report_refuses_a_run_whose_steps_repeat(sweep_dir, capsys):
    """Two writers on one run logged steps twice; a mean over its rows would count them twice (a
    summary mean moved from 0.2514 to 0.2342 in issue 25), so the report stops, naming the file."""
    from projected_grpo.cli import main

    path = sweep_dir / "vanilla_s41" / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3] + lines[1:3] + lines[3:]))          # steps 1, 2, 3, 2, 3, 4, ...
    assert main(["report", str(sweep_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}: train step 2 is logged more than once" in err[0]
    assert not (sweep_dir / "results.md").exists()


def test_report_states_each_arms_label_use(tmp_path: Path):
    """Issue 27: the Arms section says what each arm knew, read from its run's config (a monitor's TPR and
    FPR as the run set them); the headline table carries the kind beside the numbers."""
    write_run(tmp_path, "vanilla", 41, flat(0.5), flat(0.2))
    d = write_run(tmp_path, "monitor_penalty", 41, flat(0.1), flat(0.2))
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "monitor_tpr": 0.9, "monitor_fpr": 0.05}))
    for arm in ("vanilla", "monitor_penalty"):       # eval rows, so the headline tables are written
        with open(tmp_path / f"{arm}_s41" / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"kind": "eval", "step": STEPS, "eval_hack_rate": 0.5, "eval_pass_rate": 0.2,
                                "eval_n": 8}) + "\n")
    text = write_report(tmp_path).read_text()
    assert "- monitor_penalty (uses labels: monitor): " in text
    assert "Knows: monitor: noisy monitor, TPR 0.90 / FPR 0.05." in text
    assert "- vanilla: plain GRPO" in text and "Knows: nothing." in text
    assert "| monitor_penalty (uses labels: monitor) | monitor | 41 |" in text
    assert "| vanilla | nothing | 41 |" in text


def test_report_states_routings_label_use_and_both_eval_hack_rates(tmp_path: Path):
    """Gradient routing: the Arms section says what flagged the rows and that they went to a quarantine
    dropped at eval; the headline gives the deployed eval hack (δQ dropped) and, in its own column,
    the eval hack with the quarantine kept, beside the training hack (which had it)."""
    write_run(tmp_path, "vanilla", 41, flat(0.5), flat(0.2))
    d = write_run(tmp_path, "routing", 41, flat(0.4), flat(0.2))
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "monitor_tpr": 0.9, "monitor_fpr": 0.05}))
    for arm, extra in (("vanilla", {}), ("routing", {"eval_hack_rate_with_quarantine": 0.625})):
        with open(tmp_path / f"{arm}_s41" / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"kind": "eval", "step": STEPS, "eval_hack_rate": 0.125, "eval_pass_rate": 0.2,
                                "eval_n": 8, **extra}) + "\n")
    text = write_report(tmp_path).read_text()
    assert ("Knows: monitor: noisy monitor, TPR 0.90 / FPR 0.05, flagged rows routed to a quarantine δQ "
            "dropped at eval and deploy.") in text
    headline = text.split("### Hacking")[1].split("### Capability")[0]
    assert "| train hack (last 5) | eval hack with quarantine |" in headline
    row = next(line for line in headline.splitlines() if line.startswith("| routing (uses labels: monitor) |"))
    assert row.split(" | ")[3].startswith("0.125") and row.endswith("| 0.625 (SD —, SE —, n=1) |")
    assert next(line for line in headline.splitlines() if line.startswith("| vanilla |")).endswith("| — |")
