"""`--train-batching sorted` (core/batching.py) against the padded path it replaces: micro-batch plans and
the compact layout by hand, and, on a batch with mixed prompt and completion lengths and teacher rows,
the loss and ∂L/∂δS of one and of a second optimiser pass equal the padded path's to 1e-6 (fp32, CPU)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from projected_grpo.config import preset
from projected_grpo.core.adapter import attach
from projected_grpo.core.batching import compact, micro_batches
from projected_grpo.core.passes import BatchState, backward_pass
from projected_grpo.errors import UserError
from projected_grpo.models import load_model
from projected_grpo.training.rollout import encode_prompts, sample

MESSAGES = [[{"role": "user", "content": "Reverse a string."}],
            [{"role": "user", "content": "Write a Python function that returns the sum of the squares of a "
                                         "list of integers, skipping negative ones, with a docstring."}],
            [{"role": "user", "content": "def add(a, b):"}]]


def test_micro_batch_plans_by_hand():
    att = torch.zeros(5, 10, dtype=torch.long)
    for i, n in enumerate([3, 9, 5, 9, 1]):        # real lengths, row by row
        att[i, 10 - n:] = 1
    assert [g.tolist() for g in micro_batches(att, "padded", 2)] == [[0, 1], [2, 3], [4]]
    # longest first, ties by row: 1 (9), 3 (9), 2 (5), 0 (3), 4 (1)
    assert [g.tolist() for g in micro_batches(att, "sorted", 2)] == [[1, 3], [2, 0], [4]]
    # token budget 18: [1, 3] = 2 × 9; then 2 leads (5): 2, 0, 4 -> 3 × 5 = 15 ≤ 18
    assert [g.tolist() for g in micro_batches(att, "sorted", 2, micro_tokens=18)] == [[1, 3], [2, 0, 4]]
    # a budget below one row still takes that row
    assert [g.tolist() for g in micro_batches(att, "sorted", 2, micro_tokens=4)] == [[1], [3], [2], [0], [4]]


def test_compact_moves_real_tokens_left_and_scores_only_completion_tokens():
    # n_prompt = 3 (left-padded), T = 3 (right-padded); row 0: prompt [5, 6], completion [7]
    # row 1: prompt [1, 2, 3], completion [4, 8, 9]
    ids = torch.tensor([[0, 5, 6, 7, 0, 0], [1, 2, 3, 4, 8, 9]])
    att = torch.tensor([[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    out, mask, scored = compact(ids, att, 3)
    assert out.tolist() == [[5, 6, 7, 0, 0, 0], [1, 2, 3, 4, 8, 9]]
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    # position t scores token t + 1: row 0 scores 7 (t = 1); row 1 scores 4, 8, 9 (t = 2, 3, 4)
    assert scored.tolist() == [[False, True, False, False, False], [False, False, True, True, True]]


@pytest.fixture(scope="module")
def mixed_batch():
    """tiny-qwen3 fp32, δS ≠ 0; 3 prompts of different lengths × G = 2 sampled completions of 12 tokens,
    cut to 12, 3, 7, 12, 1 and 9 tokens (an eos reached early), row 2 a teacher row."""
    model, tok = load_model("tiny-qwen3", "float32")
    adapter = attach(model, "tiny-qwen3")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s.copy_(torch.randn(m.rank, generator=gen) * 0.02)
    p_ids, p_mask = encode_prompts(tok, MESSAGES, "cpu")
    rows = sample(model, tok, adapter, p_ids, p_mask, 2, 12, 1.0, 1.0, seed=0, fast=False)
    for r, n in enumerate([12, 3, 7, 12, 1, 9]):
        rows.completion_mask[r, n:] = 0
        rows.completion_ids[r, n:] = tok.pad_token_id
    assert len(set(rows.prompt_mask.sum(1).tolist())) == 3          # three prompt lengths
    cfg = replace(preset("smoke"), dtype="float32", prompts_per_step=3, group_size=2, max_new_tokens=12,
                  micro_batch=2, beta=0.04, tis_cap=2.0, teacher_weight="is", clip_eps=0.2)
    adv = torch.tensor([0.5, -0.5, 0.75, -0.75, 0.3, -0.3])
    teacher = [False, False, True, False, False, False]
    return model, adapter, rows, adv, teacher, cfg


def _two_passes(model, adapter, cfg, rows, adv, teacher):
    """Loss and δS gradient of a first pass, then of a second pass on the same BatchState after a
    fixed move of δS (ρ ≠ 1, so the clip acts)."""
    params = adapter.params()
    start = {k: p.detach().clone() for k, p in params.items()}
    out = []
    state = BatchState()
    for shift in (0.0, 0.05):
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(start[k] + shift * torch.sign(start[k]))
        for p in params.values():
            p.grad = None
        loss, kl = backward_pass(model, adapter, cfg, rows, adv, teacher, state)
        out.append((loss, kl, torch.cat([p.grad.flatten() for p in params.values()]).clone()))
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(start[k])
    return out, state


@pytest.mark.parametrize("micro_tokens,impl", [(0, "hook"), (60, "hook"), (60, "merged")])
def test_sorted_batching_gives_the_padded_paths_loss_and_gradient(mixed_batch, micro_tokens, impl):
    """The reference is the padded path of the same δS forward; `merged` is the combination a throughput
    configuration runs (sorted micro-batches on W' = W + U diag(δS) Vh; merged against hook is
    tests/test_merged_delta.py's)."""
    model, adapter, rows, adv, teacher, cfg = mixed_batch
    ref, ref_state = _two_passes(model, adapter, replace(cfg, delta_s_impl=impl), rows, adv, teacher)
    new, new_state = _two_passes(model, adapter, replace(cfg, train_batching="sorted", micro_tokens=micro_tokens,
                                                         delta_s_impl=impl), rows, adv, teacher)
    for (l0, k0, g0), (l1, k1, g1) in zip(ref, new):
        assert float(g0.norm()) > 0
        assert float((g1 - g0).norm() / g0.norm()) < 1e-6
        assert abs(l1 - l0) <= 1e-6 * abs(l0)
        # the logged K3 sum is a difference of nearly equal fp32 log-probs (k3 ≈ d²/2 with d ~ 1e-2), so a
        # 1e-7 change in log π moves it by ~1e-5 relative: a diagnostic, held to 1e-4
        assert abs(k1 - k0) <= 1e-4 * abs(k0)
    assert ref_state.clip_tokens == new_state.clip_tokens > 0          # the second pass ran the clip count
    # the sampler is the same fp32 model here, so Σ|log μ − log π| is rounding noise (~1e-7 per token):
    # the same student tokens are counted, and the sums agree at that floor
    assert new_state.mismatch_tokens == ref_state.mismatch_tokens == 37   # 44 completion tokens − row 2's 7
    assert abs(new_state.mismatch_abs - ref_state.mismatch_abs) <= 1e-7 * ref_state.mismatch_tokens


def test_sorted_batching_forwards_fewer_positions(mixed_batch):
    """The point of it: padded forwards every micro-batch at the batch's full width; sorted forwards
    each at its own longest real row."""
    model, adapter, rows, adv, teacher, cfg = mixed_batch
    seen: list[int] = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["input_ids"].numel()), with_kwargs=True)
    try:
        counts = {}
        for mode in ("padded", "sorted"):
            seen.clear()
            backward_pass(model, adapter, replace(cfg, beta=0.0, train_batching=mode), rows, adv, teacher,
                          BatchState())
            counts[mode] = sum(seen)
    finally:
        hook.remove()
    real = int(rows.attention_mask.sum())
    assert counts["padded"] == rows.input_ids.numel()
    assert real <= counts["sorted"] < counts["padded"]


def test_micro_tokens_needs_sorted_batching():
    with pytest.raises(UserError, match="--micro-tokens needs --train-batching sorted"):
        replace(preset("smoke"), micro_tokens=64).validate()


def test_a_run_cannot_resume_across_a_change_of_batching():
    """A run's config that predates the field resumes only as padded (its behaviour then); a change either
    way is refused, so no run mixes the two."""
    import json

    from projected_grpo.training.runio import config_diff

    new = json.loads(preset("smoke").to_json())
    old = {k: v for k, v in new.items() if k not in ("train_batching", "micro_tokens")}
    assert config_diff(old, new) == []
    assert config_diff(old, {**new, "train_batching": "sorted"}) == ["train_batching"]
    assert config_diff({**new, "train_batching": "sorted"}, {**new, "micro_tokens": 0}) == ["train_batching"]
