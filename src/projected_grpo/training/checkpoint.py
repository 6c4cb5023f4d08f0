"""A run's checkpoint: what it holds, the checks before a resume, and the restore (the Trainer's).

    snapshot(tr, step)   δS, AdamW and schedule state, the RNGs (torch, numpy, python), each
                         intervention's own state (e.g. refresh's V in use, routing's δQ and its
                         optimiser) and the sha256 of the V files the run started with
    resume_state(tr)     the checkpoint to continue from, refused when a V file changed since, and on
                         rank 0 the log lines a resume keeps (runio.kept_on_resume)
    restore(tr, ...)     puts it all back and drops the log lines of the steps that are re-run
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np
import torch

from projected_grpo.errors import UserError
from projected_grpo.training import dist, runio

if TYPE_CHECKING:                         # annotations only: the trainer calls this module
    from projected_grpo.training.train import Trainer


def snapshot(tr: Trainer, step: int) -> dict:
    state = {"step": step, "delta_s": {k: p.detach().cpu() for k, p in tr.adapter.params().items()},
             "optimizer": tr.opt.state_dict(), "scheduler": tr.sched.state_dict(),
             "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}
    for iv in tr.interventions:  # e.g. the refresh arm's V in use: a resumed run goes on with it
        state.update(iv.state())
    state["v_sha256"] = tr.v_sha256  # the V files it started with: a resume must load the same
    return state


def resume_state(tr: Trainer, logs: tuple[str, ...]) -> tuple[dict | None, dict[str, list[dict]]]:
    """The checkpoint to continue from (None: killed before the first, so restart from step 0) and, on
    rank 0, the log lines a resume keeps (those of steps up to the checkpoint's), once the run is known
    to be consistent (same V, readable logs that match the checkpoint: runio.kept_on_resume). Reads
    only: a refusal leaves the run as it was."""
    state = runio.load_checkpoint(tr.out)
    if state is not None:
        for which, sha in state.get("v_sha256", {}).items():   # absent in checkpoints before it
            if sha != tr.v_sha256[which]:
                raise UserError(
                    f"{tr.out}: the {which} V differs from the one this run started with (sha256 "
                    f"{sha[:12]} then, {tr.v_sha256[which][:12]} now): its V file was re-extracted or "
                    "replaced since. Put the original V file back (--v-hack, or v_hack*.safetensors in "
                    "the run or sweep dir) or start the run afresh")
    kept = (runio.kept_on_resume(tr.out, None if state is None else state["step"], logs)
            if tr.rank == 0 else {})
    return state, kept


def restore(tr: Trainer, state: dict | None, kept: dict[str, list[dict]]) -> None:
    """Continue from the checkpoint (δS, optimiser, schedule, RNG, step) and drop the log lines of later
    steps (training, samples, eval), which are re-run. Killed before the first checkpoint: restart from
    step 0 and drop every line, the step-0 eval included, so nothing is logged twice."""
    if state is not None:
        with torch.no_grad():
            for k, p in tr.adapter.params().items():
                p.copy_(state["delta_s"][k])
        tr.opt.load_state_dict(state["optimizer"])
        tr.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        tr.start_step = state["step"]
        for iv in tr.interventions:
            iv.load_state(state)
    if tr.rank == 0:
        runio.rewrite_logs(tr.out, kept)
    dist.barrier()
