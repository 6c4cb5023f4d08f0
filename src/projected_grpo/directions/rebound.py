"""Rebound baseline: advantage modification with a shortcut concept direction (Wu & Tang 2026, DESIGN §5).

Concept direction: h(text) = the hidden state of the text's last token, averaged over the decoder
layers at 60–75% of depth (`concept_layers`); d = mean over training pairs of h(hack) − h(clean)
(not normalised: the per-group z-score below makes its scale irrelevant).
Per rollout s = h(prompt + completion) · d; within each group of G rollouts
    z = (s − mean s) / max(std s, σ_floor)      (population std, i.e. divide by G)
and before the advantage is computed the reward becomes
    multiplicative: r · (1 − α · sigmoid(z) · 1[z > 0])      additive: r − α · max(z, 0).
A group whose scores are all equal has z = 0 and keeps its rewards exactly.
The hidden states come from the model as it is when called (δS active = the current policy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from projected_grpo.training import dist
from projected_grpo.core.adapter import read_metadata
from projected_grpo.errors import UserError
from projected_grpo.directions.pairs import Pair, chunks, collate, encode, load_pairs
from projected_grpo.training.runio import write_atomic_with

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ARTIFACT = "concept_direction"   # metadata["artifact"] of a direction file
DEPTH_LO, DEPTH_HI = 60, 75      # percent of depth whose layers are averaged
FORMS = ("multiplicative", "additive")


@dataclass
class ConceptDirection:
    """The shortcut concept direction of one model."""

    vector: torch.Tensor         # (d_model,) fp32, mean of h(hack) − h(clean)
    layers: list[int]            # 0-based decoder layers averaged into h
    model_id: str                # model it was computed on
    dtype: str                   # model dtype, e.g. "bfloat16"
    n_train: int = 0             # training pairs it was averaged over
    pairs_sha256: str = ""       # sha256 of the pair file


def concept_layers(n_layers: int) -> list[int]:
    """0-based decoder layers l whose output depth (l + 1) / n_layers lies in [0.60, 0.75].

    E.g. 4 layers -> [2]; 28 -> [16..20]; 32 -> [19..23]; 36 -> [21..26]. When no layer falls in
    the band (1–2 layers), the single layer whose depth is nearest 0.675 (ties: the shallower)."""
    if n_layers < 1:
        raise UserError(f"a model needs at least one layer, got {n_layers}")
    band = [l for l in range(n_layers) if DEPTH_LO * n_layers <= 100 * (l + 1) <= DEPTH_HI * n_layers]
    if band:
        return band
    target = (DEPTH_LO + DEPTH_HI) / 200
    return [min(range(n_layers), key=lambda l: (abs((l + 1) / n_layers - target), l))]


def n_layers_of(model: PreTrainedModel) -> int:
    return int(model.config.num_hidden_layers)


def last_token_states(model, tok, items: list[tuple[list[dict] | str, str]], layers: list[int],
                      batch_size: int = 8) -> torch.Tensor:
    """h for each (prompt, completion): last real token's hidden state averaged over `layers`
    -> (N, d_model) fp32 on the CPU. Completions are rendered as in `pairs.encode`."""
    out = []
    device = next(model.parameters()).device
    for group in chunks(items, batch_size):
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        batch = collate([encode(tok, p, c) for p, c in group], pad_id)        # right-padded
        with torch.no_grad():
            states = model.base_model(input_ids=batch.input_ids.to(device),
                                      attention_mask=batch.attention_mask.to(device),
                                      use_cache=False, output_hidden_states=True).hidden_states
        last = batch.attention_mask.sum(1) - 1                                 # (B,) last real token
        rows = torch.arange(len(group))
        # hidden_states[0] is the embedding output; hidden_states[l + 1] is decoder layer l's
        h = torch.stack([states[l + 1][rows, last.to(device)].float() for l in layers]).mean(0)
        out.append(h.cpu())                                                    # (B, d_model)
    return torch.cat(out)


def concept_direction(model, tok, pairs: list[Pair], model_id: str, batch_size: int = 8,
                      pairs_sha256: str = "") -> ConceptDirection:
    """d = mean over `pairs` (use the training split) of h(prompt + hack) − h(prompt + clean)."""
    if not pairs:
        raise UserError("no pairs to compute the concept direction from")
    layers = concept_layers(n_layers_of(model))
    h_hack = last_token_states(model, tok, [(p.prompt, p.hack) for p in pairs], layers, batch_size)
    h_clean = last_token_states(model, tok, [(p.prompt, p.clean) for p in pairs], layers, batch_size)
    vector = (h_hack - h_clean).mean(0)                                        # (d_model,)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return ConceptDirection(vector=vector, layers=layers, model_id=model_id, dtype=dtype,
                            n_train=len(pairs), pairs_sha256=pairs_sha256)


def rollout_scores(model, tok, prompts_and_completions: list[tuple[list[dict] | str, str]],
                   direction: ConceptDirection, batch_size: int = 8) -> torch.Tensor:
    """s = h(prompt + completion) · d for each rollout -> (N,) fp32."""
    h = last_token_states(model, tok, prompts_and_completions, direction.layers, batch_size)
    return h @ direction.vector                                                # (N,)


def modify_rewards(rewards: torch.Tensor, scores: torch.Tensor, alpha: float = 2.0,
                   form: str = "multiplicative", sigma_floor: float = 0.1) -> torch.Tensor:
    """Rewards (P, G) penalised by the within-group z-score of the concept scores (P, G)."""
    if form not in FORMS:
        raise UserError(f"unknown rebound form {form!r}; known: {', '.join(FORMS)}")
    if rewards.shape != scores.shape or rewards.dim() != 2:
        raise ValueError(f"rewards {tuple(rewards.shape)} and scores {tuple(scores.shape)} must both be (P, G)")
    r, s = rewards.double(), scores.double()
    std = s.std(dim=1, unbiased=False, keepdim=True)                           # (P, 1) population
    z = (s - s.mean(dim=1, keepdim=True)) / std.clamp(min=sigma_floor)         # (P, G)
    if form == "multiplicative":
        out = r * (1 - alpha * torch.sigmoid(z) * (z > 0))
    else:
        out = r - alpha * z.clamp(min=0)
    return out.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


# ---- artifact -------------------------------------------------------------------------------
def save_direction(path: str | Path, cd: ConceptDirection) -> Path:
    """Write the direction as safetensors with its metadata; atomic."""
    path = Path(path)
    meta = {"artifact": ARTIFACT, "model_id": cd.model_id, "dtype": cd.dtype,
            "layers": json.dumps(cd.layers), "d_model": str(cd.vector.numel()),
            "n_train": str(cd.n_train), "pairs_sha256": cd.pairs_sha256,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"direction": cd.vector.detach().float().cpu().contiguous()}
    return write_atomic_with(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_direction(path: str | Path, model, model_id: str) -> ConceptDirection:
    """Load a direction, refusing a legacy file, another model, dtype, layer set or width."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"concept direction file {path} does not exist")
    meta = read_metadata(path)
    if meta.get("artifact") != ARTIFACT:
        raise UserError(f"{path}: not a concept direction (no or other metadata; legacy artifact?)")
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    if meta["model_id"] != model_id:
        raise UserError(f"{path}: concept direction is for model {meta['model_id']!r}, not {model_id!r}")
    if meta["dtype"] != dtype:
        raise UserError(f"{path}: concept direction dtype {meta['dtype']!r} != model dtype {dtype!r}")
    layers, expected = json.loads(meta["layers"]), concept_layers(n_layers_of(model))
    if layers != expected:
        raise UserError(f"{path}: concept direction layers {layers} != this model's {expected}")
    vector = load_file(path)["direction"]
    d_model = int(model.config.hidden_size)
    if tuple(vector.shape) != (d_model,):
        raise UserError(f"{path}: concept direction has shape {tuple(vector.shape)}, expected ({d_model},)")
    return ConceptDirection(vector=vector.float(), layers=layers, model_id=model_id, dtype=dtype,
                            n_train=int(meta.get("n_train", 0)), pairs_sha256=meta.get("pairs_sha256", ""))


def run_direction(model, tok, cfg, out: Path) -> ConceptDirection:
    """The rebound arm's direction for the run in `out`: from the training split of --persona-pairs,
    saved there as rebound_direction.safetensors (rank 0, once, kept across resumes), loaded by
    every rank."""
    path = out / "rebound_direction.safetensors"
    if dist.rank() == 0 and not path.is_file():
        persona = load_pairs(cfg.persona_pairs, split="train")
        save_direction(path, concept_direction(model, tok, persona.pairs, cfg.model, pairs_sha256=persona.sha256))
    dist.barrier()
    return load_direction(path, model, cfg.model)
