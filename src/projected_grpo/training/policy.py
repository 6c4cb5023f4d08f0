"""The policy of a run: the model, its tokenizer and the δS adapter on it, built the same way by
every stage (trainer, extraction, sweep), so a V extracted outside the trainer matches its adapter."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from projected_grpo.training import dist
from projected_grpo.core.adapter import AdapterConfig, DeltaSAdapter, attach
from projected_grpo.config import TrainConfig
from projected_grpo.models import load_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class Policy(NamedTuple):
    """(model, tokenizer, δS adapter attached to the model); unpacks as the tuple it is."""

    model: PreTrainedModel  # a causal LM (transformers)
    tok: Any
    adapter: DeltaSAdapter


def policy_device(cfg: TrainConfig) -> torch.device:
    """cfg.device, with `auto` = this rank's GPU when there is one, else the CPU."""
    return torch.device(cfg.device if cfg.device != "auto" else dist.default_device())


def load_policy(cfg: TrainConfig) -> Policy:
    """The policy of `cfg`: same model, dtype, device and targets wherever it is built."""
    model, tok = load_model(cfg.model, cfg.dtype, str(policy_device(cfg)), cfg.enable_thinking)
    return Policy(model, tok, attach(model, cfg.model, AdapterConfig(targets=tuple(cfg.targets.split(",")))))
