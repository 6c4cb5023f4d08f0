"""A decode loop for Qwen2 / Qwen3 causal LMs close to the hardware (issue #7).

`generate(...)` samples B rows of up to T new tokens from left-padded prompts with the model's
own weights, read in place (call it inside `adapter.merged()`, so δS is folded into them):

- prefill: one eager forward over the prompt (SDPA, causal + padding mask), K/V written into a
  static cache (per layer: (2, B, n_kv, Lp + T, head_dim)), the first token sampled from its logits;
- fused projections: q/k/v (and their biases) and gate/up are each ONE matmul. The model's own
  parameters are re-pointed, once, at row blocks of a single buffer per layer (`fuse_projections`:
  same values, same shapes, no extra memory), so δS folded into them in place by `merged()` is
  what the fused matmul reads;
- decode: one token per step for all rows. The step reads its inputs from fixed device buffers
  (current token, step counter, the cache) and writes its outputs back there, so on CUDA it is
  captured once in a CUDA graph and each step costs one `graph.replay()`; there is no Python per
  token beyond that. Attention reads only the cache prefix that can be filled: one graph per
  bucket of `bucket` key positions, so early steps do not read the whole cache. Attention is one
  SDPA call per layer with the G query heads of each kv head as its "query length" (no repeated
  K/V) and an additive mask for prompt padding and unwritten slots;
- sampling on the GPU: temperature, optional top-p, then Gumbel-max (argmax of scores minus the
  log of Exp(1) noise: the same distribution as softmax + multinomial, from a different random
  stream); greedy when temperature <= 0; eos logits set to -inf when `ignore_eos` (forced length);
- stopping: rows that ended get the pad id; every `check_every` steps one host sync asks whether
  all rows have ended.

Optionally (CUDA, `compile_layers`) the elementwise work around the matmuls of each layer
(RMSNorm, q/k norm, rotary, SiLU·mul, residual adds; each block's last residual add shares its
pass with the next RMSNorm) and the sampling pass over the logits
(temperature, eos mask, Gumbel noise, argmax: one read of the (B, V) logits instead of seven) are
fused by torch.compile before capture; the matmuls stay cuBLAS calls. Any compile failure falls
back to the eager functions.

On the CPU everything runs eagerly (no graphs, no compile); the test compares greedy decoding
token for token with HF `generate`. Graphs and buffers are cached between calls for one
(model, batch, padded prompt length, T, sampling settings) key; `release()` frees them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

SUPPORTED_TYPES = ("qwen2", "qwen3")
ATTENTION = ("sdpa", "matmul")  # decode-attention implementations
PROMPT_ALIGN = 64  # prompts are left-padded to a multiple of this, so graphs are reused across steps


def supports(model) -> bool:
    """True for the Qwen2 / Qwen3 decoder layouts this loop implements (full attention only)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED_TYPES:
        return False
    if getattr(cfg, "use_sliding_window", False):
        return False
    rope = getattr(cfg, "rope_scaling", None) or getattr(cfg, "rope_parameters", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        return False
    body = getattr(model, "model", None)
    return body is not None and hasattr(body, "layers") and hasattr(body, "embed_tokens")


def _linear(m: nn.Module, check: bool = True) -> nn.Linear:
    """The plain nn.Linear behind a (possibly δS-wrapped) projection; refuses an active δS path."""
    base = getattr(m, "base", None)
    if base is not None:
        if check and getattr(m, "active", False) and bool(m.delta_s.detach().ne(0).any()):
            raise RuntimeError("fast rollout reads the raw weights: call it inside adapter.merged()")
        return base
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
class _LayerW:
    ln1: torch.Tensor
    wqkv: torch.Tensor           # (n_heads·D + 2·n_kv·D, d): rows of q, then k, then v
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    qn: torch.Tensor | None
    kn: torch.Tensor | None
    ln2: torch.Tensor
    wgu: torch.Tensor            # (2·I, d): rows of gate, then up
    wd: torch.Tensor


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen RMSNorm: fp32 statistics, weight applied in the input dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def _qkv(h, wqkv, bqkv, qn, kn, cos, sin, eps: float, n_heads: int, n_kv: int, hd: int):
    """Normed input h (B, S, d) -> q (B, H, S, D) and kv (2, B, n_kv, S, D), rotary applied.
    cos/sin (B, S, D). K and V come out stacked, so the cache takes them in one write."""
    B, S, _ = h.shape
    q, k, v = F.linear(h, wqkv, bqkv).split([n_heads * hd, n_kv * hd, n_kv * hd], dim=-1)
    q, k, v = q.view(B, S, n_heads, hd), k.view(B, S, n_kv, hd), v.view(B, S, n_kv, hd)
    if qn is not None:
        q, k = _rms(q, qn, eps), _rms(k, kn, eps)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    q, k = _rope(q, c, s), _rope(k, c, s)
    return q.transpose(1, 2), torch.stack((k.transpose(1, 2), v.transpose(1, 2)))


def _masked_softmax(scores, bias, scale: float):
    """softmax(scores · scale + bias) over the keys, in fp32, back in the scores' dtype."""
    return (scores.float() * scale + bias).softmax(dim=-1).to(scores.dtype)


def _block_out(x, attn, wo, ln2, wgu, wd, ln_next, eps: float):
    """Residual + o_proj, the SwiGLU MLP block, and the NEXT norm (the following layer's input norm,
    or the final norm) in the same pass as the last residual add. x, attn (B, S, ·) -> (x, h_next)."""
    x = x + F.linear(attn, wo)
    gate, up = F.linear(_rms(x, ln2, eps), wgu).chunk(2, dim=-1)
    x = x + F.linear(F.silu(gate) * up, wd)
    return x, _rms(x, ln_next, eps)


class _Model:
    """Weight views and shape facts of one Qwen2/Qwen3 model (no copies of any weight)."""

    def __init__(self, model, check: bool = True):
        lin = lambda mod: _linear(mod, check)
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
        self.layers: list[_LayerW] = []
        for layer in body.layers:
            a, m = layer.self_attn, layer.mlp
            wqkv, bqkv = fuse_projections([lin(a.q_proj), lin(a.k_proj), lin(a.v_proj)])
            wgu, _ = fuse_projections([lin(m.gate_proj), lin(m.up_proj)])
            self.layers.append(_LayerW(
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


def _pick(logits: torch.Tensor, noise: torch.Tensor | None, eos_t: torch.Tensor, temperature: float,
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


def _sample_next(logits: torch.Tensor, spec: SamplingSpec, eos_t: torch.Tensor,
                 noise: torch.Tensor | None = None, pick=_pick) -> torch.Tensor:
    """Sample next ids (B,) from logits (B, V); `noise` is a reusable (B, V) fp32 buffer."""
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
    noise = (torch.empty(logits.shape, dtype=torch.float32, device=logits.device) if noise is None
             else noise).exponential_()
    return pick(logits, noise, eos_t, spec.temperature, spec.ignore_eos)


class _Decoder:
    """Static buffers (+ CUDA graphs) for one (batch, padded prompt length, T, sampling) key."""

    def __init__(self, m: _Model, B: int, Lp: int, T: int, spec: SamplingSpec, use_graphs: bool,
                 compile_layers: bool, bucket: int, attention: str = "sdpa"):
        self.m, self.B, self.Lp, self.T, self.spec = m, B, Lp, T, spec
        self.L = Lp + T
        dev, dt = m.device, m.dtype
        # per layer: K and V of every row and slot, (2, B, n_kv, Lp + T, D)
        self.kv_cache = [torch.zeros(2, B, m.n_kv, self.L, m.hd, device=dev, dtype=dt) for _ in m.layers]
        self.tok = torch.zeros(B, dtype=torch.long, device=dev)         # this step's input token
        self.step = torch.zeros(1, dtype=torch.long, device=dev)        # s: input token = out[:, s]
        self.n_valid = torch.zeros(B, dtype=torch.long, device=dev)     # real prompt tokens per row
        self.key_ok = torch.ones(B, self.L, dtype=torch.bool, device=dev)  # prompt padding is False
        self.finished = torch.zeros(B, dtype=torch.bool, device=dev)
        self.out = torch.full((B, T), spec.pad, dtype=torch.long, device=dev)
        self.eos_t = torch.tensor(spec.eos or [spec.pad], dtype=torch.long, device=dev)
        self.key_pos = torch.arange(self.L, device=dev)
        self.noise = None if spec.greedy else torch.empty(B, m.head.shape[0], device=dev)  # Exp(1) draws
        self.attention = attention
        self.qkv, self.block_out, self.pick, self.softmax = _qkv, _block_out, _pick, _masked_softmax
        if compile_layers:
            try:
                self.qkv = torch.compile(_qkv, dynamic=False, fullgraph=True)
                self.block_out = torch.compile(_block_out, dynamic=False, fullgraph=True)
                self.pick = torch.compile(_pick, dynamic=False, fullgraph=True)
                # the key length changes with the bucket: a dynamic-shape kernel from the 2nd one on
                self.softmax = torch.compile(_masked_softmax, fullgraph=True)
            except Exception as err:  # noqa: BLE001 - compile is an optimisation only
                log.warning("torch.compile unavailable (%s); eager layers", err)
        self.ends = sorted({min(self.L, Lp + bucket * k) for k in range(1, math.ceil(T / bucket) + 1)})
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.use_graphs = use_graphs
        self.compile_layers = compile_layers

    # ---- one decode step over keys [0, end) --------------------------------------------------
    def _step(self, end: int) -> None:
        m, B, spec = self.m, self.B, self.spec
        slot = self.step + self.Lp                                   # (1,) cache slot of the input
        pos = (self.n_valid + self.step)[:, None]                    # (B, 1) its rotary position
        cos, sin = m.cos_sin(pos)
        x = F.embedding(self.tok[:, None], m.embed)                  # (B, 1, d)
        ok = self.key_ok[:, :end] & (self.key_pos[:end] <= slot)     # (B, end)
        bias = torch.zeros(B, 1, 1, end, device=x.device, dtype=m.dtype).masked_fill(
            ~ok[:, None, None, :], float("-inf"))                    # (B, 1, 1, end) additive mask
        G = m.n_heads // m.n_kv
        h = _rms(x, m.layers[0].ln1, m.eps)
        for i, lw in enumerate(m.layers):
            q, kv = self.qkv(h, lw.wqkv, lw.bqkv, lw.qn, lw.kn, cos, sin, m.eps,
                             m.n_heads, m.n_kv, m.hd)               # q (B, H, 1, D), kv (2, B, n_kv, 1, D)
            self.kv_cache[i].index_copy_(3, slot, kv)
            kc, vc = self.kv_cache[i]
            # the G query heads sharing a kv head play the role of G query positions
            qg = q.reshape(B, m.n_kv, G, m.hd)                       # (B, n_kv, G, D)
            if self.attention == "sdpa":
                attn = F.scaled_dot_product_attention(qg, kc[:, :, :end], vc[:, :, :end], attn_mask=bias)
            else:  # two cuBLAS matmuls around one (compiled) masked softmax
                scores = torch.matmul(qg, kc[:, :, :end].transpose(-1, -2))     # (B, n_kv, G, end)
                attn = torch.matmul(self.softmax(scores, bias, m.hd ** -0.5), vc[:, :, :end])
            x, h = self.block_out(x, attn.reshape(B, 1, m.n_heads * m.hd), lw.wo, lw.ln2, lw.wgu, lw.wd,
                                  m.next_norm[i], m.eps)
        logits = F.linear(h[:, 0], m.head)                           # (B, V); h is final-normed
        nxt = _sample_next(logits, spec, self.eos_t, self.noise, self.pick)
        nxt = torch.where(self.finished, torch.full_like(nxt, spec.pad), nxt)
        if not spec.ignore_eos:
            self.finished |= (nxt[:, None] == self.eos_t).any(dim=1)
        self.out.index_copy_(1, self.step + 1, nxt[:, None])
        self.tok.copy_(nxt)
        self.step.add_(1)

    def _capture(self) -> None:
        """Warm up (compile, cuBLAS handles) on a side stream, then capture one graph per bucket.
        The step mutates its buffers, so they are snapshotted and restored around the warm-up."""
        snap = [t.clone() for t in (self.tok, self.step, self.finished, self.out)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for end in self.ends:
                for _ in range(2):
                    self.step.zero_()
                    self._step(end)
        torch.cuda.current_stream().wait_stream(side)
        pool = None
        for end in self.ends:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                self._step(end)
            pool = g.pool()
            self.graphs[end] = g
        for t, s in zip((self.tok, self.step, self.finished, self.out), snap):
            t.copy_(s)

    # ---- prefill ------------------------------------------------------------------------------
    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        m, B, Lp = self.m, self.B, self.Lp
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = m.cos_sin(pos)
        x = F.embedding(ids, m.embed)
        valid = mask.bool()
        causal = torch.ones(Lp, Lp, dtype=torch.bool, device=ids.device).tril()
        eye = torch.eye(Lp, dtype=torch.bool, device=ids.device)
        # a padded query attends to itself, so no row is fully masked (no NaN anywhere)
        allowed = (causal & (valid[:, None, :] | eye))[:, None]      # (B, 1, Lp, Lp)
        rep = m.n_heads // m.n_kv
        h = _rms(x, m.layers[0].ln1, m.eps)
        for i, lw in enumerate(m.layers):
            q, kv = _qkv(h, lw.wqkv, lw.bqkv, lw.qn, lw.kn, cos, sin, m.eps, m.n_heads, m.n_kv, m.hd)
            self.kv_cache[i][:, :, :, :Lp].copy_(kv)
            k, v = kv
            attn = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                                  attn_mask=allowed)
            x, h = _block_out(x, attn.transpose(1, 2).reshape(B, Lp, -1), lw.wo, lw.ln2, lw.wgu, lw.wd,
                              m.next_norm[i], m.eps)
        logits = F.linear(h[:, -1], m.head)
        first = _sample_next(logits, self.spec, self.eos_t, self.noise)
        self.n_valid.copy_(mask.long().sum(-1))
        self.key_ok.fill_(True)
        self.key_ok[:, :Lp].copy_(valid)
        self.finished.fill_(False)
        self.out.fill_(self.spec.pad)
        self.out[:, 0] = first
        if not self.spec.ignore_eos:
            self.finished |= (first[:, None] == self.eos_t).any(dim=1)
        self.tok.copy_(first)
        self.step.zero_()

    # ---- the whole generation ------------------------------------------------------------------
    @torch.no_grad()
    def run(self, ids: torch.Tensor, mask: torch.Tensor, check_every: int) -> torch.Tensor:
        self._prefill(ids, mask)
        if self.use_graphs and not self.graphs and self.T > 1:
            try:
                self._capture()
            except Exception as err:  # a compile failure falls back to eager layers
                if self.qkv is _qkv:
                    raise
                log.warning("compiled decode step failed (%s: %s); capturing eager layers",
                            type(err).__name__, err)
                self.qkv, self.block_out, self.pick, self.compile_layers = _qkv, _block_out, _pick, False
                self.softmax = _masked_softmax
                self.graphs.clear()
                self._prefill(ids, mask)
                self._capture()
        done = 1
        for s in range(self.T - 1):
            end = next(e for e in self.ends if e >= self.Lp + s + 1)
            if self.use_graphs:
                self.graphs[end].replay()
            else:
                self._step(self.Lp + s + 1)
            done = s + 2
            if not self.spec.ignore_eos and (s + 1) % check_every == 0 and bool(self.finished.all()):
                break
        return self.out[:, :done]


_CACHE: dict[tuple, _Decoder] = {}


def release() -> None:
    """Free the cached static buffers and CUDA graphs."""
    _CACHE.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, eos: list[int],
             pad_id: int, temperature: float = 1.0, top_p: float = 1.0, ignore_eos: bool = False,
             use_graphs: bool | None = None, compile_layers: bool | None = None, bucket: int = 128,
             check_every: int = 16, cache: bool = True, attention: str = "sdpa") -> torch.Tensor:
    """Completion ids (B, ≤ max_new_tokens), right-padded with `pad_id` after each row's first eos.

    `ids`/`mask`: left-padded prompts (B, Lp). Read the weights inside `adapter.merged()`.
    Seed with `torch.manual_seed` before the call (the noise comes from the default generator).
    Graphs and compile default to on for CUDA, off elsewhere. `attention`: "sdpa" (one fused call per
    layer) or "matmul" (two matmuls around a masked softmax); both compute the same thing,
    bench/grpo_step.py --check times them."""
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, not {attention!r}")
    if not supports(model):
        raise RuntimeError(f"fast rollout supports {SUPPORTED_TYPES}, not "
                           f"{getattr(model.config, 'model_type', '?')}")
    cuda = ids.device.type == "cuda"
    use_graphs = cuda if use_graphs is None else (use_graphs and cuda)
    compile_layers = cuda if compile_layers is None else (compile_layers and cuda)
    B, L0 = ids.shape
    Lp = -(-L0 // PROMPT_ALIGN) * PROMPT_ALIGN if cuda else L0
    if Lp > L0:  # extra left padding: masked out, positions unchanged
        ids = F.pad(ids, (Lp - L0, 0), value=pad_id)
        mask = F.pad(mask, (Lp - L0, 0), value=0)
    spec = SamplingSpec(float(temperature), float(top_p), bool(ignore_eos), tuple(eos), int(pad_id))
    # the cached decoder holds the weight tensors, so their addresses identify this model's weights
    first = model.model.layers[0].mlp.down_proj
    key = (id(model), model.model.embed_tokens.weight.data_ptr(), _linear(first, False).weight.data_ptr(),
           B, Lp, max_new_tokens, spec, use_graphs, compile_layers, bucket, attention, str(ids.device))
    dec = _CACHE.get(key)
    if dec is None:
        _CACHE.clear()  # one entry: a decoder holds a KV cache the size of the batch
        dec = _Decoder(_Model(model), B, Lp, max_new_tokens, spec, use_graphs, compile_layers, bucket,
                       attention)
        if cache:
            _CACHE[key] = dec
    return dec.run(ids, mask, check_every).clone()


def decode_bytes(model, batch: int, context_len: int) -> int:
    """Fewest bytes one decode step must read: every weight matrix once + the K/V of `context_len`
    positions for each of `batch` rows (the HBM-bandwidth bound's numerator)."""
    m = _Model(model, check=False)
    return m.weight_bytes() + batch * context_len * m.kv_bytes_per_token()
