"""The V a run measures (`real_v`) and the V a projection starts from (`source_v`: the real V, a
control, lomo or refresh; interventions/projection.py), and the sources whose V is not a fixed
artifact from all the run's pairs:

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

from typing import TYPE_CHECKING

import time
from pathlib import Path

import torch

from projected_grpo.training import dist
from projected_grpo.errors import UserError
from projected_grpo.directions.pairs import load_pairs, parse_modes

if TYPE_CHECKING:                 # annotations only: config imports nothing of this stage
    from projected_grpo.config import TrainConfig


def extract(cfg: TrainConfig, policy, path: Path, control: str, modes: str | None = None,
            progress: bool = True) -> Path:
    """Extract V with the run's pairs (`modes`, default --vhack-modes) into `path` (rank 0, once:
    a file already there is kept, so a resume finds the V it started with)."""
    from projected_grpo.directions import vhack

    if dist.rank() == 0 and not path.is_file():
        vhack.extract_to_file(path, policy.model, policy.tok, policy.adapter, cfg.pairs,
                              cfg.vhack_modes if modes is None else modes,
                              cfg.vhack_m, control, cfg.seed, progress=progress)
    dist.barrier()
    return path


def load(path: Path, policy, device: torch.device) -> dict[str, torch.Tensor]:
    """A V file, checked against the policy's adapter, on `device`."""
    from projected_grpo.directions import vhack

    return {k: t.to(device) for k, t in vhack.load_v_hack(path, policy.adapter).items()}


def real_v(cfg: TrainConfig, policy, out: Path, device: torch.device, progress: bool = True) -> dict:
    """The real V, measured in every arm: --v-hack, or extracted from the run's pairs into `out`."""
    return load(Path(cfg.v_hack) if cfg.v_hack else extract(cfg, policy, out / "v_hack.safetensors", "none",
                                                            progress=progress), policy, device)


def source_v(source: str, cfg: TrainConfig, policy, out: Path, device: torch.device, v_real: dict,
             progress: bool = True) -> tuple[dict, Refresh | None]:
    """(V a projection with `source` starts with, the refresh source's Refresh or None). Sources:
    real: the real V; random / shuffled: the controls of vhack.py, lomo: V from the other modes'
    pairs, each extracted into `out` with the real V's m; refresh: V_0 (then re-extracted, Refresh).
    All extractions happen at δS = 0, before a checkpoint is restored. Rank 0 extracts, every rank
    loads (onto `device`)."""
    if source in ("random", "shuffled"):
        return load(extract(cfg, policy, out / f"v_hack_{source}.safetensors", source, progress=progress),
                    policy, device), None
    if source == "lomo":
        path = extract(cfg, policy, out / "v_hack_lomo.safetensors", "none", ",".join(lomo_modes(cfg)), progress)
        return load(path, policy, device), None
    if source == "refresh":  # V_0: the run's pairs at δS = 0 (the real V itself unless --v-hack)
        v_0 = v_real if not cfg.v_hack else load(
            extract(cfg, policy, out / "v_hack_refresh0.safetensors", "none", progress=progress), policy, device)
        return v_0, Refresh(policy.model, policy.tok, policy.adapter, cfg, v_0)
    if source == "real":
        return v_real, None
    raise ValueError(f"unknown V source {source!r}")


def lomo_modes(cfg: TrainConfig) -> tuple[str, ...]:
    """The modes whose training pairs the lomo V is extracted from: all but --mode, in file order."""
    train = load_pairs(cfg.pairs, split="train", modes=parse_modes(cfg.vhack_modes))
    present = list(dict.fromkeys(p.mode for p in train.pairs if p.mode is not None))  # (code pairs: all)
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
            from projected_grpo.directions import vhack

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
