"""The split-KV decode-attention kernel (decode_attention), run by Triton's CPU interpreter
(conftest sets TRITON_INTERPRET=1), against SDPA with the same mask."""

import pytest
import torch
import torch.nn.functional as F

from projected_grpo.fast import decode_attention, fast_rollout
from projected_grpo.fast.decode_attention import DecodeAttention
from projected_grpo.models import load_model


def _reference(q, k, v, key_ok, slot, end):
    ok = key_ok[:, :end] & (torch.arange(end) <= slot)
    bias = torch.zeros(ok.shape[0], 1, 1, end).masked_fill(~ok[:, None, None], float("-inf"))
    return F.scaled_dot_product_attention(q.float(), k[:, :, :end].float(), v[:, :, :end].float(),
                                          attn_mask=bias)


def test_the_decode_loop_runs_the_kernel_and_each_launch_gives_reference_attention(monkeypatch):
    """attention="triton" launches this kernel (under the interpreter here) for every layer of every
    decode step, with no silent fall-back to SDPA, and each launch returns the reference attention
    of the cache it was handed (its own write of the step's K/V included)."""
    model, tok = load_model("tiny-qwen3", "float32")
    enc = tok(["def add(a, b):", "Reverse a string in Python, then explain why it works."],
              return_tensors="pt", padding=True, padding_side="left")
    errors = []
    launch = DecodeAttention.__call__

    def checked(self, q, k, v, key_ok, slot, end, n_split, first=None, new_kv=None):
        out = launch(self, q, k, v, key_ok, slot, end, n_split, first, new_kv).clone()
        errors.append((out - _reference(q, k, v, key_ok, int(slot), end)).abs().max().item())
        return out

    monkeypatch.setattr(DecodeAttention, "__call__", checked)
    steps = 6
    with torch.no_grad():
        ids = fast_rollout.generate(model, enc.input_ids, enc.attention_mask, steps, [], tok.pad_token_id,
                                    temperature=0.0, ignore_eos=True, cache=False, attention="triton")
    assert ids.shape == (2, steps)
    assert len(errors) == (steps - 1) * model.config.num_hidden_layers   # the first token is the prefill's
    assert max(errors) < 1e-4, errors


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("n_split", [1, 2, 3, 8])
def test_matches_sdpa_over_splits(dtype, tol, n_split):
    torch.manual_seed(0)
    B, n_kv, G, D, L = 3, 2, 7, 64, 200
    cache = torch.randn(2, B, n_kv, L, D, dtype=dtype)       # as the loop's (2, B, n_kv, L, D) cache
    q = torch.randn(B, n_kv, G, D, dtype=dtype)
    key_ok = torch.ones(B, L, dtype=torch.bool)
    key_ok[0, :70] = False                                    # left padding, a whole key block and more
    key_ok[2, :5] = False
    slot, end = torch.tensor([150]), 192                      # keys past the newest slot are unwritten
    cache[:, :, :, 151:] = 1e4                                # ... and must not leak into the output
    att = DecodeAttention(B, n_kv, G, D, q.device, dtype, max_split=8)
    out = att(q, cache[0], cache[1], key_ok, slot, end, n_split)
    ref = _reference(q, cache[0], cache[1], key_ok, slot, end)
    assert out.shape == (B, n_kv, G, D) and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max().item() < tol


def test_a_chunk_with_no_valid_key_adds_nothing():
    """With 4 splits of 64 keys and the first 130 keys padding, two chunks are empty."""
    torch.manual_seed(1)
    B, n_kv, G, D, L = 2, 1, 4, 32, 256
    k, v = torch.randn(B, n_kv, L, D), torch.randn(B, n_kv, L, D)
    q = torch.randn(B, n_kv, G, D)
    key_ok = torch.ones(B, L, dtype=torch.bool)
    key_ok[:, :130] = False
    slot = torch.tensor([255])
    out = DecodeAttention(B, n_kv, G, D, q.device, q.dtype, max_split=4)(q, k, v, key_ok, slot, L, 4)
    assert (out - _reference(q, k, v, key_ok, slot, L)).abs().max().item() < 1e-5


def test_bad_shapes_are_refused():
    att = DecodeAttention(2, 1, 4, 32, torch.device("cpu"), torch.float32, max_split=2)
    q = torch.randn(2, 1, 4, 32)
    kv = torch.randn(2, 1, 64, 32)
    ok, slot = torch.ones(2, 64, dtype=torch.bool), torch.tensor([10])
    with pytest.raises(ValueError, match="built for"):
        att(torch.randn(3, 1, 4, 32), kv, kv, ok, slot, 64, 1)
    with pytest.raises(ValueError, match="n_split"):
        att(q, kv, kv, ok, slot, 64, 3)
    with pytest.raises(ValueError, match="contiguous"):
        att(q, kv.transpose(-1, -2).contiguous().transpose(-1, -2), kv, ok, slot, 64, 1)
    with pytest.raises(ValueError, match="power of two"):
        DecodeAttention(2, 1, 4, 48, torch.device("cpu"), torch.float32, max_split=2)


def test_choose_split_fills_the_gpu_and_keeps_a_block_per_chunk():
    cpu = torch.device("cpu")
    assert decode_attention.choose_split(256, 64, cpu) == 1          # one key block: one chunk
    assert decode_attention.choose_split(2, 10_000, cpu) > 1         # few rows: split the keys
    assert decode_attention.choose_split(10_000, 10_000, cpu) == 1   # many rows already fill it


@pytest.mark.parametrize("n_split", [1, 3])
def test_writes_the_new_key_value_and_skips_leading_padding(n_split):
    """With `new_kv` the kernel puts this step's K/V into the cache at `slot` and attends to them;
    with `first` it starts at each row's first valid key block. Same result as writing first."""
    torch.manual_seed(2)
    B, n_kv, G, D, L = 3, 2, 6, 32, 160
    cache = torch.randn(2, B, n_kv, L, D)
    new_kv = torch.randn(2, B, n_kv, 1, D)                  # as the loop's qkv() returns it
    q = torch.randn(B, n_kv, G, D)
    key_ok = torch.ones(B, L, dtype=torch.bool)
    key_ok[0, :70] = False
    key_ok[1, :3] = False
    first = key_ok.long().argmax(dim=1)                     # (B,) first valid key
    slot, end = torch.tensor([120]), 128
    expected_cache = cache.clone()
    expected_cache[:, :, :, 120] = new_kv[:, :, :, 0]
    ref = _reference(q, expected_cache[0], expected_cache[1], key_ok, slot, end)
    att = DecodeAttention(B, n_kv, G, D, q.device, q.dtype, max_split=4, block_n=32)
    out = att(q, cache[0], cache[1], key_ok, slot, end, n_split, first=first, new_kv=new_kv)
    assert (out - ref).abs().max().item() < 1e-5
    assert torch.equal(cache, expected_cache)              # the slot written, nothing else touched


def test_new_kv_of_the_wrong_shape_is_refused():
    att = DecodeAttention(2, 1, 4, 32, torch.device("cpu"), torch.float32, max_split=1)
    kv = torch.randn(2, 1, 64, 32)
    with pytest.raises(ValueError, match="new_kv"):
        att(torch.randn(2, 1, 4, 32), kv, kv, torch.ones(2, 64, dtype=torch.bool), torch.tensor([3]), 64, 1,
            new_kv=torch.randn(2, 3, 1, 32))
