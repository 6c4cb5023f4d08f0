"""The GRPO objective (Dr.GRPO variant, DESIGN §4), on one screen.

Advantage: A = r − mean_group(r), no std division; a group whose rewards are all equal gets
A = 0 exactly. Per completion token t:
    ρ_t  = exp(logπ_t − logπ_old,t)
    L_t  = −w_t min(ρ_t A, clip(ρ_t, 1−ε, 1+ε) A) + β k3_t,
    k3_t = exp(logπ_ref,t − logπ_t) − (logπ_ref,t − logπ_t) − 1
Reduced with the constant denominator G · max_new_tokens · P (no per-response length normalisation).

π_old is the trainer's policy when the batch was sampled (its log-probs before the first optimiser
pass); with `num_iterations` > 1 passes per batch, passes 2.. see ρ ≠ 1 and the clip acts.
w_t is a detached per-token weight (1 unless a correction below is on):
- student rows, truncated importance sampling (TIS) against the sampler: the sampler folds δS into
  bf16 weights and so is not exactly π_old (see `rollout`); with μ the sampler's policy,
      w_t = min(π_old,t / μ_t, C)                                    (`tis_weight`, C = --tis-cap)
  which makes E_μ[w ρ A ∇logπ] the PPO gradient at π_old up to the truncation (the bias-for-
  variance trade TRL/verl make for a vLLM sampler; C = 0 turns it off). Why correct rather than
  make the sampler exact: bf16 weights cannot hold W + U diag(δS) Vh for a small δS (each entry
  rounds to W's ulp), and sampling through the hook path instead would add a second set of
  matmuls to every decode step; the weight costs one subtraction per token, and `sampler_mismatch`
  shows how far apart the two are (0.009–0.013 per token on the real 0.5B, bf16);
- teacher rows (cached completions, behaviour policy unknown): `teacher_weight`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

# SDPA backends allowed where gradients flow through attention: every one but cuDNN. On an H100
# (torch 2.11, cuDNN SDPA picked by default in bf16) cuDNN's attention backward returned NaN for
# padded batches of the real Qwen2.5-Coder-0.5B (pairs cp-013, cp-056; the same sequences alone,
# unpadded, were finite; the efficient and math kernels were finite on the same batches; anomaly
# mode named ScaledDotProductCudnnAttentionBackward0). docs/results/qwen05_probe/bf16_h100/README.md.
GRAD_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@contextlib.contextmanager
def grad_safe_attention():
    """Run a forward *and its backward* inside: SDPA never picks the cuDNN kernel (see above)."""
    with sdpa_kernel(GRAD_SDPA_BACKENDS):
        yield


def group_advantages(rewards: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """rewards (P, G) -> advantages (P, G); exactly 0 in any group with equal rewards.
    keep (P, G) bool (screening): only kept rows form their group — A = r − mean over the group's
    kept rows, 0 for a row not kept, and 0 for all of a group whose kept rows' rewards are equal
    (so a group left with one row, or none, gets zero advantage)."""
    if keep is None:
        adv = rewards - rewards.mean(dim=1, keepdim=True)
        equal = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)  # (P, 1)
        return torch.where(equal, torch.zeros_like(adv), adv)
    n = keep.sum(dim=1, keepdim=True)                                          # (P, 1) kept rows
    mean = torch.where(keep, rewards, 0.0).sum(dim=1, keepdim=True) / n.clamp(min=1)
    hi = torch.where(keep, rewards, -torch.inf).amax(dim=1, keepdim=True)
    lo = torch.where(keep, rewards, torch.inf).amin(dim=1, keepdim=True)
    equal = (n < 2) | (hi == lo)                                               # (P, 1)
    return torch.where(keep & ~equal, rewards - mean, torch.zeros_like(rewards))


def grpo_token_loss(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor,
                    mask: torch.Tensor, denom: float, clip_eps: float, beta: float,
                    logp_ref: torch.Tensor | None = None,
                    weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed GRPO loss of a micro-batch / denom, and the summed K3 KL (detached).

    logp, logp_old, logp_ref, mask, weight (detached w_t, None = 1): (B, T) over completion
    positions; adv: (B,)."""
    a = adv[:, None]                                                  # (B, 1)
    ratio = torch.exp(logp - logp_old)                                # (B, T)
    surrogate = torch.min(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
    if weight is not None:
        surrogate = surrogate * weight
    per_token = -surrogate
    kl_sum = torch.zeros((), device=logp.device)
    if beta > 0:
        if logp_ref is None:
            raise ValueError("grpo_token_loss: beta > 0 needs logp_ref (the reference model's log-probs)")
        log_r = logp_ref - logp                                       # (B, T)
        k3 = torch.exp(log_r) - log_r - 1
        per_token = per_token + beta * k3
        kl_sum = (k3 * mask).sum().detach()
    return (per_token * mask).sum() / denom, kl_sum


def clipped(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """(B, T) bool: tokens whose surrogate takes the clipped branch, i.e. get zero gradient
    (A > 0 and ρ > 1 + ε, or A < 0 and ρ < 1 − ε)."""
    ratio, a = torch.exp(logp - logp_old), adv[:, None]
    return ((a > 0) & (ratio > 1 + clip_eps)) | ((a < 0) & (ratio < 1 - clip_eps))


def tis_weight(logp_old: torch.Tensor, logp_sampler: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weight min(π_old / μ, C) per token (detached); cap <= 0: all ones."""
    if cap <= 0:
        return torch.ones_like(logp_old)
    return torch.exp(logp_old - logp_sampler).clamp(max=cap).detach()


def teacher_is_weight(logp_old: torch.Tensor) -> torch.Tensor:
    """Weight of a cached (teacher) token: min(π_old(y_t), 1) = π_old(y_t), detached.

    The pool's completions come from an unknown behaviour policy b. Treating b as deterministic on
    its own text (b(y_t) = 1, the most a policy can put there) makes the per-token ratio π_old / b
    = π_old(y_t), already ≤ 1: a teacher token counts as much as the student itself would have
    sampled it, so tokens the student finds unlikely (large ∇logπ) cannot dominate the update.
    The weight is per token, as PPO's ratio is (a product over the row would vanish)."""
    return torch.exp(logp_old).detach()


def sampler_mismatch(logp_trainer: torch.Tensor, logp_sampler: torch.Tensor,
                     mask: torch.Tensor) -> tuple[float, float, float]:
    """Sums over the masked tokens of |logμ − logπ|, of the K3 estimate of KL(μ ‖ π) (tokens are
    drawn from μ: with r = π/μ, k3 = r − 1 − log r ≥ 0) and the token count. k3 ≈ (log r)²/2 is
    ~1e-7 per token for a bf16 sampler, the size of an fp32 ulp of 1 (1.2e-7), so fp32 exp(d) − 1
    rounded each term by up to tens of percent (~1e-3 on the mean); it is taken as expm1(d) − d in fp64."""
    d = (logp_trainer.double() - logp_sampler.double())                # log r, (B, T)
    k3 = torch.expm1(d) - d
    return float((d.abs() * mask).sum()), float((k3 * mask).sum()), float(mask.sum())


def scored_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, scored: torch.Tensor,
                    chunk: int = 1024) -> torch.Tensor:
    """log π(x_{t+1} | x_≤t) at every position t with scored[b, t]: input_ids, attention_mask (B, L),
    scored (B, L−1) bool (position t scores token t+1) -> (N,) = scored.sum(), in row-major order.
    The one completion log-prob of the package (training: token_logprobs; extraction:
    vhack.completion_nll).

    Positions are counted over the attention mask, so left padding (sampled rows) and right padding
    (pairs) both give each real token its unpadded position. The lm_head runs over `chunk` scored
    tokens at a time under activation checkpointing, so neither the full-vocab logits of the batch
    nor their fp32 log-softmax ever live all at once, and only scored positions get logits. Assumes
    logits = lm_head(last hidden state), as in Qwen/Llama (no soft-capping or scaling)."""
    body, head = model.get_decoder(), model.get_output_embeddings()
    rows, pos = scored.nonzero(as_tuple=True)  # (N,), (N,); before the forward, so its sync waits for nothing
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=False).last_hidden_state                   # (B, L, d)
    h, targets = hidden[rows, pos], input_ids[rows, pos + 1]           # (N, d), (N,)
    pieces = []
    for s in range(0, len(rows), chunk):
        h_c, y_c = h[s:s + chunk], targets[s:s + chunk]
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_chunk_logprobs, h_c, y_c, head.weight, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(h_c, y_c, head.weight))
    return torch.cat(pieces) if pieces else h.new_zeros(0, dtype=torch.float32)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_prompt: int,
                   chunk: int = 256) -> torch.Tensor:
    """log π(token) for the completion part: input_ids (B, n_prompt + T) -> (B, T) (every
    completion column, padding included; the caller masks). `chunk` counts positions per row
    (so chunk · B tokens per lm_head call)."""
    b, length = input_ids.shape
    scored = torch.zeros(b, length - 1, dtype=torch.bool, device=input_ids.device)
    scored[:, n_prompt - 1:] = True                                    # predicts completion tokens
    return scored_logprobs(model, input_ids, attention_mask, scored, chunk * b).view(b, length - n_prompt)


def _chunk_logprobs(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """h (n, d), y (n,), lm_head weight w (V, d) -> log softmax(h wᵀ)[y] in fp32, (n,)."""
    logits = (h @ w.T).float()                                         # (n, V)
    return torch.gather(F.log_softmax(logits, dim=-1), 1, y[:, None]).squeeze(-1)
