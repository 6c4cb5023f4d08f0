"""bf16 NaN pair gradients on Qwen2.5-Coder-0.5B: which op, which attention backend, which layout.

Run on a GPU machine: python bench/bf16_nan_probe.py MODEL_DIR cuda   (results: docs/results/qwen05_probe/bf16_h100/)"""
import contextlib
import json
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from projected_grpo.models import load_model
from projected_grpo.core.adapter import attach
from projected_grpo.core.grpo import token_logprobs
from projected_grpo.training.rollout import encode_prompts, teacher_rollouts
from projected_grpo.directions import vhack, pairs as P

path, dev = sys.argv[1], sys.argv[2]
model, tok = load_model(path, "bfloat16", dev)
ad = attach(model, path)
print("attn impl:", model.config._attn_implementation, "torch", torch.__version__,
      "cudnn_sdp", torch.backends.cuda.cudnn_sdp_enabled(), "flash", torch.backends.cuda.flash_sdp_enabled(),
      "mem_eff", torch.backends.cuda.mem_efficient_sdp_enabled(), flush=True)
allp = P.load_pairs("bundled", split="train").pairs
byid = {p.id: p for p in allp}
bad = [byid["cp-013"], byid["cp-056"]]
ctrl = byid["cp-001"]

def report(tag, fn):
    t = time.time()
    try:
        d = fn()
        fin = vhack._finite_rows(d).tolist()
        nan_mods = [k for k, v in d.items() if not torch.isfinite(v).all()]
        print(json.dumps({"tag": tag, "finite": fin, "n_bad_modules": len(nan_mods), "first_bad": nan_mods[:4],
                          "s": round(time.time() - t, 2)}), flush=True)
    except Exception as e:  # noqa: BLE001 - a probe reports any failure and goes on
        print(json.dumps({"tag": tag, "error": f"{type(e).__name__}: {str(e)[:300]}"}), flush=True)

backends = {"default": None, "math": [SDPBackend.MATH], "efficient": [SDPBackend.EFFICIENT_ATTENTION],
            "cudnn": [SDPBackend.CUDNN_ATTENTION], "flash": [SDPBackend.FLASH_ATTENTION]}
for name, be in backends.items():
    ctx = sdpa_kernel(be) if be else contextlib.nullcontext()
    with ctx:
        for p in bad + [ctrl]:
            report(f"sdpa-{name} pair {p.id}", lambda p=p: vhack._batch_differences(model, tok, ad, [p]))
        report(f"sdpa-{name} batch bad+ctrl", lambda: vhack._batch_differences(model, tok, ad, bad + [ctrl]))

# single sequences, no padding at all
def single(p, which):
    text = p.hack if which == "hack" else p.clean
    ids, n = P.encode(tok, p.prompt, text)
    batch = P.collate([(ids, n)], tok.pad_token_id)
    with torch.enable_grad(), ad.per_sample(1) as leaves:
        nll = vhack.completion_nll(model, batch)
        grads = torch.autograd.grad(nll.sum(), list(leaves.values()), allow_unused=True)
    print("   nll", float(nll[0]), "len", len(ids), flush=True)
    return {k: (torch.zeros_like(l) if g is None else g).float().cpu() for (k, l), g in zip(leaves.items(), grads)}
for p in bad:
    for which in ("hack", "clean"):
        report(f"default single {p.id} {which} (no padding)", lambda p=p, w=which: single(p, w))
        with sdpa_kernel([SDPBackend.MATH]):
            report(f"math single {p.id} {which} (no padding)", lambda p=p, w=which: single(p, w))

# forward values: hidden-state range, per layer, for cp-013 hack
batch = P.pair_batch(tok, [bad[0]])
with torch.no_grad():
    out = model.base_model(input_ids=batch.input_ids.to(dev), attention_mask=batch.attention_mask.to(dev),
                           output_hidden_states=True)
    print("hidden absmax per layer:", [round(float(h.float().abs().max()), 1) for h in out.hidden_states], flush=True)
    print("hidden finite:", all(bool(torch.isfinite(h).all()) for h in out.hidden_states), flush=True)

# eager attention
try:
    model.set_attn_implementation("eager")
    print("now", model.config._attn_implementation, flush=True)
    for p in bad:
        report(f"eager pair {p.id}", lambda p=p: vhack._batch_differences(model, tok, ad, [p]))
    model.set_attn_implementation("sdpa")
except Exception as e:  # noqa: BLE001 - a probe reports any failure and goes on
    print("eager switch failed", e, flush=True)

# the training path: left-padded prompts, right-padded completions, token_logprobs, backward into δS
def train_path():
    ids, mask = encode_prompts(tok, [bad[0].prompt, ctrl.prompt, bad[1].prompt], dev)
    rows = teacher_rollouts(tok, ids, mask, [bad[0].hack, ctrl.hack, bad[1].clean])
    for q in ad.params().values():
        q.grad = None
    with torch.enable_grad():
        logp = token_logprobs(model, rows.input_ids, rows.attention_mask, ids.shape[1])
        print("   logp finite", bool(torch.isfinite(logp).all()), flush=True)
        (-(logp * rows.completion_mask).sum() / 1000).backward()
    return {k: q.grad.detach().float().cpu()[None] for k, q in ad.params().items()}
for name, be in backends.items():
    ctx = sdpa_kernel(be) if be else contextlib.nullcontext()
    with ctx:
        report(f"train-path sdpa-{name}", train_path)

# anomaly mode: which backward op makes the first NaN
torch.autograd.set_detect_anomaly(True, check_nan=True)
try:
    vhack._batch_differences(model, tok, ad, [bad[0]])
    print("anomaly: no error", flush=True)
except Exception as e:  # noqa: BLE001 - a probe reports any failure and goes on
    print("ANOMALY:", str(e)[:1500], flush=True)
torch.autograd.set_detect_anomaly(False)
