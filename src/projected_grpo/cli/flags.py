"""Command-line flags built from TrainConfig: one `--field-name` per field, with the field's type, its
one line of doc as `--help`, and its closed set of values (config.allowed_values) as `choices`.
A flag left out is None, so the command's base config (a preset) keeps its value."""

from __future__ import annotations

import argparse
import typing
from dataclasses import fields
from typing import Callable

from projected_grpo.config import PRESETS, TrainConfig, allowed_values, check_value, field_help, parse_bool
from projected_grpo.errors import UserError


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (),
                     only: tuple[str, ...] | None = None) -> None:
    """One `--field-name` per TrainConfig field (all of them, or those in `only`), less `skip`."""
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        flag, kind, allowed = "--" + f.name.replace("_", "-"), hints[f.name], allowed_values(f.name)
        if kind is bool:
            parser.add_argument(flag, type=bool_flag, default=None, metavar="BOOL", help=field_help(f.name))
        elif allowed is not None:
            parser.add_argument(flag, type=closed_flag(f.name), choices=allowed, default=None,
                                help=field_help(f.name))
        else:
            parser.add_argument(flag, type=kind, default=None, help=field_help(f.name))


def add_preset_flag(parser: argparse.ArgumentParser, default: str | None = "smoke", extra: str = "") -> None:
    """--preset NAME: the config the field flags are laid over."""
    parser.add_argument("--preset", default=default, help=f"one of {', '.join(PRESETS)}{extra}")


def bool_flag(text: str) -> bool:
    """argparse `type` of a bool field: true/false, 1/0, yes/no, on/off."""
    try:
        return parse_bool(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def closed_flag(name: str) -> Callable[[str], str]:
    """argparse `type` of a field with a closed set: its value, or the config's own message naming the
    allowed values (the same one `validate` and `from_dict` give)."""
    def parse(text: str) -> str:
        try:
            check_value(name, text)
        except UserError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
        return text

    return parse
