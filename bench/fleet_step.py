"""Does running several runs in one process pay? (issue #28; core/fleet.py)

Not a test. On one card, for each R in --runs, one training pass (forward + backward to δS) of R runs'
batches of --rows rows each, two ways, and the sampling of those rows, two ways:

  separate   each run's own pass over its own rows, one after the other in this process: the work of R
             processes sharing a card, without the time-slicing between them (so a lower bound on
             their cost); today's fastest single-run path: merged δS, sorted micro-batches of
             --micro-tokens tokens;
  fleet      one pass over all R · rows rows, each row with its own run's δS (Fleet.rows: the per-row
             hook path U (δS_b ⊙ Vh x_b)), sorted micro-batches of --fleet-micro-tokens tokens;
  gen R×     R decodes of --rows rows each (the fast decode loop, each run's δS folded in turn);
  gen fleet  one decode of R · rows rows on the R runs' stacked folds (fast/fleet_decode.py), --new-tokens
             forced (eos suppressed) on both sides.

Rows are random tokens: prompts of --prompt-tokens (left-padded to lengths spread over ±20%), completions
of lengths drawn from an exponential of mean --mean-new capped at --new-tokens (the calibrated study's
completions average ~100 of 320 tokens). Random weights of the real shape (`random:` models) and random
U, Vh (timing depends on shapes only). Each figure: median over --steps timed repetitions after --warmup,
CUDA-synchronised, per run-step (the pass's seconds / R), with peak memory. Writes --json (one object per
R) and prints a Markdown table naming the card.

    python bench/fleet_step.py --size 0.5b --runs 1,3,9 --steps 3 --warmup 1 --json fleet.json
CPU plumbing check (tests/test_fleet.py): --device cpu --size tiny --runs 1,2 --rows 4 --prompt-tokens 12
--new-tokens 6 --mean-new 3 --steps 1 --warmup 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _grpo_common as common


def random_rows(n: int, args, vocab: int, gen: torch.Generator):
    """Rollouts of n rows: left-padded random prompts, right-padded random completions."""
    from projected_grpo.training.rollout import Rollouts

    lp, t = int(args.prompt_tokens * 1.2), args.new_tokens
    plen = torch.randint(int(args.prompt_tokens * 0.8), lp + 1, (n,), generator=gen)
    clen = torch.distributions.Exponential(1.0 / args.mean_new).sample((n,)).ceil().clamp(1, t).long()
    p_ids = torch.randint(10, vocab, (n, lp), generator=gen)
    p_mask = (torch.arange(lp)[None, :] >= (lp - plen)[:, None]).long()
    c_ids = torch.randint(10, vocab, (n, t), generator=gen)
    c_mask = (torch.arange(t)[None, :] < clen[:, None]).long()
    dev = common.DEVICE
    return Rollouts(p_ids.to(dev), p_mask.to(dev), c_ids.to(dev), c_mask.to(dev), [""] * n, None)


def timed(fn, args) -> tuple[float, float]:
    """(median seconds over the timed repetitions, peak GB) of fn()."""
    times = []
    common.reset_peak()
    for i in range(args.warmup + args.steps):
        common.sync()
        t0 = time.perf_counter()
        fn()
        common.sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), common.peak() / 2**30


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--size", default="0.5b", choices=list(common.SIZES))
    p.add_argument("--runs", default="1,3,9", help="comma list of R")
    p.add_argument("--rows", type=int, default=64, help="rows per run (P · G)")
    p.add_argument("--prompt-tokens", type=int, default=300)
    p.add_argument("--new-tokens", type=int, default=320)
    p.add_argument("--mean-new", type=float, default=100.0)
    p.add_argument("--micro-tokens", type=int, default=4096, help="separate passes' token budget")
    p.add_argument("--fleet-micro-tokens", type=int, default=16384, help="the fleet pass's token budget")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-gen", action="store_true", help="skip the sampling rows")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    try:
        runs = [int(r) for r in args.runs.split(",")]
    except ValueError:
        raise SystemExit(f"--runs {args.runs!r}: expected a comma list of counts")
    if any(r < 1 for r in runs):
        raise SystemExit(f"--runs {args.runs!r}: every R must be >= 1")
    common.set_device(args.device)

    from projected_grpo.config import preset
    from projected_grpo.core.adapter import attach
    from projected_grpo.core.fleet import Fleet
    from projected_grpo.core.passes import BatchState, backward_pass
    from projected_grpo.fast import fast_rollout, fleet_decode
    from projected_grpo.fast.fleet_decode import FleetWeights
    from projected_grpo.training.rollout import concat, eos_token_ids

    model = common.build_model(args.size)
    adapter = attach(model, f"random:{common.SIZES[args.size]}", basis=common.random_basis)
    vocab = model.config.vocab_size
    tok = common.tokenizer()
    base = replace(preset("qwen05_warm"), model=f"random:{common.SIZES[args.size]}", prompts_per_step=args.rows // 8
                   or 1, group_size=8, max_new_tokens=args.new_tokens, beta=0.0, tis_cap=0.0,
                   train_batching="sorted")
    separate_cfg = replace(base, delta_s_impl="merged", micro_tokens=args.micro_tokens)
    fleet_cfg = replace(base, delta_s_impl="hook", micro_tokens=args.fleet_micro_tokens)
    gen = torch.Generator().manual_seed(0)
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    results = []
    for r in runs:
        rows = [random_rows(args.rows, args, vocab, gen) for _ in range(r)]
        adv = [torch.randn(args.rows, generator=gen).to(common.DEVICE) for _ in range(r)]
        deltas = [{k: torch.randn(m.rank, generator=gen).to(common.DEVICE) * 0.01
                   for k, m in adapter.modules.items()} for _ in range(r)]
        teacher = [False] * args.rows

        def separate():
            for i in range(r):
                with torch.no_grad():
                    for k, prm in adapter.params().items():
                        prm.copy_(deltas[i][k])
                backward_pass(model, adapter, separate_cfg, rows[i], adv[i], teacher, BatchState())
                for prm in adapter.params().values():
                    prm.grad = None

        fleet = Fleet(adapter, r)
        for i in range(r):
            fleet.load_run(i, deltas[i])
        all_rows = concat(rows, pad_id=0)
        all_adv = torch.cat(adv)
        run_of_row = torch.arange(r).repeat_interleave(args.rows)

        def together():
            backward_pass(model, adapter, fleet_cfg, all_rows, all_adv, teacher * r, BatchState(),
                          per_rows=lambda mb: fleet.rows(run_of_row[mb]))
            for d in fleet.params():
                d.grad = None

        row = {"size": args.size, "card": card, "runs": r, "rows_per_run": args.rows,
               "tokens_per_run": round(sum(float(x.attention_mask.sum()) for x in rows) / r)}
        s, gb = timed(separate, args)
        row.update(train_separate_s=round(s / r, 4), train_separate_peak_gb=round(gb, 2))
        common.empty_cache()
        s, gb = timed(together, args)
        row.update(train_fleet_s=round(s / r, 4), train_fleet_peak_gb=round(gb, 2))
        common.empty_cache()
        if not args.no_gen:
            x = rows[0]
            p_ids, p_mask = x.prompt_ids.repeat(r, 1), x.prompt_mask.repeat(r, 1)   # (R · rows, Lp), run by run
            eos = eos_token_ids(model, tok)
            weights = FleetWeights(model, fleet)

            def gen_each():
                for i in range(r):
                    with torch.no_grad():
                        for k, prm in adapter.params().items():
                            prm.copy_(deltas[i][k])
                    with adapter.merged(), torch.no_grad():
                        fast_rollout.generate(model, p_ids[:args.rows], p_mask[:args.rows], args.new_tokens, eos,
                                              tok.pad_token_id, ignore_eos=True, return_logprobs=True)

            def gen_fleet():
                with torch.no_grad():
                    fleet_decode.generate(model, weights, p_ids, p_mask, args.new_tokens, eos, tok.pad_token_id,
                                          ignore_eos=True)

            s, gb = timed(gen_each, args)
            row.update(gen_each_s=round(s / r, 4), gen_each_peak_gb=round(gb, 2))
            fast_rollout.release()
            s, gb = timed(gen_fleet, args)
            row.update(gen_fleet_s=round(s / r, 4), gen_fleet_peak_gb=round(gb, 2),
                       gen_ratio=round(row["gen_each_s"] / (s / r), 3))
            fast_rollout.release()
            del weights
            common.empty_cache()
        row["train_ratio"] = round(row["train_separate_s"] / row["train_fleet_s"], 3)
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    lines = [f"card: {card}; {args.size}, {args.rows} rows per run, prompts ~{args.prompt_tokens}, completions "
             f"mean {args.mean_new} of {args.new_tokens} (ignore_eos in sampling: full length); seconds per "
             f"run-step, median of {args.steps}", "",
             "| R | train separate s | train fleet s | separate / fleet | peak GB sep / fleet | gen R× s | gen fleet s "
             "| R× / fleet | gen peak GB R× / fleet |", "|---|---|---|---|---|---|---|---|---|"]
    for x in results:
        lines.append(f"| {x['runs']} | {x['train_separate_s']} | {x['train_fleet_s']} | {x['train_ratio']} | "
                     f"{x['train_separate_peak_gb']} / {x['train_fleet_peak_gb']} | {x.get('gen_each_s', '—')} | "
                     f"{x.get('gen_fleet_s', '—')} | {x.get('gen_ratio', '—')} | {x.get('gen_each_peak_gb', '—')} / "
                     f"{x.get('gen_fleet_peak_gb', '—')} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
