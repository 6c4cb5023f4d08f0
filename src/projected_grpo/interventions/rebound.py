"""Rebound (Wu & Tang 2026, DESIGN §5) as an intervention at the reward: each row's reward is lowered
by the concept score of the current policy's hidden state along a direction from persona sentence
pairs (rebound.py holds the math). Knows: the persona pairs, no training row's label."""

from __future__ import annotations

import torch

from projected_grpo.directions import rebound
from projected_grpo.interventions.base import Context, Intervention, Knowledge, StepBatch


class ReboundPenalty(Intervention):
    name = "rebound"
    point = "reward"
    kind = "pairs"

    def knows(self, run_dir=None) -> Knowledge:
        return Knowledge(self.kind, f"persona sentence pairs ({self.cfg.persona_pairs})")

    def setup(self, ctx: Context) -> None:
        self.direction = rebound.run_direction(ctx.policy.model, ctx.policy.tok, ctx.cfg, ctx.out)

    def reward(self, batch: StepBatch, rewards: torch.Tensor) -> torch.Tensor:
        G = rewards.shape[1]
        with batch.adapter.merged():  # the current policy's hidden states
            scores = rebound.rollout_scores(batch.model, batch.tok, list(zip(batch.prompts, batch.rows.texts)),
                                            self.direction, batch_size=self.cfg.micro_batch)
        return rebound.modify_rewards(rewards, scores.view(-1, G), self.cfg.rebound_alpha, self.cfg.rebound_form)
