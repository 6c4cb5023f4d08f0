"""Sampling P prompts × G completions with δS folded into the weights (DESIGN §1, §4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from projected_grpo.models import chat_text


@dataclass
class Rollouts:
    """A padded batch of prompts and their sampled completions (row i = prompt i // G)."""

    prompt_ids: torch.Tensor       # (B, Lp) left-padded
    prompt_mask: torch.Tensor      # (B, Lp)
    completion_ids: torch.Tensor   # (B, T) right-padded with pad id
    completion_mask: torch.Tensor  # (B, T) 1 up to and including the first eos
    texts: list[str]               # decoded completions (special tokens dropped)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def n_tokens(self) -> int:
        return int(self.completion_mask.sum())


def encode_prompts(tok, messages: list[list[dict]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-templated prompts, left-padded: (ids, mask), each (N, Lp)."""
    texts = [chat_text(tok, m) for m in messages]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    return enc.input_ids.to(device), enc.attention_mask.to(device)


def completion_mask(ids: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """(B, T) mask: 1 through the first eos token (inclusive), 0 after."""
    is_eos = torch.isin(ids, torch.tensor(eos_ids, device=ids.device))
    ended_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    return (~ended_before).long()


def eos_token_ids(model, tok) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    ids.add(tok.eos_token_id)
    return sorted(i for i in ids if i is not None)


def sample(model, tok, adapter, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group_size: int,
           max_new_tokens: int, temperature: float, top_p: float, seed: int,
           static_cache: bool = False, ignore_eos: bool = False, fast: bool | None = None,
           attention: str = "auto") -> Rollouts:
    """G samples per prompt from the current policy (δS folded in), stopping when all have ended.

    `static_cache=True` asks for the fast CUDA path: for Qwen2/Qwen3 models on a CUDA device the
    graph-captured decode loop of `fast_rollout`; for other architectures HF `generate` with a
    static cache. `fast` overrides the choice (True: the fast loop, eagerly on the CPU too — used by
    the equality test; False: HF generate). `temperature <= 0` decodes greedily. `ignore_eos`
    forbids eos (forced full length, for benchmarks). `attention`: the fast loop's decode attention."""
    from projected_grpo import fast_rollout

    ids = prompt_ids.repeat_interleave(group_size, dim=0)
    mask = prompt_mask.repeat_interleave(group_size, dim=0)
    eos = eos_token_ids(model, tok)
    torch.manual_seed(seed)
    if fast is None:
        fast = static_cache and ids.device.type == "cuda" and fast_rollout.supports(model)
    with adapter.merged(), torch.no_grad():
        if fast:
            comp = fast_rollout.generate(model, ids, mask, max_new_tokens, eos, tok.pad_token_id,
                                         temperature=temperature, top_p=top_p, ignore_eos=ignore_eos,
                                         attention=attention)
        else:
            extra = {"cache_implementation": "static"} if static_cache else {}
            if ignore_eos:
                extra["min_new_tokens"] = max_new_tokens
            if temperature > 0:
                extra.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
            else:
                extra.update(do_sample=False)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=eos, pad_token_id=tok.pad_token_id, **extra)
            comp = out[:, ids.shape[1]:]
    cmask = completion_mask(comp, eos)
    comp = torch.where(cmask.bool(), comp, torch.full_like(comp, tok.pad_token_id))
    if fast and comp.shape[1]:  # the loop checks for the end every few steps: drop all-pad columns
        width = max(int(cmask.sum(dim=1).max()), 1)
        comp, cmask = comp[:, :width], cmask[:, :width]
    texts = tok.batch_decode(comp, skip_special_tokens=True)
    return Rollouts(ids, mask, comp, cmask, texts)


def teacher_rollouts(tok, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                     texts: list[str]) -> Rollouts:
    """Cached completions (teacher pool) as a Rollouts batch on the same prompts, ended with eos."""
    eos_text = tok.eos_token or ""
    enc = tok([t + eos_text for t in texts], return_tensors="pt", padding=True, padding_side="right",
              add_special_tokens=False)  # never truncated: a cut-off solution would be graded whole
    ids = enc.input_ids.to(prompt_ids.device)
    cmask = enc.attention_mask.to(prompt_ids.device)
    return Rollouts(prompt_ids, prompt_mask, ids, cmask, list(texts))


def concat(parts: list[Rollouts], pad_id: int) -> Rollouts:
    """Stack Rollouts with equal prompt width; completions right-padded to the widest."""
    width = max(r.completion_ids.shape[1] for r in parts)

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return Rollouts(torch.cat([r.prompt_ids for r in parts]), torch.cat([r.prompt_mask for r in parts]),
                    torch.cat([pad(r.completion_ids, pad_id) for r in parts]),
                    torch.cat([pad(r.completion_mask, 0) for r in parts]),
                    [t for r in parts for t in r.texts])
