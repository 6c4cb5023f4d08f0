"""The GRPO training loop: sample → grade → advantages → loss → (all-reduce) → project → step.

One step, for P prompts × G samples (DESIGN §3–§5):
  1. sample G completions per prompt with δS folded into the weights (teacher-pool rows mixed in);
  2. grade them; reward uses only the flawed grade `passed` and the format bonus — the strict
     oracle (`gt_correct`, labels) is logged and never reaches reward, advantage or projection;
  3. the arm's interventions (arms.py, interventions/) act at their points: the reward (Rebound,
     monitor / probe penalty), the rows that stay in their group (screening), the V projected;
  4. A = r − mean_group(r); PPO-clip + K3 loss over completion tokens / (G·max_new_tokens·P),
     π_old = the policy that sampled the batch (its log-probs before the first pass), student tokens
     weighted by the truncated sampler ratio, teacher tokens by `teacher_weight` (`passes.py`);
  5. δS gradients all-reduced over ranks, then measured against V and (projecting arms) projected
     with the arm's V (interventions/projection.py: the real V, a control, lomo, refresh —
     directions.py — or the oracle upper bound's V from the labelled hack rows, oracle.py);
  6. grad-norm clip, AdamW step (optionally projecting the step itself);
  (gradient routing, interventions/routing.py: the rows it picks train a quarantine δQ instead,
  with its own AdamW; training samples with δS + δQ, eval and the saved δS drop δQ)
  4–6 run `num_iterations` times on the same batch; then the LR schedule (warm-up, then --lr-schedule) steps once.
With --coverage (or the oracle arm) a separate backward over the oracle-labelled hack rows gives
g_h before step 4 (oracle.py); it is logged (cov_*) and, in the oracle arm only, projected out.
Oracle labels reach an intervention only if it declares them (interventions/base.py: StepBatch).
Logged: `sampler_mismatch` = mean |logπ_sampler − logπ_trainer| over the student tokens of the
first pass (its micro-batches with a gradient), `sampler_kl` (K3 estimate of KL(sampler ‖ trainer))
and, for passes 2.., `clip_frac` (share of tokens whose clipped surrogate has zero gradient).
The run trains on the split's train problems only; at step 0, every eval_every steps and after the
last step the current policy is evaluated on the held-out eval problems (splits.py, evaluate.py).
"""

from __future__ import annotations

import functools
import json
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from projected_grpo import arms
from projected_grpo.directions import sources as directions_mod, oracle
from projected_grpo.training import checkpoint, dist, evaluate, runio, runlock, splits, trackers
from projected_grpo.training.schedule import lr_factor
from projected_grpo.core.adapter import tensor_hash
from projected_grpo.config import TrainConfig
from projected_grpo.interventions import Context, StepBatch, build, uses_labels
from projected_grpo.env.grader import EnvConfig, RewardConfig, grade_many
from projected_grpo.errors import UserError
from projected_grpo.core.grpo import grad_safe_attention, group_advantages
from projected_grpo.core.passes import BatchState, backward_pass
from projected_grpo.training.policy import Policy, load_policy, policy_device
from projected_grpo.core.projection import (ProjectionStats, null_directions, project_grads, project_update,
                                       update_hackward)
from projected_grpo.training.rollout import Rollouts, concat, encode_prompts, row_noise, sample, teacher_rollouts
from projected_grpo.training.step_metrics import detector_metrics, train_row
from projected_grpo.training.teacher import SUMMARY_FILE as TEACHER_SUMMARY, TeacherPool, parse_kinds

LOGS = (runio.METRICS, runio.SAMPLES, evaluate.EVAL_SAMPLES)  # a resume cuts them at its checkpoint


class Trainer:
    """Holds the model, adapter, optimiser and environment of one run.

    Its parts can be handed in (each None: built from `cfg` as a run builds it):
      policy      Policy(model, tok, adapter) on policy_device(cfg) (load_policy);
      grade       grader.grade_many's signature: grades training rows and, when handed in, the
                  teacher pool and eval rows (None: grade_many in each);
      sampler     rollout.sample's signature: samples training rows and, when handed in, eval rows;
      directions  (V measured, V projected), {module key: (m, r)} on the policy's device
                  (directions.real_v and the arm's projection; not for the refresh arm, whose V
                  is re-extracted)."""

    def __init__(self, cfg: TrainConfig, out: Path, resume: bool = False, progress: bool = True, *,
                 policy: Policy | None = None, grade=None, sampler=None,
                 directions: tuple[dict, dict] | None = None):
        cfg.validate()
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.grade, self.sample = grade or grade_many, sampler or sample          # training rows
        self.handed = {"grade": grade, "sampler": sampler}                        # teacher pool, eval
        self.rank, self.world = dist.rank(), dist.world_size()
        if self.world > cfg.prompts_per_step:  # every rank must hold at least one prompt group
            raise UserError(f"--prompts-per-step {cfg.prompts_per_step} is less than the {self.world} ranks")
        # one writer per run dir (runlock.py): rank 0 holds it from before the dir is read until run() ends
        self.lock = runlock.RunLock(self.out)
        if self.rank == 0:
            self.lock.acquire()
        try:
            self._open(resume, policy, directions)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, resume: bool, policy: Policy | None, directions: tuple[dict, dict] | None) -> None:
        """Set up, check and (with `resume`) restore the run; open its trackers."""
        cfg = self.cfg
        if self.rank == 0:
            runio.check_dir(self.out, cfg.to_json(), resume)
        dist.barrier()
        # config.json is written only once set-up succeeded; bad input (a missing model, v_hack file,
        # problems path or split, a corrupt log, a tracker that cannot open) removes what set-up
        # wrote, so the corrected retry finds no run in the way.
        self.tracker = trackers.Trackers()
        with runio.removed_on_error(self.out, owner=self.rank == 0):
            self._set_up(policy, directions)
            state, kept = checkpoint.resume_state(self, LOGS) if resume else (None, {})
            if self.rank == 0:
                runio.write_config(self.out, cfg.to_json())
                self.tracker = trackers.open_trackers(cfg.report_to, self.out, json.loads(cfg.to_json()),
                                                      cfg.report_samples_every, kept.get(runio.METRICS),
                                                      kept.get(runio.SAMPLES))
        dist.barrier()
        # A fresh start and a restart from step 0 (killed before the first checkpoint) begin from the
        # same RNG state, whatever set-up consumed.
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        self.start_step = 0
        if resume:
            checkpoint.restore(self, state, kept)

    # ---- set-up --------------------------------------------------------------------------------
    def _set_up(self, policy: Policy | None, directions: tuple[dict, dict] | None) -> None:
        cfg = self.cfg
        self.device = policy_device(cfg)
        policy = policy or load_policy(cfg)
        self.model, self.tok, self.adapter = policy
        self.split, self.problems, self.eval_problems = self._load_problems()
        if self.rank == 0:
            splits.write_for_run(self.out, self.split)  # a resumed run must find the same split
            if self.progress:
                print(self.split.summary())
        dist.barrier()
        if cfg.grad_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.env = EnvConfig(mode=cfg.mode, hint=cfg.hint, timeout_s=cfg.grade_timeout_s,
                             workers=cfg.grade_workers or EnvConfig().workers,
                             reward=RewardConfig(cfg.correct_reward, cfg.format_reward))
        # v_hack is loaded (and checked against this model) before anything is generated; then each
        # intervention of the arm sets itself up (a V, a concept direction, a probe) at δS = 0.
        self.arm = arms.get(cfg.arm)
        self.interventions = build(self.arm, cfg)
        self.router = next((iv for iv in self.interventions if iv.point == "parameters"), None)  # routing.py
        if cfg.base_on_cpu and self.router is not None:
            raise UserError(f"--base-on-cpu: arm {cfg.arm} keeps a quarantine δQ on the model; run it "
                            "without --base-on-cpu")
        handed_v = None
        if directions is None:
            self.v_measure = directions_mod.real_v(cfg, policy, self.out, self.device, self.progress)
        else:
            self.v_measure, handed_v = directions
        ctx = Context(cfg, policy, self.out, self.device, self.progress, self.v_measure, handed_v,
                      tuple(self.split.eval), tuple(self.problems))
        for iv in self.interventions:
            iv.setup(ctx)
        self.projector = next((iv for iv in self.interventions if iv.point in ("gradient", "update")), None)
        if cfg.base_on_cpu:
            self.adapter.keep_base_on_cpu()
        start_v = None if self.projector is None else self.projector.v
        self.v_project: dict[str, torch.Tensor] = (start_v if start_v is not None else
                                                   handed_v if handed_v is not None else self.v_measure)
        self.v_sha256 = {"measured": _v_hash(self.v_measure), "projected": _v_hash(self.v_project)}
        self.v_null = null_directions(self.v_measure, cfg.seed)  # measured only: cos_in_null
        self.teacher = (TeacherPool.load(cfg.teacher_pool, self.problems, self.env,
                                         parse_kinds(cfg.teacher_kinds), self.handed["grade"])
                        if cfg.n_teacher > 0 else None)
        if self.teacher is not None and self.rank == 0:  # what the pool held, for the report
            runio.write_atomic(self.out / TEACHER_SUMMARY, json.dumps(
                {**self.teacher.summary(), "mix_ratio": cfg.mix_ratio, "per_group": cfg.n_teacher,
                 "group_size": cfg.group_size}, indent=1).encode())
        self.opt = torch.optim.AdamW(list(self.adapter.params().values()), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_lambda)

    def _load_problems(self) -> tuple[splits.Split, list, list]:
        """(split, train problems in walk order, eval problems): see splits.py."""
        pool = splits.load_pool(self.cfg, self.tok)
        split = splits.for_run(self.cfg, pool)
        by_id = {p.id: p for p in pool}
        return split, [by_id[i] for i in split.train], [by_id[i] for i in split.eval]

    def _lr_lambda(self, step: int) -> float:
        return lr_factor(step, self.cfg.warmup_steps, self.cfg.steps, self.cfg.lr_schedule)

    # ---- one step -------------------------------------------------------------------------------
    def step_problems(self, step: int) -> list:
        """This rank's share of the step's P prompts (a fixed walk through the shuffled set)."""
        n, P = len(self.problems), self.cfg.prompts_per_step
        chosen = [self.problems[(step * P + i) % n] for i in range(P)]
        return chosen[self.rank::self.world]

    def rollouts(self, step: int, problems: list, messages: list | None = None) -> tuple[Rollouts, list[bool]]:
        """P_local × G rows, group-major; the last n_teacher rows of each group come from the pool.
        `messages`: each problem's training prompt (None: self.messages of each)."""
        cfg, G, k = self.cfg, self.cfg.group_size, self.cfg.n_teacher
        messages = [self.messages(p) for p in problems] if messages is None else messages
        ids, mask = encode_prompts(self.tok, messages, self.device)
        student = self.sample(self.model, self.tok, self.adapter, ids, mask, G - k, cfg.max_new_tokens,
                              cfg.temperature, cfg.top_p, seed=cfg.seed * 100_003 + step * 1_009 + self.rank,
                              static_cache=cfg.fast_rollout and self.device.type == "cuda",
                              attention=cfg.decode_attention, **row_noise(cfg))
        if self.teacher is None:  # n_teacher = 0
            return student, [False] * len(student.texts)
        texts = self.teacher.draw(problems, k, seed=cfg.seed * 7_919 + step)
        teacher = teacher_rollouts(self.tok, ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0),
                                   texts)
        both = concat([student, teacher], self.tok.pad_token_id)
        n, gs = len(problems), G - k  # student rows come first in `both`, then teacher rows
        order = [x for g in range(n)
                 for x in [g * gs + j for j in range(gs)] + [n * gs + g * k + j for j in range(k)]]
        return both.select(order), [i >= n * (G - k) for i in order]

    def messages(self, problem, train: bool = True, messages: list[dict] | None = None) -> list[dict]:
        """A training prompt of `problem` (or the eval prompt `messages`, train=False) as the arm's
        prompt interventions leave it."""
        out = problem.messages(self.cfg.mode, self.cfg.hint) if messages is None else messages
        for iv in self.interventions:
            out = iv.messages(out, train)
        return out

    def step(self, step: int) -> tuple[dict, list[dict]]:
        cfg, G = self.cfg, self.cfg.group_size
        t0 = time.perf_counter()
        problems = self.step_problems(step)
        messages = [self.messages(p) for p in problems]               # each problem's training prompt
        rows, is_teacher = self.rollouts(step, problems, messages)
        t1 = time.perf_counter()
        pids = [p.id for p in problems for _ in range(G)]
        items = [{"id": pid, "completion": text, "mode": cfg.mode} for pid, text in zip(pids, rows.texts)]
        graded = iter(self.grade({p.id: p for p in problems},
                                 [it for it, t in zip(items, is_teacher) if not t], self.env))
        # teacher rows keep the grade they got once, when the pool was loaded (there is a pool if any)
        pool = self.teacher
        grades = [pool.grade_of(it["id"], it["completion"]) if t and pool is not None else next(graded)
                  for it, t in zip(items, is_teacher)]
        t2 = time.perf_counter()
        # Reward from the flawed grade only; gt_correct / label are never read below this line until
        # the metrics are assembled, except by the labelled-hack gradient (oracle.py: logged only with
        # --coverage) and by an intervention that declares label use (StepBatch.hack_labels).
        batch = StepBatch(step, problems, [m for m in messages for _ in range(G)],
                          rows, grades, is_teacher, self.model, self.tok, self.adapter)
        rewards = torch.tensor([g.reward for g in grades], dtype=torch.float32).view(-1, G)   # (P_l, G)
        keep = None                                                                            # (B,) bool
        for iv in self.interventions:
            rewards = iv.reward(batch, rewards)
            k = iv.keep(batch)
            keep = k if keep is None or k is None else keep & k
        adv = group_advantages(rewards, None if keep is None else keep.view(-1, G)).view(-1).to(self.device)
        kept = list(range(len(grades))) if keep is None else keep.nonzero().view(-1).tolist()
        trained = (rows, adv, is_teacher) if keep is None else (
            rows.select(kept), adv[kept], [is_teacher[i] for i in kept])   # screened rows leave the batch
        cov = {}
        if cfg.coverage or any(iv.needs_hack_gradient for iv in self.interventions):
            batch.g_hack, n_hack = oracle.hack_gradient(self.model, self.adapter, cfg, *trained,
                                                        [grades[i].label == oracle.HACK_LABEL for i in kept])
            cov = {**oracle.coverage(batch.g_hack, self.v_measure, self.v_null), "cov_rows": n_hack}
        for iv in self.interventions:
            v = iv.directions(batch)
            if v is not None:
                self.v_project = v
        if self.router is not None:   # which trained rows train its quarantine, not δS (routing.py)
            self.router.route(batch, *trained, kept)
        start = {k: p.detach().clone() for k, p in self.adapter.params().items()}
        state = BatchState()
        for it in range(cfg.num_iterations):  # passes 2.. reuse π_old, weights and π_ref of pass 1
            losses = self.backward(*trained, state)
            measured = self.optimiser_step()
            if it == 0:  # logged: the first pass (the policy gradient at the sampling policy)
                (loss_sum, kl_sum), (stats, real_stats, null_stats, grad_norm) = losses, measured
        deltas = {k: p.detach() - start[k] for k, p in self.adapter.params().items()}  # the whole step
        lr = float(self.sched.get_last_lr()[0])
        self.sched.step()
        t3 = time.perf_counter()
        record = train_row(step, grades, is_teacher, rewards, adv, rows.n_tokens, loss_sum, kl_sum, stats,
                           real_stats, float(grad_norm), update_hackward(deltas, self.v_measure), lr,
                           modified=any(iv.point == "reward" for iv in self.interventions), beta=cfg.beta)
        record.update(state.metrics())
        record.update(cov, uses_labels=uses_labels(self.arm))
        hack = [g.label == oracle.HACK_LABEL for g in grades]             # logged only: the detectors' rates
        for iv in self.interventions:
            record.update(iv.metrics())
            if iv.flags_rows and iv.flags is not None:
                record.update(detector_metrics(iv.metric_prefix, iv.flags.tolist(), hack))
        record.update(gen_s=t1 - t0, grade_s=t2 - t1, train_s=t3 - t2, step_s=t3 - t0)
        record["cos_in_null"] = null_stats.cos_in  # a seeded random V of the same m, measured only
        record["sandbox_backend"] = ",".join(sorted({g.backend for g in grades} - {""})) or None  # None: nothing ran
        samples = [{"step": step + 1, "problem_id": pid, "teacher": t, "completion": text,
                    "advantage": round(float(a), 6), **asdict(g)}
                   for pid, t, text, a, g in zip(pids, is_teacher, rows.texts, adv.tolist(), grades)]
        return record, dist.gather_rows(samples)

    def optimiser_step(self) -> tuple[ProjectionStats, ProjectionStats, ProjectionStats, float]:
        """All-reduce, measure / project, clip, AdamW step (projecting the step itself where asked).
        Returns (stats against the projecting V, against the real V, against the null V, grad norm)."""
        cfg = self.cfg
        grads = dist.all_reduce_grads(self.adapter.params())
        # the real and the null V are measured on the raw gradient, before a projection changes it
        real_stats = (None if self.v_project is self.v_measure
                      else project_grads(grads, self.v_measure, apply=False))
        null_stats = project_grads(grads, self.v_null, apply=False)
        point = None if self.projector is None else self.projector.point     # gradient | update | None
        if self.projector is not None and self.projector.transforms:   # e.g. onto a clean subspace
            measured = project_grads(grads, self.v_project, apply=False)
            self.projector.transform(grads)
            stats = replace(measured, cos_out=project_grads(grads, self.v_project, apply=False).cos_in)
        else:
            stats = project_grads(grads, self.v_project, apply=point is not None)
        real_stats = real_stats or stats
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.adapter.params().values()), cfg.grad_clip)
        before = {k: p.detach().clone() for k, p in self.adapter.params().items()}
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.router is not None:   # its quarantine's own AdamW, at the policy's lr
            self.router.optimiser_step(float(self.opt.param_groups[0]["lr"]))
        deltas = {k: p.detach() - before[k] for k, p in self.adapter.params().items()}
        if point == "update" and self.projector is not None and self.projector.transforms:
            self.projector.transform(deltas)                          # the step itself, transformed alike
            with torch.no_grad():
                for k, p in self.adapter.params().items():
                    p.copy_(before[k] + deltas[k])
        elif point == "update":
            with torch.no_grad():
                for k, p in self.adapter.params().items():
                    p.copy_(before[k] + project_update(self.v_project[k], deltas[k]))
        return stats, real_stats, null_stats, float(grad_norm)

    def backward(self, rows: Rollouts, adv: torch.Tensor, is_teacher: list[bool] | None = None,
                 batch: BatchState | None = None) -> tuple[float, float]:
        """One pass: accumulate ∂L/∂δS over micro-batches; denominator G · max_new_tokens · P (global P).

        The first pass over a batch (empty `batch`) fixes, per micro-batch, logπ_old = the current
        log-probs (detached), the token weights w and logπ_ref, and measures the sampler mismatch;
        later passes reuse them, so their ratio ρ = π/π_old is against the sampling policy.
        Forward and backward run in `grad_safe_attention` (no cuDNN SDPA: NaN gradients in bf16)."""
        is_teacher = [False] * len(rows.texts) if is_teacher is None else is_teacher
        run_pass = backward_pass if self.router is None else self.router.backward   # routing: rows split
        with grad_safe_attention():
            return run_pass(self.model, self.adapter, self.cfg, rows, adv, is_teacher,
                            BatchState() if batch is None else batch)

    # ---- the loop -------------------------------------------------------------------------------
    def run(self, until: int | None = None) -> Path:
        """Train to cfg.steps (or stop after step `until`, as an interrupted run would); then close
        the trackers (acknowledging what they hold) and release the run dir's lock.

        After step s (s = steps completed) the order is: training row, eval row (when due, see
        evaluate.due), checkpoint — so a checkpoint of step s implies its eval row was written."""
        if self.rank == 0:
            self.lock.acquire()                            # again, when run a second time
        try:
            self._run(until)
        finally:
            self.tracker.close()
            self.lock.release()
        return self.out

    def _run(self, until: int | None) -> None:
        cfg = self.cfg
        if self.start_step == 0:
            self.evaluate(0)                               # the base rate, before any update
        bar = tqdm(range(self.start_step, min(until or cfg.steps, cfg.steps)), initial=self.start_step,
                   total=cfg.steps,
                   disable=not self.progress or self.rank != 0, desc=f"{cfg.arm} s{cfg.seed}")
        for step in bar:
            record, samples = self.step(step)
            if self.rank == 0:  # every line of step k is written before checkpoint k (see runio)
                if cfg.samples_every and (step + 1) % cfg.samples_every == 0:
                    runio.append_jsonl(self.out / runio.SAMPLES, samples)
                runio.append_jsonl(self.out / runio.METRICS, [{"kind": "train", **record}])
                self.tracker.train(record, samples)
                bar.set_postfix(reward=f"{record['reward_mean']:.2f}", hack=f"{record['hack_rate']:.2f}",
                                cos_in=f"{record['cos_in']:.3f}")
            self.evaluate(step + 1)
            if self.rank == 0 and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
                runio.save_checkpoint(self.out, checkpoint.snapshot(self, step + 1))
            dist.barrier()
        if self.rank == 0 and self.start_step + len(bar) == cfg.steps:
            self.adapter.save(self.out / runio.DELTA_S)  # closes the run (runio.run_state)

    def evaluate(self, step: int) -> None:
        """Held-out eval after `step` completed steps, if due (all ranks sample; rank 0 writes)."""
        if not self.eval_problems or not evaluate.due(step, self.cfg):
            return
        run_eval = functools.partial(evaluate.evaluate, self.model, self.tok, self.adapter, self.eval_problems,
                                     self.cfg, self.env, step, self.device, **self.handed,
                                     edit=lambda m: self.messages(None, train=False, messages=m))
        row, samples = run_eval()                          # the deployed policy (δS; routing's δQ dropped)
        for iv in self.interventions:
            row.update(iv.eval_metrics(run_eval))
        if self.rank == 0:
            runio.append_jsonl(self.out / evaluate.EVAL_SAMPLES, samples)
            runio.append_jsonl(self.out / runio.METRICS, [row])
            self.tracker.eval(row)


def _v_hash(v: dict[str, torch.Tensor]) -> str:
    """sha256 of a V (its modules in sorted order)."""
    return tensor_hash(*(v[k] for k in sorted(v)))


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True, **parts) -> Path:
    """Run (or resume) one training run into `out`; returns the run dir. `parts`: the Trainer's
    policy, grade, sampler, directions (default: built from cfg)."""
    return Trainer(cfg, Path(out), resume=resume, progress=progress, **parts).run()
