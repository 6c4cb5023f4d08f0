"""δS adapter: a trainable scale per singular direction of each targeted linear layer (DESIGN §1).

For W = U Σ Vh (reduced SVD in fp32, stored in the model dtype):
    y = W x + U (δS ⊙ (Vh x)),     δS ∈ R^r, r = min(d_in, d_out), δS = 0 at init.
W is never rebuilt on this path, so at δS = 0 the output is bit-identical to the base model.
Opt-in (`--delta-s-impl merged`, `DeltaSAdapter.merged_training`): the training forward runs on
W' = W + U diag(δS) Vh as one matmul, δS's gradient read off dY and X (merged_delta.py).
Gradient routing attaches a quarantine δQ beside δS (quarantine.py): every path then uses δS + δQ.
With `keep_base_on_cpu()` (`--base-on-cpu`, merged δS) each W waits in (pinned) CPU memory and the device
holds one copy of the targeted weights: W itself, or one fold W + U diag(δ) Vh of it (DeltaSLinear.hold),
which sampling and the merged training pass then share; `reference()` and the hook path copy W back first.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from projected_grpo.errors import UserError
from projected_grpo.core.basis import (Basis, cached_basis, read_metadata, read_tensors, svd_basis,
                                       tensor_hash, weight_hash)
from projected_grpo.core.merged_delta import GRAD_MODES, fold, merged_linear
from projected_grpo.training.runio import write_atomic_with

__all__ = ["AdapterConfig", "Basis", "DeltaSAdapter", "DeltaSLinear", "adapter_check", "attach", "cached_basis",
           "read_metadata", "read_tensors", "svd_basis", "tensor_hash", "weight_hash"]

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class AdapterConfig:
    """Which linears get a δS and where their SVD bases are cached."""

    targets: tuple[str, ...] = DEFAULT_TARGETS  # module-name suffixes to wrap
    cache_dir: str = field(default_factory=lambda: os.environ.get(
        "PGRPO_CACHE", str(Path.home() / ".cache" / "projected_grpo")))  # SVD cache root


class DeltaSLinear(nn.Module):
    """A frozen nn.Linear plus U (δS ⊙ (Vh x)). δS is kept in fp32 (the optimiser's master copy)."""

    u: torch.Tensor   # the buffers registered below, declared for the type checker
    vh: torch.Tensor

    def __init__(self, base: nn.Linear, u: torch.Tensor, vh: torch.Tensor):
        super().__init__()
        self.base = base
        self.register_buffer("u", u, persistent=False)    # (d_out, r), model dtype
        self.register_buffer("vh", vh, persistent=False)  # (r, d_in), model dtype
        self.delta_s = nn.Parameter(torch.zeros(u.shape[1], device=u.device, dtype=torch.float32))
        self.active = True  # False: plain base forward (reference model / folded weights)
        self.per_sample_delta_s: torch.Tensor | None = None  # (B, r) while in `per_sample` only
        self.w_merged: torch.Tensor | None = None  # (d_out, d_in) W' while in `merged_training` only
        self.folded_delta_s: torch.Tensor | None = None  # (r,) copy of the δS that W' was folded from
        self.merged_grad = "auto"                  # δS gradient of the merged path (merged_delta)
        self.delta_q: torch.Tensor | None = None   # (r,) fp32 quarantine of gradient routing (quarantine.py)
        self.quarantine_on = True                  # False inside quarantine.deployed(): δS alone
        self.base_cpu: torch.Tensor | None = None  # W in (pinned) CPU memory, with --base-on-cpu only (hold)
        self.held: torch.Tensor | None = None      # (r,) the δ base.weight is folded with; None = it is W

    @property
    def rank(self) -> int:
        return self.delta_s.shape[0]

    def delta(self) -> torch.Tensor:
        """The δ every δS path uses: δS, or δS + δQ while a quarantine is attached and on."""
        if self.delta_q is None or not self.quarantine_on:
            return self.delta_s
        return self.delta_s + self.delta_q

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., d_in)
        if self.active and self.w_merged is not None and self.per_sample_delta_s is None:
            return self._merged_forward(x)
        if self.active and self.base_cpu is not None:    # the hook path adds δ to W itself
            self.hold(None)
        y = self.base(x)                                   # (..., d_out)
        if not self.active:
            return y
        if self.per_sample_delta_s is not None:
            return y + self._per_sample_delta(x, self.per_sample_delta_s)
        h = (x @ self.vh.T) * self.delta().to(x.dtype)     # (..., r)
        return y + h @ self.u.T

    def start_merged(self, grad_mode: str = "auto") -> None:
        """Switch this module to the merged forward (W' folded from the current δS)."""
        self.merged_grad = grad_mode
        self._refold()

    def stop_merged(self) -> None:
        """Back to the hook forward; W' and its δS copy are freed."""
        self.w_merged = self.folded_delta_s = None

    def _refold(self) -> torch.Tensor:
        self.w_merged = None                       # the old W' goes before the new one is made
        if self.base_cpu is not None:              # W' is base.weight itself, folded in place (`held` says with what)
            self.w_merged = w = self.hold(self.delta())
            return w
        self.w_merged = w = fold(self.base.weight, self.u, self.vh, self.delta())
        self.folded_delta_s = self.delta().detach().clone()
        return w

    def hold(self, delta: torch.Tensor | None) -> torch.Tensor:
        """With W on the CPU: make base.weight W itself (`delta` None) or its fold W + U diag(δ) Vh (the
        arithmetic of merged_delta.fold, so bitwise the W' of the other paths), copying W back from the
        CPU only when base.weight holds another δ; -> base.weight. `held` records what it holds."""
        assert self.base_cpu is not None, "hold() needs keep_base_on_cpu()"
        w, want = self.base.weight, None if delta is None else delta.detach()
        if (self.held is None) if want is None else (self.held is not None and torch.equal(self.held, want)):
            return w
        with torch.no_grad():
            if self.held is not None:
                w.copy_(self.base_cpu, non_blocking=True)
            if want is not None:
                w.copy_(fold(w, self.u, self.vh, want))
        self.held = None if want is None else want.clone()
        return w

    def _merged_forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., d_in)
        """W' x + b (merged_delta.py), W' re-folded whenever δS's values differ from those it was
        folded from. The values, not δS's version counter: a fused AdamW step and a write through
        `.data` change δS without bumping the counter, and a W' keyed on it went stale (issue 25
        item 8). The check costs r compares and one host sync per linear per forward; refolding
        instead at every forward would cost an fp32 d_out·r·d_in matmul each time (r/N of the
        forward's own matmul in flops, at fp32 rate), while δS changes only once per optimiser step."""
        w, folded, delta = self.w_merged, self.folded_delta_s, self.delta()
        if self.base_cpu is not None:              # base.weight may have been given back to W meanwhile
            w = self.hold(delta)
        elif w is None or folded is None or not torch.equal(folded, delta.detach()):
            w = self._refold()
        return merged_linear(x, delta, w, self.base.bias, self.u, self.vh, self.merged_grad)

    def _per_sample_delta(self, x: torch.Tensor, delta_s: torch.Tensor) -> torch.Tensor:
        """U (δS_b ⊙ (Vh x_b)) with one δS row per batch row b (see DeltaSAdapter.per_sample);
        x (B, T, d_in), delta_s (B, r)."""
        if x.dim() != 3 or x.shape[0] != delta_s.shape[0]:
            raise RuntimeError(f"per-sample δS expects input (B={delta_s.shape[0]}, T, d_in), "
                               f"got {tuple(x.shape)}")
        h = (x @ self.vh.T) * delta_s[:, None, :].to(x.dtype)  # (B, T, r)
        return h @ self.u.T                                     # (B, T, d_out)


class DeltaSAdapter:
    """The set of wrapped modules of one model, with the contexts and I/O the method needs."""

    def __init__(self, model: nn.Module, model_id: str, cfg: AdapterConfig | None = None,
                 basis: Basis | None = None):
        cfg = cfg or AdapterConfig()
        basis = basis or functools.partial(cached_basis, cache_dir=cfg.cache_dir)
        self.model, self.model_id, self.cache_dir = model, model_id, cfg.cache_dir
        self.modules: dict[str, DeltaSLinear] = {}
        hashes, basis_hashes = [], []
        targets = [(n, m) for n, m in model.named_modules()
                   if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in cfg.targets]
        if not targets:
            raise UserError(f"model {model_id!r} has no nn.Linear named any of {list(cfg.targets)}")
        self.dtype = targets[0][1].weight.dtype
        for name, lin in targets:
            lin.weight.requires_grad_(False)
            h, u, vh, basis_hash = basis(lin.weight)
            hashes.append(f"{name}:{h}")
            basis_hashes.append(f"{name}:{basis_hash}")
            wrapped = DeltaSLinear(lin, u, vh)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapped)
            self.modules[name] = wrapped
        self.fingerprint = hashlib.sha256("\n".join(hashes).encode()).hexdigest()              # of W
        self.basis_fingerprint = hashlib.sha256("\n".join(basis_hashes).encode()).hexdigest()  # of U, Vh

    # ---- parameters -------------------------------------------------------------------------
    def params(self) -> dict[str, nn.Parameter]:
        """module key -> δS parameter, in a fixed order (the order of `named_modules`)."""
        return {k: m.delta_s for k, m in self.modules.items()}

    def ranks(self) -> dict[str, int]:
        return {k: m.rank for k, m in self.modules.items()}

    @property
    def n_scalars(self) -> int:
        return sum(m.rank for m in self.modules.values())

    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def keep_base_on_cpu(self) -> None:
        """Copy each targeted W to (pinned) CPU memory; from here the device holds one copy of them, W
        or one fold of it (DeltaSLinear.hold): `merged()` folds in place and restores nothing, the
        merged training pass folds into base.weight, `reference()` and hook forwards copy W back."""
        for m in self.modules.values():
            w = m.base.weight.detach()
            m.base_cpu = torch.empty(w.shape, dtype=w.dtype, pin_memory=w.is_cuda).copy_(w)
            m.held = None

    # ---- contexts ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def reference(self):
        """π_ref for free: the base model (δS path switched off), no second copy of the weights."""
        states = [m.active for m in self.modules.values()]
        for m in self.modules.values():
            if m.base_cpu is not None:
                m.hold(None)
            m.active = False
        try:
            yield
        finally:
            for m, s in zip(self.modules.values(), states):
                m.active = s

    @contextlib.contextmanager
    def merged(self, offload: bool = False):
        """Fold δS into the weights (W' = W + U diag(δS) Vh) for fast sampling; restore W bitwise.

        `offload=True` keeps the saved originals on the CPU (for models where a second copy of the
        targeted weights does not fit on the GPU)."""
        saved: dict[str, torch.Tensor] = {}
        if any(m.base_cpu is not None for m in self.modules.values()):    # one copy: fold in place, keep it
            try:
                for m in self.modules.values():
                    m.hold(m.delta())
                    m.active = False
                yield
            finally:
                for m in self.modules.values():
                    m.active = True
            return
        try:
            with torch.no_grad():
                for k, m in self.modules.items():
                    w = m.base.weight
                    saved[k] = w.detach().to("cpu", copy=True) if offload else w.detach().clone()
                    w.copy_(fold(w, m.u, m.vh, m.delta()))  # fp32 W + U diag(δS) Vh, rounded
                    m.active = False
            yield
        finally:
            with torch.no_grad():
                for k, m in self.modules.items():
                    if k in saved:
                        m.base.weight.copy_(saved[k])
                    m.active = True

    @contextlib.contextmanager
    def merged_training(self, grad_mode: str = "auto"):
        """Inside, every active module's forward is one matmul with W' = W + U diag(δS) Vh, folded
        here from the current δS (and again whenever δS's values change, however written), with ∂L/∂δS read off dY
        and X (merged_delta.py; `grad_mode` auto | tokens | weight). The same function as the hook
        path up to rounding; W is untouched, so `reference()` inside is still the exact base model,
        and W' is the very fold `merged()` samples with. W' is freed on exit."""
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}, not {grad_mode!r}")
        for m in self.modules.values():
            m.start_merged(grad_mode)
        try:
            yield
        finally:
            for m in self.modules.values():
                m.stop_merged()

    # ---- per-sample gradients ---------------------------------------------------------------
    @contextlib.contextmanager
    def per_sample(self, batch_size: int):
        """Give every batch row its own copy of δS, so ONE backward yields each row's gradient.

        Yields {module key: leaf tensor (batch_size, r), fp32, requires_grad} initialised to the
        current δ (DeltaSLinear.delta: δS, plus δQ under gradient routing; 0 for a fresh adapter).
        Inside, each module computes U (δS_b ⊙ (Vh x_b)) for row b of a (B, T, d_in) input. Rows do
        not interact (no batch norm in a causal LM), so ∂(Σ_b loss_b)/∂leaf[b] = ∂loss_b/∂δS. The
        shared δS parameters get no gradient; the ordinary forward is restored on exit."""
        leaves = {k: m.delta().detach().expand(batch_size, m.rank).clone().requires_grad_(True)
                  for k, m in self.modules.items()}
        for k, m in self.modules.items():
            m.per_sample_delta_s = leaves[k]
        try:
            yield leaves
        finally:
            for m in self.modules.values():
                m.per_sample_delta_s = None

    # ---- save / load ------------------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        return {"model_id": self.model_id, "fingerprint": self.fingerprint,
                "basis_fingerprint": self.basis_fingerprint, "dtype": self.dtype_name(),
                "module_keys": json.dumps(list(self.modules)), "ranks": json.dumps(self.ranks())}

    def save(self, path: str | Path) -> None:
        """δS as safetensors with metadata; written atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: m.delta_s.detach().cpu().contiguous() for k, m in self.modules.items()}
        meta = self.metadata()
        write_atomic_with(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    def check_metadata(self, meta: dict[str, str] | None, path: str | Path, what: str) -> None:
        """Refuse an artifact (δS or v_hack) made for another model, dtype, module set or rank.

        A model is its weights, not its name: identity is the fingerprint of W and of the SVD basis,
        so the same weights spelt `warm`, `./warm` or `/abs/warm` (or renamed, or copied) are the same
        model, while other weights under the same name are refused. The stored name only helps the
        message say which model the artifact was made for."""
        if not meta or "module_keys" not in meta:
            raise UserError(f"{path}: {what} has no metadata (legacy artifact); re-create it")
        whose = self._made_for(meta)
        if meta.get("dtype") != self.dtype_name():
            raise UserError(f"{path}: {what} dtype {meta.get('dtype')!r} != model dtype "
                            f"{self.dtype_name()!r} (the SVD basis is dtype-specific){whose}")
        keys = json.loads(meta["module_keys"])
        if set(keys) != set(self.modules):
            missing, extra = sorted(set(self.modules) - set(keys)), sorted(set(keys) - set(self.modules))
            raise UserError(f"{path}: {what} module set differs: missing {missing[:3]}"
                            f"{'…' if len(missing) > 3 else ''}, unexpected {extra[:3]}"
                            f"{'…' if len(extra) > 3 else ''}{whose}")
        ranks = json.loads(meta["ranks"])
        for k, m in self.modules.items():
            if int(ranks[k]) != m.rank:
                raise UserError(f"{path}: {what} rank mismatch in module {k}: artifact {ranks[k]}, "
                                f"model {m.rank}{whose}")
        if meta.get("fingerprint") != self.fingerprint:
            raise UserError(f"{path}: {what} was made on other weights than those of {self.model_id!r} "
                            f"(fingerprint {meta.get('fingerprint', '?')[:12]} != {self.fingerprint[:12]})"
                            f"{whose}")
        if "basis_fingerprint" not in meta:
            raise UserError(f"{path}: {what} does not record the SVD basis it was made in (made before "
                            "basis fingerprints); re-create it")
        if meta["basis_fingerprint"] != self.basis_fingerprint:
            raise UserError(f"{path}: {what} was made in another SVD basis of these same weights (basis "
                            f"fingerprint {meta['basis_fingerprint'][:12]} != {self.basis_fingerprint[:12]} "
                            "here): U, Vh are computed once per machine and another LAPACK/cuSOLVER build "
                            "or device gives other signs and rounding. Copy the SVD cache "
                            f"({Path(self.cache_dir) / 'svd'}) from the machine that made it, or re-create "
                            "it here")

    def _made_for(self, meta: dict[str, str]) -> str:
        """'; it was made with --model X' when the artifact's stored name is not this one's, else ''."""
        made = meta.get("model_id")
        return f"; it was made with --model {made!r}" if made is not None and made != self.model_id else ""

    def load(self, path: str | Path) -> None:
        """Load δS saved by `save`, after checking it belongs to this model/dtype/module set."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"δS file {path} does not exist")
        meta = read_metadata(path)
        self.check_metadata(meta, path, "δS file")
        tensors = read_tensors(path)
        with torch.no_grad():
            for k, m in self.modules.items():
                m.delta_s.copy_(tensors[k])


def attach(model: nn.Module, model_id: str, cfg: AdapterConfig | None = None,
           basis: Basis | None = None) -> DeltaSAdapter:
    """Wrap the target linears of `model` in place and return the adapter. `basis` (default:
    cached_basis, the SVD of each W) gives each module's (hash of W, U, Vh, hash of U, Vh)."""
    return DeltaSAdapter(model, model_id, cfg, basis)


# ---- pgrpo adapter-check -------------------------------------------------------------------
def adapter_check(model_name: str, dtype: str, device: str = "cpu", cfg: AdapterConfig | None = None) -> dict:
    """Identity at δS = 0, exact reference context, and a bitwise merge round trip."""
    from projected_grpo.models import chat_text, load_model

    model, tok = load_model(model_name, dtype, device)
    text = chat_text(tok, [{"role": "user", "content": "Write a function that adds two numbers."}])
    ids = tok(text, return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        base_logits = model(ids).logits
        adapter = attach(model, model_name, cfg)
        same_logits = model(ids).logits
        max_abs_diff = (same_logits.float() - base_logits.float()).abs().max().item()
        gen = torch.Generator().manual_seed(0)
        for m in adapter.modules.values():
            m.delta_s.copy_(torch.randn(m.rank, generator=gen) * 0.05)
        hook_logits = model(ids).logits
        with adapter.reference():
            ref_exact = torch.equal(model(ids).logits, base_logits)
        before = {k: m.base.weight.detach().clone() for k, m in adapter.modules.items()}
        with adapter.merged():
            merged_logits = model(ids).logits
        roundtrip = all(torch.equal(before[k], m.base.weight) for k, m in adapter.modules.items())
    return {"modules": len(adapter.modules), "scalars": adapter.n_scalars, "max_abs_diff": max_abs_diff,
            "merge_roundtrip_exact": roundtrip, "reference_exact": ref_exact,
            "merged_vs_hook_max_abs": (merged_logits.float() - hook_logits.float()).abs().max().item()}
