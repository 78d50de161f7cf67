"""``lrnnx train``, ``lrnnx evaluate`` and ``lrnnx generate`` (added to the ``lrnnx`` command
through :data:`lrnnx.cli.COMMAND_MODULES`).

    lrnnx train [CONFIG] [KEY=VALUE ...] [--resume CKPT] [--quiet]
        train from a YAML config (default: the built-in MQAR hybrid) with OmegaConf dotted
        overrides: lrnnx train configs/mqar.yaml model.spec="attn*2" trainer.max_steps=500
    lrnnx evaluate CKPT [--batches N] [--device D]
        score a checkpoint (run folder, checkpoint folder or its model.safetensors) on the
        eval split of its task
    lrnnx generate CKPT --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K]
                   [--top-p P] [--seed S]
        sample from an LM checkpoint (char_lm: text; token tasks: ids separated by spaces)

Multi-process: ``torchrun --nproc_per_node N -m lrnnx train ...``.  Nothing heavy is imported
until a command runs, so ``lrnnx --help`` stays fast.
"""

from __future__ import annotations

import os

__all__ = ["add_commands", "split_train_args"]


def split_train_args(items: list[str]) -> tuple[str | None, list[str]]:
    """``(config path or None, overrides)`` from ``lrnnx train``'s positional arguments."""
    from lrnnx.errors import ConfigError

    config, overrides = None, []
    for item in items:
        if "=" in item and not os.path.isfile(item):
            overrides.append(item)
        elif config is None and not overrides:
            config = item
        else:
            raise ConfigError(f"unexpected argument {item!r}: lrnnx train takes one CONFIG "
                              f"file first, then key=value overrides (e.g. "
                              f"trainer.max_steps=500).")
    return config, overrides


def cmd_train(args, out) -> int:
    from .trainer import train

    config, overrides = split_train_args(args.args)
    result = train(config, overrides, resume=args.resume, console=out, quiet=args.quiet)
    if args.quiet:
        out.print(f"{result.metric} {result.eval.get(result.metric)}")
    return 0


def cmd_evaluate(args, out) -> int:
    from rich.table import Table

    from .modeling import load_for_inference, model_spec_text
    from .trainer import evaluate_model

    cfg, task, model, ckpt = load_for_inference(args.checkpoint, device=args.device)
    device = next(model.parameters()).device
    bs = args.batch_size or cfg.trainer.eval_batch_size or cfg.trainer.batch_size
    res = evaluate_model(model, task, bs, args.batches or cfg.trainer.eval_batches, device)
    table = Table(title=f"evaluation of {ckpt.path}", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    for k, v in (("task", task.describe()), ("model", model_spec_text(cfg)),
                 ("step", ckpt.trainer_state.get("step")), ("eval loss", f"{res['loss']:.4f}"),
                 (f"eval {task.metric}", f"{res[task.metric]:.4f}"),
                 ("scored positions", f"{res['scored']:,}")):
        table.add_row(k, str(v))
    out.print(table)
    return 0


def cmd_generate(args, out) -> int:
    import torch

    from lrnnx.errors import ConfigError

    from .modeling import load_for_inference

    cfg, task, model, ckpt = load_for_inference(args.checkpoint, device=args.device)
    if task.kind != "lm":
        raise ConfigError(f"lrnnx generate samples from language models; checkpoint "
                          f"{ckpt.path!r} is a {task.kind} for task {task.name!r} (use lrnnx "
                          f"evaluate).")
    ids = task.encode(args.prompt)
    if not ids:
        raise ConfigError("--prompt is empty; give at least one token (char_lm: any text).")
    device = next(model.parameters()).device
    prompt = torch.tensor([ids], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad():
        full = model.generate(prompt, args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, generator=gen)
    new = full[0, len(ids):].tolist()
    if task.name == "char_lm":
        out.print(task.decode(ids) + task.decode(new), markup=False, highlight=False)
    else:
        out.print(f"{task.decode(ids)} -> {task.decode(new)}", markup=False, highlight=False)
    return 0


def add_commands(sub) -> None:
    """Add ``train``, ``evaluate`` and ``generate`` to the ``lrnnx`` subparsers."""
    s = sub.add_parser("train", help="train a model on a built-in task from a YAML config",
                       description="Train from CONFIG (YAML; default: MQAR with a small "
                       "hybrid) with dotted overrides such as trainer.max_steps=500 "
                       "model.spec='attn*2'.")
    s.add_argument("args", nargs="*", metavar="CONFIG|KEY=VALUE",
                   help="a YAML config file, then section.key=value overrides")
    s.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (run folder or "
                   "checkpoint folder); without CONFIG, its own config is used")
    s.add_argument("--quiet", action="store_true", help="no progress bar or table")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="score a checkpoint on its task's eval split")
    s.add_argument("checkpoint", metavar="CKPT", help="run folder, checkpoint folder or "
                   "model.safetensors")
    s.add_argument("--batches", type=int, default=None, help="eval batches (generated tasks)")
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("generate", help="sample a continuation from an LM checkpoint")
    s.add_argument("checkpoint", metavar="CKPT")
    s.add_argument("--prompt", required=True, help="char_lm: text; token tasks: token ids "
                   "separated by spaces")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_generate)
