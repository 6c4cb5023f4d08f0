"""torch.distributed helpers for data-parallel runs (torchrun). Every helper is a no-op at world 1.

Each rank generates and grades its share of the step's prompts; the δS gradients (one vector per
module) are summed over ranks *before* the projection, so every rank projects the same gradient and
the result does not depend on the number of ranks.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if active() else 0


def world_size() -> int:
    return tdist.get_world_size() if active() else 1


def default_device() -> str:
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def init_from_env() -> None:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU); no-op otherwise."""
    if active() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if torch.cuda.is_available():
        # NVLink multicast (NVLS) off, as the lent machines require.
        for var in ("NCCL_NVLS_ENABLE", "NCCL_CUMEM_ENABLE", "NCCL_CUMEM_HOST_ENABLE"):
            os.environ.setdefault(var, "0")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        tdist.init_process_group("nccl")
    else:
        tdist.init_process_group("gloo")


def barrier() -> None:
    if active():
        tdist.barrier()


def all_reduce_grads(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Sum δS gradients over ranks (missing grads count as zeros); returns key -> grad."""
    for p in params.values():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = {k: p.grad for k, p in params.items()}
    if active():
        flat = torch.cat([g.view(-1) for g in grads.values()])
        tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
        offset = 0
        for g in grads.values():
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
    return grads


def gather_rows(rows: list) -> list:
    """Concatenate a per-rank list over ranks, in rank order."""
    if not active():
        return rows
    out: list = [None] * world_size()
    tdist.all_gather_object(out, rows)
    return [r for part in out for r in part]


def sum_scalars(values: list[float]) -> list[float]:
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64,
                     device="cuda" if tdist.get_backend() == "nccl" else "cpu")
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t.tolist()
