"""Several runs on one frozen model (core/fleet.py, issue #28): one backward pass over the rows of R runs,
each row with its own run's δS, gives every run the loss and δS gradient of that run's own pass over its
own rows on a plain adapter holding its δS (the reference: R separate passes). In fp64 on the CPU, to
1e-10 (in fp32 the sorted path differs at 2e-6: the fleet's micro-batches pad to other widths than each
run's own, which changes fp32 rounding), under padded and sorted micro-batches that mix the runs' rows,
with TIS weights and a KL term on."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from projected_grpo.core.fleet import Fleet
from projected_grpo.core.passes import BatchState, backward_pass
from tests.test_batching import mixed_batch  # noqa: F401 (a fixture: 6 rows, mixed lengths, a teacher row)

RUN_OF_ROW = torch.tensor([2, 0, 1, 0, 2, 1])   # interleaved, so every micro-batch mixes runs


@pytest.fixture(scope="module")
def batch64(mixed_batch):  # noqa: F811 (the fixture imported above, requested by name)
    """test_batching's batch on the model in fp64 (weights, U, Vh and δS)."""
    model, adapter, rows, adv, teacher, cfg = mixed_batch
    model.double()
    return model, adapter, rows, adv.double(), teacher, cfg


def _run_deltas(adapter, n_runs: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    return [{k: torch.randn(m.rank, generator=gen, dtype=torch.float64) * 0.03 for k, m in adapter.modules.items()}
            for _ in range(n_runs)]


def _own_pass(model, adapter, cfg, rows, adv, teacher, delta, idx):
    """The reference: run `delta` alone on the plain adapter, over its own rows `idx`."""
    params = adapter.params()
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(delta[k])
    for p in params.values():
        p.grad = None
    loss, kl = backward_pass(model, adapter, cfg, rows.select(idx), adv[idx], [teacher[i] for i in idx],
                             BatchState())
    return loss, kl, torch.cat([params[k].grad.flatten() for k in params])


@pytest.mark.parametrize("batching", ["padded", "sorted"])
def test_one_pass_over_three_runs_gives_each_run_its_own_loss_and_gradient(batch64, batching):
    model, adapter, rows, adv, teacher, cfg = batch64
    cfg = replace(cfg, train_batching=batching, micro_batch=2, micro_tokens=60 if batching == "sorted" else 0)
    start = {k: p.detach().clone() for k, p in adapter.params().items()}
    deltas = _run_deltas(adapter, 3)
    refs = [_own_pass(model, adapter, cfg, rows, adv, teacher, deltas[r],
                      [i for i, run in enumerate(RUN_OF_ROW.tolist()) if run == r]) for r in range(3)]
    with torch.no_grad():
        for k, p in adapter.params().items():
            p.copy_(start[k])
            p.grad = None
    fleet = Fleet(adapter, 3)
    for r in range(3):
        fleet.load_run(r, deltas[r])
    loss, kl = backward_pass(model, adapter, cfg, rows, adv, teacher, BatchState(),
                             per_rows=lambda mb: fleet.rows(RUN_OF_ROW[mb]))
    assert all(p.grad is None for p in adapter.params().values())     # the shared δS takes no gradient
    for r, (_, _, g_ref) in enumerate(refs):
        g = torch.cat([fleet.delta[k].grad[r].flatten() for k in adapter.params()])
        assert float(g_ref.norm()) > 0
        assert float((g - g_ref).norm() / g_ref.norm()) < 1e-10, r
    # the fixed denominator makes the runs' losses add up to the fleet's
    assert abs(loss - sum(ref[0] for ref in refs)) <= 1e-10 * sum(abs(ref[0]) for ref in refs)
    assert abs(kl - sum(ref[1] for ref in refs)) <= 1e-8 * sum(abs(ref[1]) for ref in refs)
    assert all(m.per_sample_delta_s is None for m in adapter.modules.values())   # restored on exit


def test_rows_outside_the_fleet_are_refused(batch64):
    _, adapter, *_ = batch64
    fleet = Fleet(adapter, 2)
    with pytest.raises(ValueError, match=r"runs in \[0, 2\)"), fleet.rows(torch.tensor([0, 2])):
        pass
    assert all(m.per_sample_delta_s is None for m in adapter.modules.values())


def test_fleet_bench_runs_on_the_cpu_and_its_ratio_follows_from_its_times(tmp_path):
    """bench/fleet_step.py's plumbing (the GPU figures are docs/benchmarks.md's): a row per R, the
    ratio is the two measured times', and the table a user reads holds them."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    out = tmp_path / "fleet.json"
    done = subprocess.run([sys.executable, str(root / "bench/fleet_step.py"), "--device", "cpu", "--size", "tiny",
                           "--runs", "1,2", "--rows", "4", "--prompt-tokens", "12", "--new-tokens", "6",
                           "--mean-new", "3", "--steps", "1", "--warmup", "0", "--json", str(out)],
                          cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["runs"] for r in rows] == [1, 2]
    for r in rows:
        assert min(r["train_separate_s"], r["train_fleet_s"], r["gen_each_s"], r["gen_fleet_s"]) > 0
        assert abs(r["train_ratio"] - r["train_separate_s"] / r["train_fleet_s"]) < 2e-3 * r["train_ratio"] + 1e-3
        assert abs(r["gen_ratio"] - r["gen_each_s"] / r["gen_fleet_s"]) < 2e-3 * r["gen_ratio"] + 1e-3
        assert f"| {r['runs']} | {r['train_separate_s']} | {r['train_fleet_s']} | {r['train_ratio']} |" in done.stdout


def test_fleet_decode_gives_each_run_its_own_merged_decode():
    """fast/fleet_decode.py: R = 2 runs' rows decoded as one batch on stacked folds give, row for row,
    the tokens and sampler log-probs of each run's own decode inside adapter.merged() (greedy, forced
    length, fp32 on the CPU; log-probs to 1e-5: a batched matmul rounds differently from a plain one).
    The two runs' own decodes differ, so a row decoded with the other run's weights fails it."""
    from projected_grpo.core.adapter import attach
    from projected_grpo.fast import fast_rollout, fleet_decode
    from projected_grpo.models import load_model
    from projected_grpo.training.rollout import encode_prompts, eos_token_ids
    from tests.test_batching import MESSAGES

    model, tok = load_model("tiny-qwen3", "float32")
    adapter = attach(model, "tiny-qwen3")
    gen = torch.Generator().manual_seed(3)
    deltas = [{k: torch.randn(m.rank, generator=gen) * 0.3 for k, m in adapter.modules.items()} for _ in range(2)]
    ids, mask = encode_prompts(tok, MESSAGES, "cpu")                     # 3 prompts a run
    eos, kw = eos_token_ids(model, tok), {"temperature": 0.0, "ignore_eos": True}
    own = []
    for d in deltas:
        with torch.no_grad():
            for k, prm in adapter.params().items():
                prm.copy_(d[k])
        with adapter.merged(), torch.no_grad():
            own.append(fast_rollout.generate(model, ids, mask, 10, eos, tok.pad_token_id, return_logprobs=True,
                                             cache=False, **kw))
    with torch.no_grad():
        for prm in adapter.params().values():
            prm.zero_()
    assert not torch.allclose(own[0][1], own[1][1], atol=1e-3)            # the runs decode differently
    fleet = Fleet(adapter, 2)
    for r in range(2):
        fleet.load_run(r, deltas[r])
    weights = fleet_decode.FleetWeights(model, fleet)
    out, logp = fleet_decode.generate(model, weights, ids.repeat(2, 1), mask.repeat(2, 1), 10, eos,
                                      tok.pad_token_id, cache=False, **kw)
    for r in range(2):
        rows = slice(3 * r, 3 * r + 3)
        assert torch.equal(out[rows], own[r][0]), r
        assert torch.allclose(logp[rows], own[r][1], atol=1e-5, rtol=0), r
    with pytest.raises(ValueError, match="do not split into 2 equal runs"):
        fleet_decode.generate(model, weights, ids, mask, 10, eos, tok.pad_token_id, **kw)
