"""The learning-rate schedule against hand values, and the flag reaching the trainer's LambdaLR."""

import math
import typing
from types import SimpleNamespace

import pytest
import torch

from projected_grpo.config import TrainConfig, _HINTS
from projected_grpo.training.schedule import SCHEDULES, lr_factor
from projected_grpo.training.train import Trainer


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_warmup_is_linear_from_one_over_w_to_one(schedule):
    assert [lr_factor(t, 4, 20, schedule) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_reaches_half_midway_and_zero_at_the_last_step():
    # w = 10, T = 80: t - w runs over 0..70; cos(π·35/70) = 0 -> ½; t = 80 -> cos π = -1 -> 0
    assert lr_factor(10, 10, 80) == 1.0
    assert lr_factor(45, 10, 80) == pytest.approx(0.5, abs=1e-15)
    assert lr_factor(80, 10, 80) == pytest.approx(0.0, abs=1e-15)
    assert lr_factor(24, 10, 80) == pytest.approx(0.5 * (1 + math.cos(math.pi * 14 / 70)), rel=1e-15)


def test_constant_stays_at_one_after_the_warmup():
    assert {lr_factor(t, 10, 80, "constant") for t in range(9, 80)} == {1.0}


def test_the_flag_reaches_the_optimiser_lr_step_by_step():
    """The trainer's LambdaLR, built as the trainer builds it, gives lr · factor at every step
    (w = 2, T = 5: cosine over t − w = 0, 1, 2 of 3)."""
    assert typing.get_args(_HINTS["lr_schedule"]) == SCHEDULES
    for schedule, expect in (("constant", [0.5e-3, 1e-3, 1e-3, 1e-3, 1e-3]),
                             ("cosine", [0.5e-3, 1e-3, 1e-3, 1e-3 * 0.5 * (1 + math.cos(math.pi / 3)),
                                         1e-3 * 0.5 * (1 + math.cos(2 * math.pi / 3))])):
        cfg = TrainConfig(lr=1e-3, warmup_steps=2, steps=5, lr_schedule=schedule)
        opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: Trainer._lr_lambda(SimpleNamespace(cfg=cfg), t))
        seen = []
        for _ in range(5):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert seen == pytest.approx(expect, abs=1e-18), schedule
