"""Sampling P prompts × G completions with δS folded into the weights (DESIGN §1, §4).

The sampler's own log-probabilities. Sampling folds δS into the weights, W' = W + U diag(δS) Vh,
rounded to the model dtype; the trainer computes log π through the exact hook path
y = W x + U (δS ⊙ Vh x). In bf16 the rounding of W' drops most of a small δS (tiny-qwen3: 38% of
the δS effect lost at |δS| = 1e-3), so the sampled policy lags the trained one. `sample` therefore
returns, for every sampled token y_t, the sampler's log-probability

    logp_sampler,t = log softmax(z_t)[y_t],   z_t = the folded model's logits (temperature 1),

read during generation (fast loop: from the decode step's logits; HF generate: a logits processor
that sees the logits before temperature and top-p). Temperature 1 on purpose: the trained policy π
is the T = 1 distribution (the trainer's log-probs are untempered); temperature and top-p are a
sampling procedure on top of it. So logp_sampler − logp_trainer measures the fold alone, and it is
0 up to rounding in fp32 (tests/test_sampler_mismatch.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList

from projected_grpo.fast.row_noise import row_seeds
from projected_grpo.models import chat_text


@dataclass
class Rollouts:
    """A padded batch of prompts and their sampled completions (row i = prompt i // G)."""

    prompt_ids: torch.Tensor       # (B, Lp) left-padded
    prompt_mask: torch.Tensor      # (B, Lp)
    completion_ids: torch.Tensor   # (B, T) right-padded with pad id
    completion_mask: torch.Tensor  # (B, T) 1 up to and including the first eos
    texts: list[str]               # decoded completions (special tokens dropped)
    sampler_logp: torch.Tensor | None = None  # (B, T) fp32 log π_sampler(token), T = 1; 0 on padding;
    #                                           None for cached (teacher) rows: no sampler there

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def n_tokens(self) -> int:
        return int(self.completion_mask.sum())

    def select(self, idx: list[int]) -> "Rollouts":
        """The rows `idx`, in that order."""
        t = torch.tensor(idx, dtype=torch.long, device=self.prompt_ids.device)
        return Rollouts(self.prompt_ids[t], self.prompt_mask[t], self.completion_ids[t],
                        self.completion_mask[t], [self.texts[i] for i in idx],
                        None if self.sampler_logp is None else self.sampler_logp[t])


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
           attention: str = "auto", row_noise: bool = False) -> Rollouts:
    """G samples per prompt from the current policy (δS folded in), stopping when all have ended.

    `static_cache=True` asks for the fast CUDA path: for Qwen2/Qwen3 models on a CUDA device the
    graph-captured decode loop of `fast_rollout`; for other architectures HF `generate` with a
    static cache. `fast` overrides the choice (True: the fast loop, eagerly on the CPU too — used by
    the equality test; False: HF generate). `temperature <= 0` decodes greedily. `ignore_eos`
    forbids eos (forced full length, for benchmarks). `attention`: the fast loop's decode attention.
    `row_noise`: the fast loop (eagerly on the CPU) with each row's noise drawn from (seed, row)
    alone (fast/row_noise.py), as runs stepped together draw theirs (training/lockstep.py)."""
    from projected_grpo.fast import fast_rollout

    ids = prompt_ids.repeat_interleave(group_size, dim=0)
    mask = prompt_mask.repeat_interleave(group_size, dim=0)
    eos = eos_token_ids(model, tok)
    torch.manual_seed(seed)
    if row_noise:
        fast = True
    if fast is None:
        fast = static_cache and ids.device.type == "cuda" and fast_rollout.supports(model)
    with adapter.merged(), torch.no_grad():
        if fast:
            comp, logp = fast_rollout.generate(model, ids, mask, max_new_tokens, eos, tok.pad_token_id,
                                               temperature=temperature, top_p=top_p, ignore_eos=ignore_eos,
                                               attention=attention, return_logprobs=True,
                                               row_seed=row_seeds(seed, ids.shape[0]) if row_noise else None)
        else:
            recorder = ChosenLogprobs()
            extra: dict[str, object] = {"cache_implementation": "static"} if static_cache else {}
            if ignore_eos:
                extra["min_new_tokens"] = max_new_tokens
            if temperature > 0:
                extra.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
            else:
                extra.update(do_sample=False)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=eos, pad_token_id=tok.pad_token_id,
                                 logits_processor=LogitsProcessorList([recorder]), **extra)
            comp = out[:, ids.shape[1]:]
            logp = recorder.finish(comp)
    return finish(tok, ids, mask, comp, logp, eos, trim=fast)


def row_noise(cfg) -> dict:
    """The sampler's `row_noise` argument where the run's config asks for it (a handed-in sampler need
    not know the argument otherwise)."""
    return {"row_noise": True} if cfg.row_noise else {}


def finish(tok, ids: torch.Tensor, mask: torch.Tensor, comp: torch.Tensor, logp: torch.Tensor, eos: list[int],
           trim: bool) -> Rollouts:
    """Rollouts of sampled completions `comp` (B, T) with sampler log-probs `logp`: padding after each
    row's first eos, log-probs 0 there, decoded texts; `trim` drops all-pad columns (the fast loop checks
    for the end only every few steps)."""
    cmask = completion_mask(comp, eos)
    comp = torch.where(cmask.bool(), comp, torch.full_like(comp, tok.pad_token_id))
    logp = torch.where(cmask.bool(), logp, torch.zeros_like(logp))
    if trim and comp.shape[1]:  # the loop checks for the end every few steps: drop all-pad columns
        width = max(int(cmask.sum(dim=1).max()), 1)
        comp, cmask, logp = comp[:, :width], cmask[:, :width], logp[:, :width]
    texts = tok.batch_decode(comp, skip_special_tokens=True)
    return Rollouts(ids, mask, comp, cmask, texts, logp)


class ChosenLogprobs:
    """A logits processor for HF `generate` that records log softmax(scores)[chosen token] per step.

    Custom processors run before temperature and top-p (transformers puts the warpers last), so the
    scores seen here are the model's logits (after any penalty the generation config itself asks
    for: the distribution actually sampled from, at T = 1). At step t the token chosen at step t − 1
    is the last input id, so only the previous step's (B, V) log-softmax is ever kept."""

    def __init__(self):
        self.prev: torch.Tensor | None = None      # (B, V) fp32 log-softmax of the last step
        self.chosen: list[torch.Tensor] = []       # per step (B,)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prev is not None:
            self.chosen.append(self.prev.gather(1, input_ids[:, -1:])[:, 0])
        self.prev = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, completion: torch.Tensor) -> torch.Tensor:
        """(B, T) log-probs of `completion`, the tokens generate returned."""
        if self.prev is not None and len(self.chosen) < completion.shape[1]:
            t = len(self.chosen)
            self.chosen.append(self.prev.gather(1, completion[:, t:t + 1])[:, 0])
        self.prev = None
        if not self.chosen:
            return torch.zeros(completion.shape, dtype=torch.float32, device=completion.device)
        return torch.stack(self.chosen, dim=1)


def teacher_rollouts(tok, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                     texts: list[str]) -> Rollouts:
    """Cached completions (teacher pool) as a Rollouts batch on the same prompts, ended with eos."""
    eos_text = tok.eos_token or ""
    enc = tok([t + eos_text for t in texts], return_tensors="pt", padding=True, padding_side="right",
              add_special_tokens=False)  # never truncated: a cut-off solution would be graded whole
    ids = enc.input_ids.to(prompt_ids.device)
    cmask = enc.attention_mask.to(prompt_ids.device)
    return Rollouts(prompt_ids, prompt_mask, ids, cmask, list(texts), None)


def concat(parts: list[Rollouts], pad_id: int) -> Rollouts:
    """Stack Rollouts with equal prompt width; completions right-padded to the widest. Rows without
    sampler log-probs (teacher rows) get 0 there when another part has them."""
    width = max(r.completion_ids.shape[1] for r in parts)

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    logp = None
    if any(r.sampler_logp is not None for r in parts):
        logp = torch.cat([pad(r.sampler_logp if r.sampler_logp is not None
                              else torch.zeros(r.completion_ids.shape, device=r.completion_ids.device), 0)
                          for r in parts])
    return Rollouts(torch.cat([r.prompt_ids for r in parts]), torch.cat([r.prompt_mask for r in parts]),
                    torch.cat([pad(r.completion_ids, pad_id) for r in parts]),
                    torch.cat([pad(r.completion_mask, 0) for r in parts]),
                    [t for r in parts for t in r.texts], logp)
