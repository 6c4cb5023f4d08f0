"""Interventions as plug-ins (DESIGN §9): the registry of every intervention by name, and `build`,
which turns an arm of the arms table (arms.py) into the interventions a run calls.

Adding a defence: a module here with an Intervention subclass (base.py: one hook at its point and
what it knows), one REGISTRY entry, and one row in arms.TABLE."""

from __future__ import annotations

from projected_grpo.interventions.base import (KINDS, POINTS, READS_LABELS, Context, Intervention, Knowledge,
                                               LabelLeak, StepBatch)
from projected_grpo.interventions.monitor import MonitorPenalty, Screening
from projected_grpo.interventions.probe import ProbePenalty
from projected_grpo.interventions.projection import OracleProjection, Projection
from projected_grpo.interventions.rebound import ReboundPenalty

REGISTRY: dict[str, type[Intervention]] = {cls.name: cls for cls in (
    Projection, OracleProjection, ReboundPenalty, MonitorPenalty, Screening, ProbePenalty)}



def kind_of(name: str) -> str:
    """What the intervention `name` knows, without a config (arms.Arm.uses_labels)."""
    return REGISTRY[name].kind


def build(arm, cfg) -> list[Intervention]:
    """The interventions of `arm` (arms.Arm) for a run of `cfg`, in the arm's order; at most one of
    them may set the V to project (points gradient / update)."""
    ivs = [REGISTRY[u.intervention](cfg, **u.kwargs) for u in arm.uses]
    if sum(iv.point in ("gradient", "update") for iv in ivs) > 1:
        raise ValueError(f"arm {arm.name}: more than one intervention projects the gradient")
    return ivs


__all__ = ["KINDS", "POINTS", "READS_LABELS", "REGISTRY", "Context", "Intervention", "Knowledge", "LabelLeak",
           "StepBatch", "build", "kind_of"]
