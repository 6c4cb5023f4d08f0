"""Experiment trackers (`--report-to none|wandb|tensorboard`, comma list allowed): the rows the trainer
writes to metrics.jsonl, mirrored to Weights & Biases and/or TensorBoard. Nothing is computed here.

Sent by rank 0 only, at x = the row's `step` (training steps completed; eval at 0 = before training):
  train/<key>   every numeric field of a training row (train/hack_rate, train/cos_in, ...)
  eval/<key>    every numeric field of an eval row with its `eval_` prefix dropped (eval/hack_rate, ...)
  config        the run config, once (wandb: the run's config; TensorBoard: a JSON text summary at step 0)
  samples       every `--report-samples-every` steps, a table of that step's graded completions:
                problem id, teacher row?, reward, label, passed, gt_correct, advantage, completion cut to
                COMPLETION_CHARS characters (wandb: a Table; TensorBoard: a markdown text summary)
Log dirs live in the run dir: DIR/tb/ and DIR/wandb/.

Resume. A tracker buffers: a run killed with SIGKILL can leave the tracker without the steps it was
sent (an offline wandb file held only its header after a kill at step 3 of 5). So a tracker's steps
count as held only when it was closed cleanly: its close writes ACK ({"step": s}: it holds every row
up to step s) in its log dir, and opening removes it. A resumed run then replays, from
metrics.jsonl (and samples.jsonl for the tables), every kept row past what each tracker holds:
  TensorBoard writes to the same DIR/tb/ with purge_step = 1 + the held step (0 when not closed
  cleanly), which hides every event at a later step, then gets the rows past it again;
  wandb cannot rewrite history, so it resumes the run in DIR/wandb/run_id (resume="allow") only when
  that run was closed cleanly and holds no step the resume re-runs; otherwise every kept row goes to
  a new run (its id replaces run_id), so the run named there holds every step once.
A tracker that cannot open (no API key, an unreachable server) is a UserError naming it; the trainer
opens trackers inside the set-up that is undone on error, so nothing is left to block the retry.
The libraries are optional (`pip install 'projected-grpo[trackers]'`); `check_installed` refuses a
missing one when the config is validated, before a run writes anything.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import secrets
from pathlib import Path

from projected_grpo.atomic import write_atomic
from projected_grpo.errors import UserError

CHOICES = ("none", "wandb", "tensorboard")
MODULES = {"wandb": "wandb", "tensorboard": "tensorboard"}  # what each tracker imports
PIP = "pip install 'projected-grpo[trackers]'  (or: pip install wandb tensorboard)"
COMPLETION_CHARS = 300
SAMPLE_COLUMNS = ("problem_id", "teacher", "reward", "label", "passed", "gt_correct", "advantage",
                  "completion")
WANDB_PROJECT = "projected_grpo"  # overridden by the WANDB_PROJECT environment variable
ACK = "acked.json"  # in a tracker's log dir, written by a clean close: {"step": every row up to it held}


def parse(report_to: str) -> list[str]:
    """`"wandb,tensorboard"` → ["wandb", "tensorboard"]; "none" or "" → []; unknown → UserError."""
    names = [n.strip() for n in report_to.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHOICES]
    if unknown:
        raise UserError(f"--report-to: unknown tracker {', '.join(unknown)}; choose from "
                        f"{', '.join(CHOICES)} (several comma-separated)")
    if "none" in names and len(names) > 1:
        raise UserError(f"--report-to {report_to}: 'none' cannot be combined with a tracker")
    return [n for n in dict.fromkeys(names) if n != "none"]


def check_installed(report_to: str) -> None:
    """UserError naming the flag and the pip line when a requested tracker's library is missing."""
    missing = [n for n in parse(report_to) if importlib.util.find_spec(MODULES[n]) is None]
    if missing:
        raise UserError(f"--report-to {report_to}: the {' and '.join(missing)} package is not installed; "
                        f"{PIP}, or use --report-to none")


def numeric(row: dict, drop_prefix: str = "") -> dict[str, float]:
    """The row's finite numbers (bools as 0/1), keys without `drop_prefix`; `step`/`kind` left out."""
    out = {}
    for key, value in row.items():
        if key in ("step", "kind") or isinstance(value, str) or value is None:
            continue
        if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
            out[key[len(drop_prefix):] if drop_prefix and key.startswith(drop_prefix) else key] = float(value)
    return out


def sample_table(samples: list[dict]) -> list[list]:
    """Rows of SAMPLE_COLUMNS from the trainer's samples (completions cut to COMPLETION_CHARS)."""
    return [[s.get("problem_id"), bool(s.get("teacher")), s.get("reward"), s.get("label"), s.get("passed"),
             s.get("gt_correct"), s.get("advantage"), str(s.get("completion", ""))[:COMPLETION_CHARS]]
            for s in samples]


class Trackers:
    """Fan-out to the open trackers; with none open every call does nothing (other ranks, `none`).
    Each backend's `held` is the last step whose rows it holds; it rises as rows are logged."""

    def __init__(self, backends: list | None = None, samples_every: int = 0):
        self.backends = backends or []
        self.samples_every = samples_every

    def train(self, record: dict, samples: list[dict]) -> None:
        """One training row (and, every samples_every steps, its samples table)."""
        for b in self.backends:
            self._train(b, record, samples)

    def eval(self, row: dict) -> None:
        """One held-out eval row, under eval/ with the `eval_` prefix dropped."""
        for b in self.backends:
            self._eval(b, row)

    def replay(self, rows: list[dict], samples: list[dict]) -> None:
        """Send each backend the rows of metrics.jsonl past the step it holds (see module doc);
        `samples`: samples.jsonl's rows, for the tables of the steps replayed."""
        by_step: dict[int, list[dict]] = {}
        for s in samples:
            by_step.setdefault(int(s["step"]), []).append(s)
        for b in self.backends:
            for row in [r for r in rows if int(r["step"]) > b.held]:
                if row.get("kind", "train") == "eval":
                    self._eval(b, row)
                else:
                    self._train(b, row, by_step.get(int(row["step"]), []))

    def _train(self, b, record: dict, samples: list[dict]) -> None:
        step = int(record["step"])
        b.scalars("train/", numeric(record), step)
        if self.samples_every and step % self.samples_every == 0 and samples:
            b.samples(sample_table(samples), step)
        b.held = max(b.held, step)

    def _eval(self, b, row: dict) -> None:
        step = int(row["step"])
        b.scalars("eval/", numeric(row, drop_prefix="eval_"), step)
        b.held = max(b.held, step)

    def close(self, clean: bool = True) -> None:
        """Close every backend; `clean` (its rows were all sent): acknowledge what each holds."""
        for b in self.backends:
            b.close()
            if clean:
                write_atomic(b.folder / ACK, json.dumps({"step": b.held}).encode())
        self.backends = []


def open_trackers(report_to: str, out: Path, config: dict, samples_every: int,
                  kept: list[dict] | None = None, samples: list[dict] | None = None) -> Trackers:
    """Open every tracker of `report_to` for the run dir `out` and replay into each the rows of
    `kept` (metrics.jsonl's rows that a resume keeps; `samples`: samples.jsonl's) it does not hold
    (see module doc). A tracker that cannot open is a UserError naming it."""
    names = parse(report_to)
    if not names:
        return Trackers()
    check_installed(report_to)
    kept = kept or []
    kept_last = max((int(r["step"]) for r in kept), default=-1)
    opened: list = []
    name = names[0]
    try:
        for name in names:
            opened.append(BACKENDS[name](Path(out), config, kept_last))
    except Exception as err:
        for b in opened:
            b.close()
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"--report-to {report_to}: the {name} tracker could not open for {out}: "
                        f"{type(err).__name__}: {why}") from err
    for b in opened:                   # opened: what it held is now being added to; ACK again on close
        (b.folder / ACK).unlink(missing_ok=True)
    trackers = Trackers(opened, samples_every)
    trackers.replay(kept, samples or [])
    return trackers


def acked_step(folder: Path) -> int | None:
    """The step a tracker's last clean close acknowledged (ACK in its log dir), None if none."""
    path = folder / ACK
    if not path.is_file():
        return None
    try:
        return int(json.loads(path.read_text())["step"])
    except (ValueError, KeyError, TypeError):
        return None                     # unreadable: treated as not closed cleanly (full replay)


class TensorBoard:
    """torch.utils.tensorboard's SummaryWriter on DIR/tb/."""

    def __init__(self, out: Path, config: dict, kept_last: int):
        from torch.utils.tensorboard import SummaryWriter  # optional dependency, imported when used

        self.folder = Path(out) / "tb"
        acked = acked_step(self.folder)
        self.held = -1 if acked is None else min(acked, kept_last)
        # purge_step: events past the held step (sent before a crash, maybe lost, maybe re-run) are hidden
        self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=self.held + 1, flush_secs=30)
        if self.held < 0:
            self.writer.add_text("config", "```json\n" + json.dumps(config, indent=1, sort_keys=True)
                                 + "\n```", global_step=0)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(prefix + key, value, global_step=step)

    def samples(self, rows: list[list], step: int) -> None:
        def cell(v) -> str:
            return str(v).replace("|", "\\|").replace("\n", "⏎")

        head = "| " + " | ".join(SAMPLE_COLUMNS) + " |\n|" + "---|" * len(SAMPLE_COLUMNS) + "\n"
        self.writer.add_text("samples", head + "\n".join("| " + " | ".join(map(cell, r)) + " |" for r in rows),
                             global_step=step)

    def close(self) -> None:
        self.writer.close()


class WandB:
    """A wandb run in DIR/wandb/ (mode from WANDB_MODE as wandb reads it: online, offline, disabled)."""

    def __init__(self, out: Path, config: dict, kept_last: int):
        import wandb  # optional dependency, imported when used

        self.wandb = wandb
        self.folder = folder = Path(out) / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "run_id"
        old = id_file.read_text().strip() if id_file.is_file() else None
        acked = acked_step(folder)
        if old and acked is not None and acked <= kept_last:
            run_id, self.held = old, acked          # closed cleanly, nothing of it re-run: continue it
        else:
            run_id, self.held = secrets.token_hex(4), -1
            if old:
                print(f"wandb: run {old} was not closed cleanly or holds steps this resume re-runs; "
                      f"every step goes to a new run {run_id}")
            write_atomic(id_file, run_id.encode())
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT), id=run_id,
                              resume="allow", dir=str(out), name=Path(out).resolve().name, config=config)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        self.run.log({prefix + k: v for k, v in values.items()}, step=step)

    def samples(self, rows: list[list], step: int) -> None:
        self.run.log({"samples": self.wandb.Table(columns=list(SAMPLE_COLUMNS), data=rows)}, step=step)

    def close(self) -> None:
        self.run.finish()
        # finish() can return before wandb's service process has written the run's last records (its
        # .wandb file read right after finish missed the last step under load); teardown waits for it
        self.wandb.teardown()


BACKENDS = {"tensorboard": TensorBoard, "wandb": WandB}  # --report-to name -> (out, config, kept_last)
