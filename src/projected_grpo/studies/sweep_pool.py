"""The `--gpus N` queue of `pgrpo sweep`: one child process per run, pinned to one GPU.

Each run is `python -m projected_grpo.studies.sweep_worker run DIR/logs/{name}.run.json` (its planned config),
started in its own session with CUDA_VISIBLE_DEVICES=<gpu>, stdout and stderr appended to
DIR/logs/{name}.log; at most k children per GPU at once, a new run going to the GPU with fewest.
This process holds no GPU memory: it never loads a model.

One writer per run: a run dir whose lock (runlock.py) a live process holds — a worker left running
by a sweep killed with SIGKILL — is reported busy with that pid and not started; a status file saying
"running" is only a record, never the test of a live writer.
Bookkeeping: DIR/logs/{name}.json, rewritten at every start and end of the run's child:
    {"state": running | finished | failed | busy | interrupted, "failures": failed attempts so far,
     "exit_code", "gpu", "pid", "started", "ended" (unix times), "log"}.
A child that exits non-zero is reported (exit code, log tail, log path), counted as a failure and not
retried in this invocation; the others go on. A later invocation retries it until it has failed
`max_attempts` times in all, then skips it and says how to retry (delete its status file).
Ctrl-C or SIGTERM: every child's process group (the worker and its graders) gets SIGTERM, then
SIGKILL after STOP_GRACE_S; the runs stay resumable (state "interrupted" is not a failure).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from dataclasses import asdict, dataclass
from pathlib import Path

from projected_grpo.training import runio, runlock
from projected_grpo.errors import UserError

STOP_GRACE_S = 10.0                   # SIGTERM -> SIGKILL delay when the sweep is stopped
POLL_S = 0.2                          # how often the queue looks for finished children
TAIL_LINES = 15                       # log lines shown for a failed run


class Stopped(Exception):
    """SIGTERM arrived (Ctrl-C arrives as KeyboardInterrupt)."""


@dataclass
class Child:
    """One running run."""

    name: str
    gpu: str
    proc: subprocess.Popen
    started: float
    failures: int                     # failed attempts before this one


def gpu_ids(n: int) -> list[str]:
    """The N GPU ids children are pinned to: the first N of this process's CUDA_VISIBLE_DEVICES when
    it is set, else 0..N-1."""
    visible = [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    if not visible:
        return [str(i) for i in range(n)]
    if len(visible) < n:
        raise UserError(f"--gpus {n}: CUDA_VISIBLE_DEVICES={','.join(visible)} holds only {len(visible)}")
    return visible[:n]


def log_tail(path: Path, n: int = TAIL_LINES) -> str:
    """The last n lines of a log (tqdm's carriage-return updates reduced to their last state), indented."""
    if not path.is_file():
        return "    (no log)"
    lines = [line.rsplit("\r", 1)[-1] for line in path.read_text(errors="replace").splitlines()]
    return "\n".join("    " + line for line in [x for x in lines if x.strip()][-n:])


def read_status(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def write_status(path: Path, **record) -> None:
    runio.write_atomic(path, (json.dumps(record, indent=1) + "\n").encode())


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Defer SIGINT/SIGTERM while a child is started and recorded, so a stop never misses it: a
    signal that arrives inside is raised again on leaving. Deferred by handler, not by a signal mask:
    a mask is per thread (torch's threads would still take the signal, and the stop would land
    between opening a run's log and starting its child) and a child inherits it (its SIGTERM would
    stay blocked and every stop would wait for the SIGKILL)."""
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


LOGS = "logs"   # DIR/logs/{name}.log (+ {name}.json status, {name}.run.json spec)
BUSY = 3        # a worker's exit status: the run dir's lock is held by another live process (runlock.py)


def spec_state(spec, check: Callable[[Any, Path], str]) -> str:
    """check_run of a run, or of a fleet: finished when all its runs are, missing when none started."""
    states = [check(m.cfg, m.run_dir) for m in spec.members]
    if all(st == "finished" for st in states):
        return "finished"
    return "missing" if all(st == "missing" for st in states) else "unfinished"


def triage(specs: list, logs: Path, max_attempts: int,
           check_run: Callable[[Any, Path], str]) -> tuple[dict[str, str], list]:
    """Which runs start a child (every launcher alike): -> ({name: skipped | busy | gave up | resumed |
    started}, the specs to run). Finished runs, runs a live process writes and runs past max_attempts
    are reported and left out."""
    result: dict[str, str] = {}
    queue = []
    for spec in specs:
        state = spec_state(spec, check_run)                  # refuses a dir under another config
        status = read_status(logs / f"{spec.name}.json")
        if state == "finished":
            result[spec.name] = "skipped"
            print(f"[skip]   {spec.name} already finished")
        elif (pid := next(filter(None, (runlock.holder(m.run_dir) for m in spec.members)),
                          None)) is not None:                 # a live writer, not a status file's word
            result[spec.name] = "busy"
            print(f"[busy]   {spec.name}: {spec.run_dir} is being written by pid {pid} (a worker of a sweep "
                  "killed with SIGKILL?); not started: wait for it or stop it, then run the same command again")
        elif status.get("failures", 0) >= max_attempts:
            result[spec.name] = "gave up"
            print(f"[skip]   {spec.name} failed {status['failures']} times (--max-attempts {max_attempts}); "
                  f"see {logs / spec.name}.log; to retry, delete {logs / spec.name}.json or raise --max-attempts")
        else:
            result[spec.name] = "resumed" if state == "unfinished" else "started"
            queue.append(spec)
    return result, queue


def run_queue(specs: list, out: Path, gpus: list[str], per_gpu: int, max_attempts: int,
              check_run: Callable[[Any, Path], str]) -> dict[str, str]:
    """Run every spec (sweep.RunSpec) as a child; -> {name: skipped | started | resumed | failed |
    gave up}. Finished runs and runs past max_attempts start no child."""
    logs = out / LOGS
    logs.mkdir(parents=True, exist_ok=True)
    result, queue = triage(specs, logs, max_attempts, check_run)
    print(f"queue: {len(queue)} runs on GPU {','.join(gpus)}, {per_gpu} per GPU "
          f"({len(specs) - len(queue)} skipped); logs in {logs}")
    running: list[Child] = []
    counts = {"done": 0, "failed": 0}

    def tally() -> str:
        return (f"[done {counts['done']}, failed {counts['failed']}, running {len(running)}, "
                f"queued {len(queue)}]")

    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        while queue or running:
            while queue and (gpu := _free_gpu(running, gpus, per_gpu)) is not None:
                spec = queue.pop(0)
                with signals_held():
                    running.append(_start(spec, gpu, logs, child_threads(len(gpus) * per_gpu)))
                print(f"[start]  {spec.name} on GPU {gpu} ({result[spec.name]}, attempt "
                      f"{running[-1].failures + 1} of {max_attempts}) {tally()}", flush=True)
            for child in [c for c in running if c.proc.poll() is not None]:
                running.remove(child)
                outcome = _finish(child, logs)
                elapsed = time.time() - child.started
                if outcome == "busy":
                    result[child.name] = "busy"
                    print(f"[busy]   {child.name}: another process took its run dir first; not run, not "
                          f"counted as a failure (log {logs / child.name}.log) {tally()}", flush=True)
                    continue
                ok = outcome == "finished"
                counts["done" if ok else "failed"] += 1
                if not ok:
                    result[child.name] = "failed"
                if ok:
                    print(f"[done]   {child.name} on GPU {child.gpu}: {result[child.name]}, {elapsed:.0f}s "
                          f"{tally()}", flush=True)
                else:
                    print(f"[FAILED] {child.name} on GPU {child.gpu}: exit {child.proc.returncode} after "
                          f"{elapsed:.0f}s (failure {child.failures + 1} of at most {max_attempts}); "
                          f"log {logs / child.name}.log, last lines:\n{log_tail(logs / f'{child.name}.log')}\n"
                          f"         {tally()}", flush=True)
            time.sleep(POLL_S)
    except (KeyboardInterrupt, Stopped) as stop:
        print(f"\nsweep stopped ({type(stop).__name__}): stopping {len(running)} running run(s): "
              f"{', '.join(c.name for c in running) or 'none'}; the same command resumes them", flush=True)
        _stop(running, logs)
        raise SystemExit(130 if isinstance(stop, KeyboardInterrupt) else 143) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    return result


def _raise_stopped(signum, frame) -> None:
    raise Stopped()


def _free_gpu(running: list[Child], gpus: list[str], per_gpu: int) -> str | None:
    """The GPU with the fewest running children, if it has a free slot."""
    load = {g: sum(c.gpu == g for c in running) for g in gpus}
    gpu = min(gpus, key=lambda g: load[g])
    return gpu if load[gpu] < per_gpu else None


def child_threads(slots: int) -> str:
    """CPU threads per child: this machine's cores shared by the runs that go at once. Unset, each
    child's torch takes every core, and 12 runs on 64 cores spent ~400 s on one V re-extraction
    that took ~30 s alone (the study's refresh arm, docs/results/qwen05_study). An OMP_NUM_THREADS
    the user set wins."""
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // max(1, slots)))


def _start(spec, gpu: str, logs: Path, threads: str = "") -> Child:
    """Write the run's planned config and start its worker on `gpu` (with `threads` CPU threads)."""
    run_json, log, status = logs / f"{spec.name}.run.json", logs / f"{spec.name}.log", logs / f"{spec.name}.json"
    one = [{"config": asdict(m.cfg), "run_dir": str(m.run_dir)} for m in spec.members]
    runio.write_atomic(run_json, json.dumps({"fleet": one} if len(one) > 1 else one[0], indent=1).encode())
    failures = read_status(status).get("failures", 0)
    with open(log, "a") as f:
        f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {failures + 1}, GPU {gpu}\n")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu, PYTHONUNBUFFERED="1",
               **({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} if threads else {}))
    with open(log, "ab") as f:
        f.write(f"worker threads: OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', '(unset)')}\n".encode())
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "projected_grpo.studies.sweep_worker", "run", str(run_json)],
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    child = Child(spec.name, gpu, proc, time.time(), failures)
    write_status(status, state="running", failures=failures, exit_code=None, gpu=gpu, pid=proc.pid,
                 started=child.started, ended=None, log=str(log))
    return child


def _finish(child: Child, logs: Path) -> str:
    """Record a child's exit; -> finished | failed | busy (another live process held the run dir,
    BUSY: not a failure of the run)."""
    code = child.proc.returncode
    state = "finished" if code == 0 else "busy" if code == BUSY else "failed"
    failures = child.failures + (state == "failed")
    write_status(logs / f"{child.name}.json", state=state, failures=failures,
                 exit_code=child.proc.returncode, gpu=child.gpu, pid=child.proc.pid, started=child.started,
                 ended=time.time(), log=str(logs / f"{child.name}.log"))
    return state


def _stop(running: list[Child], logs: Path) -> None:
    """SIGTERM every child's process group, SIGKILL what is left after STOP_GRACE_S, reap them all."""
    for child in running:
        _signal_group(child.proc.pid, signal.SIGTERM)
    deadline = time.time() + STOP_GRACE_S
    for child in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(timeout=max(0.0, deadline - time.time()))
        _signal_group(child.proc.pid, signal.SIGKILL)   # the worker's graders too, if any outlived it
        child.proc.wait()
        write_status(logs / f"{child.name}.json", state="interrupted", failures=child.failures,
                     exit_code=child.proc.returncode, gpu=child.gpu, pid=child.proc.pid, started=child.started,
                     ended=time.time(), log=str(logs / f"{child.name}.log"))


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
