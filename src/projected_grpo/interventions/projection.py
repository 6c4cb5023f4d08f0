"""Gradient-level interventions: one-sided projection of the hack-ward part of each δS gradient (or,
with --project-target update, of the AdamW step) off a V (DESIGN §3; projection.py holds the math).

Projection(source)  V from the run's pairs or a control (directions.py): real, random, shuffled,
                    lomo, refresh. Knows: the contrastive pairs (no training row's label).
OracleProjection    V = g_h / ‖g_h‖ of each batch's oracle-labelled hack rows (oracle.py): the
                    declared UPPER BOUND of gradient projection. Knows: the oracle.
"""

from __future__ import annotations

import torch

from projected_grpo.directions import sources as directions, oracle
from projected_grpo.interventions.base import Context, Intervention, Knowledge, StepBatch

SOURCES = ("real", "random", "shuffled", "lomo", "refresh")
_WHAT = {"real": "pair V", "random": "seeded random V (control)", "shuffled": "V of label-shuffled pairs "
         "(control)", "lomo": "pair V of the other loophole modes", "refresh": "pair V re-extracted"}


class Projection(Intervention):
    name = "project"
    kind = "pairs"

    def __init__(self, cfg, source: str = "real"):
        super().__init__(cfg, source=source)
        if source not in SOURCES:
            raise ValueError(f"unknown V source {source!r}; one of {', '.join(SOURCES)}")
        self.source = source
        self.v: dict[str, torch.Tensor] = {}
        self.refresh: directions.Refresh | None = None
        self.point = "update" if cfg.project_target == "update" else "gradient"

    def knows(self, run_dir=None) -> Knowledge:
        return Knowledge(self.kind, f"{_WHAT[self.source]}, m={self.cfg.vhack_m}")

    def setup(self, ctx: Context) -> None:
        if ctx.handed_v is not None:
            if self.source == "refresh":
                raise ValueError("the refresh arm re-extracts its V: it cannot be handed fixed directions")
            self.v = ctx.handed_v
            return
        self.v, self.refresh = directions.source_v(self.source, ctx.cfg, ctx.policy, ctx.out, ctx.device,
                                                   ctx.v_real, ctx.progress)

    def directions(self, batch: StepBatch) -> dict[str, torch.Tensor]:
        if self.refresh is not None:
            self.v = self.refresh.at(batch.step)
        return self.v

    def metrics(self) -> dict:
        return self.refresh.metrics() if self.refresh is not None else {}

    def state(self) -> dict:
        return {"v_refresh": self.refresh.state()} if self.refresh is not None else {}

    def load_state(self, state: dict) -> None:
        if self.refresh is not None:
            self.refresh.load_state(state["v_refresh"])
            self.v = self.refresh.v


class OracleProjection(Intervention):
    name = "oracle_project"
    point = "gradient"
    kind = "oracle"
    needs_hack_gradient = True

    def knows(self, run_dir=None) -> Knowledge:
        return Knowledge(self.kind, "each batch's labelled hack rows' gradient (upper bound)")

    def setup(self, ctx: Context) -> None:
        self.v = ctx.handed_v if ctx.handed_v is not None else oracle.zero_directions(ctx.v_real)

    def directions(self, batch: StepBatch) -> dict[str, torch.Tensor] | None:
        if batch.g_hack is not None:
            self.v = oracle.oracle_directions(batch.g_hack)
        return self.v
