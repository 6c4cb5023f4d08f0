"""How a training pass cuts a sampled batch into micro-batches, and the log-probs of one micro-batch.

A sampled batch is a padded rectangle: prompts left-padded to the longest prompt, completions
right-padded to the longest completion (rollout.Rollouts). `--train-batching`:

    padded   micro-batches of `--micro-batch` rows in row order, each the batch's full rectangle
             (B_mb, Lp + T); the lm_head scores every completion column, padding included.
    sorted   rows ordered by real length (prompt + completion tokens, longest first) and each
             micro-batch rebuilt without the padding: row i's real tokens, right-padded only to the
             micro-batch's longest row; the lm_head scores only real completion tokens. With
             `--micro-tokens N` a micro-batch takes rows while rows × its longest row ≤ N (at least
             one row), so short rows share a forward and the activations stay bounded.

Both give each real token the same position and the same attended keys, so per-token log-probs,
the loss and ∂L/∂δS agree up to floating-point summation order (tests/test_batching.py: fp32 on the
CPU, mixed lengths and teacher rows, to 1e-6). Log-probs of padding columns are 0 under `sorted`
(anything finite under `padded`); every use multiplies them by the completion mask.
"""

from __future__ import annotations

import torch

from projected_grpo.core.grpo import scored_logprobs, token_logprobs


def micro_batches(attention_mask: torch.Tensor, mode: str, micro_batch: int,
                  micro_tokens: int = 0) -> list[torch.Tensor]:
    """attention_mask (B, L) -> the row indices of each micro-batch, in the order the pass takes them."""
    b = attention_mask.shape[0]
    if mode == "padded":
        return [torch.arange(s, min(s + micro_batch, b)) for s in range(0, b, micro_batch)]
    if mode != "sorted":
        raise ValueError(f"unknown train batching {mode!r}")
    lengths = attention_mask.sum(dim=1).tolist()
    order = sorted(range(b), key=lambda i: (-lengths[i], i))      # longest first, ties by row
    groups: list[list[int]] = []
    for i in order:
        if groups and ((len(groups[-1]) + 1) * lengths[groups[-1][0]] <= micro_tokens if micro_tokens > 0
                       else len(groups[-1]) < micro_batch):
            groups[-1].append(i)           # the group's first row is its longest
        else:
            groups.append([i])
    return [torch.tensor(g, dtype=torch.long) for g in groups]


def compact(input_ids: torch.Tensor, attention_mask: torch.Tensor, n_prompt: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows (b, n_prompt + T) with left-padded prompts and right-padded completions -> each row's real
    tokens moved to the left (padding id 0, masked): ids (b, L), attention (b, L), scored (b, L − 1),
    with L the longest row's real length and scored[i, t] True where token t + 1 is one of row i's
    completion tokens."""
    real = attention_mask.bool()                                       # (b, Lp + T)
    n = real.sum(dim=1)                                                # (b,) real tokens per row
    width = int(n.max())
    dest = real.long().cumsum(dim=1) - 1                               # (b, Lp + T) new column of each real token
    rows = torch.arange(real.shape[0], device=real.device)[:, None].expand_as(real)
    ids = torch.zeros(real.shape[0], width, dtype=input_ids.dtype, device=input_ids.device)
    ids[rows[real], dest[real]] = input_ids[real]
    att = (torch.arange(width, device=real.device)[None, :] < n[:, None]).long()
    n_prompt_real = real[:, :n_prompt].sum(dim=1)                      # (b,)
    col = torch.arange(width - 1, device=real.device)[None, :]        # position t scores token t + 1
    scored = (col + 1 >= n_prompt_real[:, None]) & (col + 1 < n[:, None])
    return ids, att, scored


def micro_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_prompt: int,
                   mode: str, chunk: int) -> torch.Tensor:
    """log π of the completion columns of one micro-batch: (b, n_prompt + T) -> (b, T)."""
    if mode == "padded":
        return token_logprobs(model, input_ids, attention_mask, n_prompt, chunk)
    ids, att, scored = compact(input_ids, attention_mask, n_prompt)
    flat = scored_logprobs(model, ids, att, scored, chunk * ids.shape[0])   # (N,) row-major
    out = torch.zeros(input_ids.shape[0], input_ids.shape[1] - n_prompt, dtype=flat.dtype, device=flat.device)
    out[attention_mask[:, n_prompt:].bool()] = flat
    return out
