"""One child of `pgrpo sweep --gpus N` (sweep_pool.py starts it; not a user command).

    python -m projected_grpo.studies.sweep_worker run DIR/logs/{name}.run.json       {"config", "run_dir"}:
        skip, resume or start that run (sweep.ensure_run); {"fleet": [{"config", "run_dir"}, ...]}: those
        runs as one fleet (sweep.ensure_fleet)
    python -m projected_grpo.studies.sweep_worker extract DIR/logs/extract_X.run.json  {"config", "v_hack"}:
        extract that V file (sweep.prepare_v_hack)

The first and last lines of its log say which GPU it saw and when it began and ended (unix times).
Exit 0 on success, 2 on bad input (UserError, one line), 3 when another live process holds the run
dir (runlock.Busy, one line; the queue does not count it as a failure), 1 with a traceback on
anything else.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from projected_grpo.config import TrainConfig
from projected_grpo.errors import UserError
from projected_grpo.studies.sweep import FleetSpec, RunSpec, ensure_fleet, ensure_run, prepare_v_hack
from projected_grpo.studies.sweep_pool import BUSY
from projected_grpo.training.runlock import Busy



def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("run", "extract"):
        print("usage: python -m projected_grpo.studies.sweep_worker run|extract SPEC.json", file=sys.stderr)
        return 2
    what, spec_path = argv
    print(f"worker {what}: pid {os.getpid()} CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')} "
          f"began {time.time():.3f}", flush=True)
    try:
        spec = json.loads(Path(spec_path).read_text())
        if what == "run" and "fleet" in spec:          # runs of one arm stepped together (lockstep.py)
            members = [RunSpec(Path(m["run_dir"]).name, TrainConfig.from_dict(m["config"], spec_path),
                               Path(m["run_dir"])) for m in spec["fleet"]]
            done = ensure_fleet(FleetSpec(Path(spec_path).name.removesuffix(".run.json"), members))
            print(f"worker {what}: {done}, ended {time.time():.3f}", flush=True)
            return 0
        cfg = TrainConfig.from_dict(spec["config"], spec_path)
        if what == "run":
            done = ensure_run(cfg, Path(spec["run_dir"]))
        else:
            prepare_v_hack(cfg, Path(spec["v_hack"]), verify=False)
            done = "extracted"
    except Busy as err:                    # another process writes the run: not this run's failure
        print(f"worker {what}: busy: {err}", flush=True)
        return BUSY
    except UserError as err:
        print(f"worker {what}: error: {err}", flush=True)
        return 2
    print(f"worker {what}: {done}, ended {time.time():.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
