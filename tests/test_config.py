"""TrainConfig: closed sets of values from one source each (the arms table, the loophole modes, the
Literal types), checked alike by `validate`, `from_dict` and the sweep's variants."""

from __future__ import annotations

import json
from dataclasses import fields, replace

import pytest

from projected_grpo import arms, models
from projected_grpo.config import TrainConfig, allowed_values, parse_value, preset
from projected_grpo.env.prompts import MODES
from projected_grpo.errors import UserError


def test_from_dict_refuses_a_typo_a_wrong_type_and_a_value_outside_its_set():
    good = json.loads(preset("smoke").to_json())
    assert TrainConfig.from_dict(good) == preset("smoke")
    assert TrainConfig.from_dict({"lr": 1}).lr == 1                      # JSON 1 is a valid float
    cases = [({"stepz": 3}, "stepz"),
             ({"steps": "3"}, "field steps must be int, got '3'"),
             ({"steps": True}, "field steps must be int"),
             ({"coverage": 1}, "field coverage must be bool"),
             ({"lr": "fast"}, "field lr must be float"),
             ({"arm": "nonsense"}, "field arm: unknown arm 'nonsense'"),
             ({"project_target": "both"}, "--project-target must be grad or update"),
             ({"dtype": "int8"}, "--dtype must be bfloat16, float32 or float16"),
             ({"mode": "exit_code"}, "field mode: unknown mode 'exit_code'")]
    for bad, message in cases:
        with pytest.raises(UserError, match="run/config.json") as err:
            TrainConfig.from_dict(good | bad, "run/config.json")
        assert message in str(err.value), (bad, str(err.value))
    with pytest.raises(UserError) as err:
        TrainConfig.from_dict({"arm": "nonsense"})
    assert all(name in str(err.value) for name in arms.NAMES)


def test_allowed_values_come_from_their_one_source():
    assert allowed_values("arm") == arms.NAMES == tuple(a.name for a in arms.TABLE)
    assert allowed_values("mode") == MODES
    assert set(allowed_values("dtype")) == set(models.DTYPES)            # models maps the same names
    assert allowed_values("model") is None and allowed_values("steps") is None
    for f in fields(TrainConfig):                                        # every default is allowed
        allowed = allowed_values(f.name)
        assert allowed is None or f.default in allowed, f.name


def test_validate_and_variants_refuse_values_outside_the_set():
    with pytest.raises(UserError, match="unknown arm 'x'"):
        replace(preset("smoke"), arm="x").validate(files=False)
    with pytest.raises(UserError, match="--delta-s-impl must be hook or merged"):
        replace(preset("smoke"), delta_s_impl="fused").validate(files=False)
    with pytest.raises(UserError, match="no hint variant 'loud'"):
        replace(preset("smoke"), hint="loud").validate(files=False)
    assert parse_value("project_target", "update") == "update" and parse_value("coverage", "on") is True
    assert parse_value("lr", "0.5") == 0.5 and parse_value("steps", "7") == 7
    for name, text in (("project_target", "both"), ("steps", "seven"), ("coverage", "maybe")):
        with pytest.raises(UserError):
            parse_value(name, text)


def test_the_substrate_preset_is_the_grid_point_its_results_name():
    """`qwen05_warm` trains as the calibrated point did: its committed config.json (the file a user reads
    in docs/results/substrate/grid2) agrees on every field that shapes training, eval included; only the
    model path (a local warm-start dir) differs."""
    import json
    from pathlib import Path

    from projected_grpo.config import preset

    ran = json.loads((Path(__file__).parents[1] / "docs/results/substrate/grid2/lr25e5_s1/config.json").read_text())
    mine = preset("qwen05_warm")
    shaping = ("problems", "mode", "hint", "steps", "prompts_per_step", "group_size", "max_new_tokens", "beta",
               "lr", "warmup_steps", "lr_schedule", "micro_batch", "temperature", "top_p", "teacher_pool",
               "mix_ratio", "correct_reward", "format_reward", "clip_eps", "num_iterations", "tis_cap", "dtype",
               "eval_every", "eval_samples", "eval_problems", "grade_timeout_s")
    assert {k: getattr(mine, k) for k in shaping} == {k: ran[k] for k in shaping}
    assert (ran["arm"], ran["seed"]) == ("vanilla", 1)
