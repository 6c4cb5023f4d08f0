"""Gradient routing (DESIGN §9; issue 29 item 2; after Cloud et al. 2024 and SGTM 2025): the rows a
detector picks train a quarantine δQ instead of the policy's δS, and the quarantine is dropped at
eval and deploy, so what the detector caught is learnt somewhere that is thrown away.

δQ has δS's shapes (core/quarantine.py). Sampling during training, the training forward (π_old
included: the policy that sampled) and the per-row gradients use δ = δS + δQ; the reference stays
the base model (δS = δQ = 0); evaluation and the saved δS drop δQ (evaluate.py, adapter.save).
Since ∂L/∂δS = ∂L/∂δQ = ∂L/∂δ, routing is a split of the rows: each optimiser pass is two
passes.backward_pass over disjoint rows with the fixed denominator G·max_new_tokens·P, the other
rows with δQ frozen (→ δS.grad) and the routed rows inside quarantine.trains_quarantine (→ δQ.grad),
so the two add up to the vanilla gradient of all rows. A row's whole loss goes with it: its PPO term
and, with β > 0, its K3 KL to the reference, so δS's gradient is exactly what a vanilla pass over
the other rows alone gives. δQ has its own AdamW (--lr, --weight-decay; stepped after the policy's
at the policy's current lr, so the same warm-up and --lr-schedule) and its own --grad-clip: a large routed
gradient never shrinks the policy's step. The routing is decided once per sampled batch (passes
2.. of --num-iterations reuse it).

Checkpoint: "delta_q" and "optimizer_q" beside the policy's "delta_s" (unchanged: tools that load a
checkpoint's δS get the policy), so a resumed run goes on bit-identically.
Logged each step: quarantine_norm (‖δQ‖ after the step), quarantine_grad_norm (first pass, before
the clip), routed_rows / routed_frac (of the trained rows, all ranks); at eval steps, beside the
deployed eval_*: eval_hack_rate_with_quarantine, eval_pass_rate_with_quarantine,
eval_format_rate_with_quarantine, eval_hack_given_code_with_quarantine (the headline prompt set
only, on the deployed eval's seeds, δQ kept: one prompt set of up to three, so about a third more eval
time; smoke preset 4.3 s beside 13.6 s). The training hack_rate is already "with quarantine".

Routers:
  RouteByMonitor  (arm routing; knows the monitor) the rows the monitor flags: monitor.channel, the
                  seeded draw monitor_penalty and screening use (--monitor-tpr / --monitor-fpr);
                  logs its realised monitor_tpr / monitor_fpr.
  RouteByV        (arm routing_v; knows the pairs) label-free: each trained row's gradient
                  g_i = ∂L_i/∂δ at δS + δQ, and cos_i = (u · g_i) / ‖g_i‖ with u the top axis of the
                  run's pair V (each module's first row, oriented hack-ward), concatenated over the
                  modules and normalised: DESIGN §2's signed statistic, over the whole gradient. A row
                  is routed when cos_i > --route-threshold. Cost: the per-row gradients take one more
                  forward and backward over the trained rows per step, with a per-row copy of δ
                  (adapter.per_sample, the hook path even with --delta-s-impl merged), i.e. about one
                  more optimiser pass. Measured on the smoke preset (CPU, one thread, 10 steps):
                  train_s 3.14 s per step against vanilla's 1.55 s (routing by monitor: 1.67 s),
                  step_s 5.0 s against 3.6 s. Logs route_cos_{mean,p10,p50,p90,max} over the rows
                  with a gradient, route_cos_null_rms (the same rows against the seeded random V of
                  the same shapes: the scale of a cosine that means nothing, ≈ 1/sqrt(Σ r)) and,
                  against the oracle's labels, logged only, route_tpr / route_fpr.
  RouteByRandomV  (arm routing_random; knows nothing) the same with that seeded random V
                  (projection.null_directions: the random control's V), the control routing_v must beat.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from projected_grpo.core import quarantine
from projected_grpo.core.batching import micro_batches, micro_logprobs
from projected_grpo.core.grpo import grad_safe_attention, grpo_token_loss
from projected_grpo.core.passes import BatchState, backward_pass, token_weights
from projected_grpo.core.projection import EPS, null_directions
from projected_grpo.interventions.base import Context, Intervention, Knowledge, StepBatch
from projected_grpo.interventions.monitor import _Monitored
from projected_grpo.training import dist

DROPPED = "routed to a quarantine δQ dropped at eval and deploy"
EVAL_KEYS = ("eval_hack_rate", "eval_pass_rate", "eval_format_rate", "eval_hack_given_code")


class _Router(Intervention):
    point = "parameters"
    flags_rows = True

    def setup(self, ctx: Context) -> None:
        self.adapter = ctx.policy.adapter
        self.delta_q = quarantine.attach(self.adapter)
        self.opt = torch.optim.AdamW(list(self.delta_q.values()), lr=ctx.cfg.lr, weight_decay=ctx.cfg.weight_decay)
        self.quarantined: list[bool] = []      # (n trained rows,) this step's routing
        self.logged: dict = {}
        self.first_pass = True

    def decide(self, batch: StepBatch, rows, adv: torch.Tensor, is_teacher: list[bool],
               kept: list[int]) -> torch.Tensor:
        """(len(kept),) bool: the trained rows to route; sets self.flags (B,) over the batch."""
        raise NotImplementedError

    def route(self, batch: StepBatch, rows, adv: torch.Tensor, is_teacher: list[bool], kept: list[int]) -> None:
        self.logged = {}
        self.quarantined = [bool(f) for f in self.decide(batch, rows, adv, is_teacher, kept).tolist()]
        n, total = dist.sum_scalars([float(sum(self.quarantined)), float(len(self.quarantined))])
        self.logged.update(routed_rows=int(n), routed_frac=n / total if total else None)
        self.first_pass = True

    def backward(self, model, adapter, cfg, rows, adv: torch.Tensor, is_teacher: list[bool],
                 state: BatchState) -> tuple[float, float]:
        """The other rows' gradient into δS, the routed rows' into δQ (module doc)."""
        q = self.quarantined
        if len(q) != len(rows.texts):
            raise RuntimeError(f"{self.name}: routed {len(q)} rows, the pass has {len(rows.texts)}")
        if not any(q):                                  # nothing routed: the vanilla pass
            return backward_pass(model, adapter, cfg, rows, adv, is_teacher, state)
        loss = kl = 0.0
        keep = [i for i, f in enumerate(q) if not f]
        held = [i for i, f in enumerate(q) if f]
        for idx, where, key in ((keep, contextlib.nullcontext(), 0),
                                (held, quarantine.trains_quarantine(adapter), len(q))):
            if idx:
                with where:
                    part = backward_pass(model, adapter, cfg, rows.select(idx), adv[idx],
                                         [is_teacher[i] for i in idx], state, key)
                loss, kl = loss + part[0], kl + part[1]
        return loss, kl

    def optimiser_step(self, lr: float) -> None:
        dist.all_reduce_grads(self.delta_q)            # missing grads count as zeros, as δS's do
        norm = torch.nn.utils.clip_grad_norm_(list(self.delta_q.values()), self.cfg.grad_clip)
        if self.first_pass:
            self.logged["quarantine_grad_norm"] = float(norm)
            self.first_pass = False
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def eval_metrics(self, run_eval) -> dict:
        row, _ = run_eval(quarantine=True, primary_only=True)
        return {**{f"{k}_with_quarantine": row[k] for k in EVAL_KEYS},
                "eval_n_with_quarantine": row["eval_n"], "eval_with_quarantine_s": row["eval_s"]}

    def metrics(self) -> dict:
        return {**self.logged, "quarantine_norm": quarantine.norm(self.adapter)}

    def state(self) -> dict:
        return {"delta_q": {k: q.detach().cpu().clone() for k, q in self.delta_q.items()},
                "optimizer_q": self.opt.state_dict()}

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            for k, q in self.delta_q.items():
                q.copy_(state["delta_q"][k])
        self.opt.load_state_dict(state["optimizer_q"])


class RouteByMonitor(_Router, _Monitored):
    name = "route_monitor"

    def knows(self, run_dir=None) -> Knowledge:
        said = super().knows(run_dir)
        return Knowledge(said.kind, f"{said.detail}, flagged rows {DROPPED}")

    def decide(self, batch, rows, adv, is_teacher, kept) -> torch.Tensor:
        return self.flag(batch)[kept]


class RouteByV(_Router):
    name = "route_v"
    kind = "pairs"
    metric_prefix = "route"

    def knows(self, run_dir=None) -> Knowledge:
        return Knowledge(self.kind, f"top axis of the pair V (m={self.cfg.vhack_m}), rows with gradient "
                                    f"cos > {self.cfg.route_threshold:g} {DROPPED}")

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        self.v_null = null_directions(ctx.v_real, ctx.cfg.seed)       # the random control's V
        self.v_route = self.choose_v(ctx)

    def choose_v(self, ctx: Context) -> dict[str, torch.Tensor]:
        return ctx.handed_v if ctx.handed_v is not None else ctx.v_real

    def decide(self, batch, rows, adv, is_teacher, kept) -> torch.Tensor:
        grads = row_gradients(batch.model, self.adapter, self.cfg, rows, adv, is_teacher)
        cos, live = route_cosines(grads, self.v_route)
        null, _ = route_cosines(grads, self.v_null)
        routed = live & (cos > self.cfg.route_threshold)
        self.flags = torch.zeros(len(batch.grades), dtype=torch.bool)
        self.flags[kept] = routed.cpu()
        self.logged.update(cos_summary(cos[live].tolist(), null[live].tolist()))
        return routed.cpu()


class RouteByRandomV(RouteByV):
    name = "route_random"
    kind = "nothing"

    def knows(self, run_dir=None) -> Knowledge:
        return Knowledge(self.kind, f"seeded random V of the pair V's shapes (control), rows with gradient "
                                    f"cos > {self.cfg.route_threshold:g} {DROPPED}")

    def choose_v(self, ctx: Context) -> dict[str, torch.Tensor]:
        return self.v_null


def row_gradients(model, adapter, cfg, rows, adv: torch.Tensor, is_teacher: list[bool]) -> dict[str, torch.Tensor]:
    """{module key: (B, r) fp32}: each row's ∂L_i/∂δ at the current δ (δS + δQ), L_i its part of a
    first backward_pass (π_old = π, the same token weights, KL and denominator), from one forward and
    backward per micro-batch with a per-row copy of δ (adapter.per_sample). Rows of a skipped
    micro-batch (zero advantage, β = 0) get zeros, as they have in the pass."""
    denom = float(cfg.group_size * cfg.max_new_tokens * cfg.prompts_per_step)
    n_prompt, ids, att = rows.prompt_ids.shape[1], rows.input_ids, rows.attention_mask
    cmask = rows.completion_mask.float()
    teacher = torch.tensor(is_teacher, device=ids.device)[:, None]               # (B, 1)
    out = {k: torch.zeros(ids.shape[0], m.rank, device=m.delta_s.device) for k, m in adapter.modules.items()}
    model.train(cfg.grad_checkpointing)
    with grad_safe_attention():
        for rows_mb in micro_batches(att, cfg.train_batching, cfg.micro_batch, cfg.micro_tokens):
            sl = rows_mb.to(ids.device)                                              # (b,) rows
            if not bool(adv[sl].any()) and cfg.beta == 0:
                continue
            with torch.enable_grad(), adapter.per_sample(ids[sl].shape[0]) as leaves:
                logp = micro_logprobs(model, ids[sl], att[sl], n_prompt, cfg.train_batching,
                                      cfg.logprob_chunk)                                # (b, T)
                logp_old = logp.detach()
                weight = token_weights(cfg, rows, sl, logp_old, teacher[sl], cmask[sl], BatchState())
                ref = None
                if cfg.beta > 0:
                    with torch.no_grad(), adapter.reference():
                        ref = micro_logprobs(model, ids[sl], att[sl], n_prompt, cfg.train_batching,
                                             cfg.logprob_chunk)
                loss, _ = grpo_token_loss(logp, logp_old, adv[sl], cmask[sl], denom, cfg.clip_eps, cfg.beta,
                                          ref, weight)
                grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            for k, g in zip(leaves, grads):
                if g is not None:
                    out[k][sl] = g.detach().float()
    model.eval()
    return out


def route_cosines(grads: dict[str, torch.Tensor], v: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """((B,) cos_i = (u · g_i) / ‖g_i‖ in fp64, (B,) bool rows with g_i ≠ 0); u = V's first rows over
    the modules, concatenated and normalised (0 for a zero g_i or a zero V)."""
    dot = norm2 = None
    u2 = 0.0
    for k, g in grads.items():
        axis = v[k][0].to(device=g.device, dtype=torch.float64)                     # (r,)
        g = g.double()                                                              # (B, r)
        dot = g @ axis if dot is None else dot + g @ axis
        norm2 = (g * g).sum(1) if norm2 is None else norm2 + (g * g).sum(1)
        u2 += float(axis @ axis)
    if dot is None or norm2 is None:
        raise ValueError("route_cosines: no modules")
    live = norm2.sqrt() > EPS
    scale = norm2.sqrt().clamp(min=EPS) * math.sqrt(u2) if u2 > 0 else None
    cos = dot / scale if scale is not None else torch.zeros_like(dot)
    return torch.where(live, cos, torch.zeros_like(cos)), live


def cos_summary(cos: list[float], null: list[float]) -> dict:
    """route_cos_* over the rows with a gradient on every rank (None without any)."""
    cos, null = dist.gather_rows(cos), dist.gather_rows(null)
    keys = ("route_cos_mean", "route_cos_p10", "route_cos_p50", "route_cos_p90", "route_cos_max",
            "route_cos_null_rms")
    if not cos:
        return dict.fromkeys(keys) | {"route_live_rows": 0}
    c = np.asarray(cos)
    values = [c.mean(), *np.quantile(c, [0.1, 0.5, 0.9]), c.max(), math.sqrt(float(np.mean(np.square(null))))]
    return {k: float(x) for k, x in zip(keys, values)} | {"route_live_rows": len(cos)}
