"""Data-parallel scaling of `pgrpo train` (issue #9): steps per second on N GPUs vs one GPU at the
same global batch (P prompts x G samples per step, split over the ranks).

Not a test. For each N in --gpus it runs
    python -m torch.distributed.run --standalone --nproc-per-node N -m projected_grpo.cli train \\
        --preset qwen05 --model random:qwen2.5-coder-0.5b --prompts-per-step 16 --group-size 8 \\
        --max-new-tokens 512 --arm projected --steps S ... --out OUT/N
(a random-weight model of the real shape: throughput depends on shapes only). The qwen05 preset
mixes builtin teacher rows into every group (mix 0.25): a random model's own completions all score
0, so without them every advantage would be 0 and the backward would be skipped. The first run
extracts v_hack; later runs reuse its file (same seed, same weights). After each run the first
--warmup steps are dropped (compilation, allocator warm-up) and the script reports, per N, the
trainer's median gen_s / grade_s / train_s / step_s from metrics.jsonl, and the median wall time
between consecutive metrics lines (the full step: also the gathers, logging and barrier that
step_s leaves out), from which steps/s, speed-up t1/tN and efficiency t1/(N tN) are computed.

4-GPU run (the table goes to stdout, one JSON line per N to --json):
    PYTHONPATH=src:/tmp/site python bench/dp_scaling.py --gpus 1,2,4 --steps 8 --warmup 2 \\
        --out runs/dp_scaling --json runs/dp_scaling.jsonl
A finished N leaves OUT/summary-N.json and is not rerun by a later call with the same --out and
settings, so under a per-command time limit the calls `--gpus 1`, then `--gpus 1,2,4` also work.
CPU dry run of the plumbing (gloo; the numbers mean nothing):
    python bench/dp_scaling.py --gpus 1,2 --device cpu --model random:tiny --preset smoke \\
        --prompts-per-step 2 --group-size 2 --max-new-tokens 16 --steps 3 --warmup 1 --out /tmp/dps
Anything after `--` is passed on to `pgrpo train` unchanged (e.g. `-- --micro-batch 32`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from projected_grpo.training import runio
from projected_grpo.training.dist import NO_MULTICAST_ENV


def train_command(args, n: int, out: Path, extra: list[str]) -> list[str]:
    """The torchrun command line of the N-rank run."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
           "-m", "projected_grpo.cli", "train", "--preset", args.preset, "--model", args.model,
           "--prompts-per-step", str(args.prompts_per_step), "--group-size", str(args.group_size),
           "--max-new-tokens", str(args.max_new_tokens), "--arm", args.arm, "--steps", str(args.steps),
           "--checkpoint-every", str(args.steps), "--samples-every", "0", "--out", str(out)]
    if args.device == "cpu":
        cmd += ["--device", "cpu"]
    return cmd + extra


def child_env(n: int) -> dict[str, str]:
    """No NVLink multicast; unbuffered output; the host's cores shared out among the N ranks
    (torchrun would give 1 thread each for N > 1 and all of them for N = 1) unless set already."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **NO_MULTICAST_ENV)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    return env


def run_logged(cmd: list[str], env: dict[str, str], log_path: Path, metrics: Path,
               timeout_s: float) -> tuple[int, list[float]]:
    """Run `cmd`, streaming its output to the console and to `log_path`; meanwhile note the time
    at which each line of `metrics` appears (rank 0 appends one, fsynced, at the end of each step).
    Past `timeout_s` the run (torchrun and its ranks: one process group) is ended; exit code -9."""
    arrivals: list[float] = []
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

        def tee() -> None:
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)

        reader = threading.Thread(target=tee, daemon=True)
        reader.start()
        deadline = time.perf_counter() + timeout_s
        while proc.poll() is None:
            if time.perf_counter() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                log.write(f"\ndp_scaling: killed after {timeout_s:.0f} s\n")
                break
            n = len(runio.read_jsonl(metrics))
            arrivals += [time.perf_counter()] * (n - len(arrivals))
            time.sleep(0.05)
        reader.join()
    return proc.returncode, arrivals


def summarise(n: int, metrics: list[dict], arrivals: list[float], warmup: int) -> dict:
    """Medians over the steps after warm-up; `wall_s` from the metrics lines' arrival times."""
    kept = metrics[warmup:]
    # a last line written just before the run exited may have been missed by the polling
    walls = [b - a for a, b in zip(arrivals[warmup - 1:], arrivals[warmup:])]
    if not kept or not walls:
        raise SystemExit(f"N={n}: {len(metrics)} metrics lines ({len(arrivals)} seen arriving) are too "
                         f"few for --warmup {warmup}; raise --steps")
    row = {"n_gpus": n, "steps_timed": len(kept), "walls_timed": len(walls)}
    for key in ("step_s", "gen_s", "grade_s", "train_s"):
        row[key] = statistics.median(r[key] for r in kept)
    row["wall_s"] = statistics.median(walls)
    row["steps_per_s"] = 1.0 / row["wall_s"]
    return row


def table(rows: list[dict], card: str) -> str:
    base = rows[0]
    lines = [f"card: {card}; speed-up and efficiency vs N={base['n_gpus']}, from wall s/step",
             "| GPUs | wall s/step | steps/s | speed-up | efficiency | step_s | gen_s | grade_s | train_s |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['n_gpus']} | {r['wall_s']:.2f} | {r['steps_per_s']:.3f} | {r['speedup']:.2f} | "
              f"{100 * r['efficiency']:.0f}% | {r['step_s']:.2f} | {r['gen_s']:.2f} | {r['grade_s']:.2f} | "
              f"{r['train_s']:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", default="1,2,4", help="comma list of rank counts N; the first is the base")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu"], help="cpu: gloo dry run")
    ap.add_argument("--preset", default="qwen05")
    ap.add_argument("--model", default="random:qwen2.5-coder-0.5b")
    ap.add_argument("--prompts-per-step", type=int, default=16, help="P, global (split over ranks)")
    ap.add_argument("--group-size", type=int, default=8, help="G")
    ap.add_argument("--max-new-tokens", type=int, default=512, help="T")
    ap.add_argument("--arm", default="projected")
    ap.add_argument("--steps", type=int, default=8, help="steps per run, warm-up included")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    ap.add_argument("--out", default="runs/dp_scaling", help="run dirs OUT/N and logs OUT/torchrun-N.log")
    ap.add_argument("--json", default="", help="append one JSON line per N here")
    ap.add_argument("--timeout-min", type=float, default=30, help="end a run that takes longer")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    gpus = [int(x) for x in args.gpus.split(",") if x]
    out = Path(args.out).resolve()
    if not 1 <= args.warmup < args.steps:
        ap.error("need 1 <= --warmup < --steps (wall times are differences between steps)")
    if args.device != "cpu" and torch.cuda.device_count() < max(gpus):
        ap.error(f"--gpus {args.gpus} needs {max(gpus)} CUDA devices, {torch.cuda.device_count()} visible")
    settings = {k: v for k, v in vars(args).items() if k not in ("gpus", "json", "out", "timeout_min")}
    settings["extra"] = extra
    # OUT/summary-N.json marks a finished N (kept: a later call with the same --out only runs the
    # missing N); a run dir without one is a failed or interrupted run.
    done = {n: json.loads(f.read_text(encoding="utf-8")) for n in gpus
            if (f := out / f"summary-{n}.json").is_file()}
    for n, r in done.items():
        differ = sorted(k for k in settings if r.get(k) != settings[k])
        if differ:
            ap.error(f"{r['out']} ran with other settings ({', '.join(differ)}); choose another --out")
    todo = [n for n in gpus if n not in done]
    taken = [str(out / str(n)) for n in todo if (out / str(n)).exists()]
    if taken:
        ap.error(f"{', '.join(taken)} hold unfinished runs; remove them or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    v_hack = next((str(p) for p in sorted(out.glob("*/v_hack.safetensors"))), "")
    card = card_name(args.device) if todo else ""
    for n in todo:
        run_dir, log = out / str(n), out / f"torchrun-{n}.log"
        flags = [*extra, "--v-hack", v_hack] if v_hack and "--v-hack" not in extra else extra
        cmd = train_command(args, n, run_dir, flags)
        print(f"== N={n}: {' '.join(cmd)}", flush=True)
        env = child_env(n)
        rc, arrivals = run_logged(cmd, env, log, run_dir / runio.METRICS, 60 * args.timeout_min)
        if rc != 0:
            print(f"dp_scaling: the N={n} run failed (exit {rc}); its output is in {log}", file=sys.stderr)
            return 1
        v_hack = v_hack or next((str(p) for p in run_dir.glob("v_hack.safetensors")), "")
        row = summarise(n, runio.read_jsonl(run_dir / runio.METRICS), arrivals, args.warmup)
        row.update(card=card, torch=torch.__version__, out=str(run_dir), cmd=cmd,
                   omp_threads=env["OMP_NUM_THREADS"], **settings)
        (out / f"summary-{n}.json").write_text(json.dumps(row, indent=1), encoding="utf-8")
        done[n] = row
    rows = [done[n] for n in gpus]
    for r in rows:
        r.update(base_n=rows[0]["n_gpus"], speedup=rows[0]["wall_s"] / r["wall_s"])
        r["efficiency"] = r["speedup"] * rows[0]["n_gpus"] / r["n_gpus"]
    print(table(rows, rows[0]["card"]))
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
    return 0


def card_name(device: str) -> str:
    """GPU 0's name, asked in a child process (this one stays without a CUDA context)."""
    if device == "cpu":
        return "cpu"
    code = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


if __name__ == "__main__":
    raise SystemExit(main())
