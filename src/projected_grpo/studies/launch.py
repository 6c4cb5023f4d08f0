"""A sweep's runs through a cluster launcher (launchers.py: slurm, ray): the same resume rules and
bookkeeping as the local queue (sweep_pool.py), only the placing differs.

Runs: finished ones are skipped, cut-off ones resume from their checkpoint, one whose run dir a live
process writes is reported busy, one that failed `max_attempts` times (over invocations) is skipped
(sweep_pool.triage). The rest are submitted at once (one Slurm array, or one Ray task each); their
job ids go into DIR/sweep.json under "jobs" ({name: [job id of every submission]}) and into each run's
status file DIR/logs/{name}.json ({"state", "failures", "exit_code", "launcher", "job_id", "started",
"ended", "log"}). A run whose worker exits non-zero, or whose job dies, is reported with its log's
tail and counted as a failure; it is retried by the next invocation. Ctrl-C or SIGTERM cancels every
job still going (state "interrupted", not a failure); the same command resumes them.
V extraction, when a V file is missing, is one job of the same launcher, waited for before the runs.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from projected_grpo.errors import UserError
from projected_grpo.studies.launchers import LAUNCHERS, Ended, Launcher, LaunchOptions, Work
from projected_grpo.studies.sweep_pool import (BUSY, LOGS, Stopped, _raise_stopped, log_tail, read_status,
                                               signals_held, triage, write_status)
from projected_grpo.training import runio

POLL_S = 0.5                          # how often the jobs are polled (submitit rate-limits sacct itself)


def make_launcher(name: str, opts: LaunchOptions, out: Path) -> Launcher:
    cls = LAUNCHERS.get(name)
    if cls is None:
        raise UserError(f"--launcher {name}: not a cluster launcher; choose from "
                        f"{', '.join(k for k, v in LAUNCHERS.items() if v)}")
    return cls(opts, out)


def record_jobs(out: Path, launcher: str, ids: dict[str, str]) -> None:
    """Add this submission's job ids to DIR/sweep.json's "jobs" (earlier submissions' kept)."""
    path = out / "sweep.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    jobs = record.setdefault("jobs", {})
    for name, job_id in ids.items():
        jobs.setdefault(name, []).append(job_id)
    record["launcher"] = launcher
    runio.write_atomic(path, (json.dumps(record, indent=2) + "\n").encode())


def extract(launcher: Launcher, cfg: Any, path: Path, out: Path) -> None:
    """Extract one V file as one job of the launcher, and wait for it."""
    logs = out / LOGS
    logs.mkdir(parents=True, exist_ok=True)
    name = f"extract_{path.stem}"
    spec, log = logs / f"{name}.run.json", logs / f"{name}.log"
    runio.write_atomic(spec, json.dumps({"config": asdict(cfg), "v_hack": str(path)}).encode())
    [job_id] = submit(launcher, [Work(name, "extract", str(spec), str(log))])
    record_jobs(out, launcher.name, {name: job_id})
    print(f"[extract] {path.name} (m={cfg.vhack_m}) as {launcher.name} job {job_id}, log {log}", flush=True)
    ended = _wait_one(launcher)
    if ended.code != 0 or not path.is_file():
        raise UserError(f"extracting {path} failed ({_why(ended)}); log {log}:\n{log_tail(log)}")


def _wait_one(launcher: Launcher) -> Ended:
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        while not (ended := launcher.poll()):
            time.sleep(POLL_S)
    except (KeyboardInterrupt, Stopped) as stop:
        print(f"\nsweep stopped ({type(stop).__name__}): cancelling the extraction job", flush=True)
        launcher.cancel()
        raise SystemExit(130 if isinstance(stop, KeyboardInterrupt) else 143) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    return ended[0]


def submit(launcher: Launcher, works: list[Work]) -> list[str]:
    """launcher.submit, its failures (no Slurm controller, no Ray at --ray-address) as one line."""
    try:
        return launcher.submit(works)
    except Exception as err:                 # submitit's and Ray's submission errors share no type
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        where = f" at --ray-address {launcher.opts.ray_address!r}" if launcher.name == "ray" else ""
        raise UserError(f"--launcher {launcher.name}: submitting {len(works)} job(s){where} failed: "
                        f"{type(err).__name__}: {first}") from err


def _why(ended: Ended) -> str:
    return ended.note if ended.code is None else f"exit {ended.code}"


def launch_runs(specs: list, out: Path, launcher: Launcher, max_attempts: int,
                check_run: Callable[[Any, Path], str]) -> dict[str, str]:
    """Submit every run that is not finished, busy or given up; wait for them all; -> {name: skipped |
    started | resumed | failed | gave up | busy}."""
    logs = out / LOGS
    logs.mkdir(parents=True, exist_ok=True)
    result, todo = triage(specs, logs, max_attempts, check_run)
    print(f"{launcher.name}: {len(todo)} runs to submit ({len(specs) - len(todo)} skipped); logs in {logs}",
          flush=True)
    if not todo:
        return result
    failures, started, works = {}, time.time(), []
    for spec in todo:
        run_json, log = logs / f"{spec.name}.run.json", logs / f"{spec.name}.log"
        runio.write_atomic(run_json, json.dumps({"config": asdict(spec.cfg), "run_dir": str(spec.run_dir)},
                                                indent=1).encode())
        failures[spec.name] = read_status(logs / f"{spec.name}.json").get("failures", 0)
        with open(log, "a") as f:
            f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {failures[spec.name] + 1}, "
                    f"{launcher.name}\n")
        works.append(Work(spec.name, "run", str(run_json), str(log)))
    pending: set[str] = set()
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        with signals_held():
            ids = dict(zip([w.name for w in works], submit(launcher, works), strict=True))
            record_jobs(out, launcher.name, ids)
            for name, job_id in ids.items():
                _status(logs, name, "submitted", failures[name], None, launcher.name, job_id, started, None)
        for name, job_id in ids.items():
            print(f"[submit] {name} as {launcher.name} job {job_id} ({result[name]}, attempt "
                  f"{failures[name] + 1} of {max_attempts})", flush=True)
        pending.update(ids)
        while pending:
            for ended in launcher.poll():
                pending.discard(ended.name)
                _finish(ended, logs, result, failures, launcher.name, ids, started, max_attempts)
            time.sleep(POLL_S)
    except (KeyboardInterrupt, Stopped) as stop:
        print(f"\nsweep stopped ({type(stop).__name__}): cancelling {len(pending)} {launcher.name} job(s): "
              f"{', '.join(sorted(pending)) or 'none'}; the same command resumes them", flush=True)
        launcher.cancel()
        for name in pending:
            _status(logs, name, "interrupted", failures[name], None, launcher.name, ids[name], started,
                    time.time())
        raise SystemExit(130 if isinstance(stop, KeyboardInterrupt) else 143) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    return result


def _status(logs: Path, name: str, state: str, failures: int, code: int | None, launcher: str, job_id: str,
            started: float, ended: float | None) -> None:
    write_status(logs / f"{name}.json", state=state, failures=failures, exit_code=code, launcher=launcher,
                 job_id=job_id, started=started, ended=ended, log=str(logs / f"{name}.log"))


def _finish(ended: Ended, logs: Path, result: dict, failures: dict, launcher: str, ids: dict, started: float,
            max_attempts: int) -> None:
    """Record and report one ended job (as sweep_pool's queue reports a child)."""
    name, log = ended.name, logs / f"{ended.name}.log"
    state = "finished" if ended.code == 0 else "busy" if ended.code == BUSY else "failed"
    failures[name] += state == "failed"
    _status(logs, name, state, failures[name], ended.code, launcher, ids[name], started, time.time())
    elapsed = time.time() - started
    if state == "busy":
        result[name] = "busy"
        print(f"[busy]   {name}: another process took its run dir first; not run, not counted as a failure "
              f"(log {log})", flush=True)
    elif state == "finished":
        print(f"[done]   {name} ({launcher} job {ids[name]}): {result[name]}, {elapsed:.0f}s", flush=True)
    else:
        result[name] = "failed"
        print(f"[FAILED] {name} ({launcher} job {ids[name]}): {_why(ended)} after {elapsed:.0f}s (failure "
              f"{failures[name]} of at most {max_attempts}); log {log}, last lines:\n{log_tail(log)}", flush=True)
