"""The arms of the experiment, in one table: each arm is a named combination of interventions
(interventions/, DESIGN §9), and what the arm knows is what its interventions declare. Adding an arm
is one row here (and, for a new kind of defence, one module in interventions/); the trainer holds no
arm branch. config, train and report read this table.

An arm that reads training rows' oracle labels says so wherever it is named: the oracle arm is the
declared UPPER BOUND of gradient projection, never a candidate defence; the monitor arms read the
labels through a channel of stated TPR / FPR (--monitor-tpr / --monitor-fpr). Every arm also
measures the real V (cos_in_real, update_hackward) and, with --coverage, the labelled hack rows'
gradient (a logged diagnostic only).

This module is data and stays light (config imports it): interventions are named here; the
registry (interventions/__init__.py) builds them and answers what an arm knows (uses_labels,
arm_label, label_use).
"""

from __future__ import annotations

from dataclasses import dataclass

from projected_grpo.errors import UserError


@dataclass(frozen=True)
class Use:
    intervention: str            # a name of interventions.REGISTRY
    params: tuple = ()           # (("source", "real"),): its keyword arguments

    @property
    def kwargs(self) -> dict:
        return dict(self.params)


@dataclass(frozen=True)
class Arm:
    name: str                    # the --arm value and the report's row name
    uses: tuple[Use, ...]        # its interventions, in the order the trainer calls them
    description: str             # one line, printed by the report
    upper_bound: bool = False    # a declared upper bound (reads the labels to bound a method), not a defence
    control: str = ""            # the arm it must beat on hack to count as specific (studies/verdicts.py)


def _project(source: str) -> tuple[Use, ...]:
    return (Use("project", (("source", source),)),)


TABLE: tuple[Arm, ...] = (
    Arm("vanilla", (), "plain GRPO; the real V is measured, nothing removed"),
    Arm("projected", _project("real"), "hack-ward part of each δS gradient removed along the pair V",
        control="random"),
    Arm("rebound", (Use("rebound"),), "Wu & Tang's concept-score reward penalty (advantage-level)"),
    Arm("random", _project("random"), "control: projects a seeded random V of the same m"),
    Arm("shuffled", _project("shuffled"), "control: projects V from label-shuffled pairs"),
    Arm("lomo", _project("lomo"),
        "leave-one-mode-out: V from the pairs of every mode except the run's --mode (transfer)"),
    Arm("refresh", _project("refresh"), "V re-extracted from the pairs at the current δS every --refresh-every steps"),
    Arm("oracle", (Use("oracle_project"),),
        "UPPER BOUND, uses the oracle labels: V = each batch's labelled hack rows' gradient (m = 1)", True),
    Arm("monitor_penalty", (Use("monitor_penalty"),),
        "reward − --penalty for each row a monitor of --monitor-tpr / --monitor-fpr flags"),
    Arm("screening", (Use("screening"),),
        "rows a monitor of --monitor-tpr / --monitor-fpr flags leave their group before the advantage"),
    Arm("probe_penalty", (Use("probe_penalty"),),
        "reward − --penalty for each row a frozen linear probe on activations flags (calibration pairs)"),
    Arm("clean_subspace", (Use("clean_subspace"),),
        "δS gradient projected onto the top --clean-k span of honest demonstrations' gradients"),
    Arm("routing", (Use("route_monitor"),),
        "rows a monitor of --monitor-tpr / --monitor-fpr flags train a quarantine δQ beside δS (sampled with "
        "during training, dropped at eval and deploy)"),
    Arm("routing_v", (Use("route_v"),),
        "label-free routing: rows whose gradient's cosine with the pair V's top axis exceeds --route-threshold "
        "train the quarantine δQ", control="routing_random"),
    Arm("routing_random", (Use("route_random"),),
        "control: routing_v with a seeded random V of the same shapes"),
    Arm("plan", (Use("plan_prompt"),),
        "the prompt asks for a short plan paragraph before the code (training and eval)"),
    Arm("inoculation", (Use("inoculation_prompt"),),
        "the training prompt says passing the tests by any means is acceptable; eval prompts do not"),
)
BY_NAME: dict[str, Arm] = {a.name: a for a in TABLE}
NAMES: tuple[str, ...] = tuple(a.name for a in TABLE)


def sort_key(name: str) -> tuple[int, str]:
    """Tables and plots list arms in the table's order; other names (sweep variants) after, by name."""
    return (NAMES.index(name) if name in NAMES else len(NAMES), name)


def get(name: str) -> Arm:
    if name not in BY_NAME:
        raise UserError(f"unknown arm {name!r}; choose one of {', '.join(NAMES)}")
    return BY_NAME[name]

