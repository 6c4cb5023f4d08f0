"""Contrastive pairs (prompt, hack completion, clean completion): loading, validation, tokenisation.

Two file formats, one JSON object per line:
- code pairs    {"id", "problem_id", "mode", "hint", "split", "prompt": [chat messages], "hack", "clean"}
  rendered as chat_template(prompt, add_generation_prompt=True) + completion + end-of-turn token;
- persona pairs {"id", "split", "prompt": str, "hack", "clean"}, rendered as prompt + " " + completion.
`split` is "train" (used to extract a direction) or "heldout" (used to check it).
`bundled:code` and `bundled:persona` name the files shipped in the package (`bundled` = code).

Prompt and completion are tokenised separately and concatenated, the way a sampled completion
follows its prompt, so the completion mask is exact. Batches are right-padded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from projected_grpo.env.prompts import HINTS, MODES
from projected_grpo.errors import UserError
from projected_grpo.jsonl import json_objects
from projected_grpo.models import chat_text

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
BUNDLED = {"code": DATA_DIR / "pairs_code.jsonl", "persona": DATA_DIR / "pairs_persona.jsonl"}
SPLITS = ("train", "heldout")
CODE_FIELDS = ("id", "problem_id", "mode", "hint", "split", "prompt", "hack", "clean")
PERSONA_FIELDS = ("id", "split", "prompt", "hack", "clean")
END_OF_TURN = "<|im_end|>"  # appended after a code completion when the tokenizer knows it (else eos)


@dataclass(frozen=True)
class Pair:
    """One labelled contrastive pair."""

    id: str                          # unique id within its file
    split: str                       # "train" or "heldout"
    prompt: list[dict] | str         # chat messages (code pairs) or plain text (persona pairs)
    hack: str                        # the completion that games the grader / shows the concept
    clean: str                       # the matched honest completion
    mode: str | None                 # loophole mode (code pairs); None for persona pairs
    where: str                       # "file:line", for error messages
    problem_id: str | None = None    # the problem a code pair is about; None for persona pairs


@dataclass(frozen=True)
class PairSet:
    """The pairs of one file after filtering, with what identifies them."""

    pairs: list[Pair]                # the selected pairs, in file order
    path: Path                       # the resolved file
    sha256: str                      # sha256 of the whole file's bytes
    kind: str                        # "code" or "persona"


@dataclass
class Batch:
    """Right-padded token batch; completion tokens are the only ones scored."""

    input_ids: torch.Tensor          # (B, T) long
    attention_mask: torch.Tensor     # (B, T) long, 1 = real token
    completion_mask: torch.Tensor    # (B, T) bool, True on completion tokens


def resolve(spec: str) -> Path:
    """`bundled`, `bundled:code`, `bundled:persona` or a path -> an existing file."""
    if spec == "bundled" or spec.startswith("bundled:"):
        name = spec.partition(":")[2] or "code"
        if name not in BUNDLED:
            raise UserError(f"unknown bundled pair set {spec!r}; known: bundled:code, bundled:persona")
        path = BUNDLED[name]
    else:
        path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"pair file {path} does not exist")
    return path


def parse_modes(text: str | None) -> tuple[str, ...] | None:
    """'run_tests,stdout' -> ('run_tests', 'stdout'); None or '' -> None (all modes)."""
    if not text:
        return None
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    for m in modes:
        if m not in MODES:
            raise UserError(f"unknown loophole mode {m!r} in --modes; known: {', '.join(MODES)}")
    return modes


def _parse_row(row: dict, where: str, kind: str | None) -> tuple[Pair, str]:
    """One JSON object -> (Pair, its kind), raising UserError that names file:line."""
    looks_like_code = isinstance(row.get("prompt"), list) or "mode" in row
    row_kind = kind or ("code" if looks_like_code else "persona")   # the file's first line decides
    fields = CODE_FIELDS if row_kind == "code" else PERSONA_FIELDS
    missing = [f for f in fields if f not in row]
    if missing:
        raise UserError(f"{where}: missing field(s) {', '.join(missing)} of a {row_kind} pair")
    if isinstance(row["prompt"], list) != (row_kind == "code"):
        raise UserError(f"{where}: prompt must be a list of chat messages for code pairs and a "
                        f"string for persona pairs (this file holds {row_kind} pairs)")
    if row["split"] not in SPLITS:
        raise UserError(f"{where}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
    for f in ("hack", "clean"):
        if not isinstance(row[f], str) or not row[f].strip():
            raise UserError(f"{where}: field {f!r} must be a non-empty string")
    if row_kind == "code":
        if row["mode"] not in HINTS or row["hint"] not in HINTS[row["mode"]]:
            raise UserError(f"{where}: unknown mode/hint {row['mode']!r}/{row['hint']!r}")
        bad = [m for m in row["prompt"] if not (isinstance(m, dict) and {"role", "content"} <= set(m))]
        if bad or not row["prompt"]:
            raise UserError(f"{where}: prompt must be a non-empty list of {{role, content}} messages")
    elif not isinstance(row["prompt"], str):
        raise UserError(f"{where}: prompt of a persona pair must be a string")
    pair = Pair(id=str(row["id"]), split=row["split"], prompt=row["prompt"], hack=row["hack"],
                clean=row["clean"], mode=row.get("mode") if row_kind == "code" else None, where=where,
                problem_id=str(row["problem_id"]) if row_kind == "code" else None)
    return pair, row_kind


def load_pairs(spec: str, split: str | None = None, modes: tuple[str, ...] | None = None) -> PairSet:
    """Load and validate a pair file, then keep the pairs of `split` (None: all) and `modes`."""
    if split is not None and split not in SPLITS:
        raise UserError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    path = resolve(spec)
    data = path.read_bytes()
    pairs, seen = [], set()
    kind: str | None = None
    for where, row in json_objects(data.decode("utf-8"), path):
        pair, kind = _parse_row(row, where, kind)
        if pair.id in seen:
            raise UserError(f"{where}: duplicate pair id {pair.id!r}")
        seen.add(pair.id)
        pairs.append(pair)
    if not pairs or kind is None:
        raise UserError(f"pair file {path} has no pairs")
    if modes is not None and kind != "code":
        raise UserError(f"{path}: --vhack-modes applies to code pairs only (these are {kind} pairs)")
    selected = [p for p in pairs if (split is None or p.split == split)
                and (modes is None or p.mode in modes)]
    return PairSet(pairs=selected, path=path, sha256=hashlib.sha256(data).hexdigest(), kind=kind)


# ---- tokenisation --------------------------------------------------------------------------
def end_of_turn(tok) -> str:
    """The text that ends an assistant turn: <|im_end|> for Qwen chat tokenizers, else eos."""
    ids = tok.convert_tokens_to_ids(END_OF_TURN)
    return END_OF_TURN if ids is not None and ids != tok.unk_token_id else tok.eos_token


def render_prompt(tok, prompt: list[dict] | str) -> str:
    """Chat messages through the tokenizer's template (with the generation prompt); text as is."""
    if isinstance(prompt, str):
        return prompt
    return chat_text(tok, prompt)


def encode(tok, prompt: list[dict] | str, completion: str) -> tuple[list[int], int]:
    """(token ids of prompt + completion, number of prompt tokens)."""
    prompt_ids = tok(render_prompt(tok, prompt), add_special_tokens=False).input_ids
    tail = completion + end_of_turn(tok) if isinstance(prompt, list) else " " + completion
    return prompt_ids + tok(tail, add_special_tokens=False).input_ids, len(prompt_ids)


def collate(encoded: list[tuple[list[int], int]], pad_id: int) -> Batch:
    """Right-pad (ids, n_prompt) items into a Batch."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    completion = torch.zeros((len(encoded), width), dtype=torch.bool)
    for b, (ids, n_prompt) in enumerate(encoded):
        input_ids[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[b, :len(ids)] = 1
        completion[b, n_prompt:len(ids)] = True
    return Batch(input_ids=input_ids, attention_mask=attention, completion_mask=completion)


def pair_batch(tok, pairs: list[Pair]) -> Batch:
    """2B sequences: rows 0..B-1 are the hack completions, rows B..2B-1 the clean ones."""
    encoded = [encode(tok, p.prompt, p.hack) for p in pairs] + [encode(tok, p.prompt, p.clean) for p in pairs]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return collate(encoded, pad_id)


def chunks(items: list, size: int) -> list[list]:
    """Consecutive slices of at most `size` items."""
    if size < 1:
        raise UserError(f"batch size must be at least 1, got {size}")
    return [items[i:i + size] for i in range(0, len(items), size)]
