"""Clean-subspace training (DESIGN §9; issue 29; after TDGA, which kept a rank-1 run unhacked for 400
steps where vanilla saturated in about 50): the δS gradient is projected ONTO a subspace estimated
from honest demonstrations, so only directions honest code moves can be trained.

Before training, at δS = 0: the honest demonstrations are the canonical solutions of the run's TRAIN
problems (none from eval), as completions of the run's training prompts. For each, the per-sample
gradient d_i = ∂NLL_i/∂δS per module (one backward over a batch, adapter.per_sample); per module, with
D = [d_1; …; d_n] (n, r), the basis B (K, r) = the top-K right singular vectors of D (K =
--clean-k, capped at n). Each step, per module: g ← Bᵀ (B g). Saved as clean_basis.safetensors in the
run dir (rank 0, once; a resume reads it back). AdamW's per-coordinate scaling takes the step out of
the span; with --project-target update the step is projected onto it as well, so δS stays inside.
Knows: honest demonstrations (no label of any
training row). The real V is still measured: cos_in before, cos_out after the projection.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from projected_grpo import atomic
from projected_grpo.directions.pairs import chunks, collate, encode
from projected_grpo.directions.vhack import completion_nll
from projected_grpo.env.exploits import canonical
from projected_grpo.interventions.base import Context, Intervention, Knowledge
from projected_grpo.training import dist

BASIS_FILE = "clean_basis.safetensors"


def demonstration_gradients(model, tok, adapter, items: list[tuple], batch_size: int = 8) -> dict[str, torch.Tensor]:
    """{module key: (n, r) fp32 on the CPU}: each (prompt, completion)'s ∂NLL/∂δS at the current δS."""
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in adapter.modules}
    for group in chunks(items, batch_size):
        batch = collate([encode(tok, p, c) for p, c in group], pad_id)
        with torch.enable_grad(), adapter.per_sample(len(group)) as leaves:
            nll = completion_nll(model, batch)                                   # (b,)
            grads = torch.autograd.grad(nll.sum(), list(leaves.values()), allow_unused=True)
        for (k, leaf), g in zip(leaves.items(), grads):
            rows[k].append((torch.zeros_like(leaf) if g is None else g).detach().float().cpu())
    return {k: torch.cat(v) for k, v in rows.items()}


def top_k_basis(d: torch.Tensor, k: int) -> torch.Tensor:
    """(K, r) orthonormal rows: the top-K right singular vectors of D (n, r), K = min(k, rank D); a
    zero D gives (0, r)."""
    _, s, vh = torch.linalg.svd(d.double(), full_matrices=False)
    keep = int(min(k, int((s > s.max() * 1e-6).sum()) if s.numel() and s.max() > 0 else 0))
    return vh[:keep].float()


def project_onto(grads: dict[str, torch.Tensor], basis: dict[str, torch.Tensor]) -> None:
    """In place, per module: g ← Bᵀ (B g) (0 where the basis is empty)."""
    for k, g in grads.items():
        b = basis[k].to(device=g.device, dtype=g.dtype)                          # (K, r)
        g.copy_(b.T @ (b @ g))


class CleanSubspace(Intervention):
    name = "clean_subspace"
    point = "gradient"
    kind = "demonstrations"
    transforms = True                    # changes the gradient itself (the trainer measures before/after)

    def __init__(self, cfg, **params):
        super().__init__(cfg, **params)
        # AdamW's per-coordinate scaling takes a step out of the span; --project-target update projects
        # the step onto it as well, so δS stays inside
        self.point = "update" if cfg.project_target == "update" else "gradient"

    def knows(self, run_dir=None) -> Knowledge:
        return Knowledge(self.kind, f"canonical solutions of the train problems, top-{self.cfg.clean_k} span")

    def setup(self, ctx: Context) -> None:
        path = ctx.out / BASIS_FILE
        if dist.rank() == 0 and not path.is_file():
            items = [(p.messages(ctx.cfg.mode, ctx.cfg.hint), canonical(p)) for p in ctx.train_problems]
            d = demonstration_gradients(ctx.policy.model, ctx.policy.tok, ctx.policy.adapter, items,
                                        ctx.cfg.micro_batch)
            basis = {k: top_k_basis(v, ctx.cfg.clean_k).contiguous() for k, v in d.items()}
            atomic.write_atomic_with(path, lambda tmp: save_file(basis, str(tmp), metadata={
                "n_demonstrations": str(len(items)), "k": str(ctx.cfg.clean_k)}))
        dist.barrier()
        self.basis = {k: t.to(ctx.device) for k, t in load_file(str(path)).items()}

    def transform(self, grads: dict[str, torch.Tensor]) -> None:
        project_onto(grads, self.basis)
