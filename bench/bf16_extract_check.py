"""bf16 extraction on the real model: pairs dropped as on main (cuDNN SDPA allowed) vs with the fix.

Run on a GPU machine with the model saved at /root/qwen05: python bench/bf16_extract_check.py"""
import contextlib
import io
import time

import torch
from projected_grpo.models import load_model
from projected_grpo.core.adapter import attach
from projected_grpo.directions import vhack, pairs as P
from projected_grpo.core import grpo

model, tok = load_model("/root/qwen05", "bfloat16", "cuda")
ad = attach(model, "/root/qwen05")
train = P.load_pairs("bundled", split="train").pairs
held = P.load_pairs("bundled", split="heldout").pairs
print("cudnn sdp enabled by default:", torch.backends.cuda.cudnn_sdp_enabled(), flush=True)
for label, guard in (("main (cuDNN SDPA allowed)", contextlib.nullcontext),
                     ("fixed (grad_safe_attention)", grpo.grad_safe_attention)):
    real = grpo.grad_safe_attention
    grpo.grad_safe_attention = guard
    for name, ps in (("train", train), ("heldout", held)):
        err = io.StringIO()
        t = time.time()
        with contextlib.redirect_stderr(err):
            D = vhack.pair_differences(model, tok, ad, ps, progress=False)
        n = next(iter(D.values())).shape[0]
        print(f"{label}: {name} pairs {len(ps)} kept {n} ({time.time()-t:.1f}s) {err.getvalue().strip()}", flush=True)
    grpo.grad_safe_attention = real
