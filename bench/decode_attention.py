"""Decode attention alone, at the Qwen2.5-Coder shapes: SDPA, two matmuls around a compiled softmax,
and the split-KV Triton kernel over its launch settings (issue #7). Not a test.

Each variant is captured in a CUDA graph of `--calls` back-to-back calls (as the decode loop
replays it, so Python launch cost is not timed) and the graph is replayed `--reps` times; the figure
is the median µs per call, with the K/V bytes of the keys read turned into GB/s.

    python bench/decode_attention.py [--sweep] --json out.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys

import torch
import torch.nn.functional as F

from projected_grpo.fast import decode_attention
from projected_grpo.fast.decode_attention import DecodeAttention
from projected_grpo.fast.decode_layers import masked_softmax

# (name, kv heads, query heads per kv head, head_dim) of the Qwen2.5-Coder sizes
SHAPES = {"0.5b": (2, 7, 64), "1.5b": (2, 6, 128), "7b": (4, 7, 128)}


def sdpa(q, c, end, bias):
    return F.scaled_dot_product_attention(q, c[0, :, :, :end], c[1, :, :, :end], attn_mask=bias)


def matmul(q, c, end, bias, softmax):
    scores = torch.matmul(q, c[0, :, :, :end].transpose(-1, -2))
    return torch.matmul(softmax(scores, bias, q.shape[-1] ** -0.5), c[1, :, :, :end])


def time_graph(fn, calls: int, reps: int) -> float:
    """Median µs per call of `fn` replayed in a CUDA graph of `calls` calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / calls)
    return statistics.median(times[1:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="0.5b,7b")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=128, help="padded prompt length (keys before the first new one)")
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--pad", type=int, default=40, help="left-padding keys per row (masked)")
    ap.add_argument("--calls", type=int, default=48)
    ap.add_argument("--caches", type=int, default=4, help="K/V caches used in turn (defeats the L2)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--sweep", action="store_true", help="time the kernel over launch settings too")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name()
    dev, dt = torch.device("cuda"), torch.bfloat16
    B, L = args.batch, args.prompt + args.new_tokens
    rows = []
    for name in args.shapes.split(","):
        n_kv, G, D = SHAPES[name]
        torch.manual_seed(0)
        # several caches, used in turn, so the K/V read comes from HBM and not from a warm L2
        caches = [torch.randn(2, B, n_kv, L, D, device=dev, dtype=dt) for _ in range(args.caches)]
        turn = itertools.cycle(range(args.caches))
        q = torch.randn(B, n_kv, G, D, device=dev, dtype=dt)
        new_kv = torch.randn(2, B, n_kv, 1, D, device=dev, dtype=dt)
        key_ok = torch.ones(B, L, dtype=torch.bool, device=dev)
        key_ok[:, :args.pad] = False
        first = key_ok.long().argmax(dim=1)
        soft = torch.compile(masked_softmax, fullgraph=True)
        # the middle of generation and its end: keys [0, end), newest at end - 1
        for end in (args.prompt + args.new_tokens // 2, L):
            slot = torch.tensor([end - 1], device=dev)
            for c in caches:  # the newest key already holds new_kv, so writing it changes nothing
                c[:, :, :, end - 1] = new_kv[:, :, :, 0]
            ok = key_ok[:, :end] & (torch.arange(end, device=dev) <= slot)
            bias = torch.zeros(B, 1, 1, end, device=dev, dtype=dt).masked_fill(~ok[:, None, None], float("-inf"))
            kv = lambda: caches[next(turn)]  # noqa: E731 - the next cache of the rotation
            ref = sdpa(q, caches[0], end, bias).float()
            kv_gb = 2 * B * n_kv * end * D * 2 / 1e9
            variants = {"sdpa": lambda: sdpa(q, kv(), end, bias),
                        "matmul+compiled softmax": lambda: matmul(q, kv(), end, bias, soft)}
            auto = decode_attention.choose_split(B * n_kv, end, dev, D)
            att = DecodeAttention(B, n_kv, G, D, dev, dt, max_split=auto)
            variants[f"triton default (split={auto} block={att.block_n})"] = lambda att=att: att(
                q, *kv(), key_ok, slot, end, auto)
            # as the decode loop calls it: padding blocks skipped, the step's K/V written by the kernel
            variants["triton default + skip + write"] = lambda att=att: att(
                q, *kv(), key_ok, slot, end, auto, first=first, new_kv=new_kv)
            sweep = itertools.product(sorted({1, 2, 4, 8, auto}), (32, 64, 128), (2, 4), (2,))
            for n_split, block, warps, stages in (sweep if args.sweep else ()):
                att = DecodeAttention(B, n_kv, G, D, dev, dt, max_split=n_split, block_n=block,
                                      num_warps=warps, num_stages=stages)
                variants[f"triton split={n_split} block={block} warps={warps} stages={stages}"] = (
                    lambda att=att, n=n_split: att(q, *kv(), key_ok, slot, end, n))
            for label, fn in variants.items():
                try:
                    turn = itertools.cycle(range(args.caches))  # the next call reads cache 0
                    err = (fn().float() - ref).abs().max().item()
                    us = time_graph(fn, args.calls, args.reps)
                except Exception as e:  # noqa: BLE001 - a launch setting may not compile; time the rest
                    print(f"{name} end={end} {label}: failed {type(e).__name__}: {str(e)[:200]}", flush=True)
                    continue
                row = {"card": card, "shape": name, "batch": B, "end": end, "variant": label, "us": us,
                       "gb_s": kv_gb / (us * 1e-6), "max_abs_err": err, "auto_split": auto}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    print(f"\ncard: {card}, batch {B}, keys up to {L}")
    for (shape, end), grp in itertools.groupby(rows, key=lambda r: (r["shape"], r["end"])):
        grp = sorted(grp, key=lambda r: r["us"])
        base = next(r["us"] for r in grp if r["variant"] == "sdpa")
        print(f"\n{shape} end={end} (auto split {grp[0]['auto_split']}): sdpa {base:.1f} µs")
        for r in grp[:6] + [r for r in grp[6:] if not r["variant"].startswith("triton s")]:
            print(f"  {r['us']:7.1f} µs  {r['gb_s']:7.0f} GB/s  {base / r['us']:.2f}x sdpa  err {r['max_abs_err']:.1e}"
                  f"  {r['variant']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
