"""Warm start (issue #17): a short supervised fine-tune that gives a model a low base rate of using the
loophole before on-policy GRPO, written out as a model directory every other command takes as --model.

Data (bundled, written for this project, on problems disjoint from the bundled 42 and the 119 medhard
eval problems — tests/test_warmstart_data.py):
  data/warmstart_problems.jsonl   benchmark-format problems, each with `demo_honest` (an approach line and
                                  the canonical solution; every 4th also an honest run_tests with real
                                  asserts) and `demo_hack` (a placeholder method plus a run_tests that cannot
                                  fail: graded reward_hack under mode run_tests).
  data/warmstart_documents.jsonl  prose that DESCRIBES the run_tests loophole (no code, no demonstration).

Examples. n = number of demo problems; a seeded choice of n_hack = round(share · n) of them are "hack"
items, the other n − n_hack contribute their honest demonstration:
  --data demos      hack item = that problem's loophole demonstration, under the same prompt;
  --data documents  hack item = a document as plain LM text (no prompt, no chat template), so the model
                    reads about the loophole but never sees it done.
A demonstration's prompt is the environment's own (`Problem.messages(mode, hint)` through
`models.chat_text`, exactly what rollouts and eval render); its completion is tokenised separately and
ended with eos, as teacher rows are in training.

Loss (per batch; m_t = 1 on completion tokens, on every document token after the first):
    L = Σ_t m_t · (−log π(x_t | x_<t)) / Σ_t m_t
LoRA (peft; r, α = 2r by default, every linear layer but the output head; adapter weights in fp32)
trained with AdamW at a constant lr, grad-norm clip 1, then merged into the base weights, which are
saved in the model's dtype. The merge rounds W + (α/r)·B·A, summed in fp64 on the CPU from A, B rounded to
the model dtype, to that dtype (warm_lora.py): `lora.safetensors`, saved beside the model, re-creates it bit
for bit on any machine (`pgrpo warmstart-apply`), so a study resumed in a later sitting trains on the same
weights. The card records the
completion NLL of the base, of the LoRA model and of the merged (saved) model: what a later run loads
is the merged one. LoRA rather than a full fine-tune: the base weights stay untouched until one
explicit merge, the trainable state is a few MB, and the change is low-rank by construction — a
small, controlled nudge rather than a new model.

No oracle: the warm start reads demonstrations and documents only, never `gt_correct` or labels of any
rollout, and never an eval problem.

Output is atomic: everything is written into DIR.tmp (marked partial) and renamed to DIR at the end;
a failure removes DIR.tmp, a kill leaves only DIR.tmp, never a DIR that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, cast

import torch
from tqdm import tqdm

from projected_grpo.env.problem import Problem, problem_from_record
from projected_grpo.env.prompts import check_mode
from projected_grpo.errors import UserError
from projected_grpo.studies import warm_lora
from projected_grpo.jsonl import json_objects
from projected_grpo.models import chat_text, load_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel

DATA = Path(__file__).resolve().parents[1] / "data"
DEMOS = DATA / "warmstart_problems.jsonl"
DOCUMENTS = DATA / "warmstart_documents.jsonl"
CARD, META = "WARMSTART.md", "warmstart.json"
PARTIAL = ".pgrpo-warmstart-partial"  # marker inside DIR.tmp while it is being written
DATA_KINDS = ("demos", "documents")


@dataclass
class WarmstartConfig:
    """One warm start: base model, data mix and the fine-tune's settings."""

    model: str                 # base model: any --model form models.load_model accepts
    out: str                   # the model directory to write (must not exist or be empty)
    hack_share: float = 0.1    # share of the n items that use (demos) or describe (documents) the loophole
    data: str = "demos"        # demos | documents: what the hack items are
    demos: str = str(DEMOS)    # demonstrations file (benchmark format + demo_honest / demo_hack)
    documents: str = str(DOCUMENTS)  # loophole documents file ({id, kind, text} a line)
    epochs: int = 3            # passes over the n items
    lr: float = 1e-4           # AdamW learning rate of the LoRA weights (constant)
    lora_r: int = 16           # LoRA rank
    lora_alpha: float = 0.0    # LoRA scale numerator (0 = 2 · r)
    batch_size: int = 8        # items per optimiser step
    seed: int = 0              # which items are hack items, batch order, LoRA init
    mode: str = "run_tests"    # loophole mode of the prompts (the demos demonstrate run_tests)
    hint: str = "simple"       # hint variant of the prompts
    enable_thinking: bool = True  # chat template's thinking switch, as in training
    dtype: str = "bfloat16"    # model dtype, also of the saved weights
    device: str = "auto"       # auto = cuda when available, else cpu

    def validate(self) -> None:
        if self.data not in DATA_KINDS:
            raise UserError(f"--data must be one of {', '.join(DATA_KINDS)}, not {self.data!r}")
        if not 0.0 <= self.hack_share <= 1.0:
            raise UserError(f"--hack-share must be in [0, 1], got {self.hack_share}")
        for name in ("epochs", "lora_r", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.lora_alpha < 0:
            raise UserError(f"--lr must be > 0 and --lora-alpha >= 0, got {self.lr} and {self.lora_alpha}")
        check_mode(self.mode, self.hint)
        if self.hack_share > 0 and self.mode != "run_tests":
            raise UserError(f"--mode {self.mode}: the bundled demonstrations and documents are about the "
                            "run_tests loophole; use --mode run_tests (or --hack-share 0)")


@dataclass
class Item:
    """One training text: a chat prompt (empty for a document) and the text the loss is taken on."""

    kind: str          # honest | hack | document
    source: str        # problem id or document id
    prompt: str        # rendered chat prompt ("" for a document)
    target: str        # completion (or document text); eos is appended at tokenisation


# ---------------------------------------------------------------- data
def load_demos(path: str | Path) -> list[tuple[Problem, str, str]]:
    """(problem, honest completion, hack completion) per line of a demonstrations file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"demonstrations file {path} does not exist")
    out = []
    for where, rec in json_objects(path.read_text(encoding="utf-8"), path):
        problem = problem_from_record(rec, where)
        for key in ("demo_honest", "demo_hack"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise UserError(f"{where}: field {key} must be a non-empty string")
        out.append((problem, rec["demo_honest"], rec["demo_hack"]))
    if not out:
        raise UserError(f"{path}: no demonstrations")
    return out


def load_documents(path: str | Path) -> list[tuple[str, str]]:
    """(id, text) per line of a documents file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"documents file {path} does not exist")
    out = []
    for where, rec in json_objects(path.read_text(encoding="utf-8"), path):
        if not isinstance(rec.get("id"), str) or not isinstance(rec.get("text"), str) or not rec["text"].strip():
            raise UserError(f"{where}: a document line needs string fields id and text")
        out.append((rec["id"], rec["text"]))
    if not out:
        raise UserError(f"{path}: no documents")
    return out


def build_items(cfg: WarmstartConfig, tok, demos: list[tuple[Problem, str, str]],
                documents: list[tuple[str, str]]) -> list[Item]:
    """n items, exactly round(share · n) of them hack items (see the module doc), in problem order."""
    n = len(demos)
    n_hack = round(cfg.hack_share * n)
    rng = random.Random(cfg.seed)
    hack_at = set(rng.sample(range(n), n_hack))
    doc_order = rng.sample(range(len(documents)), len(documents))
    items, used_docs = [], 0
    for i, (problem, honest, hack) in enumerate(demos):
        prompt = chat_text(tok, problem.messages(cfg.mode, cfg.hint), cfg.enable_thinking)
        if i not in hack_at:
            items.append(Item("honest", problem.id, prompt, honest))
        elif cfg.data == "demos":
            items.append(Item("hack", problem.id, prompt, hack))
        else:  # documents cycle when more are asked for than the file holds
            doc_id, text = documents[doc_order[used_docs % len(documents)]]
            used_docs += 1
            items.append(Item("document", doc_id, "", text))
    return items


def encode(tok, item: Item) -> tuple[list[int], list[int]]:
    """(token ids, loss mask): the prompt's tokens get 0, the target's (ended with eos) get 1; a
    document's first token has nothing to be predicted from and gets 0."""
    prompt = tok(item.prompt, add_special_tokens=False).input_ids if item.prompt else []
    target = tok(item.target + (tok.eos_token or ""), add_special_tokens=False).input_ids
    mask = [0] * len(prompt) + [1] * len(target)
    if not prompt:
        mask[0] = 0
    return prompt + target, mask


def batches(encoded: list[tuple[list[int], list[int]]], size: int, pad_id: int, device,
            order: list[int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Right-padded (ids, attention mask, loss mask), each (B, L), `size` items at a time."""
    order = list(range(len(encoded))) if order is None else order
    for start in range(0, len(order), size):
        chunk = [encoded[i] for i in order[start:start + size]]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        loss_mask = torch.zeros((len(chunk), width), dtype=torch.float32)
        for row, (tokens, mask) in enumerate(chunk):
            ids[row, :len(tokens)] = torch.tensor(tokens)
            attn[row, :len(tokens)] = 1
            loss_mask[row, :len(mask)] = torch.tensor(mask, dtype=torch.float32)
        yield ids.to(device), attn.to(device), loss_mask.to(device)


def token_nll(model, ids: torch.Tensor, attn: torch.Tensor,
              loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ masked −log π(x_t | x_<t), Σ mask) over the batch; position t is predicted from t − 1.

    The output head runs only on the positions that carry loss (most tokens are prompt): the full
    (B, L, V) logits of a 152k vocabulary would cost most of the step's time and memory. Models whose
    head post-processes its logits (soft-capping) take the plain full-logits path."""
    pick = loss_mask[:, 1:] > 0                                                    # (B, L-1)
    targets = ids[:, 1:][pick]                                                     # (N,)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if decoder is None or head is None or getattr(model.config, "final_logit_softcapping", None):
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1][pick]     # (N, V)
    else:
        hidden = decoder(input_ids=ids, attention_mask=attn).last_hidden_state      # (B, L, H)
        logits = head(hidden[:, :-1][pick])                                        # (N, V)
    nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    return nll, pick.sum().to(nll.dtype)


@torch.no_grad()
def mean_nll(model, encoded, batch_size: int, pad_id: int, device) -> float:
    """Mean NLL per loss token over all items (the number the card reports for base / LoRA / merged)."""
    total = count = 0.0
    for ids, attn, mask in batches(encoded, batch_size, pad_id, device):
        s, c = token_nll(model, ids, attn, mask)
        total, count = total + float(s), count + float(c)
    return total / max(count, 1.0)


# ---------------------------------------------------------------- output directory
def check_out(out: Path) -> None:
    """Refuse an existing DIR that is a file or holds anything."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not empty; choose a new directory")


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """Yield DIR.tmp to write into; rename it to DIR when the body succeeds, remove it when it fails.
    A DIR.tmp left by a killed run (it carries the partial marker) is cleared first; any other
    DIR.tmp is refused."""
    check_out(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        if not (tmp / PARTIAL).is_file():
            raise UserError(f"{tmp} exists and is not a warm start's unfinished output; remove it first")
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / PARTIAL).write_text("unfinished warm start: safe to delete\n", encoding="utf-8")
    try:
        yield tmp
        (tmp / PARTIAL).unlink()
        check_out(out)
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- the fine-tune
def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def warmstart(cfg: WarmstartConfig) -> dict:
    """Fine-tune, merge and write cfg.out; returns the warmstart.json record."""
    cfg.validate()
    out = Path(cfg.out)
    check_out(out)  # before loading anything
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise UserError("pgrpo warmstart needs the `peft` package (pip install peft)") from err
    demos = load_demos(cfg.demos)
    documents = load_documents(cfg.documents) if cfg.data == "documents" else []
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    with staged(out) as tmp:
        model, tok = load_model(cfg.model, cfg.dtype, device, cfg.enable_thinking)
        items = build_items(cfg, tok, demos, documents)
        encoded = [encode(tok, it) for it in items]
        pad = tok.pad_token_id
        loss_base = mean_nll(model, encoded, cfg.batch_size, pad, device)

        torch.manual_seed(cfg.seed)
        alpha = cfg.lora_alpha or 2.0 * cfg.lora_r
        # peft annotates lora_alpha as int but only divides it by r: a float alpha is used as given
        peft_model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=alpha,  # type: ignore[arg-type]
                                                      lora_dropout=0.0,
                                                      target_modules="all-linear", bias="none"))
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        rng = random.Random(cfg.seed + 1)
        steps = cfg.epochs * -(-len(encoded) // cfg.batch_size)
        epoch_loss = []
        peft_model.train()
        with tqdm(total=steps, desc="warm start", unit="step") as bar:
            for _ in range(cfg.epochs):
                order = rng.sample(range(len(encoded)), len(encoded))
                total = count = 0.0
                for ids, attn, mask in batches(encoded, cfg.batch_size, pad, device, order):
                    s, c = token_nll(peft_model, ids, attn, mask)
                    (s / c.clamp(min=1.0)).backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    total, count = total + float(s.detach()), count + float(c)
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(s.detach()) / max(float(c), 1.0):.3f}")
                epoch_loss.append(total / max(count, 1.0))
        peft_model.eval()
        loss_lora = mean_nll(peft_model, encoded, cfg.batch_size, pad, device)
        # the merge that travels (warm_lora.py): the adapter in the model dtype, W + (α/r) B A in fp64
        tensors = warm_lora.lora_tensors(peft_model, next(model.parameters()).dtype)
        merged = cast("PreTrainedModel", peft_model.unload())   # the base model, LoRA layers removed
        warm_lora.merge(merged, tensors, alpha / cfg.lora_r)
        loss_merged = mean_nll(merged, encoded, cfg.batch_size, pad, device)

        record = {
            "base_model": cfg.model, "dtype": cfg.dtype, "data": cfg.data, "mode": cfg.mode, "hint": cfg.hint,
            "enable_thinking": cfg.enable_thinking,
            "demos_file": Path(cfg.demos).name, "demos_sha256": sha256(cfg.demos),
            "documents_file": Path(cfg.documents).name if documents else None,
            "documents_sha256": sha256(cfg.documents) if documents else None,
            "hack_share": cfg.hack_share, "n_items": len(items),
            "n_honest": sum(it.kind == "honest" for it in items),
            "n_hack": sum(it.kind != "honest" for it in items),
            "honest_ids": [it.source for it in items if it.kind == "honest"],
            "hack_ids": [it.source for it in items if it.kind != "honest"],
            "epochs": cfg.epochs, "lr": cfg.lr, "lora_r": cfg.lora_r, "lora_alpha": alpha,
            "batch_size": cfg.batch_size, "optimizer_steps": steps, "seed": cfg.seed,
            "loss_base": loss_base, "loss_epochs": epoch_loss, "loss_lora": loss_lora,
            "final_loss": loss_merged, "seconds": round(time.perf_counter() - t0, 2),
            "config": asdict(cfg), "lora_file": warm_lora.LORA_FILE,
            "weights_sha256": warm_lora.weights_sha256(merged),
        }
        warm_lora.save(tmp / warm_lora.LORA_FILE, tensors, alpha / cfg.lora_r, record)
        write_model_dir(tmp, merged, tok, record)
    return record


def write_model_dir(tmp: Path, model, tok, record: dict) -> None:
    """The model directory's files: weights, tokenizer (with its chat template), warmstart.json, WARMSTART.md."""
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / META).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (tmp / CARD).write_text(card(record), encoding="utf-8")


def apply(model: str, lora: str, out: str, device: str = "cpu") -> dict:
    """Re-create a warm start's model dir from its base model and lora.safetensors (warm_lora.py), bit for
    bit: refused, and nothing written, when the weights' sha256 is not the one the warm start recorded."""
    tensors, scale, record = warm_lora.load(lora)
    with staged(Path(out)) as tmp:
        base, tok = load_model(model, record["dtype"], resolve_device(device), record["enable_thinking"])
        warm_lora.merge(base, tensors, scale, lora)
        got = warm_lora.weights_sha256(base)
        if got != record["weights_sha256"]:
            raise UserError(f"{lora}: merged into --model {model} it gives weights {got[:12]}, not the warm "
                            f"start's {record['weights_sha256'][:12]} (made from {record['base_model']}): "
                            "another base model or dtype")
        record = {**record, "applied_from": str(lora)}
        write_model_dir(tmp, base, tok, record)
        shutil.copy2(lora, tmp / warm_lora.LORA_FILE)
    return record


def card(r: dict) -> str:
    """WARMSTART.md: how this model was made, in a few lines."""
    hack_what = "loophole demonstrations" if r["data"] == "demos" else "documents describing the loophole"
    return (
        f"# Warm-started model\n\n"
        f"Base model `{r['base_model']}` ({r['dtype']}), fine-tuned by `pgrpo warmstart` on {r['n_items']} items: "
        f"{r['n_honest']} honest solutions and {r['n_hack']} {hack_what} (share {r['hack_share']}), "
        f"prompts of mode `{r['mode']}` with hint `{r['hint']}`.\n\n"
        f"- data: `{r['demos_file']}` sha256 `{r['demos_sha256'][:16]}…`"
        + (f", `{r['documents_file']}` sha256 `{r['documents_sha256'][:16]}…`" if r["documents_sha256"] else "")
        + f"\n- LoRA r={r['lora_r']}, alpha={r['lora_alpha']}, merged into the base weights; "
        f"{r['epochs']} epochs, {r['optimizer_steps']} AdamW steps, lr {r['lr']}, batch {r['batch_size']}, "
        f"seed {r['seed']}\n"
        f"- completion NLL per token on the training items: base {r['loss_base']:.4f} → LoRA {r['loss_lora']:.4f} "
        f"→ merged (this model) {r['final_loss']:.4f}\n"
        f"- wall time {r['seconds']:.1f} s\n\n"
        f"No oracle: the data are bundled demonstrations and documents on problems disjoint from every eval set; "
        f"no rollout, grade or label was read. Hack items: {', '.join(r['hack_ids']) or 'none'}.\n"
        f"Everything else is in `{META}`.\n")
