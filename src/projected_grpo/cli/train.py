"""`pgrpo train`: one GRPO run into --out; every TrainConfig field is a flag."""

from __future__ import annotations

from projected_grpo.cli.flags import add_config_flags, add_preset_flag


def add_commands(sub) -> None:
    from projected_grpo.train import _cmd_train

    p = sub.add_parser("train", help="one GRPO run (one arm, one seed) into --out")
    add_preset_flag(p, default=None, extra=" (default smoke; with --resume the run's config.json is the base "
                                           "and a preset is not needed)")
    p.add_argument("--out", default=None, help="run directory (required unless --print-config)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with its config.json; flags "
                        "given beside it must agree with that config")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as JSON (the run's, with --resume) and exit")
    add_config_flags(p)
    p.set_defaults(func=_cmd_train)
