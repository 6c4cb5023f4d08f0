"""One optimiser pass over a sampled batch: the GRPO loss (grpo.py) backward, micro-batch by micro-batch.

The first pass over a batch (an empty BatchState) fixes, per micro-batch:
  logπ_old — the trainer's log-probs of the sampled tokens at the sampling policy (detached);
  w        — per-token weights: student tokens min(π_old/π_sampler, C) (truncated importance sampling
             against the bf16 fold of the sampler, `--tis-cap C`); teacher tokens 1, or with
             `--teacher-weight is` the student's own probability π_old(y_t) ≤ 1 (teacher.py);
  logπ_ref — the δS = 0 reference's log-probs (β > 0 only; every micro-batch's before the pass's first
             policy forward, in one `reference()`: with --base-on-cpu the device then copies W back once,
             not once per micro-batch, and no W' an unfinished backward saved is overwritten);
and measures the sampler–trainer mismatch on the student tokens. Later passes (`--num-iterations`)
reuse them, so their ratio ρ = π/π_old is against the sampling policy and `--clip-eps` acts.
With `--delta-s-impl merged` the pass runs in `adapter.merged_training()`: W' = W + U diag(δS) Vh is
folded once at its start (δS is fixed until the optimiser step after it) and each targeted linear is
one matmul (merged_delta.py); the reference forward before it reads the untouched W.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ContextManager

import contextlib

import torch

from projected_grpo.training import dist
from projected_grpo.core.batching import micro_batches, micro_logprobs
from projected_grpo.core.grpo import clipped, grpo_token_loss, sampler_mismatch, teacher_is_weight, tis_weight
from projected_grpo.training.rollout import Rollouts

if TYPE_CHECKING:                 # annotations only: config imports nothing of this stage
    from projected_grpo.config import TrainConfig


class BatchState:
    """What the first optimiser pass over a sampled batch fixes for the later ones (keyed by the
    micro-batch's index in batching.micro_batches, plus backward_pass's `key`), and the mismatch /
    clipping counts logged for the step."""

    def __init__(self):
        self.logp_old: dict[int, torch.Tensor] = {}         # (b, T) logπ_old, detached
        self.weight: dict[int, torch.Tensor] = {}           # (b, T) w_t, detached
        self.logp_ref: dict[int, torch.Tensor | None] = {}  # (b, T) logπ_ref (β > 0)
        self.mismatch_abs = self.mismatch_k3 = self.mismatch_tokens = self.tis_capped = 0.0
        self.clipped = self.clip_tokens = 0.0
        # a pass over several runs' rows (training/lockstep.py): each run's own state, and the run of
        # each row; the counts above, and each pass's loss and KL, then go to the row's run
        self.parts: dict[int, BatchState] | None = None
        self.owner: torch.Tensor | None = None               # (B,) long, the run of each row
        self.pass_loss = self.pass_kl = 0.0                  # this run's share of the last pass

    @classmethod
    def of_runs(cls, parts: dict[int, BatchState], owner: torch.Tensor) -> BatchState:
        """The state of one pass over several runs' rows: `owner[b]` is row b's run, a key of `parts`."""
        state = cls()
        state.parts, state.owner = parts, owner
        return state

    def by_run(self, sl: torch.Tensor) -> list[tuple[BatchState, torch.Tensor | None]]:
        """[(state, positions within the micro-batch)] of micro-batch rows `sl`: (self, None = all) for a
        single run's state, else one entry per run present."""
        if self.parts is None or self.owner is None:
            return [(self, None)]
        own = self.owner[sl.to(self.owner.device)]
        return [(self.parts[r], (own == r).nonzero().view(-1).to(sl.device)) for r in own.unique().tolist()]

    def metrics(self) -> dict:
        """sampler_mismatch, sampler_kl, tis_capped_frac, clip_frac, summed over ranks."""
        abs_, k3, n, capped, clip, clip_n = dist.sum_scalars(
            [self.mismatch_abs, self.mismatch_k3, self.mismatch_tokens, self.tis_capped, self.clipped,
             self.clip_tokens])
        return {"sampler_mismatch": abs_ / n if n else None, "sampler_kl": k3 / n if n else None,
                "tis_capped_frac": capped / n if n else None, "mismatch_tokens": int(n),
                "clip_frac": clip / clip_n if clip_n else None}


def backward_pass(model, adapter, cfg: TrainConfig, rows: Rollouts, adv: torch.Tensor,
                  is_teacher: list[bool], batch: BatchState, key: int = 0,
                  per_rows: Callable[[torch.Tensor], ContextManager] | None = None) -> tuple[float, float]:
    """One pass over the batch: accumulate ∂L/∂δS micro-batch by micro-batch (see the module doc);
    -> (summed loss, summed K3 KL). Denominator G · max_new_tokens · P (global P), so the losses
    (and gradients) of passes over disjoint row subsets add up to the pass over all of them. `key`:
    where these rows' micro-batches are kept in `batch` (passes over disjoint subsets of one sampled
    batch, as gradient routing makes, share one BatchState under different keys). `per_rows(rows_mb)`
    (None: nothing) is entered around each micro-batch's policy forward + backward with that
    micro-batch's row indices, in its row order (fleet.Fleet.rows: each row its own run's δS)."""
    denom = float(cfg.group_size * cfg.max_new_tokens * cfg.prompts_per_step)
    n_prompt = rows.prompt_ids.shape[1]
    ids, att, cmask = rows.input_ids, rows.attention_mask, rows.completion_mask.float()
    teacher = torch.tensor(is_teacher, device=ids.device)[:, None]               # (B, 1)
    loss_sum = kl_sum = 0.0
    for part in (batch.parts or {}).values():
        part.pass_loss = part.pass_kl = 0.0
    model.train(cfg.grad_checkpointing)
    groups = micro_batches(att, cfg.train_batching, cfg.micro_batch, cfg.micro_tokens)
    if cfg.beta > 0:                     # logπ_ref of every micro-batch the first pass meets
        with torch.no_grad(), adapter.reference():
            for s, rows_mb in enumerate(groups):
                if key + s not in batch.logp_ref:
                    sl = rows_mb.to(ids.device)
                    batch.logp_ref[key + s] = micro_logprobs(model, ids[sl], att[sl], n_prompt,
                                                             cfg.train_batching, cfg.logprob_chunk)
    with adapter.merged_training() if cfg.delta_s_impl == "merged" else contextlib.nullcontext():
        for s, rows_mb in enumerate(groups):
            sl = rows_mb.to(ids.device)                                   # (b,) rows of this micro-batch
            if not bool(adv[sl].any()) and cfg.beta == 0:
                continue  # zero advantage, no KL: this micro-batch has zero gradient
            rows_ctx = per_rows(rows_mb) if per_rows is not None else contextlib.nullcontext()
            with rows_ctx:
                loss, kl = _micro_pass(model, adapter, cfg, rows, adv, teacher, cmask, batch, sl, key + s,
                                       n_prompt, denom)
            loss_sum += loss
            kl_sum += kl
    model.eval()
    return loss_sum, kl_sum


def _micro_pass(model, adapter, cfg: TrainConfig, rows: Rollouts, adv: torch.Tensor, teacher: torch.Tensor,
                cmask: torch.Tensor, batch: BatchState, sl: torch.Tensor, k: int, n_prompt: int,
                denom: float) -> tuple[float, float]:
    """One micro-batch (rows `sl`) of backward_pass: log-probs, the first pass's fixed parts, the loss
    backward; -> (loss, K3 KL)."""
    ids, att = rows.input_ids, rows.attention_mask
    logp = micro_logprobs(model, ids[sl], att[sl], n_prompt, cfg.train_batching,
                          cfg.logprob_chunk)                      # (b, T)
    runs = batch.by_run(sl)                                      # [(state, positions)]: counts per run
    if k not in batch.logp_old:      # the first pass over this micro-batch
        batch.logp_old[k] = logp_old = logp.detach()
        weight = torch.empty_like(logp_old)
        for st, pos in runs:
            at = slice(None) if pos is None else pos
            weight[at] = token_weights(cfg, rows, sl[at], logp_old[at], teacher[sl][at], cmask[sl][at], st)
        batch.weight[k] = weight
        batch.logp_ref.setdefault(k, None)                      # (filled before the pass when β > 0)
    else:
        hit = clipped(logp.detach(), batch.logp_old[k], adv[sl], cfg.clip_eps) * cmask[sl]   # (b, T)
        for st, pos in runs:
            at = slice(None) if pos is None else pos
            st.clipped += float(hit[at].sum())
            st.clip_tokens += float(cmask[sl][at].sum())
    loss, kl = grpo_token_loss(logp, batch.logp_old[k], adv[sl], cmask[sl], denom, cfg.clip_eps,
                               cfg.beta, batch.logp_ref[k], batch.weight[k])
    loss.backward()
    if batch.parts is not None:      # each run's share: the same sum over its rows only
        ref = batch.logp_ref[k]
        for st, pos in runs:
            assert pos is not None
            with torch.no_grad():
                l_r, kl_r = grpo_token_loss(logp.detach()[pos], batch.logp_old[k][pos], adv[sl][pos],
                                            cmask[sl][pos], denom, cfg.clip_eps, cfg.beta,
                                            None if ref is None else ref[pos], batch.weight[k][pos])
            st.pass_loss += float(l_r)
            st.pass_kl += float(kl_r)
    return loss.item(), float(kl)


def token_weights(cfg: TrainConfig, rows: Rollouts, sl: torch.Tensor, logp_old: torch.Tensor,
                  teacher: torch.Tensor, cmask: torch.Tensor, batch: BatchState) -> torch.Tensor:
    """(b, T) detached w: TIS on student tokens, `teacher_weight` on teacher tokens, else 1;
    measures the sampler mismatch on the student tokens on the way."""
    weight = torch.ones_like(logp_old)
    if rows.sampler_logp is not None:
        student = cmask * (~teacher).float()                                      # (b, T)
        mu = rows.sampler_logp[sl]
        d, k3, n = sampler_mismatch(logp_old, mu, student)
        batch.mismatch_abs, batch.mismatch_k3, batch.mismatch_tokens = (
            batch.mismatch_abs + d, batch.mismatch_k3 + k3, batch.mismatch_tokens + n)
        if cfg.tis_cap > 0:
            w = tis_weight(logp_old, mu, cfg.tis_cap)
            batch.tis_capped += float(((torch.exp(logp_old - mu) > cfg.tis_cap).float() * student).sum())
            weight = torch.where(teacher, weight, w)
    if cfg.teacher_weight == "is":
        weight = torch.where(teacher, teacher_is_weight(logp_old), weight)
    return weight
