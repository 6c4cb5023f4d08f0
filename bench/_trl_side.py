"""The comparison side of bench/grpo_step.py: TRL's GRPOTrainer step (LoRA r=32), and the training
forward + backward alone of δS hook, δS merged and LoRA r=32 on the same tokens (issue 18)."""

from __future__ import annotations

import contextlib
import random
import tempfile
import time

import _grpo_common as common
import torch


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
    from projected_grpo.core.adapter import DEFAULT_TARGETS

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
    from projected_grpo.training.rollout import encode_prompts

    _, msgs = common.prompts(args.prompts)
    ids, mask = encode_prompts(tok, msgs, common.DEVICE)
    ids, mask = ids.repeat_interleave(args.group, 0), mask.repeat_interleave(args.group, 0)
    g = torch.Generator(device="cpu").manual_seed(0)
    comp = torch.randint(0, 32000, (ids.shape[0], args.new_tokens), generator=g).to(common.DEVICE)
    return torch.cat([ids, comp], 1), torch.cat([mask, torch.ones_like(comp)], 1), ids.shape[1]


def time_fwd_bwd(model, ids, mask, n_prompt, args, ckpt: bool, context=None) -> dict:
    """Median seconds (after one warm-up) of forward + backward of −Σ A·logπ over the batch in
    micro-batches, as our training pass runs it (chunked log-probs); and the peak memory above start."""
    from projected_grpo.core.grpo import grad_safe_attention, token_logprobs

    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train(ckpt)
    adv = torch.linspace(-1, 1, ids.shape[0], device=common.DEVICE)
    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    start = common.allocated()
    common.reset_peak()
    for _ in range(1 + args.steps):
        common.sync()
        t = time.perf_counter()
        with grad_safe_attention(), (context() if context else contextlib.nullcontext()):
            for s in range(0, ids.shape[0], args.micro_batch):
                sl = slice(s, s + args.micro_batch)
                logp = token_logprobs(model, ids[sl], mask[sl], n_prompt)        # (b, T)
                (-(logp * adv[sl, None]).sum() / logp.numel()).backward()
        common.sync()
        times.append(time.perf_counter() - t)
        for p in params:
            p.grad = None
    model.eval()
    return {"s": common.median_after(times, 1), "runs": times, "peak_above_gb": (common.peak() - start) / 1e9}


def bench_train_parts(size: str, args, tok) -> dict:
    """Training forward + backward on the same tokens: δS hook, δS merged (fold included), LoRA r=32."""
    from projected_grpo.core.adapter import attach

    ids, mask, n_prompt = train_tokens(tok, args)
    ckpt = size in args.ckpt_sizes
    model = common.build_model(size)
    ad = attach(model, f"random:{common.SIZES[size]}", basis=common.random_basis)
    with torch.no_grad():
        for m in ad.modules.values():
            m.delta_s.normal_(0, 1e-3)
    res = {"side": "train-parts", "size": size, "tokens": ids.numel(), "grad_ckpt": ckpt}
    res["hook"] = time_fwd_bwd(model, ids, mask, n_prompt, args, ckpt)
    res["merged"] = time_fwd_bwd(model, ids, mask, n_prompt, args, ckpt, ad.merged_training)
    del ad, model
    common.empty_cache()
    model = common.build_model(size)
    res["lora_impl"] = add_lora(model)
    res["lora32"] = time_fwd_bwd(model, ids, mask, n_prompt, args, ckpt)
    del model
    common.empty_cache()
    for k in ("hook", "merged"):
        res[f"{k}_over_lora"] = res[k]["s"] / res["lora32"]["s"]
    print(f"  train parts {size} ({ids.shape[0]} rows × {ids.shape[1]} tokens, ckpt={ckpt}): "
          f"hook {res['hook']['s']:.3f}s, merged {res['merged']['s']:.3f}s, LoRA r=32 ({res['lora_impl']}) "
          f"{res['lora32']['s']:.3f}s -> hook/LoRA {res['hook_over_lora']:.2f}, merged/LoRA "
          f"{res['merged_over_lora']:.2f}", flush=True)
    return res


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
    model = common.build_model(size)
    model.train()
    gen_times: list[float] = []
    real_generate = model.generate

    def timed_generate(*a, **kw):
        common.sync()
        t = time.perf_counter()
        out = real_generate(*a, **kw)
        common.sync()
        gen_times.append(time.perf_counter() - t)
        return out

    model.generate = timed_generate
    _, msgs = common.prompts(args.prompts)
    n_steps = args.warmup + args.steps
    ds = datasets.Dataset.from_dict({"prompt": msgs * (n_steps + 1)})

    def reward(completions, **kw):
        return [random.random() for _ in completions]

    step_times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            common.sync()
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            common.sync()
            step_times.append(time.perf_counter() - self.t)
            print(f"  trl {size} step {len(step_times) - 1}: {step_times[-1]:.2f}s "
                  f"(gen {gen_times[-1] if gen_times else float('nan'):.2f}s)", flush=True)

    B = args.prompts * args.group
    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(output_dir=out, per_device_train_batch_size=args.micro_batch,
                         gradient_accumulation_steps=B // args.micro_batch, num_generations=args.group,
                         max_completion_length=args.new_tokens, beta=args.beta, loss_type="dr_grpo",
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
        common.reset_peak()
        trainer.train()
        peak = common.peak()
    w = args.warmup
    res = {"side": "trl", "size": size, "step_s": common.median_after(step_times, w),
           "gen_s": common.median_after(gen_times, w), "peak_gb": peak / 1e9, "steps": step_times}
    res["tokens_per_s"] = B * args.new_tokens / res["gen_s"]
    del trainer, model
    common.empty_cache()
    return res
