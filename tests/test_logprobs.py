"""The one completion log-prob (grpo.scored_logprobs): both call sites — the trainer's
token_logprobs (left-padded prompts, right-padded completions) and extraction's completion_nll
(right-padded pairs) — agree with a direct log_softmax gather of each row run alone, unpadded."""

from __future__ import annotations

import pytest
import torch

from projected_grpo.directions import vhack
from projected_grpo.core.adapter import attach
from projected_grpo.core.grpo import token_logprobs
from projected_grpo.models import load_model
from projected_grpo.directions.pairs import load_pairs, pair_batch


@pytest.fixture(scope="module")
def policy():
    """tiny-qwen3 in fp32 with a nonzero δS, so the adapter's hook path is part of what is checked."""
    model, tok = load_model("tiny-qwen3", "float32")
    adapter = attach(model, "tiny-qwen3")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s.copy_(torch.randn(m.rank, generator=gen) * 0.5)
    return model, tok, adapter


def direct_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log π(ids[t+1] | ids[:t+1]) for t = 0..len-2 of one unpadded row: (len − 1,)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()    # (len, V)
    return torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


@pytest.mark.parametrize("chunk", [256, 3], ids=["one_chunk", "many_chunks"])
def test_token_logprobs_match_direct_gather(policy, chunk):
    model, _, _ = policy
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(10, 1000, (n,), generator=gen).tolist() for n in (7, 4)]
    completions = [torch.randint(10, 1000, (n,), generator=gen).tolist() for n in (5, 3)]
    n_prompt, width = 7, 5
    ids = torch.zeros(2, n_prompt + width, dtype=torch.long)
    att = torch.zeros_like(ids)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        ids[b, n_prompt - len(p):n_prompt + len(c)] = torch.tensor(p + c)  # left pad | right pad
        att[b, n_prompt - len(p):n_prompt + len(c)] = 1
    got = token_logprobs(model, ids, att, n_prompt, chunk)                 # (2, width), grad on
    assert got.shape == (2, width) and got.requires_grad
    for b, (p, c) in enumerate(zip(prompts, completions)):
        want = direct_logprobs(model, p + c)[len(p) - 1:]                  # the completion tokens
        torch.testing.assert_close(got[b, :len(c)].detach(), want, atol=1e-4, rtol=1e-4)


def test_completion_nll_matches_direct_gather(policy):
    model, tok, adapter = policy
    pairs = load_pairs("bundled:code", split="train").pairs[:2]
    batch = pair_batch(tok, pairs)
    got = vhack.completion_nll(model, batch)                               # (4,): hacks, cleans
    got.sum().backward()                                                   # gradients reach δS
    assert all(m.delta_s.grad is not None and m.delta_s.grad.abs().sum() > 0
               for m in adapter.modules.values())
    for m in adapter.modules.values():
        m.delta_s.grad = None
    for b in range(batch.input_ids.shape[0]):
        real = batch.attention_mask[b].bool()
        ids = batch.input_ids[b][real].tolist()
        scored = batch.completion_mask[b][real][1:]                        # token t+1 scored at t
        want = -direct_logprobs(model, ids)[scored].mean()
        torch.testing.assert_close(got[b].detach(), want, atol=1e-4, rtol=1e-4)
