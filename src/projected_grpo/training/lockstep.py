"""Several runs of one arm stepped together in one process, on one copy of the model (issue #28).

A study's runs of one arm differ only in their seed: same model, bases, config. Run alone, each
process holds the frozen weights and decodes and trains in small kernels; nine such processes on one
card time-slice it (docs/benchmarks.md, "Study throughput"). Here R runs share one model, each with
its own δS leaves, AdamW, V, interventions, RNG, run dir, logs and checkpoints: each is an ordinary
`Trainer` in its own thread. Two of a step's parts meet in `Lockstep`, the rest stays each run's own:

  sampling   every run's sampling call (training rows and eval chunks) waits until each live run
             is waiting too; then one decode samples all their rows: the R runs' folds W'_r stacked,
             each run's rows through its own (fast/fleet_decode.py), one prefill, one KV cache, one
             CUDA graph per token. Each row's noise comes from (its run's call seed, row) alone
             (`--row-noise`, fast/row_noise.py), so a run's samples do not depend on which other
             runs shared the call;
  training   likewise, one pass over all runs' rows (core/passes.backward_pass): each row carries
             its own run's δS (U (δS_run ⊙ Vh x), core/fleet.py's gather, here from each run's own
             leaves), so one backward leaves each run's gradient in its own δS, equal to its own pass
             (tests/test_fleet.py); the sampler-mismatch and clip counts and the loss go to each
             row's run (BatchState.of_runs). That is the hook path, which costs the U and Vh matmuls
             besides W's; with `--delta-s-impl merged` the runs' passes instead go one after another,
             each on its own fold W' (the pass a run makes alone). bench/fleet_step.py times the two.

Between those meetings a run thread holds the model with its own δS installed in the adapter's
modules (`turn`), so everything else a Trainer does with the model (interventions, the hack gradient,
the optimiser step, checkpoints) sees that run alone. Grading runs with the model released, so the
runs grade while another uses the model. Whichever runs are waiting meet: runs resumed from
checkpoints of different steps still step correctly, each its own trajectory, but batched with other
runs than before, so their numbers agree with an uninterrupted fleet's up to that rounding (and
`fleet_runs` in config.json makes a run's resume alone, or in another fleet size, refused).

A run's logged gen_s and train_s include its wait at the meeting for the other runs: per run they are
the fleet's time for that part, not the run's share of it.

Not supported: gradient routing (its quarantine δQ lives on the modules), several ranks, models the
fast decode loop does not cover (Qwen2 / Qwen3 only).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from projected_grpo import arms
from projected_grpo.config import TrainConfig
from projected_grpo.core.fleet import Fleet
from projected_grpo.core.grpo import grad_safe_attention
from projected_grpo.core.passes import BatchState, backward_pass
from projected_grpo.errors import UserError
from projected_grpo.fast import fast_rollout, fleet_decode
from projected_grpo.fast.row_noise import row_seeds
from projected_grpo.interventions import build
from projected_grpo.training import dist
from projected_grpo.training.policy import Policy, load_policy
from projected_grpo.training.rollout import Rollouts, concat, eos_token_ids, finish
from projected_grpo.training.train import Trainer

# the fields that may differ between the runs of one fleet
PER_RUN = ("seed",)


@dataclass
class _Call:
    """One run's request at the meeting point: `kind` sample | train, its arguments, then its result."""
    run: int
    kind: str
    args: dict
    done: bool = False
    result: Any = None
    error: BaseException | None = None


class Lockstep:
    """The meeting point of R run threads on one policy (see the module doc)."""

    def __init__(self, policy: Policy, n_runs: int, cfg: TrainConfig):
        model, self.tok, self.adapter = policy
        self.model, self.n_runs, self.cfg = model, n_runs, cfg
        if not fast_rollout.supports(model):
            raise UserError(f"--fleet-runs {n_runs}: the model {cfg.model} is not one the fast decode loop "
                            f"covers ({', '.join(fast_rollout.SUPPORTED_TYPES)})")
        mods = self.adapter.modules
        # each run's δS: its own fp32 leaves, installed in the modules while the run has its turn
        self.deltas = [{k: torch.nn.Parameter(torch.zeros_like(m.delta_s)) for k, m in mods.items()}
                       for _ in range(n_runs)]
        self.fleet = Fleet(self.adapter, n_runs)          # the stacked δS the fleet decode folds from
        self.weights: fleet_decode.FleetWeights | None = None
        self.model_lock = threading.Lock()
        self.cv = threading.Condition()
        self.live: set[int] = set(range(n_runs))
        self.waiting: dict[int, _Call] = {}
        self.states: dict[tuple[int, ...], BatchState] = {}   # one multi-run pass's state, per batch
        self.eos = eos_token_ids(model, self.tok)
        self.meetings = {"sample": 0, "train": 0}
        self.seconds = {"sample": 0.0, "train": 0.0}     # wall time of the batched calls (the card's work)
        self.holder: dict[int, int] = {}                 # run -> the thread that runs it

    # ---- turns ---------------------------------------------------------------------------------
    def install(self, run: int) -> None:
        """Run `run`'s δS leaves become the adapter's parameters."""
        for k, m in self.adapter.modules.items():
            m.delta_s = self.deltas[run][k]

    @contextlib.contextmanager
    def turn(self, run: int) -> Iterator[None]:
        """Hold the model with run `run`'s δS installed."""
        with self.model_lock:
            self.install(run)
            self.holder[run] = threading.get_ident()
            yield

    def leave(self, run: int) -> None:
        """Run `run` is done (or failed): the others no longer wait for it."""
        with self.cv:
            self.live.discard(run)
            self._meet_if_ready()

    def call(self, run: int, kind: str, **args) -> Any:
        """From run `run`'s thread, holding its turn: give the model up, meet the others, take it back."""
        call = _Call(run, kind, args)
        self.model_lock.release()
        try:
            with self.cv:
                self.waiting[run] = call
                self._meet_if_ready()
                while not call.done:
                    self.cv.wait()
        finally:
            self.model_lock.acquire()
            self.install(run)
        if call.error is not None:
            raise call.error
        return call.result

    def _meet_if_ready(self) -> None:
        """(holding cv) When every live run waits, serve all waiting calls: one batched call per kind
        and sampling setting."""
        if not self.waiting or len(self.waiting) < len(self.live):
            return
        calls, self.waiting = dict(sorted(self.waiting.items())), {}
        groups: dict[tuple, list[_Call]] = {}
        for c in calls.values():
            key = (c.kind,) if c.kind == "train" else (c.kind, *[c.args[a] for a in SAMPLE_KEYS])
            groups.setdefault(key, []).append(c)
        with self.model_lock:
            for group in groups.values():
                t0 = time.perf_counter()
                try:
                    (self._sample if group[0].kind == "sample" else self._train)(group)
                except BaseException as err:  # noqa: BLE001 - each waiting run re-raises it in its thread
                    for c in group:
                        c.error = err
                self.meetings[group[0].kind] += 1
                self.seconds[group[0].kind] += time.perf_counter() - t0   # (results are on the host)
        for c in calls.values():
            c.done = True
        self.cv.notify_all()

    # ---- sampling ------------------------------------------------------------------------------
    def sampler(self, run: int) -> Callable[..., Rollouts]:
        """rollout.sample's signature, for run `run`'s Trainer (its training rows and eval chunks)."""
        def sample(model, tok, adapter, ids, mask, group_size, max_new_tokens, temperature, top_p, seed,
                   static_cache=False, ignore_eos=False, fast=None, attention="auto", row_noise=False):
            return self.call(run, "sample", ids=ids.repeat_interleave(group_size, 0),
                             mask=mask.repeat_interleave(group_size, 0), seed=seed,
                             max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             ignore_eos=ignore_eos, attention=attention)
        return sample

    def _sample(self, group: list[_Call]) -> None:
        """One decode of every call's rows: R blocks of n rows (a run without a call, or with fewer
        rows, fills its block with copies of a row, discarded), each block on its run's fold."""
        a0, R = group[0].args, self.n_runs
        n = max(c.args["ids"].shape[0] for c in group)
        width = max(c.args["ids"].shape[1] for c in group)
        by_run = {c.run: c for c in group}
        ids, mask, seeds = [], [], []
        for r in range(R):
            c = by_run.get(r, group[0])
            i, m = c.args["ids"], c.args["mask"]
            i, m = F.pad(i, (width - i.shape[1], 0), value=self.tok.pad_token_id), F.pad(m, (width - m.shape[1], 0))
            fill = n - i.shape[0]
            ids.append(torch.cat([i, i[:1].expand(fill, -1)]) if fill else i)
            mask.append(torch.cat([m, m[:1].expand(fill, -1)]) if fill else m)
            seeds.append(row_seeds(c.args["seed"], n))
        with torch.no_grad():
            for r in range(R):
                self.fleet.load_run(r, self.deltas[r])
            if self.weights is None:
                self.weights = fleet_decode.FleetWeights(self.model, self.fleet)
            comp, logp = fleet_decode.generate(
                self.model, self.weights, torch.cat(ids), torch.cat(mask), a0["max_new_tokens"], self.eos,
                self.tok.pad_token_id, temperature=a0["temperature"], top_p=a0["top_p"],
                ignore_eos=a0["ignore_eos"], attention=a0["attention"], row_seed=torch.cat(seeds))
        for c in group:
            k = c.args["ids"].shape[0]
            rows = slice(c.run * n, c.run * n + k)
            c.result = finish(self.tok, c.args["ids"], c.args["mask"], comp[rows], logp[rows], self.eos,
                              trim=True)

    # ---- training ------------------------------------------------------------------------------
    def _train(self, group: list[_Call]) -> None:
        """One pass over every call's rows, each row with its own run's δS (the hook path: see the module
        doc); with --delta-s-impl merged, each run's own merged pass in turn instead."""
        if self.cfg.delta_s_impl == "merged":
            for c in group:
                self.install(c.run)
                with grad_safe_attention():
                    c.result = backward_pass(self.model, self.adapter, self.cfg, c.args["rows"], c.args["adv"],
                                             c.args["is_teacher"], c.args["state"])
            return
        width = max(c.args["rows"].prompt_ids.shape[1] for c in group)
        parts = [_left_pad(c.args["rows"], width, self.tok.pad_token_id) for c in group]
        rows = concat(parts, self.tok.pad_token_id)
        owner = torch.cat([torch.full((len(c.args["rows"].texts),), c.run, dtype=torch.long) for c in group])
        adv = torch.cat([c.args["adv"] for c in group])
        teacher = [t for c in group for t in c.args["is_teacher"]]
        key = tuple(id(c.args["state"]) for c in group)     # the same sampled batches: the same pass state
        state = self.states.get(key)
        if state is None:
            self.states = {key: (state := BatchState.of_runs({c.run: c.args["state"] for c in group}, owner))}
        def per_rows(rows_mb: torch.Tensor):
            return self._rows(owner[rows_mb])

        cfg = replace(self.cfg, delta_s_impl="hook")          # a row's own δS: the per-row hook path
        with grad_safe_attention():
            backward_pass(self.model, self.adapter, cfg, rows, adv, teacher, state, per_rows=per_rows)
        for c in group:
            st = c.args["state"]
            c.result = (st.pass_loss, st.pass_kl)

    @contextlib.contextmanager
    def _rows(self, runs: torch.Tensor) -> Iterator[None]:
        """Inside, micro-batch row b uses run runs[b]'s δS, with the gradient to that run's own leaves."""
        mods = self.adapter.modules
        for k, m in mods.items():
            d = torch.stack([delta[k] for delta in self.deltas])         # (R, r), differentiable
            m.per_sample_delta_s = d[runs.to(d.device)]                   # (b, r)
        try:
            yield
        finally:
            for m in mods.values():
                m.per_sample_delta_s = None


SAMPLE_KEYS = ("max_new_tokens", "temperature", "top_p", "ignore_eos", "attention")


def _left_pad(rows: Rollouts, width: int, pad_id: int) -> Rollouts:
    """`rows` with prompts left-padded to `width` columns (masked; positions follow the mask)."""
    extra = width - rows.prompt_ids.shape[1]
    if not extra:
        return rows
    return replace(rows, prompt_ids=F.pad(rows.prompt_ids, (extra, 0), value=pad_id),
                   prompt_mask=F.pad(rows.prompt_mask, (extra, 0)))


class FleetTrainer(Trainer):
    """A Trainer whose sampling and training passes meet the other runs' (Lockstep)."""

    def __init__(self, cfg: TrainConfig, out: Path, lockstep: Lockstep, run: int, resume: bool, progress: bool):
        self.lockstep, self.run_index = lockstep, run
        super().__init__(cfg, out, resume=resume, progress=progress,
                         policy=Policy(lockstep.model, lockstep.tok, lockstep.adapter),
                         sampler=lockstep.sampler(run), grade=_released(lockstep, run))

    def backward(self, rows: Rollouts, adv: torch.Tensor, is_teacher: list[bool] | None = None,
                 batch: BatchState | None = None) -> tuple[float, float]:
        return self.lockstep.call(self.run_index, "train", rows=rows, adv=adv,
                                  is_teacher=[False] * len(rows.texts) if is_teacher is None else is_teacher,
                                  state=BatchState() if batch is None else batch)


def _released(lockstep: Lockstep, run: int):
    """grader.grade_many with the model released meanwhile (the other runs use it); called from
    another thread (an eval's grading pool) it only grades: that thread holds nothing."""
    from projected_grpo.env.grader import grade_many

    def grade(*args, **kwargs):
        if threading.get_ident() != lockstep.holder.get(run):
            return grade_many(*args, **kwargs)
        lockstep.model_lock.release()
        try:
            return grade_many(*args, **kwargs)
        finally:
            lockstep.model_lock.acquire()
            lockstep.install(run)
    return grade


def can_fleet(cfg: TrainConfig) -> bool:
    """Whether runs of this config's arm can share a model: not while an intervention keeps state on it
    (gradient routing's quarantine δQ)."""
    return not any(iv.point == "parameters" for iv in build(arms.get(cfg.arm), cfg))


def check_fleet(cfgs: list[TrainConfig]) -> None:
    """One line naming what keeps these configs from running as one fleet."""
    base = cfgs[0]
    for cfg in cfgs[1:]:
        diff = [f for f in base.__dataclass_fields__ if f not in PER_RUN and getattr(cfg, f) != getattr(base, f)]
        if diff:
            raise UserError(f"runs of one fleet differ only in {', '.join(PER_RUN)}; seed {cfg.seed} differs "
                            f"in --{diff[0].replace('_', '-')}")
    seeds = [c.seed for c in cfgs]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--fleet-seeds {','.join(map(str, seeds))}: a seed appears twice")
    if not base.row_noise:
        raise UserError("a fleet needs --row-noise true: a run's samples must not depend on its batch")
    if len(cfgs) > base.fleet_runs:     # fewer: the fleet's unfinished runs, resumed (sweep.ensure_fleet)
        raise UserError(f"--fleet-runs {base.fleet_runs} is less than the fleet's {len(cfgs)} runs")
    if not can_fleet(base):
        raise UserError(f"--arm {base.arm}: gradient routing's quarantine lives on the model; run it alone")
    if dist.world_size() > 1:
        raise UserError("a fleet runs on one rank; launch it without torchrun")


@dataclass
class FleetResult:
    outs: list[Path]
    errors: dict[int, BaseException] = field(default_factory=dict)
    meetings: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)   # wall seconds inside the batched calls, per kind


def train_fleet(cfgs: list[TrainConfig], outs: list[Path], resume: bool | list[bool] = False,
                progress: bool = True, policy: Policy | None = None) -> FleetResult:
    """Run (or resume: all, or per run) the runs `cfgs` (one arm, seeds differing) into `outs` as one
    fleet. A run that fails stops alone (its error in the result); the others go on."""
    check_fleet(cfgs)
    resumes = resume if isinstance(resume, list) else [resume] * len(cfgs)
    lockstep = Lockstep(policy or load_policy(cfgs[0]), len(cfgs), cfgs[0])
    trainers: list[FleetTrainer | None] = []
    result = FleetResult(list(outs))
    for r, (cfg, out) in enumerate(zip(cfgs, outs)):   # set-up one by one, each with its own δS installed
        with lockstep.turn(r):
            try:
                trainers.append(FleetTrainer(cfg, Path(out), lockstep, r, resumes[r], progress))
            except BaseException as err:  # noqa: BLE001 - one run's bad set-up stops that run only
                trainers.append(None)
                result.errors[r] = err
    for r, t in enumerate(trainers):
        if t is None:
            lockstep.leave(r)

    def body(r: int, trainer: FleetTrainer) -> None:
        try:
            with lockstep.turn(r):
                trainer.run()
        except BaseException as err:  # noqa: BLE001 - reported in the result and by the CLI
            result.errors[r] = err
        finally:
            lockstep.leave(r)

    threads = [threading.Thread(target=body, args=(r, t), name=f"run{r}", daemon=True)
               for r, t in enumerate(trainers) if t is not None]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    result.meetings = dict(lockstep.meetings)
    result.seconds = {k: round(v, 2) for k, v in lockstep.seconds.items()}
    return result
