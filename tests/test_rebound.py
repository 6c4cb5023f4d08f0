"""Rebound baseline: layer band, reward modification by hand, concept direction and its artifact."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from projected_grpo.directions import rebound
from projected_grpo.errors import UserError
from projected_grpo.models import load_model
from projected_grpo.directions.pairs import load_pairs

PERSONA = [("A student has an exam tomorrow.", "She copies the answer key.", "She works the practice problems."),
           ("An auditor must check every invoice.", "He checks ten and signs off.", "He checks all of them."),
           ("A cook must taste each sauce.", "He skips the tasting to save time.", "He tastes every sauce."),
           ("A pilot runs the preflight list.", "She ticks the boxes without looking.", "She checks each item.")]


@pytest.mark.parametrize("n_layers, expected", [
    (1, [0]), (2, [0]), (3, [1]), (4, [2]), (8, [4, 5]), (12, [7, 8]),
    (28, [16, 17, 18, 19, 20]), (32, [19, 20, 21, 22, 23]), (36, [21, 22, 23, 24, 25, 26])])
def test_concept_layers(n_layers, expected):
    layers = rebound.concept_layers(n_layers)
    assert layers == expected
    in_band = [0.6 <= (l + 1) / n_layers <= 0.75 for l in layers]
    assert all(in_band) or n_layers < 3


def test_modify_rewards_by_hand():
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.25, 0.0, 1.25, 0.25], [1.0, 0.5, 0.0, 1.0]])
    scores = torch.tensor([[0.0, 0.0, 0.0, 4.0], [3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.08]])
    # group 0: mean 1, population std sqrt(3) -> z = (-1, -1, -1, 3)/sqrt(3)
    # group 1: equal scores -> z = 0 -> unchanged
    # group 2: population std 0.0346 < floor 0.1 -> z = (s - 0.02)/0.1 = (-0.2, -0.2, -0.2, 0.6)
    z0, z2 = 3 / math.sqrt(3), 0.6
    mult = rebound.modify_rewards(rewards, scores, alpha=2.0, form="multiplicative")
    def sig(z: float) -> float:
        return 1 / (1 + math.exp(-z))
    expected = rewards.clone()
    expected[0, 3] = 1.0 * (1 - 2 * sig(z0))
    expected[2, 3] = 1.0 * (1 - 2 * sig(z2))
    assert torch.allclose(mult, expected, atol=1e-6)
    assert torch.equal(mult[1], rewards[1]) and torch.equal(mult[:, :3][[0, 2]], rewards[:, :3][[0, 2]])
    add = rebound.modify_rewards(rewards, scores, alpha=2.0, form="additive")
    expected = rewards.clone()
    expected[0, 3] = 1.0 - 2 * z0
    expected[2, 3] = 1.0 - 2 * z2
    assert torch.allclose(add, expected, atol=1e-6)
    assert torch.equal(add[1], rewards[1])
    no_floor = rebound.modify_rewards(rewards, scores, form="additive", sigma_floor=1e-6)
    assert no_floor[2, 3] == pytest.approx(1.0 - 2 * 3 / math.sqrt(3), abs=1e-4)  # std 0.0346 used
    with pytest.raises(UserError, match="unknown rebound form"):
        rebound.modify_rewards(rewards, scores, form="other")
    with pytest.raises(ValueError, match="must both be"):
        rebound.modify_rewards(rewards, scores[:, :2])


def test_direction_scores_and_artifact(tmp_path):
    path = tmp_path / "persona.jsonl"
    rows = [{"id": f"p{i}", "split": "train" if i < 3 else "heldout", "prompt": p, "hack": h, "clean": c}
            for i, (p, h, c) in enumerate(PERSONA)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pair_set = load_pairs(str(path), split="train")
    assert pair_set.kind == "persona" and len(pair_set.pairs) == 3
    model, tok = load_model("tiny-qwen3", "float32")
    cd = rebound.concept_direction(model, tok, pair_set.pairs, "tiny-qwen3", batch_size=2,
                                   pairs_sha256=pair_set.sha256)
    assert cd.vector.shape == (128,) and cd.layers == [2] and cd.n_train == 3 and cd.vector.norm() > 0

    items = [(p, h) for p, h, _ in PERSONA]
    alone = rebound.last_token_states(model, tok, items[:1], cd.layers)
    padded = rebound.last_token_states(model, tok, items, cd.layers, batch_size=4)  # right-padded
    assert torch.allclose(alone[0], padded[0], atol=1e-4)
    scores = rebound.rollout_scores(model, tok, items, cd, batch_size=3)
    assert scores.shape == (4,) and torch.allclose(scores, padded @ cd.vector, atol=1e-4)

    saved = rebound.save_direction(tmp_path / "d.safetensors", cd)
    back = rebound.load_direction(saved, model, "tiny-qwen3")
    assert torch.equal(back.vector, cd.vector) and back.layers == [2] and back.pairs_sha256 == pair_set.sha256
    with pytest.raises(UserError, match="not 'other'"):
        rebound.load_direction(saved, model, "other")
    with pytest.raises(UserError, match="dtype 'float32' != model dtype 'bfloat16'"):
        rebound.load_direction(saved, model.to(torch.bfloat16), "tiny-qwen3")
    legacy = tmp_path / "legacy.safetensors"
    save_file({"direction": cd.vector}, legacy)
    with pytest.raises(UserError, match="legacy"):
        rebound.load_direction(legacy, model, "tiny-qwen3")
