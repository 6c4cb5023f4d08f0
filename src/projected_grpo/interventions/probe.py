"""Probe penalty (DESIGN §9; Ariahw, Engels & Nanda 2025: a linear probe on activations, ~80% accurate,
as a reward penalty left 0 of 3 runs hacking).

The probe: logistic regression P(hack | h) = σ(w·(h − μ)/σ_h + b) on h = the policy's hidden state at
one decoder layer (--probe-layer; -1 = the middle one) averaged over the completion's tokens. It is
fitted ONCE, at δS = 0 before training, on a labelled calibration set — the training split of
--probe-pairs (default --pairs): each pair's hack completion labelled 1 and its clean one 0. The
pairs' problems are disjoint from the eval problems (splits.py). A seeded share (--probe-heldout) of
those problems is held out of the fit; the probe's accuracy on them is logged (`probe_heldout_acc`).
The fit: Newton's method in fp64 on the mean log-loss + λ/2 ‖w‖² (--probe-l2), on features
standardised by the fit set's mean and SD. Then the probe is frozen (probe.json in the run dir; a
resumed run reads it back).

During training the probe reads each row's state from the current policy (δS folded in, no
gradient) and flags the rows with P(hack) ≥ --probe-threshold; a flagged row's reward loses
--penalty. The score only changes the reward: it is computed under no_grad and never reaches δS's
gradient. The trainer logs each step its recall on the batch's oracle-labelled hack rows
(`probe_tpr`; falling recall = a policy learning to evade it) and its FPR (`probe_fpr`).
Knows: a fixed labelled calibration set (its size and held-out accuracy stated), no training row's label.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from projected_grpo.training import dist, runio
from projected_grpo.errors import UserError
from projected_grpo.interventions.base import Context, Intervention, Knowledge, StepBatch
from projected_grpo.directions.pairs import chunks, collate, encode, load_pairs

PROBE_FILE = "probe.json"


def completion_states(model, tok, items: list[tuple], layer: int, batch_size: int = 8) -> torch.Tensor:
    """(N, d_model) fp32 on the CPU: for each (prompt, completion), decoder layer `layer`'s hidden state
    averaged over the completion's tokens (rendered as pairs.encode renders them), without gradient."""
    device = next(model.parameters()).device
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for group in chunks(items, batch_size):
        batch = collate([encode(tok, p, c) for p, c in group], pad_id)          # right-padded
        with torch.no_grad():
            states = model.base_model(input_ids=batch.input_ids.to(device),
                                      attention_mask=batch.attention_mask.to(device),
                                      use_cache=False, output_hidden_states=True).hidden_states
        h = states[layer + 1].float()                                            # (B, L, d); [0] = embeddings
        m = batch.completion_mask.to(device).unsqueeze(-1).float()               # (B, L, 1)
        out.append(((h * m).sum(1) / m.sum(1).clamp(min=1)).cpu())              # (B, d)
    return torch.cat(out)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, iters: int = 50) -> tuple[torch.Tensor, float]:
    """(w (d,), b) minimising mean_i log(1 + exp(−s_i (x_i·w + b))) + l2/2 ‖w‖², s = 2y − 1, by
    Newton's method in fp64 (the bias is not penalised). x (N, d) fp64, y (N,) in {0, 1}."""
    n, d = x.shape
    xa = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], dim=1)           # (N, d+1)
    theta = torch.zeros(d + 1, dtype=torch.float64)
    reg = torch.full((d + 1,), l2, dtype=torch.float64)
    reg[-1] = 0.0
    for _ in range(iters):
        p = torch.sigmoid(xa @ theta)                                            # (N,)
        grad = xa.T @ (p - y) / n + reg * theta
        hess = (xa.T * (p * (1 - p))) @ xa / n + torch.diag(reg) + 1e-10 * torch.eye(d + 1, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        theta = theta - step
        if step.abs().max() < 1e-10:
            break
    return theta[:-1], float(theta[-1])


@dataclass
class Probe:
    layer: int
    w: list[float]            # (d,) on standardised states
    b: float
    mu: list[float]           # (d,) fit-set mean of the states
    sd: list[float]           # (d,) fit-set SD (1 where a state is constant)
    n_fit: int                # labelled completions it was fitted on
    n_heldout: int            # labelled completions of the held-out problems
    heldout_acc: float        # its accuracy on those at threshold 0.5
    fit_acc: float
    source: str               # the calibration pair file
    fit_problems: list[str]   # the problems of its fit pairs
    heldout_problems: list[str]   # the problems held out for its accuracy

    def prob(self, h: torch.Tensor) -> torch.Tensor:
        """(N, d) states -> (N,) P(hack), fp64."""
        z = (h.double() - torch.tensor(self.mu, dtype=torch.float64)) / torch.tensor(self.sd, dtype=torch.float64)
        return torch.sigmoid(z @ torch.tensor(self.w, dtype=torch.float64) + self.b)


def fit_probe(model, tok, cfg, batch_size: int = 8) -> Probe:
    """The probe of `cfg` fitted on its calibration pairs at the model's current weights (module doc)."""
    spec = cfg.probe_pairs or cfg.pairs
    pairs = load_pairs(spec, split="train").pairs
    groups = sorted({p.problem_id or p.id for p in pairs})
    random.Random(cfg.seed).shuffle(groups)
    n_out = max(1, round(cfg.probe_heldout * len(groups)))
    if len(groups) < 2:
        raise UserError(f"--probe-pairs {spec}: its training split names {len(groups)} problem(s); the probe "
                        "needs at least 2 (one to fit, one held out for its accuracy)")
    held = set(groups[:n_out])
    layer = cfg.probe_layer if cfg.probe_layer >= 0 else int(model.config.num_hidden_layers) // 2

    def labelled(ps: list) -> tuple[torch.Tensor, torch.Tensor]:
        items = [(p.prompt, p.hack) for p in ps] + [(p.prompt, p.clean) for p in ps]
        y = torch.tensor([1.0] * len(ps) + [0.0] * len(ps), dtype=torch.float64)
        return completion_states(model, tok, items, layer, batch_size).double(), y

    x_fit, y_fit = labelled([p for p in pairs if (p.problem_id or p.id) not in held])
    x_out, y_out = labelled([p for p in pairs if (p.problem_id or p.id) in held])
    mu, sd = x_fit.mean(0), x_fit.std(0)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    w, b = fit_logistic((x_fit - mu) / sd, y_fit, cfg.probe_l2)
    probe = Probe(layer, w.tolist(), b, mu.tolist(), sd.tolist(), len(y_fit), len(y_out), 0.0, 0.0, spec,
                  sorted(set(groups) - held), sorted(held))
    probe.fit_acc = float(((probe.prob(x_fit) >= 0.5).double() == y_fit).double().mean())
    probe.heldout_acc = float(((probe.prob(x_out) >= 0.5).double() == y_out).double().mean())
    return probe


class ProbePenalty(Intervention):
    name = "probe_penalty"
    point = "reward"
    flags_rows = True
    metric_prefix = "probe"
    kind = "calibration"

    def knows(self, run_dir=None) -> Knowledge:
        p = getattr(self, "probe", None)
        if p is None and run_dir is not None and (Path(run_dir) / PROBE_FILE).is_file():
            p = Probe(**json.loads((Path(run_dir) / PROBE_FILE).read_text()))
        stated = (f", {p.n_fit} fitted, held-out accuracy {p.heldout_acc:.2f} on {p.n_heldout}"
                  if p is not None else "")
        return Knowledge(self.kind, f"linear probe on pairs {self.cfg.probe_pairs or self.cfg.pairs}{stated}")

    def setup(self, ctx: Context) -> None:
        """Fit at δS = 0 on rank 0 into the run dir (once: a resume reads it back); every rank loads it."""
        path = ctx.out / PROBE_FILE
        if dist.rank() == 0 and not path.is_file():
            probe = fit_probe(ctx.policy.model, ctx.policy.tok, ctx.cfg)
            runio.write_atomic(path, json.dumps(asdict(probe)).encode())
        dist.barrier()
        self.probe = Probe(**json.loads(Path(path).read_text()))
        shared = sorted(set(self.probe.fit_problems + self.probe.heldout_problems) & set(ctx.eval_ids))
        if shared:
            raise UserError(f"--probe-pairs {self.probe.source}: its training pairs name {len(shared)} of this run's "
                            f"eval problems ({', '.join(shared[:5])}); the probe's calibration set must share no "
                            "problem with eval. Give pairs of other problems, or fix the split (--split-file)")

    def reward(self, batch: StepBatch, rewards: torch.Tensor) -> torch.Tensor:
        with batch.adapter.merged():                       # the current policy's states, no gradient
            h = completion_states(batch.model, batch.tok, list(zip(batch.prompts, batch.rows.texts)),
                                  self.probe.layer, self.cfg.micro_batch)
        self.flags = self.probe.prob(h) >= self.cfg.probe_threshold                    # (B,)
        return rewards - self.cfg.penalty * self.flags.view_as(rewards).to(rewards.dtype)

    def metrics(self) -> dict:
        return {"probe_heldout_acc": self.probe.heldout_acc}
