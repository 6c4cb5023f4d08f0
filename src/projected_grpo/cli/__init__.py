"""`pgrpo` command line. Each module of this package registers its subcommands through `add_commands`;
the stage modules do the work and know nothing of argparse. Commands built on a run's config take
its fields as flags (cli/flags.py), so a flag means the same, with the same default, everywhere."""

from __future__ import annotations

import argparse
import importlib
import sys

from projected_grpo import __version__
from projected_grpo.errors import UserError

# Modules of this package that define `add_commands(subparsers)`, in `pgrpo --help` order; each sets
# `func` on its parsers.
COMMAND_MODULES = ["adapter", "directions", "env", "train", "experiments", "report", "warmstart"]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser with argparse's prefix matching off (allow_abbrev=False), for `pgrpo` and,
    through add_subparsers (whose parser_class defaults to the parent's type), every command. With it
    on, a renamed flag's old spelling still parsed as whatever flag it prefixes (`extract --m 4`, the
    old `--m` of `--vhack-m`, was read as `--model 4`); now an unknown or abbreviated flag is an error."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pgrpo", description="projected_grpo's command line; "
                                     "`pgrpo COMMAND --help` lists a command's flags")
    parser.add_argument("--version", action="version", version=f"pgrpo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; -> its exit status (2: bad flags or bad input, with a one-line error)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a flag argparse refused (it printed why)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except (UserError, OSError) as err:  # bad input or an unreadable / unwritable path: one line, no traceback
        print(f"pgrpo {args.command}: error: {err}", file=sys.stderr)
        return 2
