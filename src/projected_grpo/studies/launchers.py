"""Where a sweep's runs go: `pgrpo sweep --launcher local|slurm|ray`.

local   today's behaviour (sweep.py: in this process with --gpus 0, the sweep_pool.py queue with --gpus N).
slurm   submitit: one Slurm job array, one array task per run (partition, GPUs per run, time limit and
        array parallelism from flags); `--slurm-cluster local` is submitit's LocalExecutor, which runs
        each task as a local subprocess: for testing without a cluster.
ray     one Ray task per run (num_gpus = --gpus-per-run) on `--ray-address`, or on a Ray instance
        started here when it is empty.

A launcher only places runs. Each run is the same child as the local queue's,
`python -m projected_grpo.studies.sweep_worker run DIR/logs/{name}.run.json`, with its output appended to
DIR/logs/{name}.log; the job (a Slurm array task or a Ray task) starts it as a subprocess, waits and
returns its exit status. DIR must be on a filesystem every node sees. What to run, skip, resume or
retry, and the bookkeeping, is launch.py's and the same for every launcher.

A launcher: `submit(works) -> job ids`, `poll() -> the works that ended (name, exit code or None,
note)`, `cancel()` (every job still going), `close()`. LAUNCHERS is the registry.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from projected_grpo.errors import UserError


@dataclass
class LaunchOptions:
    """The cluster flags of `pgrpo sweep` (recorded in sweep.json as `launch`)."""

    gpus_per_run: int = 1             # GPUs each run's job asks for (0: a CPU job)
    cpus_per_run: int = 1             # CPU cores each run's job asks for (and its worker's thread count)
    time_min: int = 240               # Slurm: each job's time limit in minutes
    slurm_partition: str = ""         # Slurm partition ("" = the cluster's default)
    array_parallelism: int = 64       # Slurm: array tasks running at once
    slurm_cluster: str = "slurm"      # submitit executor: slurm, or local (subprocesses here, for tests)
    ray_address: str = ""             # Ray cluster address ("" = start a Ray instance in this process)


@dataclass
class Work:
    """One job to place: a sweep_worker call (`verb` run | extract) on its spec file, logging to `log`."""

    name: str
    verb: str
    spec: str
    log: str


@dataclass
class Ended:
    name: str
    code: int | None                  # the worker's exit status; None: the job itself died (note says how)
    note: str = ""


def run_worker(verb: str, spec: str, log: str, threads: int) -> int:
    """The body of every job: one sweep_worker child, output appended to `log`; -> its exit status.
    The child dies with this process (PR_SET_PDEATHSIG on Linux), so a cancelled job leaves no worker."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    with open(log, "ab") as f:
        f.write(f"worker threads: OMP_NUM_THREADS={env['OMP_NUM_THREADS']}\n".encode())
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "projected_grpo.studies.sweep_worker", verb, spec],
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            return proc.wait()
        finally:
            if proc.poll() is None:           # the job was cancelled: take the worker down with it
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
                proc.kill()


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)        # PR_SET_PDEATHSIG = 1


class Launcher:
    """A place to run jobs; started on the first submit (no Ray instance or executor for a sweep with
    nothing to run)."""

    name = ""
    module = ""                       # the optional package it needs
    extra = ""                        # pip extra that installs it

    def __init__(self, opts: LaunchOptions, out: Path):
        self.opts, self.out = opts, Path(out)

    @classmethod
    def require(cls, opts: LaunchOptions) -> None:
        """Raise a one-line UserError when this launcher cannot work here (its package is missing)."""
        try:
            importlib.import_module(cls.module)
        except ImportError:
            raise UserError(f"--launcher {cls.name} needs the {cls.module} package: "
                            f"pip install 'projected_grpo[{cls.extra}]'") from None

    def submit(self, works: list[Work]) -> list[str]:
        raise NotImplementedError

    def poll(self) -> list[Ended]:
        raise NotImplementedError

    def cancel(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the launcher started (a local Ray instance)."""


class SlurmLauncher(Launcher):
    """A submitit executor; every submit is one job array."""

    name, module, extra = "slurm", "submitit", "slurm"

    def __init__(self, opts: LaunchOptions, out: Path):
        super().__init__(opts, out)
        self.executor: Any = None
        self.jobs: dict[str, Any] = {}

    @classmethod
    def require(cls, opts: LaunchOptions) -> None:
        super().require(opts)
        if opts.slurm_cluster == "slurm" and shutil.which("sbatch") is None:
            raise UserError("--launcher slurm: sbatch is not on PATH (run the sweep on a Slurm login node)")

    def _executor(self) -> Any:
        if self.executor is None:
            import submitit

            o = self.opts
            self.executor = submitit.AutoExecutor(folder=self.out / "logs" / "slurm", cluster=o.slurm_cluster)
            self.executor.update_parameters(
                name="pgrpo", timeout_min=o.time_min, gpus_per_node=o.gpus_per_run, cpus_per_task=o.cpus_per_run,
                nodes=1, tasks_per_node=1, slurm_partition=o.slurm_partition or None,
                slurm_array_parallelism=o.array_parallelism)
        return self.executor

    def submit(self, works: list[Work]) -> list[str]:
        jobs = self._executor().map_array(run_worker, [w.verb for w in works], [w.spec for w in works],
                                          [w.log for w in works], [self.opts.cpus_per_run] * len(works))
        self.jobs.update({w.name: job for w, job in zip(works, jobs, strict=True)})
        return [str(job.job_id) for job in jobs]

    def poll(self) -> list[Ended]:
        ended = []
        for name, job in list(self.jobs.items()):
            if not job.done():
                continue
            del self.jobs[name]
            try:
                ended.append(Ended(name, int(job.result())))
            except Exception as err:  # noqa: BLE001 - submitit's job failures (killed, timed out, node lost) are many types
                ended.append(Ended(name, None, f"job {job.job_id} died: {str(err).strip().splitlines()[0]}; "
                                               f"its Slurm log {job.paths.stdout}"))
        return ended

    def cancel(self) -> None:
        for job in self.jobs.values():
            job.cancel(check=False)


class RayLauncher(Launcher):
    """One Ray task per work on the cluster at --ray-address (or a Ray instance started here)."""

    name, module, extra = "ray", "ray", "ray"

    def __init__(self, opts: LaunchOptions, out: Path):
        super().__init__(opts, out)
        self.task: Any = None
        self.refs: dict[str, Any] = {}

    @classmethod
    def require(cls, opts: LaunchOptions) -> None:
        """Also: an address host:port (or ray://host:port) must accept a connection; Ray itself retries
        an unreachable one for minutes, printing only warnings."""
        super().require(opts)
        host, sep, port = opts.ray_address.removeprefix("ray://").rpartition(":")
        if sep and port.isdigit():
            try:
                socket.create_connection((host, int(port)), timeout=10).close()
            except OSError as err:
                raise UserError(f"--ray-address {opts.ray_address}: cannot reach {host}:{port} ({err})") from None

    def _task(self) -> Any:
        if self.task is None:
            import ray

            if not ray.is_initialized():
                ray.init(address=self.opts.ray_address or None, include_dashboard=False, log_to_driver=False)
            self.task = ray.remote(num_gpus=self.opts.gpus_per_run, num_cpus=self.opts.cpus_per_run,
                                   max_retries=0)(run_worker)
        return self.task

    def submit(self, works: list[Work]) -> list[str]:
        task = self._task()
        refs = [task.remote(w.verb, w.spec, w.log, self.opts.cpus_per_run) for w in works]
        self.refs.update({w.name: ref for w, ref in zip(works, refs, strict=True)})
        return [ref.task_id().hex() for ref in refs]

    def poll(self) -> list[Ended]:
        import ray

        if not self.refs:
            return []
        ready, _ = ray.wait(list(self.refs.values()), num_returns=len(self.refs), timeout=0)
        ended = []
        for name, ref in list(self.refs.items()):
            if ref not in ready:
                continue
            del self.refs[name]
            try:
                ended.append(Ended(name, int(ray.get(ref))))
            except ray.exceptions.RayError as err:
                ended.append(Ended(name, None, f"Ray task died: {str(err).strip().splitlines()[0]}"))
        return ended

    def cancel(self) -> None:
        import ray

        for ref in self.refs.values():
            ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.task is not None:
            import ray

            ray.shutdown()
            self.task = None


# "local" is no class: sweep.py runs it itself (in process, or the sweep_pool.py queue)
LAUNCHERS: dict[str, type[Launcher] | None] = {"local": None, "slurm": SlurmLauncher, "ray": RayLauncher}
