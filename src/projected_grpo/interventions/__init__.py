"""Interventions as plug-ins (DESIGN §9): the registry of every intervention by name, and `build`,
which turns an arm of the arms table (arms.py) into the interventions a run calls.

Adding a defence: a module here with an Intervention subclass (base.py: one hook at its point and
what it knows), one REGISTRY entry, and one row in arms.TABLE."""

from __future__ import annotations

from projected_grpo.interventions.base import (KINDS, POINTS, READS_LABELS, Context, Intervention, Knowledge,
                                               LabelLeak, StepBatch)
from projected_grpo.interventions.clean_subspace import CleanSubspace
from projected_grpo.interventions.monitor import MonitorPenalty, Screening
from projected_grpo.interventions.probe import ProbePenalty
from projected_grpo.interventions.projection import OracleProjection, Projection
from projected_grpo.interventions.prompts import InoculationPrompt, PlanPrompt
from projected_grpo.interventions.rebound import ReboundPenalty
from projected_grpo.interventions.routing import RouteByMonitor, RouteByRandomV, RouteByV

REGISTRY: dict[str, type[Intervention]] = {cls.name: cls for cls in (
    Projection, OracleProjection, ReboundPenalty, MonitorPenalty, Screening, ProbePenalty, PlanPrompt,
    InoculationPrompt, CleanSubspace, RouteByMonitor, RouteByV, RouteByRandomV)}



def kind_of(name: str) -> str:
    """What the intervention `name` knows, without a config."""
    return REGISTRY[name].kind


def uses_labels(arm) -> bool:
    """Whether any intervention of `arm` (arms.Arm) reads training rows' oracle labels."""
    return any(kind_of(u.intervention) in READS_LABELS for u in arm.uses)


def arm_label(name: str, base: str | None = None) -> str:
    """An arm's name as tables and plots show it; an arm that uses labels says so. A sweep variant
    (e.g. mp_good) is labelled by its `base` arm (monitor_penalty); other names unchanged."""
    from projected_grpo import arms

    if (base or name) not in arms.BY_NAME:
        return name
    arm = arms.BY_NAME[base or name]
    if arm.upper_bound:
        return f"{name} (upper bound: uses labels)"
    return f"{name} (uses labels: monitor)" if uses_labels(arm) else name


def knows_kind(name: str) -> str:
    """What arm `name` knows, as kinds ("nothing", "pairs", "monitor", ...; "+"-joined); "" outside the table."""
    from projected_grpo import arms

    if name not in arms.BY_NAME:
        return ""
    kinds = list(dict.fromkeys(kind_of(u.intervention) for u in arms.BY_NAME[name].uses))
    return "+".join(kinds) if kinds else "nothing"


def label_use(name: str, cfg, run_dir=None) -> str:
    """What arm `name` knows under `cfg`, one clause per intervention ("nothing" for none); with
    `run_dir`, what the run fitted there (a probe's accuracy) is stated too."""
    from projected_grpo import arms

    knows = [str(iv.knows(run_dir)) for iv in build(arms.get(name), cfg)]
    return "; ".join(knows) if knows else "nothing"


def build(arm, cfg) -> list[Intervention]:
    """The interventions of `arm` (arms.Arm) for a run of `cfg`, in the arm's order; at most one of
    them may set the V to project (points gradient / update), at most one route (point parameters)."""
    ivs = [REGISTRY[u.intervention](cfg, **u.kwargs) for u in arm.uses]
    if sum(iv.point in ("gradient", "update") for iv in ivs) > 1:
        raise ValueError(f"arm {arm.name}: more than one intervention projects the gradient")
    if sum(iv.point == "parameters" for iv in ivs) > 1:
        raise ValueError(f"arm {arm.name}: more than one intervention routes the backward pass")
    return ivs


__all__ = ["KINDS", "POINTS", "READS_LABELS", "REGISTRY", "Context", "Intervention", "Knowledge", "LabelLeak",
           "StepBatch", "arm_label", "build", "kind_of", "knows_kind", "label_use", "uses_labels"]
