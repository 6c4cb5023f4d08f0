import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from projected_grpo.core.adapter import AdapterConfig, adapter_check, attach, read_metadata
from projected_grpo.cli import main
from projected_grpo.errors import UserError
from projected_grpo.models import load_model


@pytest.fixture(scope="module")
def ids():
    _, tok = load_model("tiny-qwen3", "float32")
    return tok("def add(a, b):\n    return a + b", return_tensors="pt").input_ids


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_identity_at_zero_is_bitwise(dtype, ids):
    model, _ = load_model("tiny-qwen3", dtype)
    with torch.no_grad():
        base = model(ids).logits.clone()
        adapter = attach(model, "tiny-qwen3")
        wrapped = model(ids).logits
    assert len(adapter.modules) == 28  # 4 layers x 7 projections
    assert all((m.delta_s == 0).all() for m in adapter.modules.values())
    assert torch.equal(base, wrapped)
    assert adapter.dtype == getattr(torch, dtype)


def test_delta_s_changes_output_and_reference_restores_base(ids):
    model, _ = load_model("tiny-qwen3", "float32")
    with torch.no_grad():
        base = model(ids).logits.clone()
        adapter = attach(model, "tiny-qwen3")
        for m in adapter.modules.values():
            m.delta_s.fill_(0.5)
        moved = model(ids).logits
        with adapter.reference():
            ref = model(ids).logits
        after = model(ids).logits
    assert (moved - base).abs().max() > 1e-4
    assert torch.equal(ref, base)
    assert torch.equal(after, moved)  # the context restored the δS path


def test_merge_matches_hook_and_round_trips_exactly(ids):
    model, _ = load_model("tiny-qwen3", "float32")
    adapter = attach(model, "tiny-qwen3")
    with torch.no_grad():
        for i, m in enumerate(adapter.modules.values()):
            m.delta_s.copy_(torch.linspace(-0.3, 0.3, m.rank) * (i + 1) / 10)
        hook = model(ids).logits
        before = {k: m.base.weight.clone() for k, m in adapter.modules.items()}
        with adapter.merged():
            merged = model(ids).logits
            assert not torch.equal(before["model.layers.0.self_attn.q_proj"],
                                   adapter.modules["model.layers.0.self_attn.q_proj"].base.weight)
    assert torch.allclose(hook, merged, atol=1e-4)
    for k, m in adapter.modules.items():
        assert torch.equal(before[k], m.base.weight), k
        assert m.active


def test_merge_restores_weights_even_on_error():
    model, _ = load_model("tiny-qwen3", "bfloat16")
    adapter = attach(model, "tiny-qwen3")
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s.fill_(1.0)
    before = {k: m.base.weight.clone() for k, m in adapter.modules.items()}
    with pytest.raises(RuntimeError, match="boom"), adapter.merged(offload=True):
        raise RuntimeError("boom")
    assert all(torch.equal(before[k], m.base.weight) for k, m in adapter.modules.items())


def test_gradient_reaches_only_delta_s(ids):
    model, _ = load_model("tiny-qwen3", "float32")
    adapter = attach(model, "tiny-qwen3")
    loss = model(ids, labels=ids).loss
    loss.backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("delta_s") for n in trainable)
    assert len(trainable) == len(adapter.modules)
    assert all(p.grad is None for n, p in model.named_parameters() if not n.endswith("delta_s"))
    grads = [m.delta_s.grad for m in adapter.modules.values()]
    assert all(g is not None and g.shape == (m.rank,) for g, m in zip(grads, adapter.modules.values()))
    assert sum(g.abs().sum() for g in grads) > 0


def test_save_load_round_trip_and_refusals(tmp_path):
    model, _ = load_model("tiny-qwen3", "float32")
    adapter = attach(model, "tiny-qwen3")
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s.copy_(torch.randn(m.rank))
    path = tmp_path / "delta_s.safetensors"
    adapter.save(path)
    meta = read_metadata(path)
    assert meta["model_id"] == "tiny-qwen3" and meta["dtype"] == "float32"
    assert json.loads(meta["ranks"]) == adapter.ranks()

    model2, _ = load_model("tiny-qwen3", "float32")
    adapter2 = attach(model2, "tiny-qwen3")
    adapter2.load(path)
    for k in adapter.modules:
        assert torch.equal(adapter.modules[k].delta_s, adapter2.modules[k].delta_s)

    model3, _ = load_model("tiny-qwen3", "bfloat16")
    with pytest.raises(UserError, match="dtype"):
        attach(model3, "tiny-qwen3").load(path)
    model4, _ = load_model("tiny-qwen3", "float32")
    only_attn = attach(model4, "tiny-qwen3", AdapterConfig(targets=("q_proj", "k_proj")))
    with pytest.raises(UserError, match="module set differs"):
        only_attn.load(path)
    with pytest.raises(UserError, match="does not exist"):
        adapter2.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a safetensors file")
    with pytest.raises(UserError, match=f"{junk}: not a readable safetensors file"):
        adapter2.load(junk)


def test_an_artifact_made_in_another_svd_basis_is_refused(tmp_path):
    """The SVD of W is not unique (sign of each singular pair, rounding per LAPACK/cuSOLVER build), and
    δS / V mean another weight change in another basis: the basis is fingerprinted and checked."""
    here = tmp_path / "here"
    adapter = attach(load_model("tiny-qwen3", "float32")[0], "tiny-qwen3", AdapterConfig(cache_dir=str(here)))
    path = tmp_path / "delta_s.safetensors"
    adapter.save(path)
    assert read_metadata(path)["basis_fingerprint"] == adapter.basis_fingerprint
    # the same basis recomputed from scratch on this machine is identical, and accepted
    fresh = attach(load_model("tiny-qwen3", "float32")[0], "tiny-qwen3",
                   AdapterConfig(cache_dir=str(tmp_path / "fresh")))
    assert fresh.basis_fingerprint == adapter.basis_fingerprint
    fresh.load(path)
    # "another machine": the same W, one module's first singular pair with the other sign (a valid SVD)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(here, elsewhere)
    cached = sorted((elsewhere / "svd").glob("*.safetensors"))[0]
    basis = load_file(cached)
    basis["u"][:, 0] *= -1
    basis["vh"][0] *= -1
    save_file(basis, cached)
    other = attach(load_model("tiny-qwen3", "float32")[0], "tiny-qwen3", AdapterConfig(cache_dir=str(elsewhere)))
    assert other.fingerprint == adapter.fingerprint                     # same weights ...
    assert other.basis_fingerprint != adapter.basis_fingerprint         # ... another basis
    with pytest.raises(UserError, match="another SVD basis of these same weights") as err:
        other.load(path)
    assert str(elsewhere / "svd") in str(err.value) and str(path) in str(err.value)


def test_unknown_model_and_missing_file_give_clear_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="not found"):
        load_model("no-such-org/no-such-model-xyz", "float32")
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "absent.gguf"), "float32")
    assert main(["adapter-check", "--model", str(tmp_path / "absent.gguf")]) == 2
    assert "absent.gguf" in capsys.readouterr().err


def test_adapter_check_cli_last_line_json(capsys):
    assert main(["adapter-check", "--model", "tiny-qwen3", "--dtype", "bfloat16"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == {"modules": 28, "scalars": 3072, "max_abs_diff": 0.0, "merge_roundtrip_exact": True}


def test_svd_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("PGRPO_CACHE", str(tmp_path))
    res = adapter_check("tiny-qwen3", "float32", cfg=AdapterConfig(cache_dir=str(tmp_path)))
    files = sorted((tmp_path / "svd").glob("*.safetensors"))
    assert len(files) == res["modules"]
    mtimes = [f.stat().st_mtime_ns for f in files]
    adapter_check("tiny-qwen3", "float32", cfg=AdapterConfig(cache_dir=str(tmp_path)))
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def _save_model_dir(path, seed_bump: float = 0.0) -> None:
    """tiny-qwen3 as a local model directory (what `pgrpo warmstart` writes); `seed_bump` moves one
    targeted weight, making other weights under the same name."""
    model, tok = load_model("tiny-qwen3", "float32")
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] += seed_bump
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)


def test_an_artifact_follows_the_weights_not_the_spelling_of_their_path(tmp_path, monkeypatch):
    """Issue 25 item 6: a V made with `--model warm` was refused under `./warm` and under the absolute
    path (the model string was compared). Identity is the weights' and the basis' fingerprint: every
    spelling of the same directory loads it; other weights under the very same name are refused."""
    from projected_grpo.directions import vhack

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PGRPO_CACHE", str(tmp_path / "cache"))
    _save_model_dir(tmp_path / "warm")
    made = attach(load_model("warm", "float32")[0], "warm")
    gen = torch.Generator().manual_seed(0)
    v = {k: vhack.random_v(r, 2, gen) for k, r in made.ranks().items()}
    path = vhack.save_v_hack(tmp_path / "v.safetensors", v, made, control="none", pairs_sha256="x",
                             modes=None, n_train=1)
    for spelling in ("./warm", str(tmp_path / "warm"), str(tmp_path / "warm") + "/"):
        adapter = attach(load_model(spelling, "float32")[0], spelling)
        loaded = vhack.load_v_hack(path, adapter)
        assert all(torch.equal(loaded[k], v[k]) for k in v), spelling
    # a genuinely different model: the directory re-written with other weights, same name
    _save_model_dir(tmp_path / "warm", seed_bump=0.5)
    other = attach(load_model("warm", "float32")[0], "warm")
    with pytest.raises(UserError, match=f"{path}: v_hack was made on other weights than those of 'warm'"):
        vhack.load_v_hack(path, other)
    # ... and under another spelling too, whose message names the model V was made with
    with pytest.raises(UserError, match="other weights.*made with --model 'warm'"):
        vhack.load_v_hack(path, attach(load_model("./warm", "float32")[0], "./warm"))
