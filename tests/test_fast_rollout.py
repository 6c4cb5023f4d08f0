"""The fast decode loop (fast_rollout) against HF generate, eagerly on the CPU in fp32."""

import pytest
import torch

from projected_grpo.fast import decode_layers, fast_rollout
from projected_grpo.core.adapter import attach
from projected_grpo.models import load_model
from projected_grpo.training.rollout import sample


PROMPTS = ["def add(a, b):\n    return a + b",
           "Write a Python function that reverses a string, then explain how it works step by step."]


def _tiny_qwen2(vocab: int):
    """A Qwen2-layout model (q/k/v biases, no q/k norm), random weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=(vocab + 63) // 64 * 64, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=10000.0,
                      eos_token_id=151645, pad_token_id=151643)
    torch.manual_seed(7)
    model = Qwen2ForCausalLM(cfg).float().eval()
    with torch.no_grad():  # give the biases some size, so the bias path is exercised
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    for p in model.parameters():
        p.requires_grad_(False)
    model.generation_config.eos_token_id = [151645, 151643]
    return model


@pytest.fixture(scope="module", params=["qwen3", "qwen2", "random:tiny-4b-layout"])
def setup(request):
    model, tok = load_model("tiny-qwen3", "float32")
    if request.param == "qwen2":
        model = _tiny_qwen2(len(tok))
    elif request.param.startswith("random:"):     # Qwen3-4B's head_dim != hidden_size / heads
        model, tok = load_model(request.param, "float32")
        assert model.config.head_dim * model.config.num_attention_heads != model.config.hidden_size
    adapter = attach(model, request.param)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # δS != 0: the folded weights differ from the base ones
        for m in adapter.modules.values():
            m.delta_s.copy_(torch.randn(m.rank, generator=gen) * 0.3)
    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    assert (enc.attention_mask == 0).any()  # left padding is exercised
    return model, tok, adapter, enc.input_ids, enc.attention_mask


def _both(setup, **kw):
    model, tok, adapter, ids, mask = setup
    args = dict(group_size=2, max_new_tokens=24, temperature=0.0, top_p=1.0, seed=0)
    args.update(kw)
    hf = sample(model, tok, adapter, ids, mask, fast=False, **args)
    fast = sample(model, tok, adapter, ids, mask, fast=True, **args)
    return hf, fast


def _small(kind: str, **cfg):
    """A one-layer causal LM of `kind` (transformers' own classes), random weights."""
    import transformers

    config = getattr(transformers, f"{kind}Config")(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, **cfg)
    return getattr(transformers, f"{kind}ForCausalLM")(config).eval()


def test_supports_the_qwen_layouts_and_refuses_each_other_case():
    assert fast_rollout.supports(load_model("tiny-qwen3", "float32")[0])
    assert fast_rollout.supports(_small("Qwen2")) and fast_rollout.supports(_small("Qwen3"))
    unsupported = {
        "another architecture": _small("Llama"),
        "sliding-window attention": _small("Qwen2", use_sliding_window=True, sliding_window=8),
        "scaled rotary positions": _small("Qwen3", rope_scaling={"rope_type": "linear", "factor": 2.0}),
        "the decoder body without its LM head": _small("Qwen3").model,
        "no config at all": torch.nn.Linear(2, 2),
    }
    assert {case: fast_rollout.supports(m) for case, m in unsupported.items()} == dict.fromkeys(unsupported, False)
    # and the loop refuses such a model instead of decoding it wrongly
    ids, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(RuntimeError, match="fast rollout supports"):
        fast_rollout.generate(unsupported["sliding-window attention"], ids, mask, 2, [0], 0)


def test_greedy_matches_hf_token_for_token(setup):
    hf, fast = _both(setup)
    assert torch.equal(hf.completion_ids, fast.completion_ids)
    assert torch.equal(hf.completion_mask, fast.completion_mask)
    assert hf.texts == fast.texts
    model, _, adapter, _, _ = setup
    assert all(m.active for m in adapter.modules.values())  # merged() restored the hook path


def test_eos_stopping_and_masks(setup):
    model, tok, adapter, ids, mask = setup
    base = _both(setup, ignore_eos=True)[1].completion_ids
    # make a token that row 0 emits early an eos, so rows end at different steps
    eos_tok = int(base[0, 3])
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [eos_tok]
    try:
        hf, fast = _both(setup, max_new_tokens=40)
    finally:
        model.generation_config.eos_token_id = old
    assert torch.equal(hf.completion_ids, fast.completion_ids)
    assert torch.equal(hf.completion_mask, fast.completion_mask)
    lengths = fast.completion_mask.sum(1)
    assert int(lengths[0]) <= 4 and fast.completion_ids[0, int(lengths[0]) - 1] == eos_tok
    pad_after = fast.completion_ids[0, int(lengths[0]):]
    assert (pad_after == tok.pad_token_id).all()
    assert fast.completion_ids.shape[1] == int(lengths.max())  # trimmed like HF's early stop


def test_ignore_eos_forces_full_length(setup):
    model, tok, adapter, ids, mask = setup
    eos = set(model.generation_config.eos_token_id) | {tok.eos_token_id}
    hf, fast = _both(setup, ignore_eos=True, max_new_tokens=20)
    for r in (hf, fast):
        assert r.completion_ids.shape == (4, 20)
        assert bool(r.completion_mask.all())
        assert not any(int(t) in eos for t in r.completion_ids.flatten())
    assert torch.equal(hf.completion_ids, fast.completion_ids)


def test_sampling_runs_and_is_seeded(setup):
    model, tok, adapter, ids, mask = setup
    a = sample(model, tok, adapter, ids, mask, 2, 16, 1.0, 0.9, seed=3, fast=True)
    b = sample(model, tok, adapter, ids, mask, 2, 16, 1.0, 0.9, seed=3, fast=True)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert a.completion_ids.shape[0] == 4


def test_refuses_unmerged_weights(setup):
    model, _, adapter, ids, mask = setup
    with pytest.raises(RuntimeError, match="merged"):
        fast_rollout.generate(model, ids, mask, 4, [151645], 151643)


def test_fused_projections_are_views_with_unchanged_values():
    model, _ = load_model("tiny-qwen3", "float32")
    ids = torch.tensor([[9707, 11, 1879, 0, 42]])
    before = model(ids).logits
    attn = model.model.layers[0].self_attn
    q0 = attn.q_proj.weight.detach().clone()
    adapter = attach(model, "tiny-qwen3")
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s.fill_(0.2)
    wqkv, bqkv = decode_layers.fuse_projections([m.base for m in (adapter.modules[k] for k in (
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"))])
    assert bqkv is None and wqkv.shape[0] == sum(p.weight.shape[0] for p in (attn.q_proj.base, attn.k_proj.base,
                                                                            attn.v_proj.base))
    assert torch.equal(attn.q_proj.base.weight, q0)
    # the linear's weight IS a block of the fused tensor: writes through one show in the other
    assert attn.k_proj.base.weight.data_ptr() == wqkv.data_ptr() + q0.numel() * q0.element_size()
    again, _ = decode_layers.fuse_projections([attn.q_proj.base, attn.k_proj.base, attn.v_proj.base])
    assert again.data_ptr() == wqkv.data_ptr()  # idempotent: no second copy
    base = {k: m.base.weight.detach().clone() for k, m in adapter.modules.items()}
    with adapter.merged():
        folded = wqkv[: q0.shape[0]].clone()
        expected = (adapter.modules["model.layers.0.self_attn.q_proj"].u * 0.2) @ \
            adapter.modules["model.layers.0.self_attn.q_proj"].vh + q0
        assert torch.allclose(folded, expected, atol=1e-5)  # δS folded in place is what the fused matmul reads
    assert all(torch.equal(base[k], m.base.weight) for k, m in adapter.modules.items())
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s.zero_()
    assert torch.equal(model(ids).logits, before)  # the model computes exactly what it did


def test_fuse_projections_refuses_mixed_biases():
    lins = [torch.nn.Linear(4, 3, bias=True), torch.nn.Linear(4, 2, bias=False)]
    with pytest.raises(ValueError, match="bias"):
        decode_layers.fuse_projections(lins)


@pytest.mark.parametrize("attention", ["matmul", "triton"])
def test_attention_variants_match_sdpa(setup, attention):
    model, tok, adapter, ids, mask = setup
    eos = list(model.generation_config.eos_token_id)
    with adapter.merged(), torch.no_grad():
        a = fast_rollout.generate(model, ids, mask, 20, eos, tok.pad_token_id, temperature=0.0, cache=False)
        b = fast_rollout.generate(model, ids, mask, 20, eos, tok.pad_token_id, temperature=0.0, cache=False,
                                  attention=attention)
    assert torch.equal(a, b)


def test_unknown_attention_is_refused(setup):
    model, tok, adapter, ids, mask = setup
    with pytest.raises(ValueError, match="attention"):
        fast_rollout.generate(model, ids, mask, 4, [151645], tok.pad_token_id, attention="flash")


@pytest.mark.parametrize("top_p", [1.0, 0.7])
def test_sampler_draws_from_softmax_and_nucleus(top_p):
    """Gumbel-max over (B, V) logits: empirical frequencies match softmax(l / T) (renormalised over
    the nucleus when top_p < 1); eos is never drawn under ignore_eos."""
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0]).repeat(20_000, 1)
    T = 0.8
    spec = decode_layers.SamplingSpec(temperature=T, top_p=top_p, ignore_eos=True, eos=(4,), pad=4)
    ids = decode_layers.sample_next(logits, spec, torch.tensor([4]))
    freq = torch.bincount(ids, minlength=5).float() / ids.numel()
    p = torch.softmax(logits[0, :4] / T, dim=0)
    if top_p < 1.0:  # keep tokens whose preceding mass is <= top_p
        keep = (p.cumsum(0) - p) <= top_p
        p = torch.where(keep, p, torch.zeros_like(p))
        p = p / p.sum()
    assert freq[4] == 0
    assert torch.allclose(freq[:4], p, atol=0.015), (freq, p)
