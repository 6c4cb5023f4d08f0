"""A warm start as a small file that travels: its LoRA weights and one deterministic merge.

A study that runs over several sittings on fresh machines must train every run on the same weights, bit
for bit: δS, V and the SVD basis carry the fingerprint of W and a resume onto other weights is refused
(adapter.check_metadata). Re-running the fine-tune cannot promise that (GPU reductions differ between runs
and cards), so the warm start is defined by its adapter instead:

    W' = round_dtype( W + (α / r) · B A )      per LoRA'd linear, summed in fp64 on the CPU,

with W the base model's weight as loaded, A: (r, d_in) and B: (d_out, r) as stored in `lora.safetensors`
(in the model dtype: 18 MB for the 0.5B coder at r = 16 in bf16). The same base model and file give the same
bytes on any machine. `pgrpo warmstart` writes the file beside the merged model it makes this way;
`pgrpo warmstart-apply --model BASE --lora FILE --out DIR` re-creates that model directory and checks the
weights' sha256 against the one the warm start recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from projected_grpo.core.basis import read_metadata, read_tensors, tensor_hash
from projected_grpo.errors import UserError

LORA_FILE = "lora.safetensors"
PEFT_PREFIX = "base_model.model."


def lora_tensors(peft_model, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """{"<linear>.lora_A": (r, d_in), "<linear>.lora_B": (d_out, r)} of a peft LoRA model, in `dtype`, on the CPU;
    names are the base model's module names."""
    out = {}
    for name, mod in peft_model.named_modules():
        lora_a = getattr(mod, "lora_A", None)
        if lora_a is not None and "default" in lora_a:
            base = name.removeprefix(PEFT_PREFIX)
            out[f"{base}.lora_A"] = lora_a["default"].weight.detach().to("cpu", dtype).contiguous()
            out[f"{base}.lora_B"] = mod.lora_B["default"].weight.detach().to("cpu", dtype).contiguous()
    return out


def merge(model, tensors: dict[str, torch.Tensor], scale: float, source: str = LORA_FILE) -> int:
    """W <- round(W + scale · B A) in fp64 on the CPU for every linear in `tensors`; -> how many linears."""
    modules = dict(model.named_modules())
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    for name in names:
        lin = modules.get(name)
        a, b = tensors.get(f"{name}.lora_A"), tensors.get(f"{name}.lora_B")
        if lin is None or a is None or b is None or not hasattr(lin, "weight"):
            raise UserError(f"{source}: {name} has no linear in this model or lacks lora_A / lora_B")
        w = lin.weight
        if (b.shape[0], a.shape[1]) != tuple(w.shape) or a.shape[0] != b.shape[1]:
            raise UserError(f"{source}: {name} is {tuple(b.shape)} x {tuple(a.shape)}, the model's weight "
                            f"{tuple(w.shape)}: made for another model")
        merged = w.detach().to("cpu", torch.float64) + scale * (b.double() @ a.double())    # (d_out, d_in)
        with torch.no_grad():
            w.copy_(merged.to(w.dtype).to(w.device))
    return len(names)


def weights_sha256(model) -> str:
    """sha256 over the model's state dict (dtypes, shapes, bytes), in the order of its sorted names."""
    state = model.state_dict()
    return tensor_hash(*[state[k] for k in sorted(state)])


def save(path: Path, tensors: dict[str, torch.Tensor], scale: float, record: dict) -> None:
    """The adapter with what re-creating the model needs: its scale and the warm start's record."""
    save_file(tensors, str(path), metadata={"scale": repr(scale), "record": json.dumps(record)})


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], float, dict]:
    """(tensors, scale, the warm start's record) of a lora.safetensors; one clear line if it is not one."""
    meta = read_metadata(path)
    if "scale" not in meta or "record" not in meta:
        raise UserError(f"{path}: not a warm start's {LORA_FILE} (no scale / record in its metadata)")
    return read_tensors(path), float(meta["scale"]), json.loads(meta["record"])
