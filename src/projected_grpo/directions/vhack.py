"""The hack direction V (DESIGN §2): extraction from contrastive pairs and the artifact (`pgrpo extract`
/ `pgrpo verify` are in cli/directions.py; the held-out check itself is verify.py).

Per pair and targeted module, at the adapter's current δS (0 for a fresh adapter):
    d = ∂NLL(hack)/∂δS − ∂NLL(clean)/∂δS ∈ R^r,
where NLL is the MEAN negative log-likelihood over the completion's tokens (prompt tokens are
not scored; the mean keeps long completions from dominating). One backward per batch gives every
pair's d (DeltaSAdapter.per_sample). Per module the training pairs' d stack into D (n × r) and
    m > 1: V = top-m right singular vectors of D (m × r, orthonormal rows), each row flipped so that
           most pairs have D v > 0 (a tie goes to the sign of Σ D v);
    m = 1: V = mean(D) / ‖mean(D)‖, the normalised mean difference (hack-ward by construction:
           Σ_i d_i · mean(D) = n ‖mean(D)‖² ≥ 0).
A module whose D is all zero gets V = 0 (reported as a zero-norm module).
So V points along hack-ward GRADIENTS (V g > 0); a hack-ward optimiser STEP has V Δ < 0
(projection.py). verify.py checks both the held-out cosines and that orientation in log-probs:
a small step to V's hack-ward side must raise logp(hack) − logp(clean) on held-out pairs.
Controls: `random` = random orthonormal rows (seeded), with the m the real V gets from the same
pairs after non-finite pairs are dropped (so D is computed for it too); `shuffled` = hack/clean
swapped (d → −d) in a seeded half of the pairs (`label_shuffle`), then extracted the same way.
Note: DᵀD does not change when rows change sign, so for m > 1 the shuffled control spans the same
subspace as the real V and differs only in each row's orientation; for m = 1 (the mean) it is
another direction.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from projected_grpo.core.adapter import DeltaSAdapter, read_metadata, read_tensors
from projected_grpo.errors import UserError
from projected_grpo.core.grpo import grad_safe_attention, scored_logprobs
from projected_grpo.directions.pairs import Batch, Pair, PairSet, chunks, load_pairs, pair_batch, parse_modes
from projected_grpo.training.runio import write_atomic_with

CONTROLS = ("none", "random", "shuffled")
ARTIFACT = "v_hack"           # metadata["artifact"] of a V file
LOGIT_CHUNK = 1024            # completion tokens per lm_head chunk (recomputed in backward)


# ---- gradients ----------------------------------------------------------------------------
def completion_nll(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean NLL over each row's completion tokens -> (B,), from grpo.scored_logprobs (logits only
    for scored positions, in chunks recomputed in backward)."""
    device = next(model.parameters()).device
    scored = batch.completion_mask[:, 1:].to(device)                    # token t+1 is scored at t
    logp = scored_logprobs(model, batch.input_ids.to(device), batch.attention_mask.to(device), scored,
                           LOGIT_CHUNK)                                 # (N,)
    rows = scored.nonzero(as_tuple=True)[0]                             # (N,)
    total = torch.zeros(scored.shape[0], device=device).index_add(0, rows, -logp)  # (B,)
    return total / scored.sum(1).clamp(min=1)


def pair_differences(model, tok, adapter: DeltaSAdapter, pairs: list[Pair], batch_size: int = 8,
                     progress: bool = True) -> dict[str, torch.Tensor]:
    """Per module, D = the stacked d of `pairs` -> {key: (n, r) fp32 on the CPU}.

    Attention runs without the cuDNN SDPA kernel (`grpo.grad_safe_attention`): its backward gave
    NaN for padded bf16 batches on CUDA (the cause of the non-finite pairs cp-013 / cp-056 on the
    real 0.5B model). A pair whose d is still non-finite in any module is dropped with a warning
    naming it; since one such pair poisons its whole batch's backward, a batch holding one is
    recomputed a pair at a time first, so only the culprit is lost."""
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in adapter.modules}
    dropped: list[str] = []
    for group in tqdm(chunks(pairs, batch_size), desc="pair gradients", unit="batch",
                      disable=not progress, file=sys.stderr):
        with grad_safe_attention():
            d = _batch_differences(model, tok, adapter, group)
        finite = _finite_rows(d)
        if not finite.all() and len(group) > 1:
            with grad_safe_attention():
                singles = [_batch_differences(model, tok, adapter, [p]) for p in group]
            d = {k: torch.cat([one[k] for one in singles]) for k in d}
            finite = _finite_rows(d)
        dropped += [p.id for p, ok in zip(group, finite.tolist()) if not ok]
        for k, t in d.items():
            rows[k].append(t[finite])
    if dropped:
        print(f"warning: dropped {len(dropped)} pair(s) with non-finite gradients: {', '.join(dropped)}",
              file=sys.stderr)
    return {k: torch.cat(v) for k, v in rows.items()}


def _batch_differences(model, tok, adapter: DeltaSAdapter, group: list[Pair]) -> dict[str, torch.Tensor]:
    """{key: (B, r)} d of each pair in `group`, from one backward over hacks and cleans."""
    b = len(group)
    with torch.enable_grad(), adapter.per_sample(2 * b) as leaves:
        nll = completion_nll(model, pair_batch(tok, group))         # (2B,): hacks, then cleans
        grads = torch.autograd.grad(nll.sum(), list(leaves.values()), allow_unused=True)
    out = {}
    for (k, leaf), g in zip(leaves.items(), grads):
        g = torch.zeros_like(leaf) if g is None else g              # (2B, r)
        out[k] = (g[:b] - g[b:]).detach().float().cpu()             # d, (B, r)
    return out


def _finite_rows(d: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) True where a pair's d is finite in every module."""
    return torch.stack([torch.isfinite(t).all(dim=1) for t in d.values()]).all(dim=0)


# ---- D -> V ---------------------------------------------------------------------------------
def v_from_differences(D: torch.Tensor, m: int) -> torch.Tensor:
    """D (n × r) -> V (m × r): see the module docstring. Requires 1 ≤ m ≤ min(n, r)."""
    n, r = D.shape
    if not 1 <= m <= min(n, r):
        raise ValueError(f"m={m} must lie in [1, min(n={n}, r={r})]")
    D = D.double()
    if D.abs().max() == 0:
        return torch.zeros(m, r)
    if m == 1:
        mean = D.mean(0)                                                # (r,)
        norm = mean.norm()
        return (mean / norm)[None].float() if norm > 0 else torch.zeros(1, r)
    _, _, vh = torch.linalg.svd(D, full_matrices=False)                 # (min(n, r), r)
    V = vh[:m]                                                          # (m, r)
    proj = D @ V.T                                                      # (n, m)
    votes = torch.sign(proj).sum(0)                                     # (m,)
    flip = torch.where((votes < 0) | ((votes == 0) & (proj.sum(0) < 0)), -1.0, 1.0)
    return (V * flip[:, None]).float()


def random_v(r: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """m random orthonormal rows in R^r (QR of a Gaussian matrix)."""
    q, _ = torch.linalg.qr(torch.randn(r, m, generator=generator, dtype=torch.float64))
    return q.T.float().contiguous()                                     # (m, r)


def label_shuffle(D: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Swap hack and clean (d_i -> −d_i) in exactly ⌊n/2⌋ pairs, chosen by a seeded permutation and
    shared by all modules. Balanced rather than a coin per pair: with a coin the shared hack-ward
    component survives in proportion to (kept − swapped)/n, so the control would still carry
    (or reverse) the real direction."""
    n = next(iter(D.values())).shape[0]
    swapped = torch.randperm(n, generator=generator)[: n // 2]          # pairs whose labels swap
    sign = torch.ones(n, 1)
    sign[swapped] = -1.0                                                # (n, 1)
    return {k: d * sign for k, d in D.items()}


def effective_m(m: int, n_train: int, ranks: dict[str, int]) -> int:
    """m capped at the number of training pairs and the smallest module rank."""
    if m < 1:
        raise UserError(f"--m must be at least 1, got {m}")
    return min(m, n_train, min(ranks.values()))


def extract_v_hack(model, tok, adapter: DeltaSAdapter, pairs: list[Pair], m: int = 16,
                   control: str = "none", seed: int = 0, batch_size: int = 8,
                   progress: bool = True) -> dict[str, torch.Tensor]:
    """{module key: V (m_eff × r) fp32 CPU} from training pairs (m_eff = `effective_m`)."""
    if control not in CONTROLS:
        raise UserError(f"unknown control {control!r}; known: {', '.join(CONTROLS)}")
    if not pairs:
        raise UserError("no training pairs to extract from (check --pairs and --modes)")
    m_eff = effective_m(m, len(pairs), adapter.ranks())
    gen = torch.Generator().manual_seed(seed)
    # every control computes D too, so that it has the real V's m after non-finite pairs are dropped
    D = pair_differences(model, tok, adapter, pairs, batch_size, progress)
    n_kept = next(iter(D.values())).shape[0]
    if n_kept == 0:
        raise UserError("every training pair had non-finite gradients; try --dtype float32")
    m_eff = min(m_eff, n_kept)
    if control == "random":
        return {k: random_v(r, m_eff, gen) for k, r in adapter.ranks().items()}
    if control == "shuffled":
        D = label_shuffle(D, gen)
    return {k: v_from_differences(d, m_eff) for k, d in D.items()}


# ---- artifact -------------------------------------------------------------------------------
def save_v_hack(path: str | Path, v: dict[str, torch.Tensor], adapter: DeltaSAdapter, *,
                control: str, pairs_sha256: str, modes: tuple[str, ...] | None, n_train: int,
                seed: int = 0) -> Path:
    """Write V (fp32, one tensor per module) with the metadata the loader checks; atomic."""
    path = Path(path)
    if set(v) != set(adapter.modules):
        raise ValueError("V must have exactly the adapter's module keys")
    m = next(iter(v.values())).shape[0]
    meta = adapter.metadata() | {
        "artifact": ARTIFACT, "m": str(m), "control": control, "pairs_sha256": pairs_sha256,
        "modes": json.dumps(list(modes) if modes else []), "n_train": str(n_train), "seed": str(seed),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: t.detach().float().cpu().contiguous() for k, t in v.items()}
    return write_atomic_with(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def extract_to_file(path: str | Path, model, tok, adapter: DeltaSAdapter, pairs: str, modes: str | None,
                    m: int, control: str = "none", seed: int = 0, batch_size: int = 8,
                    progress: bool = True) -> tuple[dict[str, torch.Tensor], PairSet]:
    """Extract V from the training split of the pair file `pairs` (restricted to `modes`, e.g.
    'run_tests,stdout') and save it to `path`. The one extraction path of the CLI, probe/sweep and
    trainer. Returns (V, the training pairs)."""
    mode_set = parse_modes(modes)
    train_pairs = load_pairs(pairs, split="train", modes=mode_set)
    v = extract_v_hack(model, tok, adapter, train_pairs.pairs, m, control, seed, batch_size, progress)
    save_v_hack(path, v, adapter, control=control, pairs_sha256=train_pairs.sha256, modes=mode_set,
                n_train=len(train_pairs.pairs), seed=seed)
    return v, train_pairs


def load_v_hack(path: str | Path, adapter: DeltaSAdapter) -> dict[str, torch.Tensor]:
    """The one V loader (verify and train): refuses legacy files, another model, dtype, module set,
    rank or weights, and V of the wrong shape. -> {key: (m, r) fp32 on that module's device}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"v_hack file {path} {'is a directory' if path.is_dir() else 'does not exist'}")
    meta = read_metadata(path)
    adapter.check_metadata(meta, path, "v_hack")
    if meta.get("artifact") != ARTIFACT:
        raise UserError(f"{path}: not a v_hack artifact (artifact={meta.get('artifact')!r})")
    m = int(meta["m"])
    tensors = read_tensors(path)
    out = {}
    for k, mod in adapter.modules.items():
        t = tensors.get(k)
        if t is None or tuple(t.shape) != (m, mod.rank):
            got = None if t is None else tuple(t.shape)
            raise UserError(f"{path}: v_hack for module {k} has shape {got}, expected {(m, mod.rank)}")
        if not torch.isfinite(t).all():
            raise UserError(f"{path}: v_hack for module {k} has non-finite values")
        out[k] = t.float().to(mod.delta_s.device)
    return out


# ---- output paths ---------------------------------------------------------------------------
def check_out_path(path: str | Path, flag: str) -> None:
    """Refuse an output path that cannot be written, before any work is done: a directory, a path
    under a file, or under a directory that is not writable."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {path}: {parent} is not a directory")
            if not os.access(parent, os.W_OK):
                raise UserError(f"{flag} {path}: {parent} is not writable")
            return
