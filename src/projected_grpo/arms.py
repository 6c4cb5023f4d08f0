"""The arms of the experiment, in one table: what V each projects with, whether it projects, whether
it changes the reward (Rebound), and whether it reads the oracle's labels (only the oracle arm: a
declared UPPER BOUND, never a candidate defence). config, train and report read this table.

V sources: real = the v_hack artifact (extracted from the run's pairs or given by --v-hack);
random / shuffled = the controls of vhack.py; lomo = V from the pairs of every mode but the run's
--mode; refresh = V re-extracted from the run's pairs at the current δS every --refresh-every steps;
oracle = g_hack/‖g_hack‖ of each batch's oracle-labelled hack rows (oracle.py); none = nothing.
Every arm also measures the real V (cos_in_real, update_hackward).
"""

from __future__ import annotations

from dataclasses import dataclass

from projected_grpo.errors import UserError

V_SOURCES = ("real", "random", "shuffled", "lomo", "refresh", "oracle", "none")


@dataclass(frozen=True)
class Arm:
    name: str             # the --arm value and the report's row name
    v_source: str         # the V it projects with (one of V_SOURCES)
    projects: bool        # removes the hack-ward part of the gradient (or step) with that V
    modifies_reward: bool  # Rebound: concept-score penalty on the reward before the advantage
    uses_labels: bool     # reads the oracle labels (True only for the oracle upper bound)
    description: str      # one line, printed by the report

    @property
    def label(self) -> str:
        """The name as tables and plots show it; an arm that uses labels says so."""
        return f"{self.name} (upper bound: uses labels)" if self.uses_labels else self.name


TABLE: tuple[Arm, ...] = (
    Arm("vanilla", "none", False, False, False, "plain GRPO; the real V is measured, nothing removed"),
    Arm("projected", "real", True, False, False, "hack-ward part of each δS gradient removed along the pair V"),
    Arm("rebound", "none", False, True, False, "Wu & Tang's concept-score reward penalty (advantage-level)"),
    Arm("random", "random", True, False, False, "control: projects a seeded random V of the same m"),
    Arm("shuffled", "shuffled", True, False, False, "control: projects V from label-shuffled pairs"),
    Arm("lomo", "lomo", True, False, False,
        "leave-one-mode-out: V from the pairs of every mode except the run's --mode (transfer)"),
    Arm("refresh", "refresh", True, False, False,
        "V re-extracted from the pairs at the current δS every --refresh-every steps"),
    Arm("oracle", "oracle", True, False, True,
        "UPPER BOUND, uses the oracle labels: V = each batch's labelled hack rows' gradient (m = 1)"),
)
BY_NAME: dict[str, Arm] = {a.name: a for a in TABLE}
NAMES: tuple[str, ...] = tuple(a.name for a in TABLE)
PROJECTING: tuple[str, ...] = tuple(a.name for a in TABLE if a.projects)
CONTROLS: tuple[str, ...] = ("random", "shuffled")  # vhack.py's controls: V extracted with `control`


def get(name: str) -> Arm:
    if name not in BY_NAME:
        raise UserError(f"unknown arm {name!r}; choose one of {', '.join(NAMES)}")
    return BY_NAME[name]


def label(name: str) -> str:
    """Display name of an arm (unknown names, e.g. sweep variants, unchanged)."""
    return BY_NAME[name].label if name in BY_NAME else name
