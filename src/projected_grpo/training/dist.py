"""torch.distributed helpers for data-parallel runs (torchrun). Every helper is a no-op at world 1.

Each rank generates and grades its share of the step's prompts; the δS gradients (one vector per
module) are summed over ranks *before* the projection, so every rank projects the same gradient and
the result does not depend on the number of ranks.

Launch: `torchrun --nproc-per-node N -m projected_grpo.cli train ...` (see README). On a machine with
CUDA the group is `cpu:gloo,cuda:nccl` (tensors on the GPU go through NCCL; object gathers, barriers
and anything on the CPU, e.g. the CPU `smoke` preset, through gloo); without CUDA it is gloo.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Mapping

import torch
import torch.distributed as tdist

# NVLink multicast (NVLS) off in NCCL, PyTorch symmetric memory and NVSHMEM: a program that uses it
# can take a shared host's GPUs out of service. Forced (not defaulted) before any group exists.
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                    "NVSHMEM_DISABLE_NVLS": "1"}


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


def disable_multicast() -> None:
    os.environ.update(NO_MULTICAST_ENV)


def init_from_env() -> None:
    """Join the process group torchrun describes (NCCL for GPU tensors, gloo for CPU ones);
    no-op at WORLD_SIZE 1 or when a group already exists."""
    disable_multicast()
    if active() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if not tdist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    # rank 0 alone extracts v_hack while the others wait at a barrier: allow it time.
    timeout = datetime.timedelta(minutes=float(os.environ.get("PGRPO_DIST_TIMEOUT_MIN", "60")))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        tdist.init_process_group("cpu:gloo,cuda:nccl", timeout=timeout)
    else:
        tdist.init_process_group("gloo", timeout=timeout)
    atexit.register(shutdown)


def shutdown() -> None:
    """Leave the process group (registered at exit by `init_from_env`)."""
    if active():
        tdist.destroy_process_group()


def finish() -> None:
    """The success path's end: wait for every rank, then leave the group together. A rank that left while
    rank 0 still wrote its summary once died in gloo's teardown (SIGABRT, "terminate called without an active
    exception", CI 2026-12-08); error paths keep the atexit `shutdown`, so a failed rank never waits here."""
    barrier()
    shutdown()


def barrier() -> None:
    if active():
        tdist.barrier()


def all_reduce_grads(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum δS (or δQ) gradients over ranks (missing grads count as zeros); returns key -> grad.

    One flat fp32 buffer per device, so low-precision grads are summed without extra rounding and
    every rank ends with bit-identical gradients."""
    grads: dict[str, torch.Tensor] = {}
    for k, p in params.items():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads[k] = p.grad
    if active() and grads:
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for g in grads.values():
            by_device.setdefault(g.device, []).append(g)
        for device, gs in by_device.items():
            flat = torch.cat([g.reshape(-1).to(torch.float32) for g in gs])
            tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
            offset = 0
            for g in gs:
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
    """Sum a list of floats over ranks (float64)."""
    if not active():
        return values
    device = "cpu"
    if tdist.get_backend() == "nccl":  # a pure-NCCL group set up by the caller
        device = f"cuda:{torch.cuda.current_device()}"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t.tolist()
