"""`random:SHAPE` models (throughput/scaling stand-ins): deterministic, the requested shape, the
real tokenizer, a clear error for an unknown shape. CPU, fp32, the `tiny` shape only (seconds)."""

from __future__ import annotations

import pytest
import torch

from projected_grpo.errors import UserError
from projected_grpo.models import RANDOM_SHAPES, load_model, load_tokenizer


def test_random_tiny_is_deterministic_and_shaped():
    default_dtype, rng = torch.get_default_dtype(), torch.get_rng_state()
    model, tok = load_model("random:tiny", "float32", "cpu")
    again, _ = load_model("random:tiny", "float32", "cpu")
    # the caller's RNG and default dtype are untouched
    assert torch.get_default_dtype() == default_dtype and torch.equal(torch.get_rng_state(), rng)

    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shape = RANDOM_SHAPES["tiny"]
    cfg = model.config
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.vocab_size) == (
        shape.hidden_size, shape.intermediate_size, shape.num_hidden_layers, shape.num_attention_heads,
        shape.num_key_value_heads, shape.vocab_size)
    assert model.get_input_embeddings().weight.shape == (shape.vocab_size, shape.hidden_size)
    assert len(model.model.layers) == shape.num_hidden_layers
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
    assert not model.training
    assert model.generation_config.eos_token_id == [151645, 151643]
    assert model.generation_config.pad_token_id == 151643

    # the real Qwen tokenizer; every id it can produce has an embedding row
    text = tok.apply_chat_template([{"role": "user", "content": "def add(a, b):"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt").input_ids
    assert "<|im_start|>" in text and tok.decode(ids[0]) == text
    assert len(tok) <= shape.vocab_size and tok.padding_side == "left" and tok.pad_token is not None
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], shape.vocab_size) and torch.isfinite(logits).all()


def test_random_bf16_builds_in_the_requested_dtype():
    model, _ = load_model("random:tiny", "bfloat16", "cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32


def test_unknown_random_shape_names_the_known_ones():
    for loader in (lambda: load_model("random:qwen9-giant", "float32", "cpu"),
                   lambda: load_tokenizer("random:qwen9-giant")):
        with pytest.raises(UserError, match="random:qwen9-giant") as err:
            loader()
        for name in RANDOM_SHAPES:
            assert f"random:{name}" in str(err.value)
    assert {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "qwen2.5-coder-7b", "tiny"} <= set(RANDOM_SHAPES)


def test_random_name_as_model_id_round_trips_adapter_metadata(tmp_path):
    """The name is stored in artifact metadata (never used as a path); a δS file saved on one
    build loads on a second build (same weights, same fingerprint)."""
    from projected_grpo.core.adapter import attach, read_metadata

    model, _ = load_model("random:tiny", "float32", "cpu")
    adapter = attach(model, "random:tiny")
    with torch.no_grad():
        for p in adapter.params().values():
            p.fill_(0.5)
    adapter.save(tmp_path / "delta_s.safetensors")
    other = attach(load_model("random:tiny", "float32", "cpu")[0], "random:tiny")
    other.load(tmp_path / "delta_s.safetensors")
    assert other.fingerprint == adapter.fingerprint
    assert all(bool((p.detach() == 0.5).all()) for p in other.params().values())
    assert read_metadata(tmp_path / "delta_s.safetensors")["model_id"] == "random:tiny"
    # identity is the weights' fingerprint, not the name (issue 25 item 6): other weights are refused
    bumped = load_model("random:tiny", "float32", "cpu")[0]
    with torch.no_grad():
        next(p for n, p in bumped.named_parameters() if n.endswith("q_proj.weight"))[0, 0] += 1.0
    with pytest.raises(UserError, match="made on other weights than those of 'random:tiny'"):
        attach(bumped, "random:tiny").load(tmp_path / "delta_s.safetensors")


# (total, non-embedding) parameters in billions, as the model cards state them (Qwen2.5-Coder 0.5B,
# 1.5B, 7B; Qwen3-4B): a shape typed wrong anywhere moves one of the two.
PUBLISHED_PARAMS = {"qwen2.5-coder-0.5b": (0.49, 0.36), "qwen2.5-coder-1.5b": (1.54, 1.31),
                    "qwen2.5-coder-7b": (7.61, 6.53), "qwen3-4b": (4.0, 3.6)}


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_real_shapes_have_their_published_parameter_counts(name):
    """Built on the meta device (shapes only, no memory): the architecture and the counts of the real
    checkpoint, which the bench's timings of these shapes stand in for."""
    from projected_grpo.models import build_random

    model = build_random(RANDOM_SHAPES[name], torch.bfloat16, "meta")
    total = sum(p.numel() for p in model.parameters())
    embeddings = model.get_input_embeddings().weight.numel()
    if not model.config.tie_word_embeddings:
        embeddings += model.get_output_embeddings().weight.numel()
    tol = 0.06 if name == "qwen3-4b" else 0.006          # the cards' own precision (and 7.6156 reads 7.61)
    published_total, published_body = PUBLISHED_PARAMS[name]
    assert abs(total / 1e9 - published_total) < tol and abs((total - embeddings) / 1e9 - published_body) < tol
    attn = model.model.layers[0].self_attn
    if name == "qwen3-4b":
        assert type(model).__name__ == "Qwen3ForCausalLM" and hasattr(attn, "q_norm")
        assert attn.q_proj.weight.shape == (32 * 128, 2560) and attn.k_proj.weight.shape == (8 * 128, 2560)
    else:
        assert type(model).__name__ == "Qwen2ForCausalLM" and attn.q_proj.bias is not None
