"""torchrun entry for tests/test_distributed.py: `pgrpo train ARGS`, but every rank stops after step
$PGRPO_UNTIL (Trainer.run(until=...)), leaving the run dir as an interrupted run leaves it: the
checkpoint of that step and no delta_s.safetensors. Not a test module (no test_ prefix)."""

import os
import sys
from pathlib import Path

from projected_grpo import cli
from projected_grpo.training import train


def _stopped_early(cfg, out, resume=False, progress=True):
    until = int(os.environ["PGRPO_UNTIL"])
    return train.Trainer(cfg, Path(out), resume=resume, progress=progress).run(until=until)


train.train = _stopped_early
sys.exit(cli.main(["train", *sys.argv[1:]]))
