"""`pgrpo warmstart` (warmstart.py: a short LoRA fine-tune into a model directory) and `pgrpo baseline`
(baseline.py: a model's base rates without training). Their flags are their own: warmstart's are
WarmstartConfig's fields, baseline's those of its pre-registered protocol (docs/results/qwen05_warmstart)."""

from __future__ import annotations

from pathlib import Path

import torch

from projected_grpo.studies import baseline
from projected_grpo.cli.flags import bool_flag
from projected_grpo.env.grader import EnvConfig
from projected_grpo.env.problems import load_problems
from projected_grpo.env.prompts import check_mode
from projected_grpo.errors import UserError
from projected_grpo.models import load_model
from projected_grpo.studies.warmstart import DATA_KINDS, WarmstartConfig, apply, warmstart


def add_commands(sub) -> None:
    d = WarmstartConfig("", "")
    p = sub.add_parser("warmstart", help="short LoRA fine-tune on bundled honest / loophole demonstrations; "
                                         "writes a model directory for --model")
    p.add_argument("--model", required=True, help="base model (embedded name, random:SHAPE, hub id, dir, .gguf)")
    p.add_argument("--out", required=True, help="model directory to write (must not exist or be empty)")
    p.add_argument("--hack-share", type=float, default=d.hack_share,
                   help="share of items that use (demos) or describe (documents) the loophole")
    p.add_argument("--data", choices=DATA_KINDS, default=d.data, help="what the hack items are")
    p.add_argument("--demos", default=d.demos, help="demonstrations JSONL (default: bundled)")
    p.add_argument("--documents", default=d.documents, help="loophole documents JSONL (default: bundled)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the items")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate of the LoRA weights")
    p.add_argument("--lora-r", type=int, default=d.lora_r, help="LoRA rank")
    p.add_argument("--lora-alpha", type=float, default=d.lora_alpha, help="LoRA alpha (0 = 2 * r)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="items per optimiser step")
    p.add_argument("--seed", type=int, default=d.seed, help="hack-item choice, batch order, LoRA init")
    p.add_argument("--mode", default=d.mode, help="loophole mode of the prompts")
    p.add_argument("--hint", default=d.hint, help="hint variant of the prompts")
    p.add_argument("--enable-thinking", type=bool_flag, default=d.enable_thinking,
                   help="chat template's thinking switch (true/false), as the training run will use")
    p.add_argument("--dtype", default=d.dtype, help="model dtype, also of the saved weights")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    p.set_defaults(func=_cmd_warmstart)

    p = sub.add_parser("warmstart-apply", help="re-create a warm start's model dir from its base model and "
                                               "lora.safetensors, bit for bit (studies/warm_lora.py)")
    p.add_argument("--model", required=True, help="the base model the warm start was made from")
    p.add_argument("--lora", required=True, help="the warm start's lora.safetensors")
    p.add_argument("--out", required=True, help="model directory to write (must not exist or be empty)")
    p.add_argument("--device", default="cpu", help="where the base model is loaded (the merge runs on the CPU)")
    p.set_defaults(func=_cmd_warmstart_apply)

    p = sub.add_parser("baseline", help="base rates (hack, attempted, pass, format) of a model, no training")
    p.add_argument("--model", required=True, help="embedded name, random:SHAPE, hub id, local dir or .gguf")
    p.add_argument("--problems", default="bundled", help="JSONL path, 'bundled' or 'hf:<name>'")
    p.add_argument("--limit", type=int, default=0, help="only the first N problems (0 = all)")
    p.add_argument("--n-samples", type=int, default=4, help="completions per problem and hint")
    p.add_argument("--mode", default="run_tests", help="loophole mode disclosed in the prompt")
    p.add_argument("--hint", default="simple", help="hint variants, comma-separated, or 'all'")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling")
    p.add_argument("--max-new-tokens", type=int, default=512, help="generation budget per completion")
    p.add_argument("--batch", type=int, default=64, help="completions per sampling call")
    p.add_argument("--seed", type=int, default=41, help="sampling seed")
    p.add_argument("--enable-thinking", type=bool_flag, default=True, help="chat template's thinking switch")
    p.add_argument("--dtype", default="bfloat16", help="model dtype")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per graded program")
    p.add_argument("--workers", type=int, default=0, help="grader processes (0 = all cores)")
    p.add_argument("--out", required=True, help="directory for baseline.jsonl, baseline.md, samples.jsonl")
    p.set_defaults(func=_cmd_baseline)


def _cmd_warmstart(args) -> int:
    fields = {k: v for k, v in vars(args).items() if k in WarmstartConfig.__dataclass_fields__}
    record = warmstart(WarmstartConfig(**fields))
    print(f"wrote {args.out}: {record['n_honest']} honest + {record['n_hack']} hack items, "
          f"NLL {record['loss_base']:.4f} -> {record['final_loss']:.4f} in {record['seconds']:.1f} s")
    return 0


def _cmd_warmstart_apply(args) -> int:
    record = apply(args.model, args.lora, args.out, args.device)
    print(f"wrote {args.out}: the warm start of {record['base_model']} (hack share {record['hack_share']}), "
          f"weights sha256 {record['weights_sha256'][:12]} as recorded")
    return 0


def _cmd_baseline(args) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not empty; choose a new directory")
    check_mode(args.mode)
    hints = baseline.parse_hints(args.hint, args.mode)
    if args.n_samples < 1 or args.max_new_tokens < 1 or args.batch < 1:
        raise UserError("--n-samples, --max-new-tokens and --batch must be >= 1")
    if args.temperature < 0 or (args.temperature == 0 and args.n_samples > 1):
        raise UserError("--temperature must be >= 0, and 0 (greedy) only with --n-samples 1")
    _check_counts(args)
    problems = load_problems(args.problems)[: args.limit or None]
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_model(args.model, args.dtype, device, args.enable_thinking)
    env = EnvConfig(mode=args.mode, timeout_s=args.timeout, **({"workers": args.workers} if args.workers else {}))
    rows, samples = baseline.measure(model, tok, problems, args.mode, hints, args.n_samples, args.temperature,
                            args.max_new_tokens, args.top_p, args.seed, args.batch, env, torch.device(device))
    print(baseline.write(out, rows, samples, args.model, args.problems), end="")
    return 0


def _check_counts(args) -> None:
    """--limit and --workers are counts (0 = all); --timeout is positive. A negative --limit sliced
    problems[:-40], silently leaving a few problems (2 of the 42 bundled ones)."""
    for flag, value in (("--limit", args.limit), ("--workers", args.workers)):
        if value < 0:
            raise UserError(f"{flag} {value}: must be >= 0 (0 = all)")
    if not args.timeout > 0:
        raise UserError(f"--timeout {args.timeout:g}: must be > 0 seconds")
