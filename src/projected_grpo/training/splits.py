"""Problem splits: which problems a run trains on, which it is evaluated on, which the pairs name.

Three sets per run (DESIGN §8), written to the run dir as `split.json`:
  pairs — every problem id named by a `problem_id` of the pair file's TRAIN pairs (`--pairs`): V is
          extracted from completions to these prompts;
  eval  — held-out problems: never trained on and never named by a training pair, so nothing the
          policy was trained on or the direction was extracted from saw these prompts;
  train — the problems the run trains on, disjoint from eval. A train problem may be a pair problem;
          that overlap is reported (`train_pairs_overlap` in split.json, and printed), not refused.

The pool is the loaded problem set after `--n-problems` and `--max-prompt-tokens`.
The pair file's HELDOUT pairs only check V after extraction (`pgrpo verify`, probe gate 1); their
problems may be eval problems. split.json lists them (`heldout_pairs`) and the overlap with eval
(`eval_heldout_pairs_overlap`), so a reader sees it. (The bundled pairs name all 42 bundled problems:
30 through training pairs, 12 through heldout pairs — the eval problems of a bundled run come from
those 12.)

Derived split (`--split-file ""`): the problems named by no pair ("free") are shuffled with a
generator seeded from `--seed`; the first n_eval go to eval, the rest of the pool trains, where
    n_eval = eval_problems                       if eval_problems >= 1 (a count),
             max(1, round(eval_problems · |pool|)) if 0 < eval_problems < 1 (a share of the pool),
             0                                   if eval_problems == 0,
capped at |free|. A cap is reported (`eval_shortfall`), never silent.

Split file (`--split-file PATH`, which `pgrpo sweep` writes once so every run of a sweep shares it):
a JSON object {"train": [ids], "eval": [ids], ...}. Every id must be a loaded problem; eval ∩ train
and eval ∩ pairs must be empty; a "pairs" list, if present, must equal the run's pairs. Anything else
is refused naming the file. `--eval-problems` is not used then.

Either way the train problems are walked in the order of a `--seed` shuffle of the pool (the order the
trainer used before splits existed), so a run with no eval problems trains exactly as it did.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from projected_grpo.config import TrainConfig
from projected_grpo.env.problem import Problem
from projected_grpo.env.problems import load_problems
from projected_grpo.errors import UserError
from projected_grpo.jsonl import json_objects
from projected_grpo.models import chat_text

SPLIT = "split.json"


@dataclass
class Split:
    """The three problem sets of one run (ids are strings, as Problem.id)."""

    train: list[str]                  # train problem ids, in the run's walk order
    eval: list[str]                   # held-out eval problem ids
    pairs: list[str]                  # problem ids named by the pair file (sorted)
    source: str                       # "seed N" or the split file's path
    extra: dict = field(default_factory=dict)  # reported facts: overlap, shortfall, seed

    @property
    def train_pairs_overlap(self) -> list[str]:
        return sorted(set(self.train) & set(self.pairs))

    def to_json(self) -> str:
        body = {"train": self.train, "eval": self.eval, "pairs": self.pairs, "source": self.source,
                "train_pairs_overlap": self.train_pairs_overlap, **self.extra}
        return json.dumps(body, indent=1) + "\n"

    def summary(self) -> str:
        line = (f"split ({self.source}): {len(self.train)} train, {len(self.eval)} eval, "
                f"{len(self.pairs)} pair problems; train ∩ pairs = {len(self.train_pairs_overlap)}")
        if self.extra.get("eval_shortfall"):
            line += (f"; WARNING: {self.extra['eval_requested']} eval problems asked for, only "
                     f"{len(self.eval)} problems are named by no pair")
        return line


# ---- the pool and the pairs' problems ----------------------------------------------------------
def load_pool(cfg: TrainConfig, tok) -> list[Problem]:
    """The run's problems: `--problems`, the first `--n-problems`, those whose prompt fits."""
    problems = load_problems(cfg.problems)
    if cfg.n_problems:
        problems = problems[: cfg.n_problems]
    kept = [p for p in problems if len(tok(chat_text(tok, p.messages(cfg.mode, cfg.hint)),
                                           add_special_tokens=False).input_ids) <= cfg.max_prompt_tokens]
    if not kept:
        raise UserError(f"no problem of {cfg.problems!r} fits --max-prompt-tokens {cfg.max_prompt_tokens}")
    return kept


def pair_problem_ids(spec: str, split: str | None = "train") -> list[str]:
    """Sorted problem ids named by the `problem_id` of the pairs of `split` (None: every split) in a
    pair file. Persona pairs name no problem."""
    from projected_grpo.directions.pairs import resolve

    path = resolve(spec)
    return sorted({str(rec["problem_id"]) for _, rec in json_objects(path.read_text(encoding="utf-8"), path)
                   if "problem_id" in rec and (split is None or rec.get("split") == split)})


def walk_order(pool: list[Problem], seed: int) -> list[Problem]:
    """The pool in a `seed` shuffle: the order in which the trainer walks its problems."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    return [pool[i] for i in order]


# ---- deriving or reading a split ---------------------------------------------------------------
def n_eval_requested(eval_problems: float, n_pool: int) -> int:
    """How many eval problems `--eval-problems` asks for out of a pool of n_pool."""
    if eval_problems >= 1:
        return int(eval_problems)
    if eval_problems <= 0:
        return 0
    return max(1, round(eval_problems * n_pool))


def derive(pool: list[Problem], pairs: list[str], eval_problems: float, seed: int) -> Split:
    """Eval = the first n_eval of a seeded shuffle of the problems named by no pair; train = the rest."""
    named = set(pairs)
    free = sorted(p.id for p in pool if p.id not in named)
    random.Random(f"eval-split:{seed}").shuffle(free)     # its own generator: the walk order is untouched
    want = n_eval_requested(eval_problems, len(pool))
    eval_ids = free[:want]
    split = _assemble(pool, eval_ids, {p.id for p in pool} - set(eval_ids), pairs, seed, f"seed {seed}")
    split.extra.update(seed=seed, eval_requested=want, eval_shortfall=max(0, want - len(eval_ids)))
    if not split.train:
        raise UserError(f"--eval-problems {eval_problems:g} leaves no train problem "
                        f"(all {len(pool)} loaded problems go to eval)")
    return split


def read(path: Path, pool: list[Problem], pairs: list[str], seed: int) -> Split:
    """A split file, checked against the run's pool and pairs; any fault is a UserError naming it."""
    try:
        body = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UserError(f"--split-file {path} does not exist") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"--split-file {path}: not valid JSON ({err})") from err
    if not isinstance(body, dict):
        raise UserError(f"--split-file {path}: expected a JSON object with lists train and eval")
    sets = {key: _id_list(body, key, path) for key in ("train", "eval")}
    known = {p.id for p in pool}
    unknown = sorted(set(sets["train"] + sets["eval"]) - known)
    if unknown:
        raise UserError(f"--split-file {path}: {len(unknown)} id(s) are not among the {len(known)} loaded "
                        f"problems (--problems, --n-problems, --max-prompt-tokens): {_few(unknown)}")
    both = sorted(set(sets["train"]) & set(sets["eval"]))
    if both:
        raise UserError(f"--split-file {path}: eval and train share {len(both)} problem(s): {_few(both)}")
    leaked = sorted(set(sets["eval"]) & set(pairs))
    if leaked:
        raise UserError(f"--split-file {path}: {len(leaked)} eval problem(s) are named by the training pairs "
                        f"(--pairs): {_few(leaked)}")
    if "pairs" in body and sorted(_id_list(body, "pairs", path)) != pairs:
        raise UserError(f"--split-file {path}: its `pairs` list differs from the problems named by "
                        "this run's --pairs file")
    if not sets["train"]:
        raise UserError(f"--split-file {path}: `train` is empty")
    split = _assemble(pool, sets["eval"], set(sets["train"]), pairs, seed, str(path))
    split.extra.update(seed=seed)                          # the seed of the train walk order
    return split


def for_run(cfg: TrainConfig, pool: list[Problem]) -> Split:
    """The run's split: from `--split-file`, else derived from `--seed` and `--eval-problems`."""
    pairs = pair_problem_ids(cfg.pairs)
    if cfg.split_file:
        split = read(Path(cfg.split_file), pool, pairs, cfg.seed)
    else:
        split = derive(pool, pairs, cfg.eval_problems, cfg.seed)
    heldout = pair_problem_ids(cfg.pairs, split="heldout")
    split.extra.update(heldout_pairs=heldout, eval_heldout_pairs_overlap=sorted(set(split.eval) & set(heldout)))
    return split


def write_for_run(out: Path, split: Split) -> None:
    """Write split.json into a run dir; a resumed run must find the same split there."""
    from projected_grpo.training import runio

    path = Path(out) / SPLIT
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        new = json.loads(split.to_json())
        if any(old.get(k) != new[k] for k in ("train", "eval", "pairs")):
            raise UserError(f"{path}: the run dir holds another split than this run derives "
                            "(problems, pairs or split file changed); move the run away")
    runio.write_atomic(path, split.to_json().encode())


# ---- helpers -----------------------------------------------------------------------------------
def _id_list(body: dict, key: str, path: Path) -> list[str]:
    """`body[key]` as a list of distinct problem ids (str); any other shape is a UserError naming the
    file and the key (the optional `pairs` included: `"pairs": 5` was a TypeError)."""
    ids = body.get(key)
    if not isinstance(ids, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in ids):
        raise UserError(f"--split-file {path}: `{key}` must be a list of problem ids")
    ids = [str(x) for x in ids]
    if len(set(ids)) != len(ids):
        raise UserError(f"--split-file {path}: `{key}` names a problem twice")
    return ids


def _assemble(pool: list[Problem], eval_ids: list[str], train_ids: set[str], pairs: list[str], seed: int,
              source: str) -> Split:
    train = [p.id for p in walk_order(pool, seed) if p.id in train_ids]
    return Split(train=train, eval=list(eval_ids), pairs=pairs, source=source)


def _few(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (" …" if len(ids) > 5 else "")

