"""Why the CPU preset (`smoke`) runs in fp32: one forward + backward (to δS) of the embedded tiny-qwen3
model over a batch, in bf16 and in fp32, on this machine's CPU, one torch thread (as the tests run).

    .venv/bin/python bench/cpu_dtype.py [--steps 5] [--batch 4] [--seq 96]

Prints the CPU model, whether it has AVX-512 BF16, and the median seconds per step of each dtype
(median of --steps timed steps after one warm-up), with their ratio from this one process."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch


def cpu_name() -> tuple[str, bool]:
    """(model name, has avx512_bf16) from /proc/cpuinfo; ('unknown', False) where it cannot be read."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown", False
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                "unknown")
    return name, "avx512_bf16" in info


def step_seconds(dtype: str, batch: int, seq: int, steps: int) -> float:
    """Median seconds of one forward + backward (loss = mean logit, gradient to δS as training takes it)
    of tiny-qwen3 in `dtype`."""
    from projected_grpo.core.adapter import attach
    from projected_grpo.models import load_model

    model, tok = load_model("tiny-qwen3", dtype, "cpu")
    attach(model, "tiny-qwen3")                  # the δS adapter: its parameters take the gradient
    model.train()
    ids = torch.randint(0, len(tok), (batch, seq), generator=torch.Generator().manual_seed(0))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        model(input_ids=ids).logits.float().mean().backward()
        model.zero_grad(set_to_none=True)
        if i:                                   # the first step warms up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per dtype (median reported)")
    ap.add_argument("--batch", type=int, default=4, help="sequences per step")
    ap.add_argument("--seq", type=int, default=96, help="tokens per sequence")
    args = ap.parse_args()
    torch.set_num_threads(1)
    name, bf16 = cpu_name()
    print(f"CPU: {name} (avx512_bf16: {'yes' if bf16 else 'no'}), torch {torch.__version__}, 1 thread")
    s = {dt: step_seconds(dt, args.batch, args.seq, args.steps) for dt in ("float32", "bfloat16")}
    print("| dtype | median s/step |\n|---|---|")
    for dt, v in s.items():
        print(f"| {dt} | {v:.3f} |")
    print(f"bf16 / fp32: {s['bfloat16'] / s['float32']:.1f}x")


if __name__ == "__main__":
    main()
