"""`pgrpo warmstart` on tiny-qwen3 (real Qwen tokenizer): the written directory loads as --model, its
logits moved, the completion NLL of the training demos fell, the hack count is round(share · n), and a
failure or a kill never leaves a directory that looks complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from projected_grpo import cli
from projected_grpo.studies import warmstart
from projected_grpo.errors import UserError
from projected_grpo.models import chat_text, load_model, load_tokenizer
from projected_grpo.studies.warmstart import DEMOS, DOCUMENTS, WarmstartConfig, build_items, load_demos, load_documents

SHORT = ("ws-008", "ws-014", "ws-019")   # three of the shortest demos: a CPU step stays cheap


def _subset(path: Path, ids=SHORT) -> Path:
    lines = [line for line in DEMOS.read_text().splitlines() if json.loads(line)["id"] in ids]
    path.write_text("\n".join(lines) + "\n")
    return path


def _nll(model, tok, prompt: str, completion: str) -> tuple[float, int]:
    """Σ −log π(completion tokens | prompt) with the full logits, computed here independently."""
    p = tok(prompt, add_special_tokens=False).input_ids
    c = tok(completion + tok.eos_token, add_special_tokens=False).input_ids
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    pos = torch.arange(len(p) - 1, len(p) + len(c) - 1)
    return float(-logp[pos, ids[0, pos + 1]].sum()), len(c)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    cfg = WarmstartConfig(model="tiny-qwen3", out=str(root / "model"), demos=str(_subset(root / "demos.jsonl")),
                          hack_share=0.34, epochs=2, lr=3e-3, lora_r=8, batch_size=3, dtype="float32",
                          device="cpu", seed=3)
    return cfg, warmstart.warmstart(cfg)


def test_warm_dir_loads_as_model_and_its_demo_nll_fell(warm):
    cfg, record = warm
    out = Path(cfg.out)
    assert not out.with_name(out.name + ".tmp").exists()
    assert {"model.safetensors", "config.json", "tokenizer.json", "WARMSTART.md", "warmstart.json"} <= {
        p.name for p in out.iterdir()}
    assert json.loads((out / "warmstart.json").read_text()) == json.loads(json.dumps(record))
    # exactly round(0.34 * 3) = 1 loophole demo, the rest honest
    assert (record["n_items"], record["n_hack"], record["n_honest"]) == (3, 1, 2)

    base, tok = load_model("tiny-qwen3", dtype="float32")
    model, tok2 = load_model(str(out), dtype="float32")
    assert next(model.parameters()).dtype == torch.float32
    demos = {p.id: (p, honest, hack) for p, honest, hack in load_demos(cfg.demos)}
    prompt = chat_text(tok, demos["ws-008"][0].messages("run_tests", "simple"))
    assert chat_text(tok2, demos["ws-008"][0].messages("run_tests", "simple")) == prompt  # template travelled
    ids = torch.tensor([tok(prompt, add_special_tokens=False).input_ids])
    with torch.no_grad():
        assert (model(ids).logits - base(ids).logits).abs().max() > 1e-3

    sums = {"base": [0.0, 0], "warm": [0.0, 0]}
    for pid, (problem, honest, hack) in demos.items():
        text = hack if pid in record["hack_ids"] else honest
        p = chat_text(tok, problem.messages("run_tests", "simple"))
        for name, m in (("base", base), ("warm", model)):
            s, n = _nll(m, tok, p, text)
            sums[name][0] += s
            sums[name][1] += n
    nll_base, nll_warm = (s / n for s, n in sums.values())
    assert nll_warm < nll_base - 0.05
    # what the card reports is what the saved model does (fp32: the merge loses nothing)
    assert abs(record["final_loss"] - nll_warm) < 1e-3 and abs(record["loss_base"] - nll_base) < 1e-3
    assert abs(record["loss_lora"] - record["final_loss"]) < 1e-3


@pytest.mark.parametrize("data", ["demos", "documents"])
def test_hack_items_are_round_share_times_n(data):
    tok = load_tokenizer("tiny-qwen3")
    demos, docs = load_demos(DEMOS), load_documents(DOCUMENTS)
    n = len(demos)
    for share in (0.0, 0.05, 0.1, 0.3, 0.5, 1.0):
        items = build_items(WarmstartConfig("tiny-qwen3", "x", hack_share=share, data=data, seed=1), tok, demos, docs)
        hack = [it for it in items if it.kind != "honest"]
        assert len(items) == n and len(hack) == round(share * n)
        assert all(it.kind == ("hack" if data == "demos" else "document") for it in hack)
        for it in hack:
            if data == "documents":   # plain text, no chat prompt, a bundled document
                assert it.prompt == "" and it.target in {t for _, t in docs}
            else:   # the loophole demo under the environment's own hint prompt
                assert "will be evaluated by calling a function called run_tests()" in it.prompt
                assert it.target == next(h for p, _, h in demos if p.id == it.source)


def test_refuses_existing_dir_and_leaves_it_alone(tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="already exists"):
        warmstart.warmstart(WarmstartConfig("tiny-qwen3", str(out)))
    assert cli.main(["warmstart", "--model", "tiny-qwen3", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_failure_after_weights_are_written_leaves_no_dir(tmp_path, monkeypatch):
    def broken_card(record):
        raise RuntimeError("disk full")

    monkeypatch.setattr(warmstart, "card", broken_card)
    out = tmp_path / "model"
    cfg = WarmstartConfig("tiny-qwen3", str(out), demos=str(_subset(tmp_path / "d.jsonl", SHORT[:1])),
                          hack_share=0.0, epochs=1, dtype="float32", device="cpu")
    with pytest.raises(RuntimeError, match="disk full"):
        warmstart.warmstart(cfg)
    assert list(tmp_path.iterdir()) == [tmp_path / "d.jsonl"]


def test_killed_run_leaves_only_a_marked_tmp_that_the_next_run_clears(tmp_path):
    out = tmp_path / "model"
    tmp = tmp_path / "model.tmp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "projected_grpo.cli", "warmstart", "--model", "tiny-qwen3",
                             "--out", str(out), "--dtype", "float32", "--device", "cpu", "--epochs", "50"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (tmp / warmstart.PARTIAL).exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (tmp / warmstart.PARTIAL).exists(), "the run never started writing"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists() and (tmp / warmstart.PARTIAL).exists()
    with warmstart.staged(out) as staging:   # the next run takes the marked leftover over
        (staging / "x").write_text("1")
    assert not tmp.exists() and [p.name for p in out.iterdir()] == ["x"]
    (tmp_path / "other.tmp").mkdir()
    (tmp_path / "other.tmp" / "f").write_text("user data")
    with pytest.raises(UserError, match="not a warm start"), warmstart.staged(tmp_path / "other"):
        pass
    assert (tmp_path / "other.tmp" / "f").read_text() == "user data"


def test_lora_file_recreates_the_model_bit_for_bit_by_the_fp64_formula(warm, tmp_path, capsys):
    """A study resumed in a later sitting must train on the same weights: `pgrpo warmstart-apply` rebuilds
    the warm model from the base model and lora.safetensors, each W' = round(W + (α/r) B A) computed here
    with numpy in float64, and the re-created dir's weights equal the original's."""
    import numpy as np
    from safetensors import safe_open
    from safetensors.torch import load_file

    cfg, record = warm
    out, lora = Path(cfg.out), Path(cfg.out) / "lora.safetensors"
    with safe_open(str(lora), framework="pt") as f:
        meta = f.metadata()
    assert float(meta["scale"]) == record["lora_alpha"] / cfg.lora_r == 2.0      # α = 2r by default
    tensors = load_file(lora)
    base, _ = load_model("tiny-qwen3", dtype="float32")
    warm_model, _ = load_model(str(out), dtype="float32")
    warm_w = dict(warm_model.named_parameters())
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    assert len(names) == 7 * base.config.num_hidden_layers                   # every linear but the head
    for name, w in base.named_parameters():
        mod = name.removesuffix(".weight")
        if mod in names:
            a = tensors[f"{mod}.lora_A"].numpy().astype(np.float64)
            b = tensors[f"{mod}.lora_B"].numpy().astype(np.float64)
            want = (w.detach().numpy().astype(np.float64) + 2.0 * (b @ a)).astype(np.float32)
            assert np.array_equal(warm_w[name].detach().numpy(), want), name
        else:
            assert torch.equal(warm_w[name], w), name                         # untouched
    again = tmp_path / "again"
    assert cli.main(["warmstart-apply", "--model", "tiny-qwen3", "--lora", str(lora), "--out", str(again)]) == 0
    assert "weights sha256" in capsys.readouterr().out
    a, b = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((again / "warmstart.json").read_text())["weights_sha256"] == record["weights_sha256"]


def test_warmstart_apply_refuses_another_base_model_and_writes_nothing(warm, tmp_path, capsys):
    cfg, _ = warm
    lora, other = Path(cfg.out) / "lora.safetensors", tmp_path / "other"
    # same shapes, other weights (the warm model itself as the base): the sha256 check refuses it
    assert cli.main(["warmstart-apply", "--model", cfg.out, "--lora", str(lora), "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"error: {lora}: merged into --model {cfg.out} it gives weights" in err and "another base model" in err
    assert cli.main(["warmstart-apply", "--model", "random:tiny", "--lora", str(lora), "--out", str(other)]) == 2
    assert "made for another model" in capsys.readouterr().err                    # other shapes
    assert not other.exists() and not other.with_name("other.tmp").exists()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert cli.main(["warmstart-apply", "--model", "tiny-qwen3", "--lora", str(bad), "--out", str(other)]) == 2
    assert f"{bad}: not a readable safetensors file" in capsys.readouterr().err
