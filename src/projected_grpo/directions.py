"""The V of the arms whose V is not a fixed artifact from all the run's pairs (arms.py):

lomo    (leave-one-mode-out) V extracted, once, from the training pairs of every mode in the pair
        file (within --vhack-modes, if given) EXCEPT the run's --mode: does a detector built on
        other hacks transfer to this one? Same m as the real V (capped by vhack.effective_m).
refresh V re-extracted from the run's training pairs (those of the real V) at the CURRENT δS at
        steps 0, K, 2K, ... (K = --refresh-every); the step-0 V is extracted at δS = 0 (V_0).
        Logged: refresh_overlap = mean over modules of ‖V_now V_0ᵀ‖_F² / m (1 = the same
        subspace, ≈ m/r for an unrelated one) and refresh_s (seconds spent re-extracting this step).
        The V in use is part of the checkpoint, so a resumed run continues bit-identically.
"""

from __future__ import annotations

import time

import torch

from projected_grpo import dist
from projected_grpo.config import TrainConfig
from projected_grpo.errors import UserError
from projected_grpo.pairs import load_pairs, parse_modes


def lomo_modes(cfg: TrainConfig) -> tuple[str, ...]:
    """The modes whose training pairs the lomo V is extracted from: all but --mode, in file order."""
    train = load_pairs(cfg.pairs, split="train", modes=parse_modes(cfg.vhack_modes))
    present = list(dict.fromkeys(p.mode for p in train.pairs))
    others = tuple(m for m in present if m != cfg.mode)
    if not others:
        raise UserError(f"--arm lomo: the pair file {train.path} has no training pairs of a mode other "
                        f"than --mode {cfg.mode} (modes with training pairs: {', '.join(present) or 'none'}"
                        f"{'; --vhack-modes ' + cfg.vhack_modes if cfg.vhack_modes else ''}); "
                        "leave-one-mode-out needs pairs of another loophole mode")
    return others


def overlap(v_now: dict[str, torch.Tensor], v_0: dict[str, torch.Tensor]) -> float:
    """Mean over modules of ‖V_now V_0ᵀ‖_F² / m, m = rows of V_0: 1 when both span the same
    subspace, ≈ m/r for unrelated ones (0 for a zero-norm module)."""
    vals = [(v_now[k].float() @ v.float().T).pow(2).sum() / v.shape[0] for k, v in v_0.items()]
    return torch.stack(vals).mean().item()


class Refresh:
    """The refresh arm's V: V_0 at construction (δS = 0), re-extracted every `cfg.refresh_every` steps."""

    def __init__(self, model, tok, adapter, cfg: TrainConfig, v_0: dict[str, torch.Tensor]):
        self.model, self.tok, self.adapter, self.cfg = model, tok, adapter, cfg
        self.pairs = load_pairs(cfg.pairs, split="train", modes=parse_modes(cfg.vhack_modes)).pairs
        self.v_0 = v_0
        self.v = v_0                                  # the V in use
        self.seconds = 0.0                            # spent re-extracting in the last `at` call

    def at(self, step: int) -> dict[str, torch.Tensor]:
        """The V that step `step` (0-based) projects with, re-extracting when step is K, 2K, ..."""
        self.seconds = 0.0
        if step > 0 and step % self.cfg.refresh_every == 0:
            from projected_grpo import vhack

            t0 = time.perf_counter()
            v = vhack.extract_v_hack(self.model, self.tok, self.adapter, self.pairs, self.cfg.vhack_m,
                                     "none", self.cfg.seed, progress=False)
            self.v = _from_rank0({k: t.to(self.v_0[k].device) for k, t in v.items()})
            self.seconds = time.perf_counter() - t0
        return self.v

    def metrics(self) -> dict:
        return {"refresh_overlap": overlap(self.v, self.v_0), "refresh_s": self.seconds}

    def state(self) -> dict:
        """For the checkpoint: the V in use."""
        return {k: t.detach().cpu() for k, t in self.v.items()}

    def load_state(self, v: dict[str, torch.Tensor]) -> None:
        self.v = {k: t.to(self.v_0[k].device) for k, t in v.items()}


def _from_rank0(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank takes rank 0's V (an extraction on the GPU need not be bit-identical across ranks)."""
    if dist.active():
        import torch.distributed as tdist

        for t in v.values():
            tdist.broadcast(t, src=0)
    return v
