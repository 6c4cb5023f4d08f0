"""The GRPO objective (Dr.GRPO variant, DESIGN §4), on one screen.

Advantage: A = r − mean_group(r), no std division; a group whose rewards are all equal gets
A = 0 exactly. Per completion token t:
    ρ_t  = exp(logπ_t − logπ_old,t)
    L_t  = −min(ρ_t A, clip(ρ_t, 1−ε, 1+ε) A) + β (exp(logπ_ref,t − logπ_t) − (logπ_ref,t − logπ_t) − 1)
Reduced with the constant denominator G · max_new_tokens · P (no per-response length normalisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """rewards (P, G) -> advantages (P, G); exactly 0 in any group with equal rewards."""
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    equal = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)  # (P, 1)
    return torch.where(equal, torch.zeros_like(adv), adv)


def grpo_token_loss(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor,
                    mask: torch.Tensor, denom: float, clip_eps: float, beta: float,
                    logp_ref: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed GRPO loss of a micro-batch / denom, and the summed K3 KL (detached).

    logp, logp_old, logp_ref, mask: (B, T) over completion positions; adv: (B,)."""
    a = adv[:, None]                                                  # (B, 1)
    ratio = torch.exp(logp - logp_old)                                # (B, T)
    surrogate = torch.min(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
    per_token = -surrogate
    kl_sum = torch.zeros((), device=logp.device)
    if beta > 0:
        log_r = logp_ref - logp                                       # (B, T)
        k3 = torch.exp(log_r) - log_r - 1
        per_token = per_token + beta * k3
        kl_sum = (k3 * mask).sum().detach()
    return (per_token * mask).sum() / denom, kl_sum


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_prompt: int,
                   chunk: int = 256) -> torch.Tensor:
    """log π(token) for the completion part: input_ids (B, n_prompt + T) -> (B, T).

    The lm_head runs over `chunk` positions at a time under activation checkpointing, so neither
    the full-vocab logits of the batch nor their fp32 log-softmax ever live all at once."""
    body, head = model.get_decoder(), model.get_output_embeddings()
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding, as in sampling
    hidden = body(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids).last_hidden_state           # (B, L, d)
    hidden = hidden[:, n_prompt - 1:-1]                                # predicts completion tokens
    targets = input_ids[:, n_prompt:]                                  # (B, T)
    pieces = []
    for s in range(0, targets.shape[1], chunk):
        h, y = hidden[:, s:s + chunk], targets[:, s:s + chunk]
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_chunk_logprobs, h, y, head.weight, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(h, y, head.weight))
    return torch.cat(pieces, dim=1)


def _chunk_logprobs(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    logits = (h @ w.T).float()                                         # (B, c, V)
    return torch.gather(F.log_softmax(logits, dim=-1), 2, y[..., None]).squeeze(-1)
