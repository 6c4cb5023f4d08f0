"""Shared fixtures. Tests never touch the network: hub lookups are forced offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One torch thread in every test process: the tiny models' matmuls run ~20x faster on one thread
# than on two of a loaded 2-core runner, and `make test` runs one xdist worker per core. Child
# processes (the sweep queue, torchrun, a killed-and-resumed run) inherit OMP_NUM_THREADS, so a
# run's numbers do not depend on whether it ran here or in a child.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Triton kernels (decode_attention) run on the CPU under Triton's interpreter; it must be chosen
# before triton is first imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session", autouse=True)
def _svd_cache(tmp_path_factory):
    """One SVD cache per test session, never the user's ~/.cache."""
    os.environ["PGRPO_CACHE"] = str(tmp_path_factory.mktemp("pgrpo_cache"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the repo. Missing is a failure, never a skip."""
    if not (SHARED / "data" / "leetcode_test_medhard.jsonl").is_file():
        pytest.fail(f"shared data missing: expected {SHARED}/data/leetcode_test_medhard.jsonl "
                    "(CI checks the repo out with ../shared beside it)")
    return SHARED


@pytest.fixture(scope="session")
def mixed_code_pairs(tmp_path_factory) -> str:
    """A pair file: the first 6 bundled run_tests training pairs and the stdout training pairs of the
    same problems (so the pairs name the same problems, hence the same split, as run_tests alone):
    small enough for quick extraction, two modes for the leave-one-mode-out arm."""
    import json

    from projected_grpo.directions.pairs import BUNDLED

    rows = [json.loads(line) for line in BUNDLED["code"].read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["split"] == "train"]
    run_tests = [r for r in train if r["mode"] == "run_tests"][:6]
    named = {r["problem_id"] for r in run_tests}
    stdout = [r for r in train if r["mode"] == "stdout" and r["problem_id"] in named]
    path = tmp_path_factory.mktemp("mixed_pairs") / "pairs_code.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in run_tests + stdout))
    return str(path)


# Files that take minutes, the longest first. `make test` gives each file to one of two xdist workers
# (--dist loadfile); handing out the long ones first lets the workers finish together instead of one
# starting tests/test_train.py when the other is nearly done. Order only: every file still runs.
LONG_FIRST = ("test_train.py", "test_sweep.py", "test_arms.py", "test_resume.py", "test_vhack.py",
              "test_distributed.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its order
