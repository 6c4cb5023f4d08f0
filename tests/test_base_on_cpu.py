"""`--base-on-cpu` (DeltaSAdapter.keep_base_on_cpu, issue #32): the device holds one copy of the targeted
weights (W or one fold of it) instead of W beside a merged copy W' and sampling's saved originals. The
reference is the same model without it: every forward, gradient and whole run must agree bit for bit (fp32,
the same fold arithmetic), and the one copy must really be the only one."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from projected_grpo.cli import main
from projected_grpo.config import TIMING_KEYS, preset
from projected_grpo.core.adapter import attach
from projected_grpo.core.merged_delta import fold
from projected_grpo.models import chat_text, load_model
from projected_grpo.training import runio
from projected_grpo.training import train as train_mod
from projected_grpo.training.evaluate import EVAL_SAMPLES


def _policy(seed: int = 0):
    model, tok = load_model("tiny-qwen3", "float32")
    adapter = attach(model, "tiny-qwen3")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s.copy_(torch.randn(m.rank, generator=gen) * 0.05)
    ids = tok(chat_text(tok, [{"role": "user", "content": "def add(a, b):"}]), return_tensors="pt").input_ids
    return model, adapter, ids


def _passes(model, adapter, ids) -> dict:
    """Logits of every context, and ∂(sum of merged logits)/∂δS, in the order a training step uses them."""
    out = {}
    with torch.no_grad():
        with adapter.merged():
            out["sample"] = model(ids).logits
        with adapter.reference():
            out["reference"] = model(ids).logits
        out["hook"] = model(ids).logits
    with adapter.merged_training():
        logits = model(ids).logits
        logits.float().pow(2).mean().backward()
        with torch.no_grad():
            out["train"] = logits.detach()
    out["grad"] = torch.cat([m.delta_s.grad.flatten() for m in adapter.modules.values()])
    return out


def test_one_copy_gives_every_forward_and_the_gradient_bit_for_bit():
    model, adapter, ids = _policy()
    want = _passes(model, adapter, ids)
    model2, adapter2, _ = _policy()
    w0 = {k: m.base.weight.detach().clone() for k, m in adapter2.modules.items()}
    adapter2.keep_base_on_cpu()
    got = _passes(model2, adapter2, ids)
    for key in want:
        assert torch.equal(want[key], got[key]), key
    # inside the merged pass W' IS base.weight (no second tensor) and is the fold of the CPU copy of W
    with adapter2.merged_training():
        model2(ids)
        for k, m in adapter2.modules.items():
            assert m.w_merged is not None and m.w_merged.data_ptr() == m.base.weight.data_ptr()
            assert torch.equal(m.base.weight, fold(w0[k], m.u, m.vh, m.delta_s))
            assert torch.equal(m.base_cpu, w0[k])
    # the reference copies W back bit for bit; sampling's fold stays after merged() (nothing restored)
    with adapter2.reference():
        assert all(torch.equal(m.base.weight, w0[k]) for k, m in adapter2.modules.items())
    with adapter2.merged():
        pass
    assert all(torch.equal(m.base.weight, fold(w0[k], m.u, m.vh, m.delta_s)) and m.held is not None
               for k, m in adapter2.modules.items())


SMOKE = replace(preset("smoke"), n_problems=4, max_new_tokens=16, steps=2, grade_workers=2, vhack_m=2,
                eval_samples=2, delta_s_impl="merged", beta=1e-3, num_iterations=2, arm="projected")


def test_a_run_with_base_on_cpu_is_the_run_without(tmp_path):
    """β > 0 (the reference between sampling and training) and two passes per batch (δS changes between
    them): the samples, metrics (timings aside) and final δS are bit-identical. (A seeded random V file:
    the pair extraction is beside the point here.)"""
    from vfiles import random_v

    cfg = replace(SMOKE, v_hack=str(random_v(tmp_path / "v.safetensors", SMOKE)))
    train_mod.train(cfg, tmp_path / "plain", progress=False)
    train_mod.train(replace(cfg, base_on_cpu=True), tmp_path / "cpu", progress=False)
    for name in (runio.SAMPLES, EVAL_SAMPLES):
        a, b = (runio.read_jsonl(tmp_path / d / name) for d in ("plain", "cpu"))
        assert len(a) == len(b) > 0 and [r["completion"] for r in a] == [r["completion"] for r in b]
    a, b = (runio.read_jsonl(tmp_path / d / runio.METRICS) for d in ("plain", "cpu"))
    strip = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in a]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in b]
    assert any(r.get("kl") for r in a)                              # the reference was used
    da, db = (load_file(tmp_path / d / "delta_s.safetensors") for d in ("plain", "cpu"))
    assert max(float(t.abs().max()) for t in da.values()) > 0 and all(torch.equal(da[k], db[k]) for k in da)


def test_base_on_cpu_is_refused_where_the_device_needs_w(tmp_path, capsys):
    assert main(["train", "--preset", "smoke", "--base-on-cpu", "true", "--out", str(tmp_path / "r")]) == 2
    assert "--base-on-cpu needs --delta-s-impl merged" in capsys.readouterr().err
    with pytest.raises(Exception, match="--base-on-cpu: arm routing_v keeps a quarantine"):
        train_mod.train(replace(SMOKE, arm="routing_v", base_on_cpu=True, beta=0.0), tmp_path / "q",
                        progress=False)
    assert not (tmp_path / "r").exists() and not (tmp_path / "q").exists()     # nothing blocks the retry


def test_the_step_bench_takes_base_on_cpu(tmp_path):
    """bench/grpo_step.py --base-on-cpu (the 7B memory measurement of issue #32) runs its plumbing here."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "grpo_step.py"
    spec = importlib.util.spec_from_file_location("grpo_step_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "rows.jsonl"
    assert bench.main(["--device", "cpu", "--sizes", "tiny", "--trl-sizes", "", "--prompts", "1", "--group", "2",
                       "--new-tokens", "2", "--micro-batch", "2", "--steps", "1", "--warmup", "0", "--beta", "1e-3",
                       "--delta-s-impl", "merged", "--base-on-cpu", "--json", str(out)]) == 0
    row = json.loads(out.read_text().splitlines()[0])
    assert row["side"] == "ours" and row["base_on_cpu"] is True and "error" not in row
