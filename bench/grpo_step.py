"""One GRPO step, ours vs TRL's GRPOTrainer, on the same GPU in the same process (issue #7).

Not a test. Per model shape (`random:` models of projected_grpo.models: random weights, Qwen2.5-Coder
shapes; no hub):
  (a) our `Trainer.step` (δS adapter, fast rollout, chunked log-probs, projection of the grads);
  (b) TRL's GRPOTrainer (no vLLM, LoRA r=32, bf16, loss_type=dr_grpo, β = --beta, default 0),
on identical prompts (the first P bundled problems, chat-templated), G samples each and forced
lengths (eos suppressed: our `ignore_eos`, TRL's `min_new_tokens`). Rewards are random numbers on
both sides (nothing graded), so the timing isolates generation + training.
Reported: median seconds per step after warm-up, decode tokens/s, the fraction of the HBM bound
of one decode step (weights + K/V read once / 3.35 TB/s), peak memory, projection's share.

    python bench/grpo_step.py --sizes 0.5b,1.5b,7b --trl-sizes 0.5b --steps 3 --warmup 1 \\
        --json out.jsonl

The Ariahw et al. row (issue 18): `--sizes 4b --trl-sizes '' --prompts 16 --group 16 --new-tokens 1024
--beta 1e-3` (Qwen3-4B's shape); every row ends with the implied time for their 200 steps.

Issue 18 additions: `--delta-s-impl hook|merged` picks our training forward (TrainConfig.delta_s_impl);
every row of ours carries a memory breakdown (weights, SVD bases, the targeted weights `merged()`
saves and the merged path's W' occupy, generation's and training's transient peaks, what stays
allocated between steps), measured with torch.cuda.memory_allocated at set-up points beside the
exact tensor sizes; `--train-parts` times the training forward + backward alone on the same tokens
for δS hook, δS merged and LoRA r=32 (peft when importable, else a plain LoRA of the same math).
CPU smoke check: `--device cpu --sizes tiny --trl-sizes '' --prompts 2 --group 2 --new-tokens 4
--micro-batch 2 --steps 1 --warmup 0 --train-parts`.

The Trainer is handed its parts (nothing in the package is patched): the policy is the random-weight
model with a random SVD basis (U, Vh of the right shapes, `_grpo_common.random_basis` — timing
depends on shapes only, and an fp32 SVD of every 7B matrix would take minutes); V is random (m=16
orthonormal rows per module); the grade function returns random rewards; the sampler is
`rollout.sample` with ignore_eos. A Trainer subclass measures the training pass's memory, and the
projection is timed on its own on gradients of the step's shapes with the step's V.
Helpers and tables: bench/_grpo_common.py; the TRL side and the training parts: bench/_trl_side.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's own modules, also when loaded by path
import _grpo_common as common
import _trl_side

REFERENCE_STEPS = 200  # Ariahw et al.'s run length (about 3 h on 4 × H200 with verl and vLLM, as reported)


# ---- (a) ours ---------------------------------------------------------------------------------
def bench_ours(size: str, args, tok) -> dict:
    from projected_grpo.training import rollout, train
    from projected_grpo.core.adapter import AdapterConfig, attach
    from projected_grpo.config import TrainConfig
    from projected_grpo.env.grader import Grade
    from projected_grpo.fast import fast_rollout
    from projected_grpo.training.policy import Policy
    from projected_grpo.core.projection import project_grads

    common.empty_cache()
    mem0 = common.allocated()
    model = common.build_model(size)
    mem_model = common.allocated()
    rng = random.Random(0)

    def fake_grades(problems_by_id, items, cfg=None, workers=None):
        out = []
        for it in items:
            ok = rng.random() < 0.5
            out.append(Grade(passed=ok, gt_correct=False, format_ok=False, reward=float(ok),
                             label="incorrect", mode=it.get("mode", "run_tests"), hack_attempted=False))
        return out

    def random_v(adapter) -> dict:
        """m orthonormal rows per module (seeded), on the policy's device."""
        g, v = torch.Generator().manual_seed(0), {}
        for k, m in adapter.modules.items():
            q, _ = torch.linalg.qr(torch.randn(m.rank, args.m, generator=g))
            v[k] = q.T.contiguous().to(common.DEVICE)
        return v

    gen_mem = common.PhaseMemory(functools.partial(rollout.sample, ignore_eos=True))
    train_mem = common.PhaseMemory(train.Trainer.backward)

    class MeasuredTrainer(train.Trainer):
        def backward(self, *a, **kw):  # the training pass, with its memory measured
            return train_mem(self, *a, **kw)

    try:
        cfg = TrainConfig(model=f"random:{common.SIZES[size]}", device=common.DEVICE, problems="bundled",
                          n_problems=args.prompts, prompts_per_step=args.prompts, group_size=args.group,
                          max_new_tokens=args.new_tokens, beta=args.beta, arm="projected", vhack_m=args.m,
                          micro_batch=args.micro_batch, grad_checkpointing=size in args.ckpt_sizes,
                          dtype=common.model_dtype(),
                          fast_rollout=True, decode_attention=args.attention,
                          steps=args.warmup + args.steps, warmup_steps=1,
                          max_prompt_tokens=4096, samples_every=0, delta_s_impl=args.delta_s_impl,
                          base_on_cpu=args.base_on_cpu)
        common.reset_peak()
        adapter = attach(model, cfg.model, AdapterConfig(targets=tuple(cfg.targets.split(","))),
                         basis=common.random_basis)
        v = random_v(adapter)
        with tempfile.TemporaryDirectory() as out:
            trainer = MeasuredTrainer(cfg, Path(out), progress=False, policy=Policy(model, tok, adapter),
                                      grade=fake_grades, sampler=gen_mem, directions=(v, v))
            mem_init = common.allocated()
            recs = []
            for step in range(cfg.steps):
                common.sync()
                t = time.perf_counter()
                rec, _ = trainer.step(step)
                common.sync()
                rec["wall_s"] = time.perf_counter() - t
                recs.append(rec)
                print(f"  ours {size} step {step}: {rec['wall_s']:.2f}s (gen {rec['gen_s']:.2f}s, "
                      f"train {rec['train_s']:.2f}s)", flush=True)
            peak = max(common.peak(), gen_mem.max_abs, train_mem.max_abs)  # each phase resets the counter
            mem_between = common.allocated() - mem_init
            sizes = common.tensor_sizes(model, trainer.adapter)
            decode = decode_profile(model, trainer, tok, args)
            # the projection alone, as optimiser_step calls it: gradients of δS's shapes, the step's V
            proj_times = []
            for _ in range(cfg.steps):
                grads = {k: torch.randn_like(p) for k, p in trainer.adapter.params().items()}
                common.sync()
                t = time.perf_counter()
                project_grads(grads, trainer.v_project, apply=True)
                common.sync()
                proj_times.append(time.perf_counter() - t)
    finally:
        fast_rollout.release()
    w = args.warmup
    step_s = common.median_after([r["wall_s"] for r in recs], w)
    gen_s = common.median_after([r["gen_s"] for r in recs], w)
    proj_s = common.median_after(proj_times, w)
    print(f"  ours {size}: projection {proj_s * 1e3:.1f} ms", flush=True)
    res = {"side": "ours", "size": size, "step_s": step_s, "gen_s": gen_s,
           "train_s": common.median_after([r["train_s"] for r in recs], w),
           "tokens_per_s": args.prompts * args.group * args.new_tokens / gen_s,
           "proj_ms": proj_s * 1e3, "proj_share": proj_s / step_s, "peak_gb": peak / 1e9,
           "steps": [r["wall_s"] for r in recs], "grad_ckpt": cfg.grad_checkpointing,
           "delta_s_impl": cfg.delta_s_impl, "base_on_cpu": cfg.base_on_cpu, "beta": cfg.beta, "kl": recs[-1]["kl"],
           **decode, **sizes,
           "kv_cache_gb": common.kv_cache_gb(model, decode["batch"], decode["prompt_len"] + args.new_tokens),
           # measured (CUDA; 0 on the CPU): allocated-memory deltas at set-up points
           "mem_model_gb": (mem_model - mem0) / 1e9,
           "mem_adapter_gb": (mem_init - mem_model) / 1e9,       # bases + δS + V (+ anything init keeps)
           "mem_gen_peak_gb": gen_mem.peak_above / 1e9,          # KV cache + merged()'s saved W + logits
           "mem_gen_left_gb": gen_mem.left / 1e9,                # kept by the cached decoder after sampling
           "mem_train_peak_gb": train_mem.peak_above / 1e9,      # activations (+ W' when merged)
           "mem_between_steps_gb": mem_between / 1e9}            # after the last step, above set-up
    del trainer, model
    common.empty_cache()
    return res


def decode_profile(model, trainer, tok, args) -> dict:
    """Prefill-only vs full runs of the fast loop on the step's own batch → time per decode step,
    and its fraction of the HBM bound (weights + K/V of the mean context read once per step)."""
    from projected_grpo.fast import fast_rollout
    from projected_grpo.training.rollout import encode_prompts, eos_token_ids

    problems = trainer.step_problems(0)
    ids, mask = encode_prompts(tok, [p.messages(trainer.cfg.mode, trainer.cfg.hint) for p in problems],
                               trainer.device)
    ids, mask = ids.repeat_interleave(args.group, 0), mask.repeat_interleave(args.group, 0)
    eos, T = eos_token_ids(model, tok), args.new_tokens

    def run(n: int) -> float:
        times = []
        for _ in range(3):
            common.sync()
            t = time.perf_counter()
            with trainer.adapter.merged(), torch.no_grad():
                fast_rollout.generate(model, ids, mask, n, eos, tok.pad_token_id, ignore_eos=True,
                                      attention=args.attention)
            common.sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times[1:])

    t_full, t_pre = run(T), run(1)
    fast_rollout.release()
    per_step = (t_full - t_pre) / (T - 1)
    B, L0 = ids.shape
    mean_ctx = L0 + T / 2
    nbytes = fast_rollout.decode_bytes(model, B, int(mean_ctx))
    bound = nbytes / common.HBM_BPS
    return {"prompt_len": L0, "batch": B, "gen_full_s": t_full, "prefill_s": t_pre,
            "decode_step_ms": per_step * 1e3, "decode_bound_ms": bound * 1e3,
            "decode_frac_of_bound": bound / per_step, "decode_tokens_per_s": B / per_step,
            "bytes_per_step_gb": nbytes / 1e9}


def gpu_check(tok, args) -> None:
    """Fast path vs HF generate, greedy, on this device; then decode timings of the fast loop's
    variants (eager / compiled layers, matmul / SDPA decode attention) at 0.5B, batch P*G, forced length."""
    from projected_grpo.fast import fast_rollout
    from projected_grpo.core.adapter import attach
    from projected_grpo.models import load_model
    from projected_grpo.training.rollout import encode_prompts, eos_token_ids, sample

    _, msgs = common.prompts(args.prompts)
    for name, dtype in (("tiny-qwen3", "float32"), ("0.5b", "bfloat16")):
        if name == "tiny-qwen3":
            model, _ = load_model(name, dtype, common.DEVICE)
        else:
            model = common.build_model(name)
        ad = attach(model, name)
        with torch.no_grad():
            for m in ad.modules.values():
                m.delta_s.normal_(0, 0.05)
        ids, mask = encode_prompts(tok, msgs[:4], common.DEVICE)
        kw = dict(group_size=2, max_new_tokens=64, temperature=0.0, top_p=1.0, seed=0, ignore_eos=True)
        hf = sample(model, tok, ad, ids, mask, fast=False, **kw)
        fa = sample(model, tok, ad, ids, mask, fast=True, **kw)
        same = (hf.completion_ids == fa.completion_ids).float()
        first_diff = [int((row == 0).nonzero()[0]) if (row == 0).any() else row.numel() for row in same]
        print(f"check {name} {dtype}: greedy equal={bool(same.all())} token agreement={same.mean():.3f} "
              f"first divergence per row={first_diff}", flush=True)
        s1 = sample(model, tok, ad, ids, mask, 2, 64, 1.0, 1.0, seed=1, fast=True, static_cache=True)
        print(f"  sampled row 0: {s1.texts[0][:80]!r}", flush=True)
        fast_rollout.release()
    ids, mask = encode_prompts(tok, msgs, common.DEVICE)
    ids, mask = ids.repeat_interleave(args.group, 0), mask.repeat_interleave(args.group, 0)
    eos, T = eos_token_ids(model, tok), args.new_tokens
    for graphs, comp, attention in ((True, False, "sdpa"), (True, True, "matmul"), (True, True, "sdpa"),
                                    (True, True, "triton")):
        times = []
        try:
            for _ in range(3):
                common.sync()
                t = time.perf_counter()
                with ad.merged(), torch.no_grad():
                    fast_rollout.generate(model, ids, mask, T, eos, tok.pad_token_id, ignore_eos=True,
                                          use_graphs=graphs, compile_layers=comp, attention=attention)
                common.sync()
                times.append(time.perf_counter() - t)
        except Exception as err:  # noqa: BLE001 - report the variant that fails, time the others
            print(f"decode variant attention={attention} failed: {type(err).__name__}: {err}", flush=True)
            fast_rollout.release()
            continue
        n = ids.shape[0] * T
        print(f"decode 0.5b B={ids.shape[0]} Lp={ids.shape[1]} T={T} graphs={graphs} compile={comp} "
              f"attention={attention}: runs {[round(x, 2) for x in times]} s -> {n / min(times[1:]):,.0f} "
              f"tok/s ({1e3 * min(times[1:]) / T:.2f} ms/token incl. prefill)", flush=True)
        fast_rollout.release()
    # where a decode step's time goes: kernels of 64 compiled steps without graphs (same kernels,
    # launch gaps aside), prefill included
    from torch.profiler import ProfilerActivity, profile

    with ad.merged(), torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        fast_rollout.generate(model, ids, mask, 64, eos, tok.pad_token_id, ignore_eos=True, use_graphs=False,
                              attention=args.profile_attention)
        common.sync()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70))
    fast_rollout.release()
    del model, ad
    common.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0.5b", help=f"shapes for our side (comma list of {','.join(common.SIZES)})")
    ap.add_argument("--trl-sizes", default="0.5b", help="shapes for the TRL side ('' = none)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--ckpt-sizes", default="7b", help="shapes trained with activation checkpointing")
    ap.add_argument("--m", type=int, default=16, help="v_hack rows per module")
    ap.add_argument("--beta", type=float, default=0.0,
                    help="KL weight on both sides (> 0: our δS=0 reference forward, TRL's reference model)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after warm-up")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", default="", help="append one JSON line per result here")
    ap.add_argument("--device", default="cuda", help="cpu: dry-run the plumbing (use --sizes tiny)")
    ap.add_argument("--profile-attention", default="auto", help="decode attention profiled by --check")
    ap.add_argument("--attention", default="auto", help="decode attention of our step (TrainConfig.decode_attention)")
    ap.add_argument("--check", action="store_true", help="first: fast path vs HF greedy + decode timings")
    ap.add_argument("--delta-s-impl", default="hook", choices=("hook", "merged"),
                    help="our training forward (TrainConfig.delta_s_impl)")
    ap.add_argument("--base-on-cpu", action="store_true",
                    help="targeted W in pinned CPU memory, one copy on the card (TrainConfig.base_on_cpu; merged)")
    ap.add_argument("--train-parts", action="store_true",
                    help="per size of --sizes: training fwd+bwd alone, δS hook vs merged vs LoRA r=32")
    args = ap.parse_args(argv)
    common.set_device(args.device)
    args.ckpt_sizes = [s for s in args.ckpt_sizes.split(",") if s]
    if common.DEVICE == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name() if common.DEVICE == "cuda" else "cpu"
    tok = common.tokenizer()
    if args.check:
        gpu_check(tok, args)
    rows = []
    order = [s for s in common.SIZES if s in args.sizes.split(",") or s in args.trl_sizes.split(",")]
    for size in order:
        sides = [("ours", bench_ours, args.sizes), ("trl", _trl_side.bench_trl, args.trl_sizes)]
        if args.train_parts:
            sides.append(("train-parts", _trl_side.bench_train_parts, args.sizes))
        for side, fn, wanted in sides:
            if size not in wanted.split(","):
                continue
            print(f"== {side} {size}", flush=True)
            try:
                res = fn(size, args, tok)
            except Exception as err:  # noqa: BLE001 - one failing side must not lose the others
                import traceback

                traceback.print_exc()
                res = {"side": side, "size": size, "error": f"{type(err).__name__}: {err}"}
                common.empty_cache()
            res.update(card=card, torch=torch.__version__, prompts=args.prompts, group=args.group,
                       new_tokens=args.new_tokens)
            print(json.dumps(res), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(res) + "\n")
            if "error" not in res:
                rows.append(res)
    print(common.table([r for r in rows if r["side"] in ("ours", "trl")], card))
    print(common.memory_table([r for r in rows if r["side"] == "ours"], card))
    print(common.parts_table([r for r in rows if r["side"] == "train-parts"], card))
    for r in rows:
        if r["side"] in ("ours", "trl"):
            print(f"{r['side']} {r['size']} (P={args.prompts} × G={args.group}, {args.new_tokens} new tokens, "
                  f"β={args.beta:g}): {r['step_s']:.1f} s/step -> {REFERENCE_STEPS} steps in "
                  f"{REFERENCE_STEPS * r['step_s'] / 3600:.2f} h on one {card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
