"""Data-parallel training (issue #9): gloo on CPU, 2 processes.

1. For fixed rollouts, the δS gradients each rank computes on its share of the prompts, all-reduced
   and then projected, equal the single-process full-batch gradient projected (and so do the
   ProjectionStats). The loss is the trainer's own `Trainer.backward` (on a Trainer built without
   its run-dir set-up, holding only what `backward` reads); the reduce/project lines are those of
   `Trainer.step`.
2. `torchrun --nproc-per-node 2 -m projected_grpo.cli train --preset smoke` completes: one
   metrics.jsonl (rank 0 alone writes), rows from both ranks in every record, one checkpoint, and
   after every rank stopped at step 2 of 3 (as an interrupted run), `--resume` appends exactly
   the missing step.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from projected_grpo.training import dist, evaluate, runio, splits, teacher
from vfiles import random_v
from projected_grpo.core.adapter import attach
from projected_grpo.config import TrainConfig, preset
from projected_grpo.core.grpo import group_advantages
from projected_grpo.models import load_model
from projected_grpo.core.projection import project_grads
from projected_grpo.training.rollout import Rollouts, completion_mask, encode_prompts, eos_token_ids
from projected_grpo.training.train import Trainer

REPO = Path(__file__).resolve().parents[1]
P, G, T_MAX = 4, 3, 12
# rewards (P, G): group 1 is all-equal, so its advantages are exactly 0 (its micro-batch may skip)
REWARDS = torch.tensor([[1.25, 0.25, 0.0], [0.25, 0.25, 0.25], [1.0, 0.0, 0.25], [0.0, 1.25, 1.25]])
CFG = TrainConfig(model="tiny-qwen3", dtype="float32", device="cpu", prompts_per_step=P, group_size=G,
                  max_new_tokens=T_MAX, beta=0.04, micro_batch=5, logprob_chunk=8, vhack_m=4)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- 1. gradient equivalence ----------------------------------------------------------------
def _setup():
    """Model + adapter with a fixed non-zero δS (so the K3 term has a gradient), V, and problems."""
    model, tok = load_model(CFG.model, CFG.dtype, CFG.device)
    adapter = attach(model, CFG.model)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in adapter.params().values():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    v = {}
    for k, r in adapter.ranks().items():
        q, _ = torch.linalg.qr(torch.randn(r, CFG.vhack_m, generator=gen, dtype=torch.float64))
        v[k] = q.T.float().contiguous()
    trainer = Trainer.__new__(Trainer)  # only what Trainer.backward reads
    trainer.cfg, trainer.model, trainer.tok, trainer.adapter = CFG, model, tok, adapter
    trainer.router = None                # no gradient routing: the plain pass (routing.py)
    # short prompts of different lengths (left padding differs between one batch and the shares)
    problems = [[{"role": "user", "content": "Write a function that returns " + "one more, " * (3 * i + 1)}]
                for i in range(P)]
    return trainer, v, problems


def _completions(tok, model) -> list[list[int]]:
    """P·G fixed completions (group-major): random ordinary tokens ended by an eos, except every 4th
    row, which runs out of budget (T_MAX tokens, no eos) as a sampled one would."""
    gen = torch.Generator().manual_seed(11)
    eos = eos_token_ids(model, tok)
    out = []
    for i in range(P * G):
        if i % 4 == 0:
            out.append(torch.randint(100, 20_000, (T_MAX,), generator=gen).tolist())
        else:
            n = int(torch.randint(2, T_MAX - 1, (1,), generator=gen))
            out.append(torch.randint(100, 20_000, (n,), generator=gen).tolist() + [eos[0]])
    return out


def _rollouts(tok, model, problems, local: list[int], comps) -> Rollouts:
    """The Rollouts a rank holds for prompts `local`, padded as the trainer pads its own share."""
    ids, mask = encode_prompts(tok, [problems[i] for i in local], "cpu")
    rows = [comps[i * G + j] for i in local for j in range(G)]
    width = max(len(r) for r in rows)
    comp = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    for b, r in enumerate(rows):
        comp[b, :len(r)] = torch.tensor(r)
    cmask = completion_mask(comp, eos_token_ids(model, tok))
    return Rollouts(ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0), comp, cmask,
                    ["" for _ in rows])


def _grad_step(trainer, v, problems, local: list[int]):
    """Trainer.step's gradient path for this rank's share: backward -> all-reduce -> project."""
    comps = _completions(trainer.tok, trainer.model)
    rows = _rollouts(trainer.tok, trainer.model, problems, local, comps)
    adv = group_advantages(REWARDS[local]).view(-1)
    trainer.backward(rows, adv)
    grads = dist.all_reduce_grads(trainer.adapter.params())
    reduced = {k: g.clone() for k, g in grads.items()}
    stats = project_grads(grads, v, apply=True)
    return reduced, {k: g.clone() for k, g in grads.items()}, stats


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_from_env()
    try:
        assert dist.active() and dist.world_size() == world and dist.rank() == rank
        trainer, v, problems = _setup()
        trainer.rank, trainer.world = rank, world
        local = list(range(P))[rank::world]  # Trainer.step_problems' split
        reduced, projected, stats = _grad_step(trainer, v, problems, local)
        torch.save({"reduced": reduced, "projected": projected, "stats": stats,
                    "sum": dist.sum_scalars([1.0, float(rank)]),
                    "rows": dist.gather_rows([rank] * (rank + 1))}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.shutdown()


def test_all_reduced_projected_grad_equals_single_process(tmp_path):
    # single process: the whole batch (denominator G·max_new_tokens·P in both cases)
    trainer, v, problems = _setup()
    reduced1, projected1, stats1 = _grad_step(trainer, v, problems, list(range(P)))
    assert not dist.active()
    assert sum(float(g.norm()) for g in reduced1.values()) > 0
    assert 0 < stats1.frac_fired < 1 and stats1.cos_in > 0 and stats1.cos_out < 1e-5
    # the projection did change the gradient (so equality below covers it)
    assert max(float((projected1[k] - reduced1[k]).abs().max()) for k in reduced1) > 1e-6

    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for res in results:
        assert set(res["reduced"]) == set(reduced1)
        for k in reduced1:
            # fp32 sums in another order (other padding, other micro-batches): compare each module's
            # vector to its own norm, not element-wise (single elements can be near-cancelling sums)
            for got, want in ((res["reduced"][k], reduced1[k]), (res["projected"][k], projected1[k])):
                err = float((got - want).norm() / want.norm().clamp_min(1e-12))
                assert err < 1e-5, f"{k}: relative error {err:.2e}"
        s = res["stats"]
        assert s.cos_in == pytest.approx(stats1.cos_in, rel=1e-5, abs=1e-7)
        assert s.cos_out == pytest.approx(stats1.cos_out, abs=1e-6)
        n_axes = sum(t.shape[0] for t in v.values())
        assert abs(s.frac_fired - stats1.frac_fired) * n_axes <= 1  # at most one c ≈ 0 may flip sign
        assert res["sum"] == [2.0, 1.0]
        assert res["rows"] == [0, 1, 1]
    # every rank holds bit-identical gradients, so the replicas stay in lock-step
    for k in reduced1:
        assert torch.equal(results[0]["projected"][k], results[1]["projected"][k])


def test_helpers_are_noops_in_one_process():
    assert not dist.active() and dist.rank() == 0 and dist.world_size() == 1
    assert dist.sum_scalars([1.5, 2.0]) == [1.5, 2.0]
    assert dist.gather_rows([1, 2]) == [1, 2]
    p = torch.nn.Parameter(torch.ones(3))
    grads = dist.all_reduce_grads({"a": p})
    assert torch.equal(grads["a"], torch.zeros(3))  # a missing grad counts as zeros
    dist.barrier()
    dist.init_from_env()  # WORLD_SIZE unset: stays single-process
    assert not dist.active()
    assert os.environ["NCCL_NVLS_ENABLE"] == "0"
    assert os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
    assert os.environ["NVSHMEM_DISABLE_NVLS"] == "1"


def test_more_ranks_than_prompts_is_refused(tmp_path, monkeypatch):
    """A rank with no prompt group would crash mid-step while the others wait in a collective."""
    from projected_grpo.errors import UserError

    monkeypatch.setattr(dist, "world_size", lambda: 3)
    with pytest.raises(UserError, match="--prompts-per-step 2 is less than the 3 ranks"):
        Trainer(replace(preset("smoke"), prompts_per_step=2), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# ---- 2. torchrun smoke run ------------------------------------------------------------------
SMOKE_FLAGS = ["--preset", "smoke", "--arm", "projected", "--n-problems", "4", "--max-new-tokens", "16",
               "--grade-workers", "1"]


def _torchrun(args: list[str], timeout: float = 300, until: int | None = None) -> subprocess.CompletedProcess:
    """`pgrpo train ARGS` on 2 processes; with `until`, every rank stops after that step."""
    entry = (["-m", "projected_grpo.cli", "train"] if until is None
             else [str(REPO / "tests" / "torchrun_until.py")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *entry, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONUNBUFFERED="1", **({} if until is None else {"PGRPO_UNTIL": str(until)}))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # timed out: end torchrun and its workers (its own process group)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, out[-4000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


def test_torchrun_two_process_smoke_and_resume(tmp_path):
    cfg = preset("smoke")
    v_path = random_v(tmp_path / "v_random.safetensors", replace(cfg, n_problems=4))
    pairs = tmp_path / "pairs.jsonl"   # six train pairs: of pg-001…pg-004 they name only pg-002
    rows = (REPO / "src" / "projected_grpo" / "data" / "pairs_code.jsonl").read_text().splitlines()
    pairs.write_text("\n".join([r for r in rows if '"train"' in r][:6]) + "\n")
    out = tmp_path / "run"
    flags = [*SMOKE_FLAGS, "--out", str(out), "--v-hack", str(v_path), "--pairs", str(pairs),
             "--eval-problems", "2", "--eval-samples", "2"]   # one eval problem per rank
    t0 = time.perf_counter()
    res = _torchrun([*flags, "--steps", "3"], until=2)
    assert res.stdout.count("run finished:") == 1, res.stdout[-3000:]  # rank 0 alone reports
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([runio.CONFIG, runio.METRICS, runio.SAMPLES, runio.CHECKPOINT, splits.SPLIT,
                            evaluate.EVAL_SAMPLES, teacher.SUMMARY_FILE]), files  # stopped: no delta_s
    # (no per-rank leftovers; teacher_pool.json: the smoke preset mixes the builtin pool in)
    evals = runio.eval_rows(runio.read_jsonl(out / runio.METRICS))
    assert [e["step"] for e in evals] == [0] and all(e["eval_n"] == 2 * 2 for e in evals)  # both ranks
    eval_ids = json.loads((out / splits.SPLIT).read_text())["eval"]
    eval_samples = runio.read_jsonl(out / evaluate.EVAL_SAMPLES)
    headline = [s for s in eval_samples if s["step"] == 0 and s["variant"] == "renamed"]   # the eval_n rows
    assert sorted(s["problem_id"] for s in headline) == sorted(eval_ids * 2)
    metrics = runio.train_rows(runio.read_jsonl(out / runio.METRICS))
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert m["n_student"] + m["n_teacher"] == cfg.prompts_per_step * cfg.group_size  # both ranks
        assert m["n_teacher"] == cfg.prompts_per_step * cfg.n_teacher
        assert m["cos_out"] == pytest.approx(0.0, abs=1e-5)  # projected arm
    samples = runio.read_jsonl(out / runio.SAMPLES)
    assert len(samples) == 2 * cfg.prompts_per_step * cfg.group_size
    assert len({s["problem_id"] for s in samples if s["step"] == 1}) == cfg.prompts_per_step
    assert torch.load(out / runio.CHECKPOINT, weights_only=False)["step"] == 2

    res = _torchrun(["--out", str(out), "--resume"])        # the README's resume command, as is
    metrics = runio.train_rows(runio.read_jsonl(out / runio.METRICS))
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert [e["step"] for e in runio.eval_rows(runio.read_jsonl(out / runio.METRICS))] == [0, 3]
    assert len(runio.read_jsonl(out / runio.SAMPLES)) == 3 * cfg.prompts_per_step * cfg.group_size
    assert torch.load(out / runio.CHECKPOINT, weights_only=False)["step"] == 3
    assert sorted(p.name for p in out.iterdir()) == sorted([*files, "delta_s.safetensors"])
    print(f"torchrun smoke + resume: {time.perf_counter() - t0:.1f}s")
