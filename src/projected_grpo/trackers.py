"""Experiment trackers (`--report-to none|wandb|tensorboard`, comma list allowed): the rows the trainer
writes to metrics.jsonl, mirrored to Weights & Biases and/or TensorBoard. Nothing is computed here.

Sent by rank 0 only, at x = the row's `step` (training steps completed; eval at 0 = before training):
  train/<key>   every numeric field of a training row (train/hack_rate, train/cos_in, ...)
  eval/<key>    every numeric field of an eval row with its `eval_` prefix dropped (eval/hack_rate, ...)
  config        the run config, once (wandb: the run's config; TensorBoard: a JSON text summary at step 0)
  samples       every `--report-samples-every` steps, a table of that step's graded completions:
                problem id, teacher row?, reward, label, passed, gt_correct, advantage, completion cut to
                COMPLETION_CHARS characters (wandb: a Table; TensorBoard: a markdown text summary)
Log dirs live in the run dir: DIR/tb/ and DIR/wandb/. A resumed run continues its tracker run:
  TensorBoard writes to the same DIR/tb/ with purge_step = 1 + the last step still in metrics.jsonl
  after the resume dropped the re-run steps' lines, so TensorBoard hides the events of the steps that
  are re-run (none is shown twice);
  wandb resumes the run whose id is stored in DIR/wandb/run_id (resume="allow"). wandb cannot rewrite
  history: steps logged before a crash keep their first values, and re-logging them is ignored.
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

from projected_grpo import runio
from projected_grpo.errors import UserError

CHOICES = ("none", "wandb", "tensorboard")
MODULES = {"wandb": "wandb", "tensorboard": "tensorboard"}  # what each tracker imports
PIP = "pip install 'projected-grpo[trackers]'  (or: pip install wandb tensorboard)"
COMPLETION_CHARS = 300
SAMPLE_COLUMNS = ("problem_id", "teacher", "reward", "label", "passed", "gt_correct", "advantage",
                  "completion")
WANDB_PROJECT = "projected_grpo"  # overridden by the WANDB_PROJECT environment variable


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
    """Fan-out to the open trackers; with none open every call does nothing (other ranks, `none`)."""

    def __init__(self, backends: list | None = None, samples_every: int = 0):
        self.backends = backends or []
        self.samples_every = samples_every

    def train(self, record: dict, samples: list[dict]) -> None:
        """One training row (and, every samples_every steps, its samples table)."""
        step = int(record["step"])
        for b in self.backends:
            b.scalars("train/", numeric(record), step)
            if self.samples_every and step % self.samples_every == 0 and samples:
                b.samples(sample_table(samples), step)

    def eval(self, row: dict) -> None:
        """One held-out eval row, under eval/ with the `eval_` prefix dropped."""
        for b in self.backends:
            b.scalars("eval/", numeric(row, drop_prefix="eval_"), int(row["step"]))

    def close(self) -> None:
        for b in self.backends:
            b.close()
        self.backends = []


def open_trackers(report_to: str, out: Path, config: dict, samples_every: int) -> Trackers:
    """Open every tracker of `report_to` for the run dir `out` (fresh or resumed: see module doc)."""
    names = parse(report_to)
    if not names:
        return Trackers()
    check_installed(report_to)
    rows = runio.read_jsonl(Path(out) / runio.METRICS)          # after a resume's truncation
    first_step = 1 + max((int(r.get("step", 0)) for r in rows), default=-1)  # 0 = nothing kept
    opened = []
    try:
        for name in names:
            opened.append(TensorBoard(out, config, first_step) if name == "tensorboard"
                          else WandB(out, config))
    except BaseException:
        for b in opened:
            b.close()
        raise
    return Trackers(opened, samples_every)


class TensorBoard:
    """torch.utils.tensorboard's SummaryWriter on DIR/tb/."""

    def __init__(self, out: Path, config: dict, first_step: int):
        from torch.utils.tensorboard import SummaryWriter  # optional dependency, imported when used

        # purge_step: events at steps >= first_step (logged before a crash, re-run now) are hidden
        self.writer = SummaryWriter(log_dir=str(Path(out) / "tb"), purge_step=first_step, flush_secs=30)
        if first_step == 0:
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

    def __init__(self, out: Path, config: dict):
        import wandb  # optional dependency, imported when used

        self.wandb = wandb
        folder = Path(out) / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        if not id_file.is_file():
            runio.write_atomic(id_file, run_id.encode())
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
