"""Shared fixtures. Tests never touch the network: hub lookups are forced offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one xdist worker per core: one torch thread each (two workers of two threads
    # oversubscribe a 2-core runner); child processes (sweep queue, torchrun) inherit the variable
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

    from projected_grpo.pairs import BUNDLED

    rows = [json.loads(line) for line in BUNDLED["code"].read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["split"] == "train"]
    run_tests = [r for r in train if r["mode"] == "run_tests"][:6]
    named = {r["problem_id"] for r in run_tests}
    stdout = [r for r in train if r["mode"] == "stdout" and r["problem_id"] in named]
    path = tmp_path_factory.mktemp("mixed_pairs") / "pairs_code.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in run_tests + stdout))
    return str(path)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: one thread is ~20x faster than two on a loaded 2-core runner. A module opts in
    with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
