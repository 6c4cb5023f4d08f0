"""Run-directory I/O: config.json, append-only JSONL logs, atomic checkpoints, resume bookkeeping.

Crash safety: a checkpoint is written atomically (temp file + rename) and holds the step it ends.
On resume, metrics/samples lines after that step are dropped (they belong to steps that will be
re-run from the restored state; with no checkpoint yet, every line goes and the run restarts from
step 0), so after a SIGKILL no step is lost and none is logged twice. This needs every line of
step s — samples, the training row, the eval row (`step` = steps completed) — written before
checkpoint s, which is the trainer's order. A crash can tear only the last line of a log; a bad line
before it, a step logged twice or training rows that do not match the checkpoint are corruption: the
resume refuses, naming the file, before it rewrites anything (`kept_on_resume`).
One process writes a run dir at a time: see runlock.py.

`config.json` marks a directory as holding a run; the trainer writes it only once its set-up
(model, problems, directions, teacher pool) has succeeded, so input that stops a run before its
first step leaves nothing that blocks the corrected retry.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from projected_grpo.atomic import write_atomic, write_atomic_with
from projected_grpo.errors import UserError

CONFIG, METRICS, SAMPLES, CHECKPOINT = "config.json", "metrics.jsonl", "samples.jsonl", "checkpoint.pt"
DELTA_S = "delta_s.safetensors"  # the trained δS; the trainer writes it last, so it closes a run


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append rows and fsync, so a line that is in the file is whole."""
    if not rows:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """All complete lines. A torn last line (a crash in the middle of an append) is dropped; a bad
    line before the last is corruption, not a crash, and raises a UserError naming the file and
    line (reading on past it, or stopping at it, would drop rows silently)."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break                                               # torn by a crash: dropped
            raise UserError(f"{path}, line {number}: not a JSON row ({err.msg}); the file is corrupt "
                            "(only its last line can be torn by a crash)") from err
        if not isinstance(row, dict):
            raise UserError(f"{path}, line {number}: a JSON row must be an object, not {type(row).__name__}")
        rows.append(row)
    return rows


def repeated_step(rows: list[dict]) -> tuple[str, int] | None:
    """(kind, step) of the first training or eval row whose step an earlier row of the same kind
    already holds, or None. One writer logs each step once; a repeat means two writers (or a copy
    spliced in), and any mean over the rows would count those steps twice."""
    seen: set[tuple[str, int]] = set()
    for row in rows:
        key = (str(row.get("kind", "train")), int(row.get("step", -1)))
        if key in seen:
            return key
        seen.add(key)
    return None


def check_steps_once(path: Path, rows: list[dict]) -> None:
    """UserError naming the file and the repeated step when a step is logged twice (repeated_step)."""
    repeat = repeated_step(rows)
    if repeat is not None:
        kind, step = repeat
        raise UserError(f"{path}: {kind} step {step} is logged more than once (two writers on one run?); "
                        "its numbers cannot be trusted: move the run away and run it again")


def train_rows(rows: list[dict]) -> list[dict]:
    """The training-step rows of a metrics log (rows written before `kind` existed count as training)."""
    return [r for r in rows if r.get("kind", "train") == "train"]


def eval_rows(rows: list[dict]) -> list[dict]:
    """The held-out evaluation rows of a metrics log (`kind` == "eval")."""
    return [r for r in rows if r.get("kind") == "eval"]


def run_state(run_dir: Path, steps: int | None = None) -> str:
    """The one rule for "run finished" (the sweep skips or resumes by it, the report counts by it):
    missing    no config.json;
    finished   the training rows reach `steps` (None: the config's) and the run is closed: δS is
               written (DELTA_S, which the trainer writes last, after the last step's rows, eval row
               and checkpoint). A copy of a run's logs without its artifacts (neither DELTA_S nor
               CHECKPOINT, as published under docs/results) is judged by its rows alone (so is a
               1-step run killed between its row and its first checkpoint: the one blind spot);
    unfinished anything else (resuming it continues from its checkpoint)."""
    config = read_config(run_dir)
    if config is None:
        return "missing"
    steps = int(config.get("steps", 0)) if steps is None else steps
    done = max((r.get("step", 0) for r in train_rows(read_jsonl(run_dir / METRICS))), default=0)
    closed = (run_dir / DELTA_S).is_file() or not (run_dir / CHECKPOINT).is_file()
    return "finished" if done >= steps and closed else "unfinished"


def kept_on_resume(out: Path, step: int | None, names: tuple[str, ...]) -> dict[str, list[dict]]:
    """The rows of each log in `names` that a resume from checkpoint `step` keeps (those with
    row['step'] <= step; None = no checkpoint: none), after checking that the run's state is
    consistent: every file reads (a corrupt line stops here, naming it), metrics.jsonl logs each
    step once and holds the training rows 1..step the checkpoint implies. Writes nothing, so a run
    that fails a check is left as it was."""
    rows = {name: read_jsonl(out / name) for name in names}
    if METRICS in rows:
        check_steps_once(out / METRICS, rows[METRICS])
    kept = {name: [r for r in got if step is not None and r.get("step", -1) <= step]
            for name, got in rows.items()}
    if METRICS in kept and step is not None:
        trained = [r.get("step") for r in train_rows(kept[METRICS])]
        if trained != list(range(1, step + 1)):
            raise UserError(f"{out / METRICS}: holds training steps {_steps_text(trained)} up to the "
                            f"checkpoint's step {step}, not 1..{step}: the log and {CHECKPOINT} disagree; "
                            "start the run afresh")
    return kept


def _steps_text(steps: list) -> str:
    return "none" if not steps else ", ".join(map(str, steps[:12])) + (", ..." if len(steps) > 12 else "")


def rewrite_logs(out: Path, kept: dict[str, list[dict]]) -> None:
    """Replace each log with its kept rows (kept_on_resume); a missing log stays missing."""
    for name, rows in kept.items():
        if (out / name).is_file():
            write_atomic(out / name, "".join(json.dumps(r) + "\n" for r in rows).encode())


def config_diff(old: dict, new: dict) -> list[str]:
    """Fields in which two run configs differ. `steps` counts: it fixes the cosine LR schedule, so a
    run with other steps is another run (extending one would change the LR of steps already taken
    in neither run's schedule). A field that a run's config predates (absent from `old`) agrees
    when `new` holds that field's default, which by rule keeps the behaviour from before the field
    existed — so a study's runs resume across a version that added config fields. `fleet_runs` counts
    as alone (1) or in a fleet (> 1): with row noise a run's numbers do not depend on its fleet's size
    beyond rounding (training/lockstep.py), so a fleet of 2 may resume in a fleet of 5, not alone."""
    from dataclasses import MISSING, fields

    from projected_grpo.config import TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}

    def value(cfg: dict, k: str):
        v = cfg.get(k, defaults.get(k))
        return min(int(v), 2) if k == "fleet_runs" and v is not None else v

    return sorted(k for k in set(old) | set(new) if value(old, k) != value(new, k))


def read_config(out: Path) -> dict | None:
    """The run config stored in `out`, or None when `out` holds no run."""
    path = out / CONFIG
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg}); it is not a run config") from err


def check_dir(out: Path, config_json: str, resume: bool) -> None:
    """Refuse to start a run in a dir that holds another one, or to resume with another config.
    Writes nothing."""
    old = read_config(out)
    if old is None:
        return
    if not resume:
        raise UserError(f"{out} already holds a run ({CONFIG}); pass --resume to continue it "
                        "or choose another --out")
    diff = config_diff(old, json.loads(config_json))
    if diff:
        why = (f"; steps cannot change on resume (the run has {old.get('steps')}): they fix the cosine "
               "LR schedule of the steps already taken, so start a new run instead" if "steps" in diff else "")
        raise UserError(f"{out}: --resume with a different config ({', '.join(diff)} differ){why}")


@contextlib.contextmanager
def removed_on_error(out: Path, owner: bool = True) -> Iterator[None]:
    """Create `out` if missing; if the body raises, remove every entry it added there (and `out`
    itself when it was made here), so a failed set-up leaves nothing behind. `owner`=False (ranks
    other than 0) creates and removes nothing."""
    if not owner:
        yield
        return
    existed = out.is_dir()
    before = set(out.iterdir()) if existed else set()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for path in sorted(set(out.iterdir()) - before):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        if not existed:
            out.rmdir()
        raise


def write_config(out: Path, config_json: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / CONFIG, config_json.encode())


def prepare_dir(out: Path, config_json: str, resume: bool) -> None:
    """check_dir, then create the run dir and write its config."""
    check_dir(out, config_json, resume)
    write_config(out, config_json)


def save_checkpoint(out: Path, state: dict) -> None:
    import torch  # here, not at the top: runio is imported by the torch-free env commands

    write_atomic_with(out / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def load_checkpoint(out: Path) -> dict | None:
    """The run's checkpoint, or None when it has none yet. One that cannot be read (truncated or
    damaged: the trainer writes it atomically, so a full disk, a copy cut short or a bad file put
    there) is a UserError that says how to recover; the file is left as it is (the user decides)."""
    import pickle

    import torch

    path = out / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except PermissionError:
        raise
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError) as err:
        first = (str(err).splitlines() or [""])[0].split(". ")[0]       # torch's own advice runs on
        raise UserError(_unreadable_checkpoint(path, f"{type(err).__name__}: {first}")) from err
    if not isinstance(state, dict) or "step" not in state:
        raise UserError(_unreadable_checkpoint(path, "not a checkpoint of this trainer"))
    return state


def _unreadable_checkpoint(path: Path, why: str) -> str:
    """The one-line message for a checkpoint that cannot be loaded: what, and the two ways out."""
    return (f"{path}: the checkpoint cannot be read ({why}); it is truncated or damaged. To recover, "
            f"move it aside (mv {path} {path}.bad) and --resume again, which restarts the run from step 0 "
            "(its logged steps are dropped and re-run); or put an intact copy back; or start afresh in "
            "another --out")
