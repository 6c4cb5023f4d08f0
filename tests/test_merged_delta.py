"""Issue 18: the merged-weight training forward (`--delta-s-impl merged`) against the hook path —
bit-exact identity at δS = 0, the δS gradient against finite differences (fp64) and against the hook
on a real GRPO loss, several optimiser steps without drift, the exact β > 0 reference inside, and
sampling's fold unchanged (the trainer's W' is the sampler's weight, bit for bit)."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
import torch
from torch import nn

from projected_grpo.core.adapter import DeltaSLinear, attach
from projected_grpo.config import preset
from projected_grpo.errors import UserError
from projected_grpo.core.merged_delta import pick_grad_mode
from projected_grpo.models import chat_text, load_model
from projected_grpo.core.passes import BatchState, backward_pass
from projected_grpo.training.rollout import encode_prompts, sample


MESSAGES = [[{"role": "user", "content": "Write a Python function that reverses a string."}],
            [{"role": "user", "content": "def add(a, b):"}]]


def _set_delta_s(adapter, scale: float, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s.copy_(torch.randn(m.rank, generator=gen) * scale)


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def ids():
    _, tok = load_model("tiny-qwen3", "float32")
    return tok(chat_text(tok, MESSAGES[0]), return_tensors="pt").input_ids


# ---- exactness of the forward ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_identity_at_zero_and_exact_reference_inside(dtype, ids):
    model, _ = load_model("tiny-qwen3", dtype)
    base = _logits(model, ids)
    adapter = attach(model, "tiny-qwen3")
    weights = {k: m.base.weight.clone() for k, m in adapter.modules.items()}
    with adapter.merged_training():
        assert all(m.w_merged is not None for m in adapter.modules.values())  # the merged path runs
        assert torch.equal(_logits(model, ids), base)                          # δS = 0: bit-identical
        _set_delta_s(adapter, 0.05)
        moved = _logits(model, ids)
        with adapter.reference():                                              # β > 0 reference
            assert torch.equal(_logits(model, ids), base)
    assert (moved.float() - base.float()).abs().max() > 1e-2                   # δS acts inside
    assert all(m.w_merged is None for m in adapter.modules.values())           # W' freed on exit
    assert all(torch.equal(m.base.weight, weights[k]) for k, m in adapter.modules.items())  # W untouched


def test_trainer_weight_is_the_samplers_fold_bit_for_bit(ids):
    # bf16, δS ≠ 0: the merged forward and `merged()` (what rollout samples with) round W + U diag(δS) Vh
    # identically, so sampler and trainer run the same weights; the hook path differs from both
    model, _ = load_model("tiny-qwen3", "bfloat16")
    adapter = attach(model, "tiny-qwen3")
    _set_delta_s(adapter, 0.02)
    hook = _logits(model, ids)
    with adapter.merged():
        folded = _logits(model, ids)
    with adapter.merged_training():
        merged = _logits(model, ids)
    assert torch.equal(merged, folded)
    assert not torch.equal(hook, folded)
    with adapter.merged():  # merged() still round-trips W exactly after the merged path ran
        pass
    again = _logits(model, ids)
    assert torch.equal(again, hook)


# ---- the δS gradient --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["tokens", "weight"])
def test_delta_s_gradient_matches_finite_differences_fp64(mode):
    # a non-square linear with bias (d_out=3, d_in=5, r=3): a transposed basis, a swapped index
    # order or a flipped sign of ∂L/∂δS cannot match central differences of the loss
    torch.manual_seed(0)
    lin = nn.Linear(5, 3).double().requires_grad_(False)
    u, _, vh = torch.linalg.svd(lin.weight, full_matrices=False)
    mod = DeltaSLinear(lin, u, vh)
    mod.delta_s.data = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
    mod.delta_s.grad = None
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    c = torch.randn(2, 4, 3, dtype=torch.float64)

    def loss(y):
        return (c * y).sum() + 0.5 * (y ** 2).sum()   # nonlinear in y: dY depends on the input

    hook_y = mod(x)
    (hook_g,) = torch.autograd.grad(loss(hook_y), mod.delta_s)
    # the context lives on DeltaSAdapter; here the one module is switched by hand
    mod.start_merged(mode)
    xg = x.clone().requires_grad_(True)
    y = mod(xg)
    assert torch.allclose(y, hook_y, rtol=0, atol=1e-12)            # same function as the hook
    g, gx = torch.autograd.grad(loss(y), (mod.delta_s, xg))
    fd = torch.zeros(3, dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        for i in range(3):
            for sgn in (1, -1):
                mod.delta_s[i] += sgn * h                           # δS's values change: W' re-folds
                fd[i] += sgn * loss(mod(x)) / (2 * h)
                mod.delta_s[i] -= sgn * h
    assert torch.allclose(g, fd, rtol=1e-7, atol=1e-9), (g, fd)
    assert torch.allclose(g, hook_g, rtol=1e-10, atol=1e-12), (g - hook_g)
    xh = x.clone().requires_grad_(True)
    mod.stop_merged()
    (gx_hook,) = torch.autograd.grad(loss(mod(xh)), xh)
    assert torch.allclose(gx, gx_hook, rtol=1e-10, atol=1e-12)     # dX = dY W'


def _bf16_grad_and_fp64_reference(mode: str):
    """∂L/∂δS of the merged path in bf16 (autograd through MergedLinear), and the same quantities
    in fp64: U, Vh, X, dY are the bf16 values themselves, upcast, so the fp64 numbers are exact
    up to fp64 rounding and every difference is the bf16 path's own rounding."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 48).to(torch.bfloat16).requires_grad_(False)
    u, _, vh = torch.linalg.svd(lin.weight.float(), full_matrices=False)
    mod = DeltaSLinear(lin, u.to(torch.bfloat16).contiguous(), vh.to(torch.bfloat16).contiguous())
    with torch.no_grad():
        mod.delta_s.copy_(torch.randn(mod.rank) * 0.1)
    x = torch.randn(2, 16, 64).to(torch.bfloat16)
    dy = torch.randn(2, 16, 48).to(torch.bfloat16)
    mod.start_merged(mode)
    (g,) = torch.autograd.grad((dy * mod(x)).sum(), mod.delta_s)      # L = Σ dY ⊙ y, so ∂L/∂y = dY
    U, Vh = mod.u.double(), mod.vh.double()
    X, DY = x.double().reshape(-1, 64), dy.double().reshape(-1, 48)
    return g.double(), U, Vh, X, DY


@pytest.mark.parametrize("mode", ["tokens", "weight"])
def test_bf16_delta_s_gradient_against_fp64_within_bf16_rounding(mode):
    """Issue 25 item 10: the merged path's ∂L/∂δS in bf16 against diag(Uᵀ dYᵀ X Vhᵀ) in fp64. The
    path rounds its bf16 matmul outputs (fp32 accumulation, one rounding to bf16 each: relative
    error ≤ u = eps_bf16 / 2 = 2⁻⁸ per element) and sums their products in fp32. To first order:
      tokens: a = dY U, b = X Vhᵀ rounded   → |Δg_i| ≤ 2u Σ_t |a_ti b_ti|
      weight: dW = dYᵀX, M = Uᵀ dW rounded  → |Δg_i| ≤ u Σ_b |Vh_ib| (|M_ib| + (|U|ᵀ|dW|)_ib)
    with a, b, dW, M the exact (fp64) values; asserted with 1.25× slack for fp32 accumulation and
    second-order terms. A swapped basis, a transposed product or a bf16 sum over tokens exceeds it."""
    g, U, Vh, X, DY = _bf16_grad_and_fp64_reference(mode)
    ref = torch.diagonal(U.T @ DY.T @ X @ Vh.T)                         # (r,)
    u_bf16 = torch.finfo(torch.bfloat16).eps / 2
    if mode == "tokens":
        a, b = DY @ U, X @ Vh.T                                          # (N, r)
        bound = 2 * u_bf16 * (a * b).abs().sum(0)
    else:
        dw = DY.T @ X                                                    # (d_out, d_in)
        bound = u_bf16 * (Vh.abs() * ((U.T @ dw).abs() + U.abs().T @ dw.abs())).sum(1)
    err = (g - ref).abs()
    assert bool((err <= 1.25 * bound).all()), (mode, float((err / bound).max()))
    assert float(ref.abs().median()) > 4 * float(bound.median())          # the bound is not vacuous


def _toy_adapter(seed: int = 0):
    """Two fp32 linears (one non-square, with bias) under a DeltaSAdapter; SVD basis computed here."""
    torch.manual_seed(seed)
    net = nn.Sequential()
    net.add_module("up_proj", nn.Linear(6, 9))
    net.add_module("down_proj", nn.Linear(9, 6, bias=False))

    def basis(w):
        u, _, vh = torch.linalg.svd(w.float(), full_matrices=False)
        return "w", u.to(w.dtype).contiguous(), vh.to(w.dtype).contiguous(), "b"

    return net, attach(net, "toy", basis=basis)


def _hook_output(net, adapter, x) -> torch.Tensor:
    """The hook path's output (y = W x + U(δS ⊙ Vh x)), the reference the merged path must equal."""
    with torch.no_grad():
        return net(x)


def _writes():
    """Ways δS is written in place that leave its version counter unchanged (checked in the test)."""
    def through_data(params):
        for p in params:
            p.data.add_(0.3)

    def adamw(**kw):
        def step(params):
            opt = torch.optim.AdamW(params, lr=0.3, **kw)
            for p in params:
                p.grad = torch.ones_like(p)
            opt.step()
        return step

    return {"data": through_data, "fused_adamw": adamw(fused=True), "foreach_adamw": adamw(foreach=True),
            "loop_adamw": adamw(foreach=False)}


@pytest.mark.parametrize("write", list(_writes()))
def test_merged_forward_sees_every_write_to_delta_s(write):
    """Issue 25 item 8: W' was re-folded only when δS's version counter moved, which a fused AdamW
    step and a write through `.data` do not do, so the merged forward ran on a stale W' (max |merged
    − hook| 0.3–0.7 on a toy layer). Inside one merged_training context, after each kind of write,
    the merged output equals the hook path's to fp32 rounding (the two differ only in summation
    order: |Δ| ≲ a few ulp of |y| ~ 1, so 1e-5)."""
    net, adapter = _toy_adapter()
    x = torch.randn(4, 6)
    params = list(adapter.params().values())
    with adapter.merged_training():
        with torch.no_grad():
            net(x)                                   # W' folded at δS = 0 and used once
        versions = [p._version for p in params]
        _writes()[write](params)
        assert all(float(p.detach().abs().max()) > 0.1 for p in params)      # δS did move
        with torch.no_grad():
            merged = net(x)
    hook = _hook_output(net, adapter, x)
    with torch.no_grad(), adapter.reference():
        base = net(x)
    assert float((hook - base).abs().max()) > 0.1    # the write changed the function: not vacuous
    assert float((merged - hook).abs().max()) < 1e-5, (write, [p._version for p in params], versions)


def test_auto_picks_the_cheaper_gradient():
    # multiply-adds, tokens N r (d_in + d_out) vs weight (N + r) d_in d_out: 7B q_proj (3584²) at a
    # micro-batch of 13k tokens -> weight; down_proj (d_in 18944, r 3584) at the same N -> tokens
    assert pick_grad_mode("auto", 13_000, 3584, 3584, 3584) == "weight"
    assert pick_grad_mode("auto", 13_000, 3584, 18944, 3584) == "tokens"
    assert pick_grad_mode("auto", 100, 3584, 3584, 3584) == "tokens"
    assert pick_grad_mode("tokens", 13_000, 3584, 3584, 3584) == "tokens"


@pytest.fixture(scope="module")
def rollout_fp32():
    """tiny-qwen3 fp32 with δS ≠ 0, 2 prompts × G = 2 sampled completions of 8 tokens, advantages."""
    model, tok = load_model("tiny-qwen3", "float32")
    adapter = attach(model, "tiny-qwen3")
    _set_delta_s(adapter, 0.02)
    p_ids, mask = encode_prompts(tok, MESSAGES, "cpu")
    rows = sample(model, tok, adapter, p_ids, mask, 2, 8, 1.0, 1.0, seed=0, fast=False)
    cfg = replace(preset("smoke"), dtype="float32", prompts_per_step=2, group_size=2, max_new_tokens=8,
                  micro_batch=2, beta=0.04, tis_cap=2.0, lr=1e-3)
    adv = torch.tensor([0.5, -0.5, 0.75, -0.75])
    return model, adapter, rows, adv, cfg


def _pass_grads(model, adapter, cfg, rows, adv) -> dict[str, torch.Tensor]:
    for p in adapter.params().values():
        p.grad = None
    backward_pass(model, adapter, cfg, rows, adv, [False] * len(adv), BatchState())
    return {k: p.grad.clone() for k, p in adapter.params().items()}


@pytest.mark.parametrize("mode", ["auto", "tokens", "weight"])
def test_grpo_gradient_equals_the_hook_paths(rollout_fp32, mode):
    model, adapter, rows, adv, cfg = rollout_fp32
    hook = _pass_grads(model, adapter, cfg, rows, adv)
    if mode == "auto":  # through the config switch, as the trainer runs it
        merged = _pass_grads(model, adapter, replace(cfg, delta_s_impl="merged"), rows, adv)
    else:
        with adapter.merged_training(mode):
            merged = _pass_grads(model, adapter, cfg, rows, adv)
    assert all(m.w_merged is None for m in adapter.modules.values())
    for k in hook:
        scale = float(hook[k].abs().max())
        assert scale > 0
        assert torch.allclose(merged[k], hook[k], rtol=1e-5, atol=1e-5 * scale), k
    flat_h = torch.cat(list(hook.values()))
    flat_m = torch.cat(list(merged.values()))
    assert float((flat_m - flat_h).norm() / flat_h.norm()) < 1e-5


def test_several_optimiser_steps_do_not_drift(rollout_fp32, ids):
    # AdamW over 4 passes on the same batch: each merged pass folds W' afresh from the untouched W and
    # the stepped δS, so its gradient stays within fp32 rounding of the hook's at every step (no
    # growth from repeated merging), and so do δS and the next logits
    model, adapter, rows, adv, cfg = rollout_fp32
    start = {k: p.detach().clone() for k, p in adapter.params().items()}

    def run(impl: str):
        with torch.no_grad():
            for k, p in adapter.params().items():
                p.copy_(start[k])
        params = list(adapter.params().values())
        opt = torch.optim.AdamW(params, lr=cfg.lr)
        grads = []
        for _ in range(4):
            opt.zero_grad(set_to_none=True)
            backward_pass(model, adapter, replace(cfg, delta_s_impl=impl), rows, adv, [False] * len(adv),
                          BatchState())
            grads.append(torch.cat([p.grad for p in params]))
            opt.step()
        with adapter.merged_training() if impl == "merged" else contextlib.nullcontext():
            logits = _logits(model, ids)
        return torch.cat([p.detach().clone() for p in params]), grads, logits

    ds_h, grads_h, logits_h = run("hook")
    ds_m, grads_m, logits_m = run("merged")
    flat0 = torch.cat(list(start.values()))
    for gh, gm in zip(grads_h, grads_m):
        assert float((gm - gh).norm() / gh.norm()) < 1e-5
    step = ds_h - flat0
    assert float(step.abs().max()) > 3 * cfg.lr                      # the steps moved δS
    assert float((ds_m - ds_h).norm() / step.norm()) < 1e-4
    # Adam divides by √v: a coordinate whose gradient is ~0 may differ by rounding × lr / √v
    assert float((ds_m - ds_h).abs().max()) < 1e-2 * cfg.lr
    assert float((logits_m - logits_h).abs().max()) < 1e-4


def test_bad_delta_s_impl_is_refused_naming_the_flag():
    with pytest.raises(UserError, match="--delta-s-impl"):
        replace(preset("smoke"), delta_s_impl="fused").validate()


def _grpo_step_bench():
    """bench/grpo_step.py loaded by path (bench/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "grpo_step.py"
    spec = importlib.util.spec_from_file_location("grpo_step_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_runs_on_the_cpu_with_merged_and_the_lora_comparison(tmp_path):
    # the GPU bench's plumbing (issue 18 options): our step on the merged path with its memory
    # breakdown, and the training fwd+bwd of δS hook / δS merged / LoRA r=32 on the same tokens
    import json

    bench = _grpo_step_bench()
    out = tmp_path / "rows.jsonl"
    assert bench.main(["--device", "cpu", "--sizes", "tiny", "--trl-sizes", "", "--prompts", "1", "--group", "2",
                       "--new-tokens", "2", "--micro-batch", "2", "--steps", "1", "--warmup", "0",
                       "--train-parts", "--delta-s-impl", "merged", "--json", str(out)]) == 0
    rows = {r["side"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"ours", "train-parts"} and not any("error" in r for r in rows.values())
    ours, parts = rows["ours"], rows["train-parts"]
    assert ours["delta_s_impl"] == "merged"
    # tiny (Qwen2 shape, hidden 64, MLP 128, 2 layers): targeted W, and bases U, Vh with r = min(d_out, d_in)
    shapes = [(64, 64), (32, 64), (32, 64), (64, 64), (128, 64), (128, 64), (64, 128)]  # q k v o gate up down
    weights = 2 * sum(a * b for a, b in shapes) * 4 / 1e9
    bases = 2 * sum(a * min(a, b) + min(a, b) * b for a, b in shapes) * 4 / 1e9
    assert ours["targeted_weights_gb"] == pytest.approx(weights) and ours["bases_gb"] == pytest.approx(bases)
    assert parts["lora_impl"] in ("peft", "plain")
    assert all(parts[k]["s"] > 0 for k in ("hook", "merged", "lora32"))


def test_bench_ariahw_row_runs_qwen3_layout_with_beta_on_the_cpu(tmp_path, capsys):
    # the Ariahw et al. row's plumbing (issue 18): a Qwen3-4B-layout model (q/k norms, head_dim wider
    # than hidden / heads), β > 0 reaching the step (its KL is measured), and the implied 200-step time
    import json

    bench = _grpo_step_bench()
    out = tmp_path / "rows.jsonl"
    assert bench.main(["--device", "cpu", "--sizes", "tiny-4b", "--trl-sizes", "", "--prompts", "1", "--group",
                       "2", "--new-tokens", "3", "--micro-batch", "2", "--steps", "1", "--warmup", "0",
                       "--beta", "1e-3", "--json", str(out)]) == 0
    (row,) = map(json.loads, out.read_text().splitlines())
    assert "error" not in row and row["side"] == "ours" and row["size"] == "tiny-4b"
    assert row["beta"] == 1e-3 and row["kl"] is not None and row["kl"] >= 0.0
    printed = capsys.readouterr().out
    assert f"ours tiny-4b (P=1 × G=2, 3 new tokens, β=0.001): {row['step_s']:.1f} s/step -> 200 steps in" in printed
