"""`pgrpo extract` / `pgrpo verify` (the hack direction V: vhack.py, verify.py) and `pgrpo
rebound-direction` (Wu & Tang's concept direction: rebound.py).

Their flags are the run config's fields (model, dtype, device, targets, enable_thinking, pairs,
vhack_m, vhack_modes, seed, persona_pairs) on a `--preset` base, and the model is loaded as a run
loads it (train.load_policy), so `pgrpo extract --preset P` writes the V that `pgrpo train --preset P`
would extract into its run dir."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from projected_grpo.cli.flags import add_config_flags, add_preset_flag
from projected_grpo.config import config_from_args, preset
from projected_grpo.errors import UserError
from projected_grpo.directions.vhack import CONTROLS, check_out_path

POLICY = ("model", "dtype", "device", "targets", "enable_thinking")   # what load_policy reads
BASE_HELP = " (default smoke, as `pgrpo train`): the base of the config flags below"


def add_commands(sub) -> None:
    p = sub.add_parser("extract", help="extract the hack direction V from contrastive pairs")
    add_preset_flag(p, extra=BASE_HELP)
    add_config_flags(p, only=POLICY + ("pairs", "vhack_m", "vhack_modes", "seed"))
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--control", default="none", choices=CONTROLS,
                   help="none: the real V; random / shuffled: a control V (seeded by --seed)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per backward")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("verify", help="check V on the held-out pairs; exit 1 when it fails")
    add_preset_flag(p, extra=BASE_HELP)
    add_config_flags(p, only=POLICY + ("pairs", "vhack_modes", "v_hack"))
    p.add_argument("--min-frac-pos", type=float, default=0.8, help="least share of modules with cos > 0")
    p.add_argument("--margin-eps", type=float, default=0.01,
                   help="size of the step along V in the margin check (per coordinate, as an AdamW lr)")
    p.add_argument("--table", default=None, help="per-module table (.md or .csv; default beside V)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per backward")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("rebound-direction", help="compute the Wu & Tang concept direction")
    add_preset_flag(p, extra=BASE_HELP)
    add_config_flags(p, only=POLICY + ("persona_pairs",))
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per forward")
    p.set_defaults(func=_cmd_rebound_direction)


def _cmd_extract(args) -> int:
    from projected_grpo.training.train import load_policy
    from projected_grpo.directions.vhack import extract_to_file

    start = time.time()
    cfg = config_from_args(args, preset(args.preset), files=False)
    check_out_path(args.out, "--out")
    model, tok, adapter = load_policy(cfg)
    v, pair_set = extract_to_file(args.out, model, tok, adapter, cfg.pairs, cfg.vhack_modes, cfg.vhack_m,
                                  args.control, cfg.seed, args.batch_size)
    m_eff = next(iter(v.values())).shape[0]
    if m_eff != cfg.vhack_m:
        print(f"note: m capped from {cfg.vhack_m} to {m_eff} (training pairs {len(pair_set.pairs)}, "
              f"smallest rank {min(adapter.ranks().values())})", file=sys.stderr)
    zero = sum(int(V.abs().max() == 0) for V in v.values())
    print(f"wrote {args.out}: {len(v)} modules, m={m_eff}, control={args.control}, "
          f"{len(pair_set.pairs)} training pairs from {pair_set.path}")
    print(json.dumps({"modules": len(v), "scalars": adapter.n_scalars, "m": m_eff,
                      "zero_norm_modules": zero, "pairs": len(pair_set.pairs),
                      "seconds": round(time.time() - start, 2)}))
    return 0


def _cmd_verify(args) -> int:
    from projected_grpo.core.adapter import read_metadata
    from projected_grpo.directions.pairs import load_pairs, parse_modes
    from projected_grpo.training.train import load_policy
    from projected_grpo.directions.verify import VerifyThresholds, margin_line, verify_v_hack, write_table
    from projected_grpo.directions.vhack import load_v_hack

    start = time.time()
    cfg = config_from_args(args, preset(args.preset), files=False)
    if not cfg.v_hack:
        raise UserError("--v-hack FILE is required: the V file written by `pgrpo extract`")
    v_path = Path(cfg.v_hack)
    table = Path(args.table) if args.table else v_path.with_name(v_path.stem + ".verify.md")
    check_out_path(table, "--table")
    model, tok, adapter = load_policy(cfg)
    v = load_v_hack(v_path, adapter)
    meta = read_metadata(v_path)
    # --vhack-modes left empty: the modes V was extracted on (all when it names none)
    modes = parse_modes(cfg.vhack_modes) if cfg.vhack_modes else (tuple(json.loads(meta["modes"])) or None)
    pair_set = load_pairs(cfg.pairs, split="heldout", modes=modes)
    result = verify_v_hack(model, tok, adapter, v, pair_set.pairs,
                           VerifyThresholds(min_frac_pos=args.min_frac_pos), args.batch_size,
                           margin_eps=args.margin_eps)
    write_table(table, result.pop("per_module"))
    print(f"held-out check of {v_path} (m={meta['m']}, control={meta.get('control')}) on "
          f"{len(pair_set.pairs)} pairs; per-module table: {table}")
    print(f"SVD basis {adapter.basis_fingerprint[:12]}: the one V was made in")
    print(f"frac>0={result['frac_pos']:.3f} mean={result['mean']:+.3f} median={result['median']:+.3f} "
          f"null_cos={result['null_cos']:.3f} modules={result['n_modules']}")
    print(margin_line(result))
    print(f"-> {'PASS' if result['pass'] else 'FAIL'} ({time.time() - start:.1f}s)")
    print(json.dumps(result))
    return 0 if result["pass"] else 1


def _cmd_rebound_direction(args) -> int:
    from projected_grpo.models import load_model
    from projected_grpo.directions.pairs import load_pairs
    from projected_grpo.directions.rebound import concept_direction, save_direction
    from projected_grpo.training.train import policy_device

    cfg = config_from_args(args, preset(args.preset), files=False)
    pair_set = load_pairs(cfg.persona_pairs, split="train")
    # the run's model without its δS adapter: at δS = 0 the adapter is the identity, bit for bit
    model, tok = load_model(cfg.model, cfg.dtype, str(policy_device(cfg)), cfg.enable_thinking)
    cd = concept_direction(model, tok, pair_set.pairs, cfg.model, args.batch_size, pair_set.sha256)
    save_direction(args.out, cd)
    print(f"wrote {args.out}: layers {cd.layers}, {cd.n_train} training pairs, ‖d‖={cd.vector.norm():.4g}")
    print(json.dumps({"layers": cd.layers, "d_model": cd.vector.numel(), "pairs": cd.n_train,
                      "norm": round(cd.vector.norm().item(), 6)}))
    return 0
