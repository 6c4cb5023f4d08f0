"""Problem splits (splits.py): deterministic in the seed, eval disjoint from train and from the pairs'
problems, train/pairs overlap reported, a split file honoured and a bad one refused naming the file,
and `pgrpo sweep` sharing one split file among all its runs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from projected_grpo.studies import experiments
from projected_grpo.training import runio, splits
from projected_grpo.config import preset
from projected_grpo.env.problems import load_problems
from projected_grpo.errors import UserError
from projected_grpo.studies.experiments import SweepPlan, sweep
from projected_grpo.directions.pairs import BUNDLED

POOL = load_problems("bundled")                       # 42 problems, pg-001 … pg-042


@pytest.fixture()
def pairs_file(tmp_path) -> Path:
    """The bundled code pairs of ten problems (train and heldout pairs), as a pair file."""
    rows = [r for r in BUNDLED["code"].read_text().splitlines()
            if json.loads(r)["problem_id"] in {f"pg-{i:03d}" for i in range(1, 11)}]
    assert {json.loads(r)["split"] for r in rows} == {"train", "heldout"}
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_pair_problem_ids_name_the_training_pairs_problems(pairs_file):
    every = splits.pair_problem_ids(str(pairs_file), split=None)
    assert every == [f"pg-{i:03d}" for i in range(1, 11)]
    train, heldout = splits.pair_problem_ids(str(pairs_file)), splits.pair_problem_ids(str(pairs_file), "heldout")
    assert "pg-003" in heldout and "pg-003" not in train      # pg-003 is named only by heldout pairs
    assert sorted(set(train) | set(heldout)) == every
    # the bundled pairs: 30 problems through training pairs, 12 more only through heldout pairs
    assert len(splits.pair_problem_ids("bundled")) == 30
    assert len(splits.pair_problem_ids("bundled", "heldout")) == 12
    assert len(splits.pair_problem_ids("bundled", None)) == 42
    assert splits.pair_problem_ids("bundled:persona") == []


def test_bundled_run_evaluates_on_problems_no_training_pair_names():
    """A bundled run (smoke, demo, qwen05 presets) has eval problems, none of them a training-pair
    problem; its overlap with the heldout pairs' problems is recorded in split.json."""
    cfg = preset("smoke")
    cfg = replace(cfg, n_problems=0, eval_problems=0.25)
    split = splits.for_run(cfg, POOL)
    train_pairs = set(splits.pair_problem_ids("bundled"))
    assert len(split.eval) == 10 and not set(split.eval) & train_pairs and not set(split.eval) & set(split.train)
    body = json.loads(split.to_json())
    assert body["eval_heldout_pairs_overlap"] == sorted(split.eval)      # all 10 from the 12 heldout-pair ones
    assert len(body["heldout_pairs"]) == 12


def test_derived_split_is_disjoint_deterministic_and_reports_overlap(pairs_file):
    pairs = splits.pair_problem_ids(str(pairs_file))
    a = splits.derive(POOL, pairs, 0.25, seed=41)
    assert len(a.eval) == round(0.25 * 42) == 10
    assert not set(a.eval) & set(a.train) and not set(a.eval) & set(pairs)
    assert set(a.eval) | set(a.train) == {p.id for p in POOL}       # every problem is used once
    assert splits.derive(POOL, pairs, 0.25, seed=41) == a            # same seed, same split
    b = splits.derive(POOL, pairs, 0.25, seed=42)
    assert set(b.eval) != set(a.eval) and not set(b.eval) & set(pairs)
    # the train problems that pairs also name are reported, in the file and the printed line
    body = json.loads(a.to_json())
    assert body["train_pairs_overlap"] == pairs == sorted(set(a.train) & set(pairs))
    assert body["seed"] == 41 and body["eval_shortfall"] == 0
    assert f"train ∩ pairs = {len(pairs)}" in a.summary()
    # a count instead of a share; 0 = no eval problems
    assert len(splits.derive(POOL, pairs, 3, seed=41).eval) == 3
    assert splits.derive(POOL, pairs, 0, seed=41).eval == []


def test_without_eval_problems_the_walk_order_is_the_old_seeded_shuffle(pairs_file):
    """A run with no eval problems trains on exactly the problem sequence it did before splits."""
    none = splits.derive(POOL, splits.pair_problem_ids(str(pairs_file)), 0, seed=41)
    assert none.train == [p.id for p in splits.walk_order(POOL, 41)]
    some = splits.derive(POOL, splits.pair_problem_ids(str(pairs_file)), 0.25, seed=41)
    assert some.train == [i for i in none.train if i not in some.eval]


def test_too_few_free_problems_is_reported_not_hidden():
    """Pairs that name all 42 bundled problems leave none to evaluate on, and the split says so."""
    split = splits.derive(POOL, splits.pair_problem_ids("bundled", split=None), 0.25, seed=41)
    assert split.eval == [] and len(split.train) == 42
    assert json.loads(split.to_json())["eval_shortfall"] == 10
    assert "WARNING: 10 eval problems asked for, only 0" in split.summary()
    with pytest.raises(UserError, match="leaves no train problem"):
        splits.derive(POOL[:4], [], 4, seed=41)


def test_split_file_is_honoured_and_train_walked_in_the_run_seed_order(tmp_path, pairs_file):
    pairs = splits.pair_problem_ids(str(pairs_file))
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["pg-001", "pg-020", "pg-030", "pg-031"], "eval": ["pg-040", "pg-041"],
                                "pairs": pairs, "note": "extra keys are allowed"}))
    split = splits.read(path, POOL, pairs, seed=7)
    assert split.eval == ["pg-040", "pg-041"] and split.source == str(path)
    assert sorted(split.train) == ["pg-001", "pg-020", "pg-030", "pg-031"]
    assert split.train == [p.id for p in splits.walk_order(POOL, 7) if p.id in set(split.train)]
    assert split.train_pairs_overlap == ["pg-001"]


@pytest.mark.parametrize("body, message", [
    ("{not json", "not valid JSON"),
    ('["pg-001"]', "expected a JSON object"),
    ('{"train": ["pg-001"]}', "`eval` must be a list"),
    ('{"train": ["pg-001", "pg-999"], "eval": ["pg-040"]}', "not among the 42 loaded problems.*pg-999"),
    ('{"train": ["pg-001", "pg-040"], "eval": ["pg-040"]}', "eval and train share 1 problem.*pg-040"),
    ('{"train": ["pg-020"], "eval": ["pg-001"]}', "named by the training pairs.*pg-001"),
    ('{"train": ["pg-020"], "eval": ["pg-040", "pg-040"]}', "names a problem twice"),
    ('{"train": [], "eval": ["pg-040"]}', "`train` is empty"),
    ('{"train": ["pg-020"], "eval": ["pg-040"], "pairs": ["pg-001"]}', "differs from the problems named"),
    ('{"train": ["pg-020"], "eval": ["pg-040"], "pairs": 5}', "`pairs` must be a list of problem ids"),
    ('{"train": ["pg-020"], "eval": ["pg-040"], "pairs": "pg-001"}', "`pairs` must be a list of problem ids"),
    ('{"train": ["pg-020"], "eval": ["pg-040"], "pairs": [{"id": 1}]}', "`pairs` must be a list of problem ids"),
])
def test_bad_split_file_is_refused_naming_it(tmp_path, pairs_file, body, message):
    path = tmp_path / "bad_split.json"
    path.write_text(body)
    with pytest.raises(UserError, match=f"--split-file {path}: .*{message}"):
        splits.read(path, POOL, splits.pair_problem_ids(str(pairs_file)), seed=41)


def test_trainer_refuses_a_bad_split_file_before_writing_anything(tmp_path, pairs_file):
    from projected_grpo.training.train import Trainer

    bad = tmp_path / "split.json"
    bad.write_text(json.dumps({"train": ["pg-001"], "eval": ["pg-001"]}))
    cfg = replace(preset("smoke"), n_problems=4, pairs=str(pairs_file), split_file=str(bad))
    with pytest.raises(UserError, match=f"--split-file {bad}: eval and train share"):
        Trainer(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="does not exist"):
        Trainer(replace(cfg, split_file=str(tmp_path / "nope.json")), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_pgrpo_train_with_a_non_list_pairs_key_says_one_line_and_leaves_no_run(tmp_path, pairs_file, capsys):
    """Issue 25 item 5: `"pairs": 5` in a split file was a TypeError traceback; now one line naming
    the file and the key, and no run dir is left to block the corrected retry."""
    from projected_grpo.cli import main

    bad = tmp_path / "split.json"
    bad.write_text(json.dumps({"train": ["pg-020"], "eval": ["pg-040"], "pairs": 5}))
    run = tmp_path / "run"
    argv = ["train", "--n-problems", "42", "--pairs", str(pairs_file), "--split-file", str(bad), "--out", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"pgrpo train: error: --split-file {bad}: `pairs` must be a list of problem ids"
    assert not run.exists()


def test_sweep_writes_one_split_file_every_run_reads(tmp_path, monkeypatch, pairs_file):
    seen = []

    def fake_train(cfg, out, resume=False, progress=True):   # what the trainer would read
        pool = splits.load_pool(cfg, _tok())
        seen.append((cfg.seed, splits.for_run(cfg, pool)))
        runio.prepare_dir(Path(out), cfg.to_json(), resume)
        (Path(out) / "delta_s.safetensors").write_bytes(b"x")

    monkeypatch.setattr("projected_grpo.training.train.train", fake_train)
    v = tmp_path / "v.safetensors"
    v.write_bytes(b"fake V")
    out = tmp_path / "sw"
    plan = SweepPlan(preset="smoke", arms=["vanilla", "projected"], seeds=[1, 2], overrides={}, v_hack=str(v),
                     out=str(out))
    base = replace(preset("smoke"), n_problems=0, pairs=str(pairs_file), steps=1, eval_problems=0.25)
    sweep(plan, base, progress=False)
    shared = json.loads((out / experiments.SPLIT).read_text())
    assert len(shared["eval"]) == 10 and not set(shared["eval"]) & set(shared["pairs"])
    assert len(seen) == 4
    for seed, split in seen:   # every run: the sweep's eval set, its own seed's walk over the same train set
        assert split.eval == shared["eval"] and sorted(split.train) == sorted(shared["train"])
        assert split.source == str((out / experiments.SPLIT).resolve())
    walk = {seed: split.train for seed, split in seen}
    assert walk[1] != walk[2]                                   # seeds 1 and 2 walk in different orders
    for name in ("vanilla_s1", "projected_s2"):
        assert json.loads((out / name / runio.CONFIG).read_text())["split_file"] == str(
            (out / experiments.SPLIT).resolve())


def _tok():
    from projected_grpo.models import load_tokenizer

    return load_tokenizer("tiny-qwen3")
