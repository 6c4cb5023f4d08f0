"""Run-directory I/O: config.json, append-only JSONL logs, atomic checkpoints, resume bookkeeping.

Crash safety: a checkpoint is written atomically (temp file + rename) and holds the step it ends.
On resume, metrics/samples lines after that step are dropped (they belong to steps that will be
re-run from the restored state), so after a SIGKILL no step is lost and none is logged twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from projected_grpo.errors import UserError

CONFIG, METRICS, SAMPLES, CHECKPOINT = "config.json", "metrics.jsonl", "samples.jsonl", "checkpoint.pt"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append rows and fsync, so a line that is in the file is whole."""
    if not rows:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """All complete lines (a torn last line from a crash is ignored)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def train_rows(rows: list[dict]) -> list[dict]:
    """The training-step rows of a metrics log (rows written before `kind` existed count as training)."""
    return [r for r in rows if r.get("kind", "train") == "train"]


def eval_rows(rows: list[dict]) -> list[dict]:
    """The held-out evaluation rows of a metrics log (`kind` == "eval")."""
    return [r for r in rows if r.get("kind") == "eval"]


def truncate_after(path: Path, step: int) -> None:
    """Keep only the rows with row['step'] <= step (and drop a torn last line)."""
    if path.is_file():
        kept = [r for r in read_jsonl(path) if r.get("step", -1) <= step]
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept).encode())


def config_diff(old: dict, new: dict) -> list[str]:
    """Fields in which two run configs differ, ignoring `steps` (a run may be extended)."""
    return sorted(k for k in set(old) | set(new) if k != "steps" and old.get(k) != new.get(k))


def prepare_dir(out: Path, config_json: str, resume: bool) -> None:
    """Create the run dir, or check a resumed one holds the same run."""
    cfg_path = out / CONFIG
    if cfg_path.is_file():
        if not resume:
            raise UserError(f"{out} already holds a run ({CONFIG}); pass --resume to continue it "
                            "or choose another --out")
        diff = config_diff(json.loads(cfg_path.read_text()), json.loads(config_json))
        if diff:
            raise UserError(f"{out}: --resume with a different config ({', '.join(diff)} differ)")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(cfg_path, config_json.encode())


def save_checkpoint(out: Path, state: dict) -> None:
    tmp = out / (CHECKPOINT + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out / CHECKPOINT)


def load_checkpoint(out: Path) -> dict | None:
    path = out / CHECKPOINT
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None
