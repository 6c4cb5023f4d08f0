"""The SVD basis of each targeted weight and the safetensors I/O around it (adapter.py uses both).

W = U Σ Vh, reduced SVD in fp32 stored in the model dtype, cached on disk under the sha256 of W; the
hash of (U, Vh) as stored names the basis every δS and V lives in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from projected_grpo.errors import UserError
from projected_grpo.training.runio import write_atomic_with


def tensor_hash(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' dtypes, shapes and bytes, in order."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous().cpu()
        h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def weight_hash(w: torch.Tensor) -> str:
    """sha256 of a weight's dtype, shape and bytes (the SVD cache key)."""
    return tensor_hash(w)


def svd_basis(w: torch.Tensor, cache_dir: str, key: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(U, Vh, basis hash) of W from an fp32 reduced SVD, cast to W's dtype, cached on disk by hash
    of W. The SVD is not unique (each singular pair's sign, and rounding, depend on the LAPACK /
    cuSOLVER build and device), so the hash of (U, Vh) as stored identifies which basis δS and V
    live in; it is written with the cached basis and checked on every artifact (check_metadata)."""
    path = Path(cache_dir) / "svd" / f"{key}.safetensors"
    if path.is_file():
        cached = read_tensors(path, device=str(w.device))
        u, vh = cached["u"], cached["vh"]
        return u, vh, read_metadata(path).get("basis_sha256") or tensor_hash(u, vh)
    u, _, vh = torch.linalg.svd(w.detach().float(), full_matrices=False)
    u, vh = u.to(w.dtype).contiguous(), vh.to(w.dtype).contiguous()
    u_cpu, vh_cpu = u.cpu(), vh.cpu()
    digest = tensor_hash(u_cpu, vh_cpu)
    path.parent.mkdir(parents=True, exist_ok=True)
    # atomic: a crash never leaves a half-written basis
    write_atomic_with(path, lambda tmp: save_file({"u": u_cpu, "vh": vh_cpu}, tmp,
                                                  metadata={"basis_sha256": digest}))
    return u, vh, digest


# W -> (hash of W, U, Vh, hash of (U, Vh)): how an adapter gets each module's basis
Basis = Callable[[torch.Tensor], tuple[str, torch.Tensor, torch.Tensor, str]]


def cached_basis(w: torch.Tensor, cache_dir: str) -> tuple[str, torch.Tensor, torch.Tensor, str]:
    """The default Basis: W's sha256 and its SVD basis, cached on disk under that hash."""
    h = weight_hash(w)
    return (h, *svd_basis(w, cache_dir, h))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata header of a safetensors file (empty dict when it has none); UserError naming the
    file when it is missing or not safetensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({err})") from err


def read_tensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; UserError naming the file when it cannot be read."""
    from safetensors import SafetensorError

    try:
        return load_file(path, device=device)
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({err})") from err
