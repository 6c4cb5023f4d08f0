"""Several runs on one copy of the frozen model: R runs' δS beside each other, gathered per row.

A study's runs differ only in δS (and their optimiser state, V, RNG); W, U and Vh are the same. With the
R runs' δS stacked as `delta[key]` (R, r) and each batch row tagged with its run, row b's forward is

    y_b = W x_b + U (δS_{run(b)} ⊙ Vh x_b)

(`DeltaSLinear._per_sample_delta` with δS_b = delta[key][run(b)], a differentiable gather). Rows never
interact in a causal LM, so one backward over the rows of all runs gives each run's own gradient in its
row of `delta[key].grad`: the gather's backward sums row b's gradient into run(b)'s row only. With the
pass's fixed denominator (G · max_new_tokens · P, passes.backward_pass) that row equals what the run's
own pass over its own rows gives (tests/test_fleet.py). The point is speed: R runs' rows make one batch,
so the card sees a few large kernels instead of R processes' small ones (issue #28,
docs/benchmarks.md "Study throughput"); `bench/fleet_step.py` measures whether it pays.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch

from projected_grpo.core.adapter import DeltaSAdapter


class Fleet:
    """R runs' δS on one adapter: `delta[key]` is a leaf (R, r) per wrapped module, in δS's dtype (fp32)."""

    def __init__(self, adapter: DeltaSAdapter, n_runs: int):
        if n_runs < 1:
            raise ValueError(f"a fleet needs at least one run, got {n_runs}")
        self.adapter, self.n_runs = adapter, n_runs
        self.delta = {k: torch.zeros(n_runs, m.rank, device=m.delta_s.device, dtype=m.delta_s.dtype,
                                     requires_grad=True) for k, m in adapter.modules.items()}
        self.key_of = {id(m): k for k, m in adapter.modules.items()}   # wrapped module -> its key

    def params(self) -> list[torch.Tensor]:
        return list(self.delta.values())

    def load_run(self, run: int, delta_s: Mapping[str, torch.Tensor]) -> None:
        """Set run `run`'s δS (module key -> (r,)), e.g. from its own adapter or checkpoint."""
        with torch.no_grad():
            for k, d in self.delta.items():
                d[run].copy_(delta_s[k])

    def run_delta(self, run: int) -> dict[str, torch.Tensor]:
        """Run `run`'s δS (module key -> (r,)), detached."""
        return {k: d[run].detach() for k, d in self.delta.items()}

    @contextlib.contextmanager
    def rows(self, run_of_row: torch.Tensor) -> Iterator[None]:
        """Inside, row b of every forward uses the δS of run `run_of_row[b]` ((B,) long, the batch's row
        order: a micro-batch passes its own rows' runs)."""
        if run_of_row.dim() != 1 or (run_of_row.numel() and not
                                     (int(run_of_row.min()) >= 0 and int(run_of_row.max()) < self.n_runs)):
            raise ValueError(f"run_of_row must be a (B,) tensor of runs in [0, {self.n_runs})")
        idx = run_of_row.to(next(iter(self.delta.values())).device)
        modules = self.adapter.modules
        for k, m in modules.items():
            m.per_sample_delta_s = self.delta[k][idx]              # (B, r), gradient to delta[k][run]
        try:
            yield
        finally:
            for m in modules.values():
                m.per_sample_delta_s = None
