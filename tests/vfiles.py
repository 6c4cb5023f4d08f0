"""A random-control V file for a config's model and dtype, so a test that needs some V skips the pair
extraction (slow on a CPU, and beside the point where the test is about something else)."""

from __future__ import annotations

from pathlib import Path

import torch


def random_v(path: Path, cfg) -> Path:
    """A seeded random V (cfg.vhack_m rows per module) saved as vhack.save_v_hack saves a control."""
    from projected_grpo.directions import vhack
    from projected_grpo.core.adapter import attach
    from projected_grpo.models import load_model

    model, _ = load_model(cfg.model, cfg.dtype, "cpu")
    adapter = attach(model, cfg.model)
    gen = torch.Generator().manual_seed(3)
    v = {k: vhack.random_v(r, cfg.vhack_m, gen) for k, r in adapter.ranks().items()}
    return vhack.save_v_hack(path, v, adapter, control="random", pairs_sha256="test", modes=None,
                             n_train=cfg.vhack_m, seed=3)
