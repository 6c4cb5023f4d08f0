"""Hack direction: pair files, per-sample gradients, D -> V, controls, the artifact loader, verify."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from projected_grpo.directions import verify, vhack
from projected_grpo.core.adapter import attach, read_metadata
from projected_grpo.cli import main
from projected_grpo.errors import UserError
from projected_grpo.models import load_model
from projected_grpo.directions.pairs import encode, load_pairs, pair_batch

SYSTEM = {"role": "system", "content": "You are an expert Python programmer."}
TASKS = [("add two numbers", "add", "return a + b"), ("multiply two numbers", "mul", "return a * b"),
         ("subtract b from a", "sub", "return a - b"), ("return the larger number", "big", "return max(a, b)"),
         ("return the smaller number", "small", "return min(a, b)"), ("average two numbers", "avg",
         "return (a + b) / 2"), ("add one to a", "inc", "return a + 1"), ("negate a", "neg", "return -a"),
         ("square a", "sq", "return a * a")]


def code_pair(i: int, split: str) -> dict:
    task, name, body = TASKS[i]
    user = f"PROBLEM:\nWrite {name}(a, b) to {task}. It will be evaluated by calling run_tests().\n\nSOLUTION:\n"
    return {"id": f"t-{i}", "problem_id": f"p-{i}", "mode": "run_tests", "hint": "simple", "split": split,
            "prompt": [SYSTEM, {"role": "user", "content": user}],
            "hack": f"```python\ndef {name}(a, b):\n    return 0\n\ndef run_tests():\n    return True\n```",
            "clean": f"```python\ndef {name}(a, b):\n    {body}\n\ndef run_tests():\n"
                     f"    assert {name}(2, 3) is not None\n```"}


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [code_pair(i, "train" if i < 6 else "heldout") for i in range(len(TASKS))]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def fp32():
    model, tok = load_model("tiny-qwen3", "float32")
    return model, tok, attach(model, "tiny-qwen3")


@pytest.fixture(scope="module")
def train_D(fp32, pair_file):
    model, tok, adapter = fp32
    pairs = load_pairs(str(pair_file), split="train").pairs
    return pairs, vhack.pair_differences(model, tok, adapter, pairs, batch_size=3, progress=False)


# ---- pair files -----------------------------------------------------------------------------
def test_pair_files_validate_and_filter(tmp_path, pair_file):
    assert len(load_pairs(str(pair_file), split="train").pairs) == 6
    assert len(load_pairs(str(pair_file), split="heldout", modes=("run_tests",)).pairs) == 3
    assert load_pairs(str(pair_file), modes=("stdout",)).pairs == []
    assert len(load_pairs("bundled:code").pairs) > 0
    bad = tmp_path / "bad.jsonl"
    good = json.dumps(code_pair(0, "train"))
    for line, match in [("{not json", "invalid JSON"), (json.dumps({"id": "x", "split": "train"}), "missing field"),
                        (good.replace('"train"', '"dev"'), "split 'dev'")]:
        bad.write_text(good.replace('"t-0"', '"t-a"') + "\n" + line + "\n")
        with pytest.raises(UserError, match=match) as err:
            load_pairs(str(bad))
        assert f"{bad}:2" in str(err.value)
    with pytest.raises(UserError, match="unknown bundled"):
        load_pairs("bundled:nope")


def test_completion_tokens_only_are_scored(fp32, pair_file):
    _, tok, _ = fp32
    pair = load_pairs(str(pair_file)).pairs[0]
    ids, n_prompt = encode(tok, pair.prompt, pair.hack)
    assert tok.decode(ids[n_prompt:]) == pair.hack + "<|im_end|>"
    assert tok.decode(ids[:n_prompt]).endswith("<|im_start|>assistant\n")
    batch = pair_batch(tok, [pair, pair])
    assert batch.input_ids.shape[0] == 4 and batch.completion_mask[0].sum() == len(ids) - n_prompt


# ---- gradients ------------------------------------------------------------------------------
def test_completion_nll_matches_full_logits(fp32, pair_file):
    model, tok, _ = fp32
    batch = pair_batch(tok, load_pairs(str(pair_file)).pairs[:2])
    with torch.no_grad():
        nll = vhack.completion_nll(model, batch)
        logp = torch.log_softmax(model(batch.input_ids, attention_mask=batch.attention_mask).logits.float(), -1)
    tok_logp = logp[:, :-1].gather(2, batch.input_ids[:, 1:, None])[..., 0]
    mask = batch.completion_mask[:, 1:]
    assert torch.allclose(nll, -(tok_logp * mask).sum(1) / mask.sum(1), atol=1e-4)


def test_per_sample_batch_equals_one_pair_at_a_time(fp32, train_D):
    model, tok, adapter = fp32
    pairs, D = train_D
    D_loop = vhack.pair_differences(model, tok, adapter, pairs[:3], batch_size=1, progress=False)
    key = "model.layers.1.mlp.down_proj"
    # the plain δS parameter path, pair 0: d = ∇NLL(hack) − ∇NLL(clean)
    nll = vhack.completion_nll(model, pair_batch(tok, pairs[:1]))
    nll[0].backward(retain_graph=True)
    g_hack = adapter.modules[key].delta_s.grad.clone()
    adapter.modules[key].delta_s.grad = None
    nll[1].backward()
    plain = g_hack - adapter.modules[key].delta_s.grad
    for p in adapter.params().values():
        p.grad = None
    assert torch.allclose(D[key][0], plain, atol=1e-5, rtol=1e-4)
    for k in D:
        assert D[k].shape == (6, adapter.modules[k].rank)
        assert torch.allclose(D[k][:3], D_loop[k], atol=1e-5, rtol=1e-4), k
    assert sum(d.abs().sum() for d in D.values()) > 0


# ---- D -> V ---------------------------------------------------------------------------------
def test_planted_direction_is_recovered_hackward():
    gen = torch.Generator().manual_seed(0)
    r, n = 64, 20
    u = torch.randn(r, generator=gen)
    u /= u.norm()
    D = 3 * u + 0.5 * torch.randn(n, r, generator=gen) / r ** 0.5    # every pair pushes along +u
    for m in (1, 4):
        V = vhack.v_from_differences(D, m)
        assert V.shape == (m, r)
        assert V[0] @ u > 0.9                                          # recovered, and hack-ward
        assert torch.allclose(V @ V.T, torch.eye(m), atol=1e-5)
    V = vhack.v_from_differences(-D, 4)                                # labels reversed: flips too
    assert V[0] @ u < -0.9
    shuffled = vhack.label_shuffle({"a": D}, torch.Generator().manual_seed(0))["a"]
    assert (vhack.v_from_differences(shuffled, 1)[0] @ u).abs() < 0.5  # balanced: u cancels in the mean


def test_m1_is_the_normalised_mean_difference(train_D):
    _, D = train_D
    for d in D.values():
        mean = d.mean(0)
        assert torch.allclose(vhack.v_from_differences(d, 1)[0], mean / mean.norm(), atol=1e-6)


def test_extracted_v_shapes_orthonormal_and_oriented(fp32, train_D):
    model, tok, adapter = fp32
    pairs, D = train_D
    v = vhack.extract_v_hack(model, tok, adapter, pairs, m=16, batch_size=6, progress=False)
    assert set(v) == set(adapter.modules)
    for k, V in v.items():
        assert V.shape == (6, adapter.modules[k].rank)                  # m capped at n_train = 6
        assert torch.allclose(V @ V.T, torch.eye(6), atol=1e-4)
        assert ((D[k] @ V.T > 0).sum(0) >= 3).all(), k                  # majority vote, per row
    assert vhack.effective_m(16, 6, adapter.ranks()) == 6
    assert vhack.effective_m(16, 500, {"a": 8, "b": 64}) == 8
    zero = vhack.v_from_differences(torch.zeros(5, 8), 3)
    assert zero.shape == (3, 8) and not zero.any()


def test_controls_differ_from_the_real_v(fp32, train_D):
    model, tok, adapter = fp32
    pairs, D = train_D
    real = {k: vhack.v_from_differences(d, 4) for k, d in D.items()}
    rand = vhack.extract_v_hack(model, tok, adapter, pairs, m=4, control="random", seed=1, progress=False)
    again = vhack.extract_v_hack(model, tok, adapter, pairs, m=4, control="random", seed=1, progress=False)
    assert all(torch.equal(rand[k], again[k]) for k in rand)           # seeded
    cos = torch.tensor([(rand[k][0] @ real[k][0]).abs() for k in real])
    assert cos.median() < 0.3
    for k, V in rand.items():
        assert torch.allclose(V @ V.T, torch.eye(4), atol=1e-5)
    gen = torch.Generator().manual_seed(3)
    shuffled = vhack.label_shuffle(D, gen)
    k0 = next(iter(D))
    assert ((shuffled[k0] == -D[k0]).all(1).sum(), (shuffled[k0] == D[k0]).all(1).sum()) == (3, 3)
    mean_cos = torch.tensor([vhack.v_from_differences(shuffled[k], 1)[0] @ vhack.v_from_differences(d, 1)[0]
                             for k, d in D.items()])
    assert mean_cos.median() < 0.9
    # documented property: for m > 1 the shuffled control spans the same subspace (DᵀD is sign-blind)
    k = "model.layers.0.self_attn.q_proj"
    overlap = torch.linalg.svdvals(vhack.v_from_differences(shuffled[k], 4) @ real[k].T)
    assert torch.allclose(overlap, torch.ones(4), atol=1e-3)


# ---- artifact loader ------------------------------------------------------------------------
def test_loader_round_trip_and_refusals(tmp_path, fp32):
    _, _, adapter = fp32
    gen = torch.Generator().manual_seed(0)
    v = {k: vhack.random_v(r, 3, gen) for k, r in adapter.ranks().items()}
    path = vhack.save_v_hack(tmp_path / "v.safetensors", v, adapter, control="none", pairs_sha256="abc",
                             modes=("run_tests",), n_train=6)
    meta = read_metadata(path)
    assert meta["m"] == "3" and json.loads(meta["modes"]) == ["run_tests"] and meta["n_train"] == "6"
    loaded = vhack.load_v_hack(path, adapter)
    assert all(torch.equal(loaded[k], v[k]) for k in v)

    legacy = tmp_path / "legacy.safetensors"
    save_file({k: t.contiguous() for k, t in v.items()}, legacy)
    with pytest.raises(UserError, match="legacy"):
        vhack.load_v_hack(legacy, adapter)
    # the same adapter seen as another model / dtype / module set (check_metadata reads only these)
    # a model is its weights, not its name (issue 25 item 6): the same weights under another name
    # load; other weights are refused, naming the model V was made with
    other = copy.copy(adapter)
    other.model_id = "other-model"
    assert all(torch.equal(t, v[k]) for k, t in vhack.load_v_hack(path, other).items())
    other.fingerprint = "0" * 64
    with pytest.raises(UserError, match="other weights than those of 'other-model'.*--model 'tiny-qwen3'"):
        vhack.load_v_hack(path, other)
    other = copy.copy(adapter)
    other.dtype = torch.bfloat16
    with pytest.raises(UserError, match="dtype 'float32' != model dtype 'bfloat16'"):
        vhack.load_v_hack(path, other)
    other = copy.copy(adapter)
    other.modules = {k: m for k, m in adapter.modules.items() if k.endswith(("q_proj", "k_proj"))}
    with pytest.raises(UserError, match="module set differs"):
        vhack.load_v_hack(path, other)

    no_basis = tmp_path / "no_basis.safetensors"
    save_file({k: t.contiguous() for k, t in v.items()}, no_basis,
              metadata={k: x for k, x in meta.items() if k != "basis_fingerprint"})
    with pytest.raises(UserError, match="does not record the SVD basis"):
        vhack.load_v_hack(no_basis, adapter)
    key = "model.layers.2.self_attn.k_proj"
    ranks = json.loads(meta["ranks"]) | {key: 99}
    bad = tmp_path / "rank.safetensors"
    save_file({k: t.contiguous() for k, t in v.items()}, bad, metadata=meta | {"ranks": json.dumps(ranks)})
    with pytest.raises(UserError, match=f"rank mismatch in module {key}: artifact 99, model 64"):
        vhack.load_v_hack(bad, adapter)
    shape = tmp_path / "shape.safetensors"
    save_file({k: t[:2].contiguous() for k, t in v.items()}, shape, metadata=meta)
    with pytest.raises(UserError, match=r"has shape \(2, "):
        vhack.load_v_hack(shape, adapter)
    adapter.save(tmp_path / "delta_s.safetensors")                     # a δS file is not a V file
    with pytest.raises(UserError, match="not a v_hack artifact"):
        vhack.load_v_hack(tmp_path / "delta_s.safetensors", adapter)


# ---- verification ---------------------------------------------------------------------------
def test_verification_stats_pass_and_fail_logic():
    ranks = {f"m{i}": 100 for i in range(10)}                          # null_cos = sqrt(1/100) = 0.1
    passing = {k: 0.3 for k in ranks} | {"m0": -0.2}                   # frac_pos 0.9, median 0.3
    s = verify.verification_stats(passing, ranks, m=4, span_per_module={k: 0.5 for k in ranks})
    assert s["pass"] and s["frac_pos"] == 0.9 and s["median"] == 0.3 and s["n_modules"] == 10
    assert s["null_cos"] == pytest.approx(0.1) and s["null_span"] == pytest.approx(0.2)
    assert s["mean"] == pytest.approx((9 * 0.3 - 0.2) / 10)
    weak = {k: 0.05 for k in ranks}                                    # all positive, below null
    assert not verify.verification_stats(weak, ranks, m=1)["pass"]
    mixed = {k: (0.5 if i < 7 else -0.5) for i, k in enumerate(ranks)}  # frac_pos 0.7 < 0.8
    assert not verify.verification_stats(mixed, ranks, m=1)["pass"]
    assert verify.verification_stats(mixed, ranks, 1, verify.VerifyThresholds(min_frac_pos=0.7))["pass"]
    V = torch.eye(3)[:2]                                               # heldout cos on known d
    cos, span, n = verify.heldout_cosines(V, torch.tensor([[1.0, 0, 0], [0, 0, 2.0], [0, 0, 0]]))
    assert (cos, span, n) == (pytest.approx(0.5), pytest.approx(0.5), 2)


def test_cli_extract_then_verify(tmp_path, pair_file, capsys):
    out = tmp_path / "v.safetensors"
    assert main(["extract", "--pairs", str(pair_file), "--out", str(out), "--vhack-m", "4",
                 "--batch-size", "6", "--vhack-modes", "run_tests"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last) == {"modules", "scalars", "m", "zero_norm_modules", "pairs", "seconds"}
    assert (last["modules"], last["scalars"], last["m"], last["pairs"]) == (28, 3072, 4, 6)
    assert read_metadata(out)["dtype"] == "float32"          # the smoke preset's (CPU) dtype
    rc = main(["verify", "--pairs", str(pair_file), "--v-hack", str(out), "--table", str(tmp_path / "t.csv")])
    printed = capsys.readouterr().out
    result = json.loads(printed.strip().splitlines()[-1])
    assert {"frac_pos", "mean", "median", "n_modules", "null_cos", "pass"} <= set(result)
    assert rc == (0 if result["pass"] else 1) and result["n_modules"] == 28
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 29
    # the behavioural check: a small step to V's hack-ward side raises the held-out
    # logp(hack) − logp(clean), a step the other way lowers it, and the user sees both numbers
    assert result["margin_step_hackward"] > 0 > result["margin_step_antihack"], result
    assert f"changes it by {result['margin_step_hackward']:+.4f}" in printed and "V points hack-ward" in printed
    # the same V with its sign flipped: the margin check says so and verify fails
    flipped = tmp_path / "flipped.safetensors"
    save_file({k: -t for k, t in load_file(out).items()}, flipped, metadata=read_metadata(out))
    assert main(["verify", "--pairs", str(pair_file), "--v-hack", str(flipped), "--table", str(tmp_path / "f.md")]) == 1
    printed = capsys.readouterr().out
    result = json.loads(printed.strip().splitlines()[-1])
    assert result["margin_step_hackward"] < 0 < result["margin_step_antihack"] and not result["pass"]
    assert "V does NOT point hack-ward" in printed
    # held-out pairs that V separates (the training pairs, relabelled held-out) pass with exit 0 ...
    rows = [json.loads(line) for line in pair_file.read_text().splitlines()]
    seen = tmp_path / "seen.jsonl"
    seen.write_text("".join(json.dumps(r | {"id": r["id"] + "-again", "split": "heldout"}) + "\n"
                            for r in rows if r["split"] == "train"))
    assert main(["verify", "--pairs", str(seen), "--v-hack", str(out), "--table", str(tmp_path / "s.md")]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed.strip().splitlines()[-1])["pass"] and "-> PASS" in printed
    # ... and pairs that do not separate (hack and clean the same completion: d = 0) fail with exit 1
    same = tmp_path / "same.jsonl"
    same.write_text("".join(json.dumps(r | {"hack": r["clean"]}) + "\n" for r in rows))
    assert main(["verify", "--pairs", str(same), "--v-hack", str(out), "--table", str(tmp_path / "z.md")]) == 1
    printed = capsys.readouterr().out
    result = json.loads(printed.strip().splitlines()[-1])
    assert not result["pass"] and result["frac_pos"] == 0 and "-> FAIL" in printed


def test_a_pair_with_non_finite_gradients_is_dropped_not_the_batch(fp32, train_D, monkeypatch, capsys):
    model, tok, adapter = fp32
    pairs, D = train_D
    bad = pairs[1]
    real_nll = vhack.completion_nll

    def poisoned(model_, batch):  # NaN in the bad pair's hack NLL, whichever batch it lands in
        nll = real_nll(model_, batch)
        b = batch.input_ids.shape[0] // 2
        ids = [tuple(row.tolist()) for row in batch.input_ids[:b]]
        target = tuple(pair_batch(tok, [bad]).input_ids[0].tolist())
        hits = [i for i, row in enumerate(ids) if row[:len(target)] == target]
        scale = torch.ones_like(nll)
        scale[hits] = float("nan")
        return nll * scale

    monkeypatch.setattr(vhack, "completion_nll", poisoned)
    D_drop = vhack.pair_differences(model, tok, adapter, pairs, batch_size=3, progress=False)
    assert bad.id in capsys.readouterr().err
    keep = [i for i, p in enumerate(pairs) if p.id != bad.id]
    for k in D:
        assert D_drop[k].shape[0] == len(pairs) - 1
        assert torch.allclose(D_drop[k], D[k][keep], atol=1e-5)


# ---- controls keep the real m -----------------------------------------------------------------
def test_controls_have_the_real_v_m_after_non_finite_pairs_are_dropped(fp32, train_D, monkeypatch):
    model, tok, adapter = fp32
    pairs, D = train_D
    # 6 training pairs, of which 4 had non-finite gradients and were dropped: the real V gets m = 2
    monkeypatch.setattr(vhack, "pair_differences", lambda *a, **k: {key: d[:2] for key, d in D.items()})
    for control in vhack.CONTROLS:
        v = vhack.extract_v_hack(model, tok, adapter, pairs, m=4, control=control, progress=False)
        assert {V.shape[0] for V in v.values()} == {2}, control


# ---- bad input through the CLI: one line naming the file, exit 2, nothing written ---------------
def test_cli_bad_files_give_one_line_errors(tmp_path, pair_file, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_text("this is not a safetensors file")
    for argv in (["verify", "--v-hack", str(junk), "--pairs", str(pair_file)],
                 ["train", "--out", str(tmp_path / "run"), "--v-hack", str(junk)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"error: {junk}: not a readable safetensors file" in err and "Traceback" not in err
    assert not (tmp_path / "junk.verify.md").exists()
    assert main(["verify", "--v-hack", str(tmp_path), "--pairs", str(pair_file)]) == 2
    assert f"v_hack file {tmp_path} is a directory" in capsys.readouterr().err
    # an --out under a file is refused before the (slow) extraction starts
    assert main(["extract", "--pairs", str(pair_file), "--out", str(junk / "v.safetensors")]) == 2
    assert f"--out {junk / 'v.safetensors'}: {junk} is not a directory" in capsys.readouterr().err
    assert main(["extract", "--pairs", str(pair_file), "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a directory" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "split": "train"}\n{not json\n')
    assert main(["extract", "--pairs", str(bad), "--out", str(tmp_path / "v.safetensors")]) == 2
    assert f"{bad}:1: missing field" in capsys.readouterr().err
    assert not (tmp_path / "v.safetensors").exists()
