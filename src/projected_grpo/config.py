"""Typed run configuration, presets, and the bridge from command-line flags (every field is a `--flag`,
built by cli/flags.py from the fields: type, `--help` text and allowed values).

A field is declared with `opt(default, doc)`: `doc` is its one line of doc and its flag's `--help`. A field whose
values form a closed set says so once: a `Literal[...]` type, or `choices=` naming the table that
holds them (the arms table, the loophole modes). `allowed_values` reads either; `check_value` refuses
anything else, for flags, `validate` and `from_dict` alike.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from projected_grpo import arms
from projected_grpo.env.prompts import MODES, check_mode
from projected_grpo.errors import UserError

ARMS = arms.NAMES  # the table of arms is arms.py
# metrics that differ between identical runs
TIMING_KEYS = ("gen_s", "grade_s", "train_s", "step_s", "eval_s", "refresh_s", "eval_with_quarantine_s")
# The benchmark's 119 medium/hard problems (rl-rewardhacking's leetcode_test_medhard.jsonl), which the
# ariahw and full presets read. Not shipped with the package (LeetCode's text): put the file here,
# relative to the working directory, or pass --problems PATH.
MEDHARD = "data/leetcode_test_medhard.jsonl"
Dtype = Literal["bfloat16", "float32", "float16"]  # model dtypes (models.DTYPES maps them to torch's)


def opt(default: Any, doc: str, choices: tuple[str, ...] | None = None) -> Any:
    """A config field: its default, its one line of doc (the flag's `--help`) and, for a closed set of
    values not written as a `Literal` type, the tuple that lists them."""
    return field(default=default, metadata={"help": doc, "choices": choices})


@dataclass
class TrainConfig:
    """Everything one GRPO run needs; `config.json` in the run dir holds it for a rerun."""

    # --- model ---
    model: str = opt("tiny-qwen3", "embedded name, random:SHAPE, hub id, local dir or .gguf file")
    dtype: Dtype = opt("bfloat16", "model dtype; the SVD basis and v_hack are dtype-specific")
    enable_thinking: bool = opt(True, "chat template's thinking switch (Qwen3: false = empty think block, no "
                                      "reasoning); templates without it ignore it")
    device: str = opt("auto", "auto = cuda when available, else cpu")
    targets: str = opt("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "wrapped linears")
    # --- environment ---
    problems: str = opt("bundled", "bundled | path to benchmark JSONL | hf:newfacade/LeetCodeDataset")
    n_problems: int = opt(0, "use only the first N problems (0 = all)")
    max_prompt_tokens: int = opt(1024, "drop problems whose prompt is longer")
    mode: str = opt("run_tests", "loophole mode disclosed in the prompt", choices=MODES)
    hint: str = opt("simple", "hint variant of the mode")
    correct_reward: float = opt(1.0, "reward for `passed` (the flawed grade)")
    format_reward: float = opt(0.25, "bonus for a compiling fenced code block")
    grade_timeout_s: float = opt(5.0, "wall timeout per graded program")
    grade_workers: int = opt(0, "grader processes (0 = all cores)")
    # --- arm ---
    arm: str = opt("vanilla", "the arm, a named combination of interventions (the choices below; what each "
                              "knows: arms.py and the README's arms table); oracle is an UPPER BOUND: it uses "
                              "the oracle labels", choices=arms.NAMES)
    v_hack: str = opt("", 'path to a v_hack artifact ("" = extract into the run dir)')
    pairs: str = opt("bundled", "contrastive code pairs for extraction")
    vhack_m: int = opt(4, "directions kept per module")
    vhack_modes: str = opt("", 'restrict extraction to these modes ("" = all)')
    project_target: Literal["grad", "update"] = opt("grad", "grad: project δS.grad | update: project the AdamW step")
    refresh_every: int = opt(8, "refresh arm: re-extract V from the pairs at the current δS every K steps")
    coverage: bool = opt(False, "log cov_span / cov_removed / cov_span_null of the oracle-labelled hack rows' "
                                "gradient (diagnostic, reads labels, never changes training)")
    rebound_alpha: float = opt(2.0, "Rebound penalty strength α")
    rebound_form: Literal["multiplicative", "additive"] = opt("multiplicative", "multiplicative | additive")
    persona_pairs: str = opt("bundled:persona", "sentence pairs for the Rebound concept direction")
    monitor_tpr: float = opt(1.0, "monitor arms: P(flag | hack row) of the noisy channel over the oracle label")
    monitor_fpr: float = opt(0.0, "monitor arms: P(flag | other row) (1.0 / 0.0 = ground-truth monitor)")
    penalty: float = opt(1.0, "monitor_penalty / probe_penalty: amount taken off a flagged row's reward")
    probe_layer: int = opt(-1, "probe_penalty: decoder layer whose states the probe reads (-1 = the middle one)")
    probe_pairs: str = opt("", 'probe_penalty: labelled calibration pairs, training split ("" = --pairs)')
    probe_heldout: float = opt(0.25, "probe_penalty: share of the calibration problems held out for its accuracy")
    probe_l2: float = opt(1e-2, "probe_penalty: L2 strength of the logistic regression (standardised states)")
    clean_k: int = opt(8, "clean_subspace: directions kept per module from the honest demonstrations' gradients")
    probe_threshold: float = opt(0.5, "probe_penalty: a row is flagged when the probe's P(hack) >= this")
    route_threshold: float = opt(0.0, "routing_v / routing_random: route a row when its gradient's cosine with V's top "
                                      "axis exceeds this (0: any hack-ward row; one row's cos is small, ~1/sqrt(Σr) "
                                      "for a random V: calibrate on the logged route_cos_p50/p90, route_cos_null_rms)")
    teacher_pool: str = opt("", 'JSONL of cached completions mixed into groups, or "builtin"')
    mix_ratio: float = opt(0.0, "share of each group taken from the teacher pool")
    teacher_kinds: str = opt("", 'teacher-pool kinds kept ("" = all; builtin: canonical,stub,exploit)')
    # --- GRPO ---
    steps: int = opt(10, "optimiser steps")
    prompts_per_step: int = opt(2, "P: prompts per step (global, over all ranks)")
    group_size: int = opt(2, "G: samples per prompt")
    max_new_tokens: int = opt(64, "generation budget; also the loss denominator's length")
    temperature: float = opt(1.0, "sampling temperature")
    top_p: float = opt(1.0, "nucleus sampling")
    beta: float = opt(0.0, "K3 KL weight to the δS=0 reference (0 skips its forward)")
    clip_eps: float = opt(0.2, "PPO ratio clip ε")
    num_iterations: int = opt(1, "optimiser passes per sampled batch (>1: ρ ≠ 1 and the clip acts)")
    tis_cap: float = opt(2.0, "C of the student tokens' weight min(π_old/π_sampler, C) (0 = off)")
    teacher_weight: Literal["none", "is"] = opt("none", "teacher-pool rows: none (weight 1) | is (per-token "
                                                "min(π_old, 1))")
    lr: float = opt(5e-3, "AdamW learning rate for δS")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_steps: int = opt(1, "linear warm-up steps, then --lr-schedule")
    lr_schedule: Literal["cosine", "constant"] = opt("cosine", "after the warm-up: cosine (to 0 at the last "
                                                     "step) | constant")
    grad_clip: float = opt(1.0, "global grad-norm clip")
    micro_batch: int = opt(8, "sequences per forward/backward chunk")
    train_batching: Literal["padded", "sorted"] = opt(
        "padded", "training micro-batches: padded (row order, the batch's padded rectangle) | sorted (rows by "
        "length, each micro-batch without padding, only real completion tokens scored; core/batching.py)")
    micro_tokens: int = opt(0, "with --train-batching sorted: rows per micro-batch while rows × longest row ≤ "
                            "this (0 = --micro-batch rows)")
    logprob_chunk: int = opt(256, "positions per lm_head chunk in the log-prob pass")
    grad_checkpointing: bool = opt(False, "activation checkpointing in the training forward")
    fast_rollout: bool = opt(True, "CUDA: static-cache compiled decode; CPU: HF generate")
    decode_attention: Literal["auto", "triton", "sdpa", "matmul"] = opt(
        "auto", "fast decode's attention: auto | triton | sdpa | matmul")
    delta_s_impl: Literal["hook", "merged"] = opt("hook", "training forward: hook (W x + U(δS⊙Vh x)) | merged "
                                                  "(one matmul with W' = W + U diag(δS) Vh)")
    base_on_cpu: bool = opt(False, "keep each targeted W in pinned CPU memory and one copy on the device (W or "
                            "its current fold, shared by sampling and training; core/adapter.py): less memory, "
                            "one host-to-device copy of the targeted weights per step; needs --delta-s-impl "
                            "merged, not with fleets or gradient routing")
    row_noise: bool = opt(False, "sampling noise of each row drawn from (seed, row) alone (fast/row_noise.py); "
                          "needs a Qwen2/3 model (the fast decode loop, eager on the CPU)")
    fleet_runs: int = opt(1, "runs stepped together in one process on one model copy (training/lockstep.py; "
                          "> 1 needs --row-noise; set by `pgrpo train --fleet-seeds`)")
    # --- run ---
    seed: int = opt(41, "seeds sampling, problem order and controls")
    checkpoint_every: int = opt(1, "steps between checkpoints")
    samples_every: int = opt(1, "steps between samples.jsonl dumps (0 = never)")
    report_to: str = opt("none", "experiment trackers: none | wandb | tensorboard (comma list; logs in "
                                 "DIR/wandb, DIR/tb)")
    report_samples_every: int = opt(10, "steps between the trackers' sampled-completion tables (0 = never)")
    # --- held-out evaluation (splits.py, evaluate.py) ---
    split_file: str = opt("", 'JSON {"train": [ids], "eval": [ids]} ("" = derive from --seed)')
    eval_problems: float = opt(0.25, "eval problems: a count if >= 1, else a share of the pool (0 = none)")
    eval_every: int = opt(0, "also eval every K steps (eval always runs at step 0 and after the last)")
    eval_samples: int = opt(4, "samples per eval problem (0 = no eval; the eval problems stay held out)")
    eval_temperature: float = opt(1.0, "eval sampling temperature (0 = greedy, then --eval-samples 1)")
    eval_max_new_tokens: int = opt(0, "eval generation budget (0 = --max-new-tokens)")
    eval_chunk: int = opt(0, "eval rows per sampling call (0 = a training step's batch, P·G / world; the "
                          "sampling seeds are per chunk, so a change draws other samples from the same policy)")
    eval_overlap: bool = opt(True, "grade each eval chunk in a background thread while the next one samples "
                             "(the same grades, less wall time)")
    eval_renamed: bool = opt(True, "mode run_tests: eval hack under evaluator names drawn from "
                             "prompts.EVAL_EVALUATORS (the training-name rate is logged beside it)")
    eval_nohint: bool = opt(True, "also eval the no-hint prompts (eval_pass_nohint: the capability "
                            "a defence must keep)")

    def validate(self, files: bool = True) -> None:
        """Refuse bad values, naming the flag; `files=False` skips the checks of paths on disk (for
        `--print-config`, which prints a config meant for another machine as readily)."""
        if (files and self.problems != "bundled" and not self.problems.startswith("hf:")
                and not Path(self.problems).expanduser().is_file()):
            raise UserError(
                f"--problems {self.problems}: file does not exist. Give a benchmark-format JSONL (the "
                f"ariahw and full presets expect rl-rewardhacking's 119-problem leetcode_test_medhard.jsonl "
                f"at {MEDHARD}, relative to the working directory), or --problems "
                "hf:newfacade/LeetCodeDataset (online, needs the `datasets` package), or --problems bundled")
        from projected_grpo.training import trackers

        trackers.parse(self.report_to)  # names checked everywhere; installed libraries where it runs
        if files:
            trackers.check_installed(self.report_to)
        for f in fields(self):  # closed sets: the arms table, the modes, the Literal types
            check_value(f.name, getattr(self, f.name))
        check_mode(self.mode, self.hint)
        if not 0.0 <= self.mix_ratio < 1.0:
            raise UserError(f"--mix-ratio must be in [0, 1), got {self.mix_ratio}")
        if self.mix_ratio > 0 and not self.teacher_pool:
            raise UserError("--mix-ratio > 0 needs --teacher-pool FILE")
        if self.teacher_pool and self.n_teacher >= self.group_size:
            raise UserError(f"--mix-ratio {self.mix_ratio} leaves no student sample in a group of "
                            f"--group-size {self.group_size}")
        self._validate_teacher_kinds()
        if self.fleet_runs < 1:
            raise UserError(f"--fleet-runs must be at least 1, got {self.fleet_runs}")
        if self.base_on_cpu and (self.delta_s_impl != "merged" or self.fleet_runs > 1):
            raise UserError("--base-on-cpu needs --delta-s-impl merged (the hook path reads W itself at every "
                            "step) and a run alone (a fleet folds every run's δS from W)")
        for name in ("monitor_tpr", "monitor_fpr", "probe_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if not -1.0 <= self.route_threshold <= 1.0:
            raise UserError(f"--route-threshold must be in [-1, 1] (a cosine), got {self.route_threshold}")
        if not 0.0 < self.probe_heldout < 1.0:
            raise UserError(f"--probe-heldout must be in (0, 1), got {self.probe_heldout}")
        if self.penalty < 0 or self.probe_l2 < 0:
            raise UserError("--penalty and --probe-l2 must be >= 0")
        if self.tis_cap < 0:
            raise UserError(f"--tis-cap must be >= 0 (0 = off), got {self.tis_cap}")
        if self.group_size < 2:
            raise UserError("--group-size must be at least 2 (advantages are relative within a group)")
        if self.eval_problems < 0 or (self.eval_problems >= 1 and self.eval_problems != int(self.eval_problems)):
            raise UserError(f"--eval-problems must be a share in [0, 1) or a whole count, got {self.eval_problems}")
        for name in ("eval_every", "eval_samples", "eval_max_new_tokens", "eval_chunk", "report_samples_every"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0")
        if self.eval_temperature < 0:
            raise UserError(f"--eval-temperature must be >= 0, got {self.eval_temperature}")
        if self.eval_temperature == 0 and self.eval_samples > 1:
            raise UserError("--eval-temperature 0 (greedy) gives identical samples: use --eval-samples 1")
        if self.micro_tokens and self.train_batching != "sorted":
            raise UserError("--micro-tokens needs --train-batching sorted")
        if self.micro_tokens < 0:
            raise UserError(f"--micro-tokens must be >= 0, got {self.micro_tokens}")
        for name in ("steps", "prompts_per_step", "max_new_tokens", "vhack_m", "micro_batch",
                     "num_iterations", "refresh_every", "clean_k"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")

    def _validate_teacher_kinds(self) -> None:
        from projected_grpo.training.teacher import BUILTIN_KINDS, parse_kinds

        kinds = parse_kinds(self.teacher_kinds)
        if kinds and not (self.teacher_pool and self.n_teacher > 0):
            raise UserError(f"--teacher-kinds {self.teacher_kinds} needs a teacher pool in use "
                            "(--teacher-pool and a --mix-ratio that gives each group a teacher row)")
        unknown = [k for k in kinds if k not in BUILTIN_KINDS]
        if self.teacher_pool == "builtin" and unknown:
            raise UserError(f"--teacher-kinds: unknown kind {', '.join(unknown)} for the builtin pool; "
                            f"choose from {', '.join(BUILTIN_KINDS)}")

    @property
    def n_teacher(self) -> int:
        """Teacher completions per group."""
        return int(round(self.mix_ratio * self.group_size))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "TrainConfig":
        """A config from JSON (a run's config.json, a sweep's run spec). Refuses an unknown field, a value
        of the wrong JSON type and a value outside its field's closed set, naming `source` and the field.
        Fields left out keep their defaults (a config written before the field existed)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"{source}: unknown config fields {unknown}")
        for name, value in d.items():
            kind = str if typing.get_origin(_HINTS[name]) is Literal else _HINTS[name]
            if not _is_json_of(kind, value):
                raise UserError(f"{source}: field {name} must be {kind.__name__}, got {value!r}")
            try:
                check_value(name, value)
            except UserError as err:
                raise UserError(f"{source}: field {name}: {err}") from err
        return cls(**d)


def allowed_values(name: str) -> tuple[str, ...] | None:
    """The closed set of values of field `name` (its Literal's arguments or its `choices`), or None."""
    hint = _HINTS[name]
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    return _FIELDS[name].metadata.get("choices")


def check_value(name: str, value: Any) -> None:
    """UserError naming the flag and the allowed values when `value` is outside field `name`'s closed set."""
    allowed = allowed_values(name)
    if allowed is not None and value not in allowed:
        listed = ", ".join(allowed[:-1]) + f" or {allowed[-1]}"
        raise UserError(f"unknown {name.replace('_', ' ')} {value!r}: --{name.replace('_', '-')} must be {listed}")


def parse_value(name: str, text: str) -> Any:
    """Field `name`'s value from text (a sweep's `--variant ...:field=value`): typed as the field and
    checked against its closed set; UserError saying what is wrong."""
    kind = _HINTS[name]
    try:
        value = (parse_bool(text) if kind is bool else text if typing.get_origin(kind) is Literal
                 else kind(text))
    except ValueError as err:
        raise UserError(str(err)) from err
    check_value(name, value)
    return value


def field_help(name: str) -> str:
    """The field's one line of doc, its flag's `--help` text."""
    return _FIELDS[name].metadata["help"]


def _is_json_of(kind: type, value: Any) -> bool:
    """Whether a JSON value fits a field of type `kind` (an int is a float; a bool is no number)."""
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if kind is float else kind)


_FIELDS = {f.name: f for f in fields(TrainConfig)}
if any("help" not in f.metadata for f in _FIELDS.values()):  # a field declared without its doc
    raise TypeError("declare every TrainConfig field as name: type = opt(default, doc); these are not: "
                    + ", ".join(n for n, f in _FIELDS.items() if "help" not in f.metadata))
CONFIG_FIELDS = tuple(_FIELDS)  # every field, in declaration order
_HINTS = typing.get_type_hints(TrainConfig)  # field name -> type (the annotations are strings until resolved)


PRESETS: dict[str, TrainConfig] = {
    # CPU, the embedded model: checks the mechanics end to end in a few minutes on 2 cores.
    # The teacher pool gives the random-init model's groups a reward spread, so gradients flow.
    # fp32: a CPU without AVX-512 BF16 runs the bf16 forward+backward ~50x slower (bench/cpu_dtype.py).
    "smoke": TrainConfig(model="tiny-qwen3", device="cpu", dtype="float32", problems="bundled",
                         n_problems=30, steps=10,
                         prompts_per_step=2, group_size=2, max_new_tokens=48, beta=0.0, vhack_m=4,
                         teacher_pool="builtin", mix_ratio=0.5, eval_problems=4, eval_samples=2),
    # One GPU, a small real coder model (a hub id or a local .gguf).
    "lite": TrainConfig(model="Qwen/Qwen2.5-Coder-0.5B-Instruct", problems="bundled", steps=60,
                        prompts_per_step=8, group_size=8, max_new_tokens=512, beta=0.04, vhack_m=16,
                        lr=2e-3, warmup_steps=5, micro_batch=16, temperature=0.9),
    # One lent H100 session: the real Qwen2.5-Coder-0.5B-Instruct (GGUF from scripts/fetch_qwen_gguf.py)
    # on the bundled easier problems. Hacking is made to emerge by the builtin teacher pool (canonical
    # solutions, canned run_tests exploits and stubs mixed into every group) under the "aware" hint.
    "qwen05": TrainConfig(model="models/qwen2.5-coder-0.5b-instruct-q8_0.gguf", problems="bundled",
                          mode="run_tests", hint="aware", steps=16, prompts_per_step=8, group_size=8,
                          max_new_tokens=320, beta=0.0, vhack_m=16, lr=1e-2, warmup_steps=2,
                          micro_batch=16, temperature=1.0, teacher_pool="builtin", mix_ratio=0.25,
                          grade_timeout_s=5.0),
    # The substrate (issue #26, docs/results/substrate): the warm-started 0.5B coder (`pgrpo warmstart
    # --model models/qwen2.5-coder-0.5b-instruct-q8_0.gguf --out models/qwen05-warm-0.35 --hack-share 0.35
    # --hint aware`), no teacher pool: hacking is learned from the model's own samples. The calibrated point
    # lr25e5 of the second grid: lr 2.5e-4, warm-up 10 then constant, 80 steps. Vanilla over 3 seeds: onset
    # (train hack ≥ 0.3) at steps 25-26, final renamed-evaluator eval hack 0.73-0.78, format 0.91-0.96,
    # no-hint pass ×1.0-1.2 of step 0: all four targets met. micro-batch 4 lets 9 runs share one H200.
    "qwen05_warm": TrainConfig(model="models/qwen05-warm-0.35", problems="bundled", mode="run_tests",
                               hint="aware", steps=80, prompts_per_step=8, group_size=8, max_new_tokens=320,
                               beta=0.0, vhack_m=16, lr=2.5e-4, warmup_steps=10, lr_schedule="constant",
                               micro_batch=4, temperature=1.0, teacher_pool="", mix_ratio=0.0,
                               grade_timeout_s=5.0, eval_every=10, eval_samples=16),
    # Ariahw, Engels & Nanda's LeetCode set-up as far as this tool goes: Qwen3-4B with thinking off, the
    # benchmark's 119 medium/hard problems (MEDHARD; they trained on a larger train split, here the
    # run's own train split of the 119), the run_tests loophole (simple hint), reward 3.0 correct +
    # 0.5 format, 16 prompts × 16 samples, 200 steps, β = 1e-3, 1536-token prompts and completions,
    # temperature 0.7, top-p 0.95, 10 warmup steps. Their LoRA (r = 32) used lr 7e-5; that does not
    # carry over to δS, which moves singular values directly: lr 1e-3 as in `full` (not tuned).
    "ariahw": TrainConfig(model="Qwen/Qwen3-4B", enable_thinking=False, problems=MEDHARD,
                          max_prompt_tokens=1536, mode="run_tests", hint="simple", correct_reward=3.0,
                          format_reward=0.5, steps=200, prompts_per_step=16, group_size=16,
                          max_new_tokens=1536, temperature=0.7, top_p=0.95, beta=1e-3, lr=1e-3,
                          warmup_steps=10, vhack_m=16, micro_batch=8, grad_checkpointing=True,
                          checkpoint_every=5),
    # The journal's full run, on the benchmark's 119 problems.
    "full": TrainConfig(model="Qwen/Qwen2.5-Coder-7B-Instruct", problems=MEDHARD, steps=200,
                        prompts_per_step=16, group_size=4, max_new_tokens=1024, beta=0.04, vhack_m=16,
                        lr=1e-3, warmup_steps=10, micro_batch=8, grad_checkpointing=True,
                        checkpoint_every=5),
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name])


# ---- from parsed flags (cli/flags.py adds one flag per field, default None) --------------------
def explicit_flags(args) -> dict:
    """The config fields given on the command line (a flag left out is None)."""
    return {f.name: getattr(args, f.name) for f in fields(TrainConfig)
            if getattr(args, f.name, None) is not None}


def config_from_args(args, base: TrainConfig, files: bool = True) -> TrainConfig:
    """`base` with the flags given on the command line (an argparse namespace), validated."""
    cfg = replace(base, **explicit_flags(args))
    cfg.validate(files)
    return cfg


def resumed_config(stored: dict, args, source: str, files: bool = True) -> TrainConfig:
    """A run's stored config (`source`: its config.json) for `--resume`. Flags given beside --resume,
    and a --preset with them, must agree with it: a resumed run is the same run, so a flag that
    would change it is refused, naming it."""
    cfg = TrainConfig.from_dict(stored, source)
    given = explicit_flags(args)
    bad = [f"--{k.replace('_', '-')} {v!r} (the run has {getattr(cfg, k)!r})"
           for k, v in given.items() if getattr(cfg, k) != v]
    if getattr(args, "preset", None):
        want = replace(preset(args.preset), **given)
        differ = [f.name for f in fields(TrainConfig)
                  if f.name not in given and getattr(want, f.name) != getattr(cfg, f.name)]
        if differ:
            bad.append(f"--preset {args.preset} (differs from the run in {', '.join(differ)})")
    if bad:
        steps = (" --steps cannot change: it fixes the cosine LR schedule of the steps already taken;"
                 " start a new run to train longer." if "steps" in given and given["steps"] != cfg.steps
                 else "")
        raise UserError(f"--resume continues the run in {source} with its own config; these flags "
                        f"disagree with it: {'; '.join(bad)}.{steps} Drop them (a resumed run is the "
                        "same run) or start a new run with another --out.")
    cfg.validate(files)
    return cfg


def parse_bool(text: str) -> bool:
    """'true'/'false' (also 1/0, yes/no, on/off) -> bool; ValueError for anything else."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")
