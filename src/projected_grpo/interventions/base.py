"""The interface every intervention implements (DESIGN §9), and what it may see of a step.

An intervention acts at one point of the GRPO step and declares what it knows:

    point      hook the trainer calls                          e.g.
    prompt     messages(messages, train) -> messages           plan prompt, inoculation
    reward     reward(batch, r (P_l, G)) -> r                   monitor / probe penalty, Rebound
    advantage  keep(batch) -> (P_l, G) bool, rows that stay     screening
    gradient   directions(batch) -> V {key: (m, r)} projected   projection, oracle V
    update     directions(batch), projecting the AdamW step     projection with --project-target update
    parameters route(batch, rows, adv, is_teacher, kept), then  gradient routing (routing.py): which
               backward(...) and optimiser_step(lr) of its own  rows train a quarantine δQ, not δS

Knowledge (`Knowledge.kind`): "nothing"; "pairs" (contrastive pairs or persona sentences, no label of
any training row); "demonstrations" (honest solutions of training problems, no label of any
training row); "calibration" (a fixed labelled set, fitted once before training, its size and
held-out accuracy stated); "monitor" (the oracle's label of each training row through a noisy
channel of stated TPR / FPR); "oracle" (the labels themselves: a declared upper bound). Only an
intervention whose kind is "monitor" or "oracle" may read a row's label (`StepBatch.hack_labels`
refuses the others), so the strict oracle reaches training only in an arm that declares it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from projected_grpo.directions.oracle import HACK_LABEL

POINTS = ("prompt", "reward", "advantage", "gradient", "update", "parameters")
KINDS = ("nothing", "pairs", "demonstrations", "calibration", "monitor", "oracle")
READS_LABELS = ("monitor", "oracle")        # the kinds that see training rows' oracle labels


class LabelLeak(RuntimeError):
    """An intervention that does not declare label use asked for the oracle's labels."""


@dataclass(frozen=True)
class Knowledge:
    kind: str          # one of KINDS
    detail: str = ""   # what exactly: "pair V (m=16)", "monitor TPR 0.90 / FPR 0.05", ...

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown knowledge kind {self.kind!r}; one of {', '.join(KINDS)}")

    @property
    def reads_labels(self) -> bool:
        return self.kind in READS_LABELS

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind


@dataclass
class Context:
    """What set-up may use: the run's config, policy (model, tok, adapter), run dir, device, the real V
    (measured in every arm), when the caller handed the trainer fixed directions the V to project, and
    the ids of the eval problems."""
    cfg: Any
    policy: Any
    out: Path
    device: torch.device
    progress: bool
    v_real: dict[str, torch.Tensor]
    handed_v: dict[str, torch.Tensor] | None = None
    eval_ids: tuple[str, ...] = ()   # the run's held-out eval problems: no calibration set may name one
    train_problems: tuple = ()       # the run's training problems (env.problem.Problem)


@dataclass
class StepBatch:
    """One step's batch on this rank, group-major: row i belongs to prompt i // G."""
    step: int                      # 0-based step being taken
    problems: list                 # this rank's P_l problems
    prompts: list                  # (B,) chat messages each row was sampled from
    rows: Any                      # rollout.Rollouts, B = P_l · G rows
    grades: list                   # (B,) grader.Grade
    is_teacher: list[bool]         # (B,) rows from the teacher pool
    model: Any
    tok: Any
    adapter: Any
    g_hack: dict[str, torch.Tensor] | None = None   # oracle-labelled hack rows' gradient, when computed
    _hack: list[bool] = field(default_factory=list, repr=False)

    def __post_init__(self):
        self._hack = [g.label == HACK_LABEL for g in self.grades]

    def hack_labels(self, who: "Intervention") -> torch.Tensor:
        """(B,) bool, the oracle's reward_hack labels, for an intervention that declares label use."""
        if not who.knows().reads_labels:
            raise LabelLeak(f"{who.name} declares {who.knows()} but asked for the oracle's labels")
        return torch.tensor(self._hack, dtype=torch.bool)


class Intervention:
    """Base: every hook leaves the step as it is. A subclass sets `name` and `point`, overrides the
    hook of its point and `knows`, and may log (`metrics`) and checkpoint (`state`)."""

    name: ClassVar[str] = ""
    point: str = ""                               # one of POINTS
    kind: ClassVar[str] = "nothing"               # what it knows (KINDS); knows() states the detail
    needs_hack_gradient: ClassVar[bool] = False   # the trainer computes batch.g_hack first (oracle.py)
    transforms: ClassVar[bool] = False            # gradient point: transform(grads) instead of projecting off V
    flags_rows: ClassVar[bool] = False            # sets self.flags (B,) each step: detector metrics
    metric_prefix: ClassVar[str] = ""             # its detector metrics: <prefix>_tpr, <prefix>_fpr, ...

    def __init__(self, cfg, **params):
        self.cfg, self.params = cfg, params
        self.flags: torch.Tensor | None = None          # (B,) rows it flagged this step (flags_rows)
        self.v: dict[str, torch.Tensor] | None = None   # gradient / update point: the V in use

    def knows(self, run_dir: Path | None = None) -> Knowledge:
        """What it knows under its config (and, given `run_dir`, what it fitted there)."""
        return Knowledge(self.kind)

    def setup(self, ctx: Context) -> None:
        """Once, at δS = 0, before a checkpoint is restored."""

    def messages(self, messages: list[dict], train: bool) -> list[dict]:
        """The chat messages of a prompt (`train`: a training rollout; else an eval prompt)."""
        return messages

    def reward(self, batch: StepBatch, rewards: torch.Tensor) -> torch.Tensor:
        return rewards

    def keep(self, batch: StepBatch) -> torch.Tensor | None:
        return None

    def directions(self, batch: StepBatch) -> dict[str, torch.Tensor] | None:
        return None

    def transform(self, grads: dict[str, torch.Tensor]) -> None:
        """Gradient point with `transforms`: change the all-reduced δS gradients in place."""

    def route(self, batch: StepBatch, rows, adv: torch.Tensor, is_teacher: list[bool], kept: list[int]) -> None:
        """Parameters point: decide, once per sampled batch, which of the trained rows (`rows`: the
        batch's rows `kept`) train the quarantine; the trainer then hands its passes to `backward`."""

    def backward(self, model, adapter, cfg, rows, adv: torch.Tensor, is_teacher: list[bool],
                 state) -> tuple[float, float]:
        """Parameters point: one optimiser pass in place of passes.backward_pass (same signature)."""
        raise NotImplementedError(f"{self.name} does not route the backward pass")

    def optimiser_step(self, lr: float) -> None:
        """Parameters point: after the policy's AdamW step (each pass), step what it trains at `lr`."""

    def eval_metrics(self, run_eval) -> dict:
        """Columns added to an eval row; `run_eval(**kw)` is the run's evaluate.evaluate with its
        arguments bound (kw: quarantine, primary_only)."""
        return {}

    def metrics(self) -> dict:
        return {}

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what `state` saved (the whole checkpoint dict is passed)."""
