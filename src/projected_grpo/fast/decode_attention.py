"""Decode attention for grouped-query heads, split over the keys (a Triton kernel; issue #7).

One decode step asks, for every row b and kv head h, for the G query heads that share h:

    out[b, h, g] = softmax_n(q[b, h, g] · k[b, h, n] / √D  over valid n) · v[b, h, n]

with valid n = key_ok[b, n] and n ≤ slot (prompt padding off, unwritten cache slots off) and n < end.
At the 0.5B shape (128 rows × 2 kv heads × G = 7) a fused SDPA kernel gives one thread block per
(row, kv head) and walks all keys in it: 256 blocks for 132 SMs, each streaming its K/V serially.
Here the keys are split into `n_split` chunks ("split-KV" / flash-decoding):

- `_attend_chunk`, grid (B·n_kv, n_split): the G queries (padded to 16 rows, so the two products
  run on tensor cores) against one chunk of keys, online softmax in base 2; writes the chunk's
  unnormalised output acc (G, D), its running max m and its sum l (fp32).
- `_combine`, grid (B·n_kv,): out = Σ_s 2^(m_s − M) · acc_s / Σ_s 2^(m_s − M) · l_s, M = max_s m_s.
  With n_split = 1 the first kernel writes the normalised output itself and this one is skipped.

The kernel can also take the step's new K/V and write them into the cache itself (saving the
separate cache-write kernel), and skips each row's key blocks before its first valid (non-padding)
key. Everything the step reads that changes between steps (`slot`, `key_ok`, `first`) is read from
device memory, so the launch is capturable in a CUDA graph, and the keys read stop at the newest:
one graph serves every step of a generation, with no key past the newest read. On the CPU the
kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before triton is imported); the
tests compare them there with SDPA.
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU-only install without the dev extra; `available()` says so
    triton = None

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # kernels run on the CPU (tests)
G_PAD_MIN = 16       # tl.dot needs at least 16 rows
# Launch settings from bench/decode_attention.py on an H100 (batch 128, docs/benchmarks.md): one
# chunk per (row, kv head) is fastest once B·n_kv reaches the SM count (the combine pass costs
# more than the extra parallelism gains), 128 keys per iteration for head_dim 64, 64 for 128.
PROGRAMS_PER_SM = 1  # split the keys only while fewer programs than SMs would run
NUM_WARPS = 4


def block_keys(head_dim: int) -> int:
    """Keys per inner iteration: fewer for wide heads (registers)."""
    return 128 if head_dim <= 64 else 64


def available() -> bool:
    """True when Triton can run the kernel here (CUDA, or the CPU interpreter)."""
    return triton is not None


if triton is not None:

    @triton.jit
    def _dot(a, b, F32: tl.constexpr):
        """a @ b in fp32. Triton's CPU interpreter computes bf16 products wrongly, so there the
        operands are widened first; on the GPU they stay 16-bit (tensor cores)."""
        if F32:
            return tl.dot(a.to(tl.float32), b.to(tl.float32))
        return tl.dot(a, b)

    @triton.jit
    def _attend_chunk(Q, K, V, OK, SLOT, FIRST, NEW, O, ACC, M, L,
                      s_qb, s_qh, s_qg, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ok, s_nw, s_nb, s_nh,
                      n_kv, G, end, chunk, scale,
                      D: tl.constexpr, G_PAD: tl.constexpr, BLOCK: tl.constexpr, DIRECT: tl.constexpr,
                      WRITE: tl.constexpr, F32: tl.constexpr):
        bh = tl.program_id(0)                       # row · n_kv + kv head
        split = tl.program_id(1)
        n_split = tl.num_programs(1)
        b = bh // n_kv
        h = bh % n_kv
        g = tl.arange(0, G_PAD)
        d = tl.arange(0, D)
        q = tl.load(Q + b * s_qb + h * s_qh + g[:, None] * s_qg + d[None, :], mask=g[:, None] < G, other=0.0)
        q = (q.to(tl.float32) * scale).to(K.dtype.element_ty)          # (G_PAD, D), scale has log2(e)
        slot = tl.load(SLOT)
        first = tl.load(FIRST + b)                  # keys before the row's first valid block: skipped
        lo = tl.maximum(split * chunk, (first // BLOCK) * BLOCK)
        hi = tl.minimum(tl.minimum(split * chunk + chunk, end), slot + 1)  # no key past the newest
        if WRITE:  # this step's K/V into the cache at `slot` (split 0 writes them)
            k_new = tl.load(NEW + b * s_nb + h * s_nh + d)
            v_new = tl.load(NEW + s_nw + b * s_nb + h * s_nh + d)
            first_split = (d * 0 + split) == 0      # (D,) store mask: only chunk 0 writes
            tl.store(K + b * s_kb + h * s_kh + slot * s_kn + d, k_new, mask=first_split)
            tl.store(V + b * s_vb + h * s_vh + slot * s_vn + d, v_new, mask=first_split)
            if DIRECT:  # one program per (row, kv head): the barrier makes its own writes visible
                tl.debug_barrier()
        m_i = tl.full([G_PAD], -1.0e30, tl.float32)
        l_i = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, D], tl.float32)
        for start in range(lo, hi, BLOCK):
            n = start + tl.arange(0, BLOCK)
            inside = n < hi
            k = tl.load(K + b * s_kb + h * s_kh + n[:, None] * s_kn + d[None, :], mask=inside[:, None], other=0.0)
            if WRITE and not DIRECT:  # another chunk's program may not see the write: use the values
                k = tl.where((n == slot)[:, None], k_new[None, :], k)
            ok = (tl.load(OK + b * s_ok + n, mask=inside, other=0) != 0) & inside
            s = _dot(q, tl.trans(k), F32)                               # (G_PAD, BLOCK) fp32
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            v = tl.load(V + b * s_vb + h * s_vh + n[:, None] * s_vn + d[None, :], mask=inside[:, None], other=0.0)
            if WRITE and not DIRECT:
                v = tl.where((n == slot)[:, None], v_new[None, :], v)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, F32)
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new
        row_ok = g[:, None] < G
        if DIRECT:   # one chunk: the output itself, laid out (B, n_kv, G, D)
            out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
            tl.store(O + (bh * G + g[:, None]) * D + d[None, :], out.to(O.dtype.element_ty), mask=row_ok)
        else:        # partials, laid out (B·n_kv, n_split, G_PAD, ·)
            part = bh * n_split + split
            tl.store(ACC + (part * G_PAD + g[:, None]) * D + d[None, :], acc)
            tl.store(M + part * G_PAD + g, m_i)
            tl.store(L + part * G_PAD + g, l_i)

    @triton.jit
    def _combine(ACC, M, L, O, n_split, G,
                 D: tl.constexpr, G_PAD: tl.constexpr, S_PAD: tl.constexpr):
        bh = tl.program_id(0)
        s = tl.arange(0, S_PAD)
        g = tl.arange(0, G_PAD)
        d = tl.arange(0, D)
        part = bh * n_split + s                                          # (S_PAD,)
        have = s < n_split
        m = tl.load(M + part[:, None] * G_PAD + g[None, :], mask=have[:, None], other=-1.0e30)  # (S, G)
        l = tl.load(L + part[:, None] * G_PAD + g[None, :], mask=have[:, None], other=0.0)
        w = tl.exp2(m - tl.max(m, 0)[None, :])                           # (S_PAD, G_PAD)
        acc = tl.load(ACC + ((part[:, None, None] * G_PAD + g[None, :, None]) * D + d[None, None, :]),
                      mask=have[:, None, None], other=0.0)              # (S_PAD, G_PAD, D)
        num = tl.sum(acc * w[:, :, None], 0)                            # (G_PAD, D)
        den = tl.sum(l * w, 0)                                           # (G_PAD,)
        out = num / tl.where(den > 0, den, 1.0)[:, None]
        tl.store(O + (bh * G + g[:, None]) * D + d[None, :], out.to(O.dtype.element_ty), mask=g[:, None] < G)


def choose_split(rows_heads: int, end: int, device: torch.device, head_dim: int = 64) -> int:
    """Chunks per (row, kv head): enough programs to fill the GPU, at least one key block each."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
    want = math.ceil(PROGRAMS_PER_SM * sms / rows_heads)
    return max(1, min(want, math.ceil(end / block_keys(head_dim))))


class DecodeAttention:
    """Split-KV attention for one decode loop's shapes; holds its partial buffers (reused by every
    layer and step, so a CUDA graph sees fixed addresses)."""

    def __init__(self, B: int, n_kv: int, G: int, D: int, device: torch.device, dtype: torch.dtype,
                 max_split: int, block_n: int | None = None, num_warps: int = NUM_WARPS,
                 num_stages: int = 2):
        if triton is None:
            raise RuntimeError("decode_attention needs triton (on CUDA it ships with torch; "
                               "on the CPU install the dev extra)")
        if D & (D - 1):
            raise ValueError(f"decode_attention: head_dim must be a power of two, not {D}")
        self.B, self.n_kv, self.G, self.D = B, n_kv, G, D
        self.G_PAD = max(G_PAD_MIN, triton.next_power_of_2(G))
        self.max_split = max_split
        self.block_n = block_n or block_keys(D)
        self.launch = dict(num_warps=num_warps, num_stages=num_stages)
        n = B * n_kv * max_split * self.G_PAD
        self.acc = torch.empty(n * D, device=device, dtype=torch.float32)
        self.m = torch.empty(n, device=device, dtype=torch.float32)
        self.l = torch.empty(n, device=device, dtype=torch.float32)
        self.out = torch.empty(B, n_kv, G, D, device=device, dtype=dtype)
        self.no_skip = torch.zeros(B, device=device, dtype=torch.long)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_ok: torch.Tensor,
                 slot: torch.Tensor, end: int, n_split: int, first: torch.Tensor | None = None,
                 new_kv: torch.Tensor | None = None) -> torch.Tensor:
        """q (B, n_kv, G, D); k, v (B, n_kv, ≥end, D) (last dim contiguous); key_ok (B, ≥end) bool;
        slot (1,) long: the newest key. -> (B, n_kv, G, D), a buffer reused by the next call.

        `first` (B,) long: each row's first valid key (blocks before it are not read; None reads
        from 0). `new_kv` (2, B, n_kv, [1,] D): this step's K and V, written into k, v at `slot` by
        the kernel itself (one launch instead of a cache write plus attention); None: already there."""
        B, n_kv, G, D = q.shape
        if (B, n_kv, G, D) != (self.B, self.n_kv, self.G, self.D):
            raise ValueError(f"decode_attention built for {(self.B, self.n_kv, self.G, self.D)}, "
                             f"got q {tuple(q.shape)}")
        if not 1 <= n_split <= self.max_split:
            raise ValueError(f"n_split {n_split} outside 1..{self.max_split}")
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.stride(-1) != 1:
                raise ValueError(f"decode_attention: {name} must be contiguous in head_dim")
        chunk = math.ceil(math.ceil(end / n_split) / self.block_n) * self.block_n
        n_split = math.ceil(end / chunk)
        ok = key_ok.view(torch.uint8)
        first = self.no_skip if first is None else first
        write = new_kv is not None
        nw, s_new = q, (0, 0, 0)  # without new_kv: placeholders the kernel does not read
        if new_kv is not None:
            nw = new_kv.squeeze(3) if new_kv.dim() == 5 else new_kv
            if nw.shape != (2, B, n_kv, D) or nw.stride(-1) != 1:
                raise ValueError(f"decode_attention: new_kv must be (2, {B}, {n_kv}, [1,] {D}) and "
                                 f"contiguous in head_dim, got {tuple(nw.shape)}")
            s_new = (nw.stride(0), nw.stride(1), nw.stride(2))
        scale = D ** -0.5 * math.log2(math.e)
        _attend_chunk[(B * n_kv, n_split)](
            q, k, v, ok, slot, first, nw, self.out, self.acc, self.m, self.l,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), ok.stride(0),
            *s_new,
            n_kv, G, end, chunk, scale,
            D=D, G_PAD=self.G_PAD, BLOCK=self.block_n, DIRECT=n_split == 1, WRITE=write, F32=INTERPRETED,
            **self.launch)
        if n_split > 1:
            _combine[(B * n_kv,)](self.acc, self.m, self.l, self.out, n_split, G,
                                  D=D, G_PAD=self.G_PAD, S_PAD=triton.next_power_of_2(n_split))
        return self.out
