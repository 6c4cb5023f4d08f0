"""Write tests/data/arm_golden.json: every arm's short CPU run (fixed seed) as the trainer gives it, so a
refactor of the trainer can be checked against the code that wrote the file
(tests/test_arm_golden.py). Run it only to record a deliberate change of the arms' numbers:

    .venv/bin/python scripts/arm_golden.py [--out tests/data/arm_golden.json]

The file names the commit it was written at; timing fields are left out."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from arm_runs import ARMS, run_arm  # noqa: E402  (tests/arm_runs.py: the runs the test repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    ap.add_argument("--out", default=str(REPO / "tests" / "data" / "arm_golden.json"), help="file to write")
    args = ap.parse_args()
    import projected_grpo

    code = Path(projected_grpo.__file__).resolve().parents[2]     # the checkout whose code runs
    commit = subprocess.run(["git", "-C", str(code), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(code), "status", "--porcelain", "src"], capture_output=True,
                                text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        runs = {arm: run_arm(arm, Path(tmp)) for arm in ARMS}
    body = {"commit": commit + (" (+ uncommitted changes in src)" if dirty else ""), "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(body, indent=1) + "\n")
    print(f"wrote {args.out}: {', '.join(runs)}")


if __name__ == "__main__":
    main()
