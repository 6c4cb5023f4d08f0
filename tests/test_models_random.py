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
    from projected_grpo.adapter import attach

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
    with pytest.raises(UserError, match="is for model 'random:tiny'"):
        attach(load_model("random:tiny", "float32", "cpu")[0], "tiny-other").load(
            tmp_path / "delta_s.safetensors")
