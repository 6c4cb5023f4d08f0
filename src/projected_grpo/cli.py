"""`pgrpo` command line. Each stage module registers its own subcommands through `add_commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

from projected_grpo.errors import UserError

# Modules that define `add_commands(subparsers)`; each sets `func` on its parsers.
COMMAND_MODULES = [
    "projected_grpo.adapter",
    "projected_grpo.vhack",
    "projected_grpo.rebound",
    "projected_grpo.env.commands",
    "projected_grpo.train",
    "projected_grpo.experiments",
    "projected_grpo.warmstart",
    "projected_grpo.baseline",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgrpo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, OSError) as err:  # bad input or an unreadable / unwritable path: one line, no traceback
        print(f"pgrpo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
