"""Issue 14 items 3–4: the sampler's own log-probs (bf16 fold gap seen by the metric, corrected by
truncated importance sampling), several optimiser passes per batch (the PPO clip acts), the teacher
rows' importance weight, and attention without the cuDNN kernel wherever gradients flow."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vfiles import random_v

from projected_grpo.core import passes as passes_mod
from projected_grpo.training import train as train_mod
from projected_grpo.directions import vhack
from projected_grpo.core.adapter import attach
from projected_grpo.config import preset
from projected_grpo.errors import UserError
from projected_grpo.core.grpo import token_logprobs
from projected_grpo.models import load_model
from projected_grpo.directions.pairs import load_pairs
from projected_grpo.training.rollout import encode_prompts, sample

MESSAGES = [[{"role": "user", "content": "Write a Python function that reverses a string."}],
            [{"role": "user", "content": "def add(a, b):"}]]


def _mean_abs(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((a - b).abs() * mask).sum() / mask.sum())


def _gaps(dtype: str, scale: float, fast: bool) -> dict[str, float]:
    """Sample with δS ~ scale·N(0, 1) and compare three log-probs of the sampled tokens: the
    sampler's (returned by `sample`), the folded weights' by teacher forcing, the trainer's (hook)."""
    model, tok = load_model("tiny-qwen3", dtype)
    adapter = attach(model, "tiny-qwen3")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s.copy_(torch.randn(m.rank, generator=gen) * scale)
    ids, mask = encode_prompts(tok, MESSAGES, "cpu")
    rows = sample(model, tok, adapter, ids, mask, 2, 16, 1.0, 1.0, seed=0, fast=fast)
    assert rows.sampler_logp.shape == rows.completion_ids.shape
    n = ids.shape[1]
    with torch.no_grad():
        trainer = token_logprobs(model, rows.input_ids, rows.attention_mask, n)
        with adapter.merged():
            folded = token_logprobs(model, rows.input_ids, rows.attention_mask, n)
    cm = rows.completion_mask.float()
    return {"mismatch": _mean_abs(rows.sampler_logp, trainer, cm),
            "vs_folded": _mean_abs(rows.sampler_logp, folded, cm),
            "fold": _mean_abs(folded, trainer, cm)}


@pytest.mark.parametrize("fast", [False, True], ids=["hf_generate", "fast_loop"])
def test_sampler_logprobs_are_the_folded_policy_and_the_metric_sees_the_bf16_fold(fast):
    # fp32: the fold is exact to rounding, and the returned log-probs are the sampled tokens'
    # (an off-by-one or a tempered distribution would give O(1) gaps here)
    f32 = _gaps("float32", 1e-3, fast)
    assert f32["vs_folded"] < 1e-5 and f32["mismatch"] < 1e-5
    # bf16: at δS = 0 the fold is bit-exact, so the mismatch is decode-vs-forward rounding only;
    # at |δS| ~ 1e-3 the bf16 fold drops part of δS and the metric grows well past that floor
    zero, small = _gaps("bfloat16", 0.0, fast), _gaps("bfloat16", 1e-3, fast)
    assert zero["fold"] == 0.0
    assert small["fold"] > 1e-3
    assert small["vs_folded"] < 2e-3  # still the folded model's own log-probs
    assert small["mismatch"] > 1.5 * zero["mismatch"]


# ---- the trainer: metric, TIS, several passes with the clip, teacher weights, attention ----------
@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("pairs")
    rows = (Path(train_mod.__file__).parents[1] / "data" / "pairs_code.jsonl").read_text().splitlines()
    (d / "pairs_code.jsonl").write_text("\n".join([r for r in rows if '"train"' in r][:4]) + "\n")
    return str(d / "pairs_code.jsonl")


@pytest.fixture(scope="module")
def two_pass_step(small_pairs, tmp_path_factory):
    """One bf16 smoke step with num_iterations=2, a large lr and a tight clip, every call of the
    loss recorded (its inputs and the gradient that reaches logπ) and the SDPA calls' backends."""
    mp = pytest.MonkeyPatch()
    calls, batches, cudnn_flags = [], [], []
    real_loss, real_backward = passes_mod.grpo_token_loss, train_mod.Trainer.backward
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def loss_spy(logp, logp_old, adv, mask, denom, clip_eps, beta, logp_ref=None, weight=None):
        rec = {"logp": logp.detach().clone(), "logp_old": logp_old.clone(), "adv": adv.clone(),
               "mask": mask.clone(), "denom": denom, "eps": clip_eps, "weight": weight.clone()}
        logp.register_hook(lambda g: rec.__setitem__("grad", g.clone()))
        calls.append(rec)
        return real_loss(logp, logp_old, adv, mask, denom, clip_eps, beta, logp_ref, weight)

    def backward_spy(self, rows, adv, is_teacher=None, batch=None):
        batches.append((rows, list(is_teacher)))
        return real_backward(self, rows, adv, is_teacher, batch)

    def sdpa_spy(*args, **kwargs):
        if torch.is_grad_enabled():
            cudnn_flags.append(torch.backends.cuda.cudnn_sdp_enabled())
        return real_sdpa(*args, **kwargs)

    mp.setattr(passes_mod, "grpo_token_loss", loss_spy)
    mp.setattr(train_mod.Trainer, "backward", backward_spy)
    mp.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa_spy)
    cfg = replace(preset("smoke"), n_problems=4, max_new_tokens=16, steps=1, grade_workers=2, vhack_m=2,
                  pairs=small_pairs, dtype="bfloat16", num_iterations=2, lr=0.05, clip_eps=0.05,
                  tis_cap=2.0, teacher_weight="is", eval_problems=0, eval_samples=0)
    out = tmp_path_factory.mktemp("two_pass") / "run"
    # a random bf16 V (the vanilla arm only measures it): no bf16 pair extraction on the CPU
    cfg = replace(cfg, v_hack=str(random_v(out.parent / "v_random.safetensors", cfg)))
    trainer = train_mod.Trainer(cfg, out, progress=False)
    cudnn_flags.clear()  # extraction is checked on its own below
    record, _ = trainer.step(0)
    mp.undo()
    return record, calls, batches, cudnn_flags


def test_trainer_logs_the_sampler_mismatch_and_tis_reweights_student_tokens(two_pass_step):
    record, calls, batches, _ = two_pass_step
    rows, is_teacher = batches[0]
    first = calls[0]  # pass 1, the only micro-batch (4 rows)
    student = torch.tensor([not t for t in is_teacher])[:, None] & first["mask"].bool()
    teacher = torch.tensor(is_teacher)[:, None] & first["mask"].bool()
    # the metric: mean |logμ − logπ| over the student tokens, from the sampler's own log-probs
    diff = (rows.sampler_logp - first["logp"]).abs()
    assert record["sampler_mismatch"] == pytest.approx(float(diff[student].mean()), rel=1e-5)
    assert record["sampler_mismatch"] > 1e-4  # bf16: the sampler is not the trainer
    assert record["mismatch_tokens"] == int(student.sum())
    # sampler_kl (issue 25 item 10; `>= 0` could not fail): the K3 estimate of KL(μ ‖ π) over the
    # student tokens, k3 = r − 1 − log r with log r = logπ − logμ, by hand in fp64 from the log-probs
    # the loss saw. It is ~5e-7 here (a bf16 sampler), the size of fp32's ulp of 1 (1.2e-7): the
    # metric's former fp32 exp(d) − 1 was ~1e-3 off; fp64 rounding (1e-16) makes rel 1e-6 ample
    log_r = (first["logp"].double() - rows.sampler_logp.double())[student]
    kl_hand = float((torch.exp(log_r) - 1 - log_r).mean())
    assert kl_hand > 1e-8, kl_hand
    assert record["sampler_kl"] == pytest.approx(kl_hand, rel=1e-6, abs=0)
    # the correction acts: w = min(π_old/μ, 2) on student tokens, not 1
    w_hand = torch.exp(first["logp"] - rows.sampler_logp).clamp(max=2.0)
    assert torch.allclose(first["weight"][student], w_hand[student], rtol=1e-5)
    assert float((first["weight"][student] - 1).abs().max()) > 1e-4
    # teacher rows (teacher_weight=is): w = π_old(token) ≤ 1, the student's own probability
    assert torch.allclose(first["weight"][teacher], torch.exp(first["logp"])[teacher], rtol=1e-5)
    assert float(first["weight"][teacher].max()) <= 1.0


def test_second_pass_sees_ratio_not_one_and_the_clip_zeroes_clipped_tokens(two_pass_step):
    record, calls, _, _ = two_pass_step
    assert len(calls) == 2  # one micro-batch, two passes
    one, two = calls
    # pass 1: π_old is the sampling policy itself (ρ ≡ 1); pass 2 keeps that π_old
    assert torch.equal(one["logp_old"], one["logp"])
    assert torch.equal(two["logp_old"], one["logp"])
    ratio = torch.exp(two["logp"] - two["logp_old"])
    mask, adv, eps, w = two["mask"], two["adv"], two["eps"], two["weight"]
    assert float(((ratio - 1).abs() * mask).max()) > eps  # the optimiser step moved the policy
    # hand gradient of −w·min(ρA, clip(ρ, 1±ε)A)/denom w.r.t. logπ: −w·ρ·A/denom where the
    # unclipped branch is taken, 0 where clipping took over (and on padding)
    n_clipped = n_live = 0
    grad = two["grad"]
    for b in range(ratio.shape[0]):
        a = float(adv[b])
        for t in range(ratio.shape[1]):
            r = float(ratio[b, t])
            if mask[b, t] == 0 or a == 0:
                assert grad[b, t] == 0
                continue
            if (a > 0 and r > 1 + eps) or (a < 0 and r < 1 - eps):
                n_clipped += 1
                assert grad[b, t] == 0
            else:
                n_live += 1
                assert math.isclose(float(grad[b, t]), -float(w[b, t]) * r * a / two["denom"],
                                    rel_tol=1e-4, abs_tol=1e-12)
    assert n_clipped > 0 and n_live > 0
    tokens = float(mask.sum())
    assert record["clip_frac"] == pytest.approx(n_clipped / tokens)


def test_no_cudnn_attention_where_gradients_flow(two_pass_step, small_pairs, monkeypatch):
    # the trainer's forward + backward (both passes)
    _, _, _, flags = two_pass_step
    assert flags and not any(flags)
    # extraction's pair gradients (cuDNN's SDPA backward gave NaN for padded bf16 batches on an H100)
    seen = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def sdpa_spy(*args, **kwargs):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa_spy)
    model, tok = load_model("tiny-qwen3", "bfloat16")
    adapter = attach(model, "tiny-qwen3")
    pairs = load_pairs(small_pairs).pairs[:1]
    vhack.pair_differences(model, tok, adapter, pairs, progress=False)
    assert seen and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored afterwards


@pytest.mark.parametrize("field,value", [("num_iterations", 0), ("tis_cap", -1.0), ("teacher_weight", "half")])
def test_bad_new_fields_are_refused_naming_the_flag(field, value):
    with pytest.raises(UserError, match="--" + field.replace("_", "-")):
        replace(preset("smoke"), **{field: value}).validate()
