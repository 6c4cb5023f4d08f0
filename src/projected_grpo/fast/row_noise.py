"""Sampling noise that belongs to a row, not to a batch: Exp(1) draws from a counter-based hash.

The default decode draws its Gumbel-max noise for the whole (B, V) batch from one generator, so a
row's sample depends on which other rows shared its call. Rows of several runs decoded together
(fast/fleet_decode.py) need each run's samples to depend on that run alone — whichever runs share the
batch, and whether a resumed run is batched as it was before — so here the draw for row b, token v at
step t is a pure function of (row_seed[b], t, v):

    h = mix(mix((seed_b · φ + t · c) mod 2³²) xor (v · c')) ,   E = −log((h >> 8 + ½) / 2²⁴)

with `mix` the 32-bit finaliser of MurmurHash3 (two xor-shift-multiply rounds: every input bit flips
each output bit with probability ≈ ½). The top 24 bits make an exactly representable fp32 uniform
in (0, 1), so E is Exp(1) up to the 2⁻²⁴ granularity of its tail (`tests/test_lockstep.py` checks the
mean, the variance and the uniformity of the draws, and that a row's draws ignore its batch).
Only int64 elementwise ops: capturable in a CUDA graph (the counter is a device tensor) and fused
into one kernel by torch.compile.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF


def _mix(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's fmix32 on int64 tensors holding 32-bit values (products wrap; the low 32 bits
    are kept, which two's complement makes exact)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def row_seeds(seed: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n,) int64 seeds of a call's n rows from the call's own seed: row i's draws depend on (seed, i)."""
    base = _mix(torch.tensor([seed & _M32], dtype=torch.int64))
    return _mix((base + torch.arange(n, dtype=torch.int64) * 0x9E3779B1) & _M32).to(device)


def counter_noise(row_seed: torch.Tensor, counter: torch.Tensor, vocab: int) -> torch.Tensor:
    """(B, V) fp32 Exp(1) draws for rows with seeds `row_seed` (B,) int64 at step `counter` ((1,) or
    (), int64 on the same device)."""
    key = _mix((row_seed * 0x9E3779B1 + counter * 0x85EBCA77) & _M32)            # (B,)
    v = torch.arange(vocab, device=row_seed.device, dtype=torch.int64)           # (V,)
    h = _mix(key[:, None] ^ ((v * 0x27D4EB2F) & _M32)[None, :])                  # (B, V)
    u = ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))                   # (0, 1)
    return -torch.log(u)
