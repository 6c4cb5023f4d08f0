"""The fast decode loop for R runs at once (core/fleet.py; issue #28).

Each run's policy is W'_r = W + U diag(δS_r) Vh on every targeted linear (`merged_delta.fold`, the very fold
`adapter.merged()` samples one run with). `FleetWeights` holds, per layer, the R runs' folds of q/k/v,
o, gate/up and down stacked as (R, d_out, d_in) tensors beside the model's shared norms, embedding and
lm_head; `decode_layers.linear` then takes a batch whose B rows are R equal blocks, run by run, through
one batched matmul per projection. So R runs' rows decode as ONE batch: one prefill, one KV cache, one
CUDA graph per step, where R processes would each run their own (docs/benchmarks.md, "Study
throughput"). Memory: the targeted weights R more times (0.5B: ~0.7 GB a run in bf16).

`refold()` rewrites the stacked tensors in place from the fleet's current δS, so their addresses (and the
cached decoder and its graphs, keyed on them) stay valid across optimiser steps. Each run's rows match
that run's own `adapter.merged()` decode up to the batched matmul's rounding (`tests/test_fleet.py`).
"""

from __future__ import annotations

import torch
from torch import nn

from projected_grpo.core.adapter import DeltaSLinear
from projected_grpo.core.fleet import Fleet
from projected_grpo.core.merged_delta import fold
from projected_grpo.fast import fast_rollout
from projected_grpo.fast.decode_layers import Weights, plain_linear


class FleetWeights(Weights):
    """`Weights` of one model whose targeted projections are R runs' stacked folds."""

    def __init__(self, model, fleet: Fleet):
        super().__init__(model, check=False)          # shared parts; the projections are replaced below
        self.fleet = fleet
        self._parts: list[tuple[torch.Tensor, list[nn.Module]]] = []   # (stacked buffer, its linears)
        body = model.model
        for lw, layer in zip(self.layers, body.layers):
            a, m = layer.self_attn, layer.mlp
            lw.wqkv = self._stack([a.q_proj, a.k_proj, a.v_proj])
            lw.wo = self._stack([a.o_proj])
            lw.wgu = self._stack([m.gate_proj, m.up_proj])
            lw.wd = self._stack([m.down_proj])
        self.refold()

    def _stack(self, mods: list[nn.Module]) -> torch.Tensor:
        rows = sum(plain_linear(mod, False).weight.shape[0] for mod in mods)
        d_in = plain_linear(mods[0], False).weight.shape[1]
        buf = torch.empty(self.fleet.n_runs, rows, d_in, device=self.device, dtype=self.dtype)
        self._parts.append((buf, mods))
        return buf

    @torch.no_grad()
    def refold(self) -> None:
        """Each run's W'_r = fold(W, U, Vh, δS_r) into its slice of the stacked buffers (W for a linear
        the adapter does not wrap)."""
        for buf, mods in self._parts:
            for r in range(self.fleet.n_runs):
                row = 0
                for mod in mods:
                    w = plain_linear(mod, False).weight
                    buf[r, row:row + w.shape[0]].copy_(
                        fold(w, mod.u, mod.vh, self.fleet.delta[self.fleet.key_of[id(mod)]][r])
                        if isinstance(mod, DeltaSLinear) else w)
                    row += w.shape[0]


def generate(model, weights: FleetWeights, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
             eos: list[int], pad_id: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """fast_rollout.generate for R runs' rows at once: ids/mask (B, Lp) with B = R · rows per run, run by
    run; refolds the current δS first. -> (completion ids, log-probs), as fast_rollout.generate."""
    if ids.shape[0] % weights.fleet.n_runs:
        raise ValueError(f"{ids.shape[0]} rows do not split into {weights.fleet.n_runs} equal runs")
    weights.refold()
    out = fast_rollout.generate(model, ids, mask, max_new_tokens, eos, pad_id, weights=weights,
                                return_logprobs=True, **kwargs)
    assert isinstance(out, tuple)
    return out
