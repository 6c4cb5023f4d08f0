"""`pgrpo adapter-check`: the δS adapter is exact on a model (adapter.adapter_check), loaded as a run
loads it: the run config's model, dtype, device and targets."""

from __future__ import annotations

import json

from projected_grpo.core.adapter import AdapterConfig, adapter_check
from projected_grpo.cli.flags import add_config_flags, add_preset_flag
from projected_grpo.config import config_from_args, preset

FIELDS = ("model", "dtype", "device", "targets")


def add_commands(sub) -> None:
    p = sub.add_parser("adapter-check", help="check the δS adapter is exact on a model")
    add_preset_flag(p, extra=" (default smoke, as `pgrpo train`): the base of the flags below")
    add_config_flags(p, only=FIELDS)
    p.set_defaults(func=_cmd_adapter_check)


def _cmd_adapter_check(args) -> int:
    from projected_grpo.training.train import policy_device

    cfg = config_from_args(args, preset(args.preset), files=False)
    result = adapter_check(cfg.model, cfg.dtype, str(policy_device(cfg)),
                           AdapterConfig(targets=tuple(cfg.targets.split(","))))
    print(f"{result['modules']} modules, {result['scalars']} δS scalars, dtype {cfg.dtype}")
    print(f"identity at δS=0: max |Δlogit| = {result['max_abs_diff']}; reference exact: "
          f"{result['reference_exact']}; merge round trip exact: {result['merge_roundtrip_exact']}; "
          f"merged vs hook logits: {result['merged_vs_hook_max_abs']:.3g}")
    print(json.dumps({k: result[k] for k in ("modules", "scalars", "max_abs_diff", "merge_roundtrip_exact")}))
    ok = result["max_abs_diff"] == 0 and result["merge_roundtrip_exact"] and result["reference_exact"]
    return 0 if ok else 1
