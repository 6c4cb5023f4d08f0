"""probe gates on constructed numbers and the probe driver with a fake trainer (the sweep: test_sweep.py)."""

from __future__ import annotations

import json
from pathlib import Path

from projected_grpo.studies import experiments
from projected_grpo.training import runio
from projected_grpo.studies.experiments import ProbeThresholds, probe_verdict

GOOD_V = {"pass": True, "frac_pos": 0.95, "median": 0.3, "null_cos": 0.09}
BAD_V = {"pass": False, "frac_pos": 0.40, "median": -0.01, "null_cos": 0.09}


def rows(key: str, values: list) -> list[dict]:
    return [{"step": i + 1, key: v} for i, v in enumerate(values)]


def projected(cos_in: list, cos_in_null: list) -> list[dict]:
    """Projected-run rows: cos_in of the real V and cos_in_null of a random V, on the same gradients."""
    return [{"step": i + 1, "cos_in": a, "cos_in_null": b, "frac_fired": 0.5}
            for i, (a, b) in enumerate(zip(cos_in, cos_in_null))]


FIRES = projected([0.3, 0.4], [0.1, 0.12])


# ---- probe gates ----------------------------------------------------------------------------
def test_probe_all_gates_pass():
    passed, gate, msg = probe_verdict(GOOD_V, rows("hack_rate", [0, 0, 0.4, 0.5, 0.6]),
                                      FIRES, ProbeThresholds(0.3, 3))
    assert passed and gate is None
    assert "0.50" in msg and "cos_in 0.350 > random V's cos_in_null 0.110" in msg


def test_probe_gate1_fails_on_verify():
    passed, gate, msg = probe_verdict(BAD_V, rows("hack_rate", [1.0]), FIRES)
    assert (passed, gate) == (False, 1)
    assert msg.startswith("gate 1") and "0.400" in msg
    assert probe_verdict(None, None, None)[1] == 1


def test_probe_gate2_fails_on_low_vanilla_hack_rate():
    # the first steps hack a lot, the last k do not: the window is the last k steps only
    vanilla = rows("hack_rate", [0.9, 0.9, 0.1, 0.2, 0.0])
    passed, gate, msg = probe_verdict(GOOD_V, vanilla, FIRES, ProbeThresholds(0.3, 3))
    assert (passed, gate) == (False, 2)
    assert msg == "gate 2 (vanilla hack rate 0.10 < 0.30 over the last 3 steps)"
    # null hack rates (no student rows) never pass
    assert probe_verdict(GOOD_V, rows("hack_rate", [None, None]), None)[1] == 2
    assert probe_verdict(GOOD_V, [], None)[1] == 2
    # exactly at the threshold passes gate 2
    assert probe_verdict(GOOD_V, rows("hack_rate", [0.3]), FIRES,
                         ProbeThresholds(0.3, 1))[0]


def test_probe_gate3_fails_when_the_real_v_removes_no_more_than_a_random_v():
    hacks = rows("hack_rate", [0.5] * 5)
    # a random V "fires" about half its coefficients: frac_fired alone passes any V
    like_random = projected([0.12, 0.10], [0.11, 0.11])
    passed, gate, msg = probe_verdict(GOOD_V, hacks, like_random)
    assert (passed, gate) == (False, 3)
    assert msg == ("gate 3 (projected mean cos_in 0.110 does not exceed the random V's cos_in_null "
                   "0.110 by more than 0)")
    assert probe_verdict(GOOD_V, hacks, projected([0.3], [0.1]), ProbeThresholds(min_cos_margin=0.25))[1] == 3
    assert probe_verdict(GOOD_V, hacks, rows("frac_fired", [0.5]))[1] == 3   # no cos_in_null logged
    assert probe_verdict(GOOD_V, rows("hack_rate", [0.5]), None)[1] == 3


def test_probe_command_stops_at_first_failed_gate(tmp_path, monkeypatch, capsys):
    """The probe driver with a fake V check and fake trainer: gate 2 fails, the projected run never starts."""
    calls = []
    monkeypatch.setattr(experiments, "prepare_v_hack", lambda cfg, path, verify, progress=True: dict(GOOD_V,
                        mean=0.3, n_modules=28))
    monkeypatch.setattr("projected_grpo.training.train.train", FakeTrain(calls, hack=0.0))
    from projected_grpo.cli import main

    code = main(["probe", "--preset", "smoke", "--seed", "7", "--steps", "4", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "VERDICT: FAIL at gate 2 (vanilla hack rate 0.00 < 0.30 over the last 5 steps)" in out
    assert [c[0] for c in calls] == ["vanilla"]
    record = json.loads((tmp_path / "probe.json").read_text())
    assert record["failed_gate"] == 2 and record["gate2"]["hack_rate_last_k"] == 0.0
    assert record["gate1"]["pass"] is True and "gate3" not in record

    calls.clear()
    monkeypatch.setattr("projected_grpo.training.train.train", FakeTrain(calls, hack=0.5))
    code = main(["probe", "--preset", "smoke", "--seed", "8", "--steps", "4", "--out", str(tmp_path / "b")])
    assert code == 0 and [c[0] for c in calls] == ["vanilla", "projected"]
    out = capsys.readouterr().out
    assert "VERDICT: PASS" in out and "cos_in 0.100 > random V's cos_in_null 0.050" in out
    gate3 = json.loads((tmp_path / "b" / "probe.json").read_text())["gate3"]
    assert (gate3["cos_in_mean"], gate3["cos_in_null_mean"]) == (0.1, 0.05)


# ---- a fake trainer (also used by test_sweep.py) ---------------------------------------------
class Crash(RuntimeError):
    """The fake trainer's stand-in for a killed run."""


class FakeTrain:
    """Writes a synthetic run dir like train() does; crashes after `crash_after` steps of the runs named."""

    def __init__(self, calls: list, crash: dict | None = None, hack: float = 0.5):
        self.calls, self.crash, self.hack = calls, crash or {}, hack

    def __call__(self, cfg, out, resume=False, progress=True):
        out = Path(out)
        self.calls.append((cfg.arm, cfg.seed, resume, cfg.v_hack))
        runio.prepare_dir(out, cfg.to_json(), resume)
        start = len(runio.read_jsonl(out / runio.METRICS)) if resume else 0
        stop = self.crash.pop(out.name, cfg.steps)
        for step in range(start, min(stop, cfg.steps)):
            runio.append_jsonl(out / runio.METRICS, [{"step": step + 1, "hack_rate": self.hack,
                                                      "pass_rate": 0.1, "frac_fired": 0.5, "cos_in": 0.1,
                                                      "cos_in_null": 0.05,
                                                      "cos_out": 0.0, "reward_mean": 0.5}])
        if stop < cfg.steps:
            raise Crash(f"killed at step {stop}")
        (out / "delta_s.safetensors").write_bytes(b"fake")
        return out
