"""Qwen2 / Qwen3 layer math for the fast decode loop (`fast_rollout`), and its GPU sampler.

- `Weights`: views of one model's weights, no copies. q/k/v (and their biases) and gate/up are
  fused (`fuse_projections`): the model's own parameters are re-pointed, once, at row blocks of
  one buffer per layer (same values, same shapes, no extra memory), so one matmul computes them
  all and δS folded in place by `adapter.merged()` is what that matmul reads.
- The per-layer functions the loop runs (and, on CUDA, compiles): `qkv` (projections, q/k norm,
  rotary; K and V stacked for one cache write), `masked_softmax`, `block_out` (o_proj, the SwiGLU
  MLP and the NEXT RMSNorm in the pass of the last residual add).
- `sample_next`: temperature, optional top-p, eos suppression and Gumbel-max sampling on the
  device (`pick` is the one pass over the logits that gets compiled).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from projected_grpo.core.adapter import DeltaSLinear
from projected_grpo.fast.row_noise import counter_noise


def plain_linear(m: nn.Module, check: bool = True) -> nn.Linear:
    """The plain nn.Linear behind a (possibly δS-wrapped) projection; refuses an active δS path."""
    if isinstance(m, DeltaSLinear):
        if check and m.active and bool(m.delta_s.detach().ne(0).any()):
            raise RuntimeError("fast rollout reads the raw weights: call it inside adapter.merged()")
        return m.base
    assert isinstance(m, nn.Linear), type(m)
    return m


def _fused_view(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The one tensor whose consecutive row blocks `tensors` are, or None if they are not."""
    first = tensors[0]
    same = all(t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
               and t.is_contiguous() and t.shape[1:] == first.shape[1:] for t in tensors)
    if not same:
        return None
    offset = first.storage_offset()
    for t in tensors:
        if t.storage_offset() != offset:
            return None
        offset += t.numel()
    rows = sum(t.shape[0] for t in tensors)
    return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(),
                                   (rows, *first.shape[1:]), first.stride())


def fuse_projections(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of the concatenation of `linears`, where each linear's own weight and bias
    become views of row blocks of it (values unchanged). One matmul then computes every linear,
    and in-place writes to any of them (δS folded by `adapter.merged()`) land in the fused tensor.
    Idempotent: already-fused linears just return the existing buffer."""
    weights = [lin.weight for lin in linears]
    biases = [lin.bias for lin in linears]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        raise ValueError("fuse_projections: either every linear has a bias or none has")
    out = []
    for group in (weights, None if biases[0] is None else biases):
        if group is None:
            out.append(None)
            continue
        fused = _fused_view([t.data for t in group])
        if fused is None:
            fused = torch.cat([t.detach() for t in group])
            offset = 0
            for t in group:  # re-point the parameter at its block; the old storage is freed
                n = t.shape[0]
                t.data = fused[offset:offset + n]
                offset += n
        out.append(fused)
    return out[0], out[1]


@dataclass
class LayerWeights:
    ln1: torch.Tensor
    wqkv: torch.Tensor           # (n_heads·D + 2·n_kv·D, d): rows of q, then k, then v
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    qn: torch.Tensor | None
    kn: torch.Tensor | None
    ln2: torch.Tensor
    wgu: torch.Tensor            # (2·I, d): rows of gate, then up
    wd: torch.Tensor


def rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen RMSNorm: fp32 statistics, weight applied in the input dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T + b. W (d_out, d_in) is one model's; a stacked W (R, d_out, d_in) holds R runs' folded
    weights (fast/fleet_decode.py), and then x's B rows are R equal blocks, run by run: block r
    meets W[r] in one batched matmul. x (B, S, d_in) -> (B, S, d_out)."""
    if w.dim() == 2:
        return F.linear(x, w, b)
    B, S, d = x.shape
    R = w.shape[0]
    y = torch.bmm(x.reshape(R, (B // R) * S, d), w.transpose(1, 2)).view(B, S, w.shape[1])
    return y if b is None else y + b


def qkv(h, wqkv, bqkv, qn, kn, cos, sin, eps: float, n_heads: int, n_kv: int, hd: int):
    """Normed input h (B, S, d) -> q (B, H, S, D) and kv (2, B, n_kv, S, D), rotary applied.
    cos/sin (B, S, D). K and V come out stacked, so the cache takes them in one write."""
    B, S, _ = h.shape
    q, k, v = linear(h, wqkv, bqkv).split([n_heads * hd, n_kv * hd, n_kv * hd], dim=-1)
    q, k, v = q.view(B, S, n_heads, hd), k.view(B, S, n_kv, hd), v.view(B, S, n_kv, hd)
    if qn is not None:
        q, k = rms(q, qn, eps), rms(k, kn, eps)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    q, k = rope(q, c, s), rope(k, c, s)
    return q.transpose(1, 2), torch.stack((k.transpose(1, 2), v.transpose(1, 2)))


def masked_softmax(scores, bias, scale: float):
    """softmax(scores · scale + bias) over the keys, in fp32, back in the scores' dtype."""
    return (scores.float() * scale + bias).softmax(dim=-1).to(scores.dtype)


def block_out(x, attn, wo, ln2, wgu, wd, ln_next, eps: float):
    """Residual + o_proj, the SwiGLU MLP block, and the NEXT norm (the following layer's input norm,
    or the final norm) in the same pass as the last residual add. x, attn (B, S, ·) -> (x, h_next)."""
    x = x + linear(attn, wo)
    gate, up = linear(rms(x, ln2, eps), wgu).chunk(2, dim=-1)
    x = x + linear(F.silu(gate) * up, wd)
    return x, rms(x, ln_next, eps)


class Weights:
    """Weight views and shape facts of one Qwen2/Qwen3 model (no copies of any weight)."""

    def __init__(self, model, check: bool = True):
        def lin(mod: nn.Module) -> nn.Linear:
            return plain_linear(mod, check)
        cfg, body = model.config, model.model
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = float(cfg.rms_norm_eps)
        self.embed = body.embed_tokens.weight
        self.norm = body.norm.weight
        self.head = model.get_output_embeddings().weight
        rot = body.rotary_emb
        self.inv_freq = rot.inv_freq.float()
        self.rope_scale = float(getattr(rot, "attention_scaling", 1.0) or 1.0)
        self.layers: list[LayerWeights] = []
        for layer in body.layers:
            a, m = layer.self_attn, layer.mlp
            wqkv, bqkv = fuse_projections([lin(a.q_proj), lin(a.k_proj), lin(a.v_proj)])
            wgu, _ = fuse_projections([lin(m.gate_proj), lin(m.up_proj)])
            self.layers.append(LayerWeights(
                ln1=layer.input_layernorm.weight, wqkv=wqkv, bqkv=bqkv, wo=lin(a.o_proj).weight,
                qn=a.q_norm.weight if hasattr(a, "q_norm") else None,
                kn=a.k_norm.weight if hasattr(a, "k_norm") else None,
                ln2=layer.post_attention_layernorm.weight, wgu=wgu, wd=lin(m.down_proj).weight))
        # the norm each layer's block output feeds: the next layer's input norm, then the final norm
        self.next_norm = [lw.ln1 for lw in self.layers[1:]] + [self.norm]
        self.dtype = self.embed.dtype
        self.device = self.embed.device

    def cos_sin(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pos (B, S) long -> cos, sin (B, S, D) in the model dtype (as HF's rotary embedding)."""
        freqs = pos[..., None].float() * self.inv_freq.to(pos.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return ((emb.cos() * self.rope_scale).to(self.dtype), (emb.sin() * self.rope_scale).to(self.dtype))

    def weight_bytes(self) -> int:
        """Bytes read per decode step for weights (every matrix once; embedding rows are negligible)."""
        n = sum(t.numel() * t.element_size() for lw in self.layers for t in vars(lw).values()
                if t is not None)
        n += self.norm.numel() * self.norm.element_size() + self.head.numel() * self.head.element_size()
        return n

    def kv_bytes_per_token(self) -> int:
        return 2 * len(self.layers) * self.n_kv * self.hd * self.embed.element_size()


@dataclass(frozen=True)
class SamplingSpec:
    temperature: float
    top_p: float
    ignore_eos: bool
    eos: tuple[int, ...]
    pad: int

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def pick(logits: torch.Tensor, noise: torch.Tensor | None, eos_t: torch.Tensor, temperature: float,
          ignore_eos: bool) -> torch.Tensor:
    """logits (B, V) -> next ids (B,). noise: (B, V) fp32 Exp(1) draws, None for greedy.
    Gumbel-max: argmax(s/T − log E) with E ~ Exp(1) samples softmax(s/T). One pass over the logits
    once compiled; capturable in a CUDA graph."""
    s = logits.float()
    if ignore_eos:
        s = s.index_fill(1, eos_t, float("-inf"))
    if noise is None:
        return s.argmax(dim=-1)
    return (s / temperature - noise.log()).argmax(dim=-1)


def sample_next(logits: torch.Tensor, spec: SamplingSpec, eos_t: torch.Tensor,
                 noise: torch.Tensor | None = None, pick=pick,
                 seeded: tuple[torch.Tensor, torch.Tensor] | None = None, noise_fn=counter_noise) -> torch.Tensor:
    """Sample next ids (B,) from logits (B, V); `noise` is a reusable (B, V) fp32 buffer, filled from the
    default generator; `seeded` = (row seeds (B,), step counter) draws each row's own noise instead
    (row_noise.py)."""
    if spec.greedy:
        return pick(logits, None, eos_t, spec.temperature, spec.ignore_eos)
    if spec.top_p < 1.0:  # nucleus: drop tokens outside the top-p mass of softmax(s/T), eos excluded first
        s = logits.float()
        if spec.ignore_eos:
            s = s.index_fill(1, eos_t, float("-inf"))
        sorted_s, idx = (s / spec.temperature).sort(dim=-1, descending=True)
        probs = sorted_s.softmax(dim=-1)
        drop_sorted = probs.cumsum(dim=-1) - probs > spec.top_p  # mass strictly before; keeps the top
        logits = s.masked_fill(drop_sorted.scatter(1, idx, drop_sorted), float("-inf"))
    if seeded is not None:
        return pick(logits, noise_fn(seeded[0], seeded[1], logits.shape[1]), eos_t, spec.temperature,
                    spec.ignore_eos)
    noise = (torch.empty(logits.shape, dtype=torch.float32, device=logits.device) if noise is None
             else noise).exponential_()
    return pick(logits, noise, eos_t, spec.temperature, spec.ignore_eos)
