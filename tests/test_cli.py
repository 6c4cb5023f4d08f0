"""The `pgrpo` command line: one package, every command listed, flags that are the run config's fields
(same names, defaults, allowed values, help) in every command built on it."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import fields, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

import projected_grpo
from projected_grpo import arms
from projected_grpo.core.adapter import read_metadata
from projected_grpo.cli import build_parser, main
from projected_grpo.config import TrainConfig, allowed_values, field_help, preset
from projected_grpo.training.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("adapter-check", "extract", "verify", "rebound-direction", "env-check", "grade", "train", "probe",
            "sweep", "demo", "report", "warmstart", "baseline")


def test_python_m_cli_lists_every_command_and_the_version():
    """The sweep starts `python -m projected_grpo.cli`; the console script is projected_grpo.cli:main."""
    run = subprocess.run([sys.executable, "-m", "projected_grpo.cli", "--help"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    listed = re.findall(r"^    (\S+)", run.stdout, re.M)
    assert set(COMMANDS) <= set(listed), listed
    run = subprocess.run([sys.executable, "-m", "projected_grpo.cli", "--version"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == f"pgrpo {projected_grpo.__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["pgrpo"] == "projected_grpo.cli:main"
    # the version is written once, in the package; pyproject reads it from there
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "projected_grpo.__version__"}


def test_a_bad_arm_names_the_arms_of_the_table(capsys):
    for argv in (["train", "--print-config", "--arm", "nonsense"],
                 ["sweep", "--out", "x", "--variant", "mine=nonsense:lr=0.1", "--arms", "mine"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "'nonsense'" in err and all(a.name in err for a in arms.TABLE), err


def test_closed_flags_refuse_other_values_naming_the_allowed_ones(capsys):
    for field in (f.name for f in fields(TrainConfig) if allowed_values(f.name) and f.name != "arm"):
        assert main(["train", "--print-config", f"--{field.replace('_', '-')}", "bogus"]) == 2, field
        err = capsys.readouterr().err
        assert f"--{field.replace('_', '-')}" in err and "'bogus'" in err, err
        assert all(v in err for v in allowed_values(field)), err
    assert main(["extract", "--out", "v.safetensors", "--dtype", "int8"]) == 2
    assert "bfloat16, float32 or float16" in capsys.readouterr().err


def other_value(name: str, value):
    """A value of field `name` unlike `value`, of its type and allowed."""
    special = {"hint": "detailed", "report_to": "tensorboard", "teacher_kinds": "stub", "mix_ratio": 0.25,
               "eval_problems": 5.0, "group_size": 4, "eval_temperature": 0.5, "eval_samples": 1,
               "monitor_tpr": 0.9, "monitor_fpr": 0.05, "probe_heldout": 0.5, "probe_threshold": 0.7,
               "route_threshold": 0.02}
    if name in special:
        return special[name]
    if allowed_values(name):
        return next(v for v in allowed_values(name) if v != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 3
    return value + "x" if value else "x"


def test_every_config_field_is_a_train_flag_with_its_help(capsys):
    base = preset("smoke")
    needs = {"micro_tokens": {"train_batching": "sorted"},   # a flag valid only beside another
             "base_on_cpu": {"delta_s_impl": "merged"}}
    for f in fields(TrainConfig):
        value = other_value(f.name, getattr(base, f.name))
        text = str(value).lower() if isinstance(value, bool) else str(value)
        extra = needs.get(f.name, {})
        flags = [x for k, v in extra.items() for x in (f"--{k.replace('_', '-')}", v)]
        assert main(["train", "--print-config", *flags, f"--{f.name.replace('_', '-')}", text]) == 0, f.name
        printed = json.loads(capsys.readouterr().out)
        assert printed == json.loads(replace(base, **extra, **{f.name: value}).to_json()), f.name
    assert main(["train", "--help"]) == 0
    shown = "".join(capsys.readouterr().out.split())       # argparse wraps lines, also at hyphens
    for f in fields(TrainConfig):
        assert f"--{f.name.replace('_', '-')}" in shown and "".join(field_help(f.name).split()) in shown, f.name


def test_config_commands_share_train_flags_help_and_defaults(capsys):
    """extract / verify / rebound-direction / adapter-check: each flag that names a config field is that
    field's flag (its help as `pgrpo train --help` shows it), on the same default base (--preset smoke)."""
    def options(argv):
        assert main([*argv, "--help"]) == 0
        text = capsys.readouterr().out
        return dict(re.findall(r"^  (--[a-z-]+)[^\n]*?(?:\n {20,}|  +)(\S[^\n]*)", text, re.M)), text

    train_help, _ = options(["train"])
    config_flags = {"--" + f.name.replace("_", "-") for f in fields(TrainConfig)}
    for command in ("extract", "verify", "rebound-direction", "adapter-check"):
        shown, text = options([command])
        shared = config_flags & set(shown)
        assert {"--model", "--dtype", "--device"} <= shared, (command, shown)
        for flag in shared:
            assert shown[flag] == train_help[flag], (command, flag)
        assert "defaultsmoke,as`pgrpotrain`" in "".join(text.split())
        assert "--m" not in shown and "--modes" not in shown, command  # V's m and modes: --vhack-m/-modes


def test_extract_and_rebound_direction_write_what_a_training_run_extracts(tmp_path, mixed_code_pairs, capsys):
    """Same flags, no others: `pgrpo extract` writes the V, and `pgrpo rebound-direction` the concept
    direction, that `pgrpo train` extracts into its run dir at set-up (same defaults, same loader)."""
    persona = tmp_path / "persona.jsonl"
    rows = (Path(projected_grpo.__file__).parent / "data" / "pairs_persona.jsonl").read_text().splitlines()
    persona.write_text("\n".join([r for r in rows if '"train"' in r][:4]) + "\n")
    given = ["--pairs", mixed_code_pairs, "--persona-pairs", str(persona)]
    v_cli, d_cli = tmp_path / "v.safetensors", tmp_path / "d.safetensors"
    assert main(["extract", *given[:2], "--out", str(v_cli)]) == 0
    assert main(["rebound-direction", *given[2:], "--out", str(d_cli)]) == 0
    capsys.readouterr()
    # the config `pgrpo train` runs with these flags; its trainer extracts both at set-up
    assert main(["train", "--print-config", "--arm", "rebound", "--n-problems", "4", *given]) == 0
    cfg = TrainConfig.from_dict(json.loads(capsys.readouterr().out))
    run = tmp_path / "run"
    Trainer(cfg, run, progress=False)
    for ours, theirs in ((v_cli, run / "v_hack.safetensors"), (d_cli, run / "rebound_direction.safetensors")):
        a, b = load_file(ours), load_file(theirs)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), ours
        meta_a, meta_b = read_metadata(ours), read_metadata(theirs)
        meta_a.pop("created_at"), meta_b.pop("created_at")
        assert meta_a == meta_b
    assert load_file(v_cli)[next(iter(load_file(v_cli)))].shape[0] == cfg.vhack_m == 4


def test_extract_and_adapter_check_honour_targets(tmp_path, mixed_code_pairs, capsys):
    assert main(["extract", "--pairs", mixed_code_pairs, "--targets", "q_proj,v_proj", "--vhack-m", "1",
                 "--out", str(tmp_path / "v.safetensors")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["modules"] == 8   # 4 layers × 2
    assert set(load_file(tmp_path / "v.safetensors")) == {f"model.layers.{i}.self_attn.{p}"
                                                          for i in range(4) for p in ("q_proj", "v_proj")}
    assert main(["adapter-check", "--targets", "down_proj"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["modules"] == 4


def _commands(parser) -> dict:
    """`pgrpo`'s own parser and each command's, by name ("" for the top level)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser, **sub.choices}


def _minimal_argv(name: str, parser) -> list[str]:
    """An argv that parses: the command with a value for each of its required flags and positionals
    (for the top level, a command with its positional)."""
    if not name:
        return ["report", "x"]
    argv = [name]
    for action in parser._actions:
        if not action.option_strings:
            argv.append("x")
        elif action.required:
            argv += [action.option_strings[-1], str(action.choices[0]) if action.choices else "x"]
    return argv


def _abbreviations(parser) -> list[list[str]]:
    """[flag minus its last letter, value] for each long flag whose shortened spelling is a prefix of
    that flag alone: what prefix matching would read as the flag."""
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    out = []
    for action in parser._actions:
        for flag in (s for s in action.option_strings if s.startswith("--")):
            short = flag[:-1]
            if len(short) > 2 and [f for f in flags if f.startswith(short)] == [flag]:
                out.append([short] + ([] if action.nargs == 0 else
                                      [str(action.choices[0]) if action.choices else "1"]))
    return out


def _refused(parser, argv: list[str], flag: str, capsys) -> None:
    """The parser exits 2 naming `flag` as unrecognized (parse_args runs no command)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        assert exit_.code == 2, argv
        assert f"unrecognized arguments: {flag}" in capsys.readouterr().err, argv
    else:
        raise AssertionError(f"{argv} parsed as {vars(args)}")


def test_no_command_takes_an_abbreviated_or_renamed_flag(capsys):
    """Issue 25 item 7: prefix matching is off everywhere. `extract --m 4` (the old spelling of
    --vhack-m) was read as `--model 4`; every abbreviation of every flag of every command, and of
    pgrpo's own (--versio, --hel), is refused as an unrecognized argument."""
    parser = build_parser()
    commands = _commands(parser)
    assert set(COMMANDS) <= set(commands)
    for name, sub in commands.items():
        cases = _abbreviations(sub)
        assert cases, name                                   # every command has flags to abbreviate
        base = _minimal_argv(name, sub)
        assert isinstance(parser.parse_args(base), argparse.Namespace)   # without the abbreviation: fine
        for case in cases:
            _refused(parser, case + base if not name else base + case, case[0], capsys)
    _refused(parser, ["extract", "--m", "4", "--out", "v.safetensors"], "--m 4", capsys)
