"""Wall time of the same sweep with `--gpus 1` and with `--gpus N --runs-per-gpu k`, and their ratio.

    python bench/sweep_speedup.py --preset qwen05 --steps 3 --arms vanilla,projected --seeds 1,2,3,4 \
        --gpus 4 --runs-per-gpu 2 --out /tmp/speed [-- any other pgrpo sweep flags]

Shared work is done once, outside the timing: a warm-up sweep (every arm, the first seed, --gpus 1)
extracts the V file(s) and the split and fills the SVD cache; its V files and split.json are copied into
both timed sweep dirs, so both time the queue of runs only. Prints one line per configuration
and a JSON line {"runs", "t_1gpu_s", "t_ngpu_s", "speedup", ...}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def sweep_cmd(args, out: Path, gpus: int, per_gpu: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "projected_grpo.cli", "sweep", "--preset", args.preset, "--steps", str(args.steps),
            "--arms", args.arms, "--seeds", args.seeds, "--out", str(out), "--gpus", str(gpus),
            "--runs-per-gpu", str(per_gpu), "--no-report", *extra]


def timed(cmd: list[str], log: Path) -> float:
    t0 = time.time()
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {code}); see {log}")
    return time.time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--arms", default="vanilla,projected")
    p.add_argument("--seeds", default="1,2,3,4")
    p.add_argument("--gpus", type=int, default=4)
    p.add_argument("--runs-per-gpu", type=int, default=2)
    p.add_argument("--out", required=True, help="a fresh directory (two sweep dirs go in it)")
    args, extra = p.parse_known_args()
    extra = [x for x in extra if x != "--"]
    root = Path(args.out)
    if root.exists() and any(root.iterdir()):
        sys.exit(f"{root} is not empty: give a fresh --out")
    one, many = root / "gpus1", root / f"gpus{args.gpus}x{args.runs_per_gpu}"
    n_runs = len(args.arms.split(",")) * len(args.seeds.split(","))

    # shared work once (V files, split, SVD cache), by a warm-up sweep of the first seed
    prep = root / "prep"
    first_seed = args.seeds.split(",")[0]
    cmd = sweep_cmd(args, prep, 1, 1, extra)
    cmd[cmd.index("--seeds") + 1] = first_seed
    root.mkdir(parents=True, exist_ok=True)
    t_prep = timed(cmd, root / "prep.log")
    for d in (one, many):
        d.mkdir()
        for f in list(prep.glob("v_hack*.safetensors")) + [prep / "split.json"]:
            shutil.copy2(f, d / f.name)
    print(f"warm-up (V, split, the runs of seed {first_seed}; not counted): {t_prep:.0f}s")

    t1 = timed(sweep_cmd(args, one, 1, 1, extra), root / "gpus1.log")
    print(f"--gpus 1 --runs-per-gpu 1: {n_runs} runs in {t1:.1f}s ({t1 / n_runs:.1f}s per run)")
    tn = timed(sweep_cmd(args, many, args.gpus, args.runs_per_gpu, extra), root / f"{many.name}.log")
    print(f"--gpus {args.gpus} --runs-per-gpu {args.runs_per_gpu}: {n_runs} runs in {tn:.1f}s "
          f"({tn / n_runs:.1f}s per run)")
    print(json.dumps({"preset": args.preset, "steps": args.steps, "runs": n_runs, "gpus": args.gpus,
                      "runs_per_gpu": args.runs_per_gpu, "t_1gpu_s": round(t1, 1), "t_ngpu_s": round(tn, 1),
                      "speedup": round(t1 / tn, 2)}))


if __name__ == "__main__":
    main()
