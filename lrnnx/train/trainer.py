"""The training loop behind ``lrnnx train``: one code path for 1 process, DDP and FSDP2.

Each step ``s`` (1-based): set the learning rates for ``s`` (:mod:`lrnnx.train.optim`), draw
global batch ``s`` of the task (a pure function of the seed and ``s``), keep this rank's rows,
forward under bf16 autocast on GPU (fp32 on CPU by default), cross-entropy normalised by the
global count of scored positions (:func:`lrnnx.train.tasks.loss_and_stats`), backward, clip the
global gradient norm, AdamW step.  Every ``log_every`` steps the metric sums are all-reduced
and logged; every ``eval_every`` steps (and at the end) the eval split is scored; checkpoints
go to ``<out_dir>/checkpoints/step_<N>/`` every ``checkpoint_every`` steps and at the end.

Determinism: the model is initialised after ``torch.manual_seed(trainer.seed)``, batches depend
only on (seed, split, index), the learning rate only on the step, and a checkpoint restores
weights, optimizer state and the RNG, so a resumed run continues the same loss curve exactly
(on the same device and thread count).

Example::

    from lrnnx.train import train
    result = train(overrides=["trainer.max_steps=200", "model.spec=attn*2"])
    result.eval["accuracy"], result.checkpoint
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from lrnnx.errors import ConfigError

from . import distributed as D
from .checkpoint import Checkpoint, load_checkpoint, restore_training_state, rng_state, \
    save_checkpoint
from .config import TrainConfig, load_config
from .logging import MetricsLog, ProgressDisplay, Timer, make_console, plot_metrics, \
    summary_table
from .modeling import build_model_for, model_spec_text, resolved_config
from .optim import build_optimizer, param_groups, set_lr
from .tasks import IGNORE, forward_model, loss_and_stats, make_task, metric_value, shard

__all__ = ["Trainer", "TrainResult", "train", "evaluate_model", "cpu_threads"]


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns (and the summary table shows)."""

    task: str
    spec: str
    metric: str
    n_params: int
    step: int
    max_steps: int
    wall_time_s: float
    tokens_per_s: float
    train: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    device: str = "cpu"
    precision: str = "fp32"
    world_size: int = 1
    checkpoint: str | None = None
    out_dir: str | None = None
    plot: str | None = None
    history: list[dict] = field(default_factory=list, repr=False)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _forward(model, batch: dict, device: torch.device, precision: str) -> torch.Tensor:
    """Logits under the run's autocast; a layer that fails only under bf16 gets a hint."""
    with _autocast(device, precision):
        try:
            return forward_model(model, batch)
        except RuntimeError as exc:
            if precision != "bf16":
                raise
            raise RuntimeError(f"{exc}\n(the forward pass failed under bf16 autocast; some "
                               f"layer may not support it: train with trainer.precision=fp32)") \
                from exc


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def evaluate_model(model, task, batch_size: int, num_batches: int | None, device,
                   precision: str = "fp32", info: D.DistInfo | None = None) -> dict:
    """Loss and task metric of ``model`` on the eval split: ``task.num_eval_batches`` batches
    (a finite eval set) or ``num_batches`` generated ones, sharded over ranks like training."""
    info = info or D.DistInfo()
    n = task.num_eval_batches(batch_size) or num_batches or 1
    was_training = model.training
    model.eval()
    stats = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for i in range(n):
            gb = task.batch("eval", i, batch_size)
            local = shard(gb, info.rank, info.world_size)
            empty = local["targets"].shape[0] == 0
            if empty:  # every rank must run the (possibly sharded) forward: score a stand-in
                local = {k: v[:1] for k, v in gb.items()}
            local = _to(local, device)
            logits = _forward(model, local, device, precision)
            _, s = loss_and_stats(logits, local["targets"], 1.0)
            stats += s.cpu() * (0.0 if empty else 1.0)
    stats = D.all_reduce_sum(stats.to(device), info).cpu()
    model.train(was_training)
    return {"loss": float(stats[0] / stats[1]) if stats[1] else float("nan"),
            task.metric: metric_value(task.metric, stats), "scored": int(stats[1])}


class Trainer:
    """Build everything from a :class:`TrainConfig` and train (see the module doc).

    ``resume``: a checkpoint (folder, run folder or its model.safetensors) to continue.
    ``console``: a rich Console (default stdout); ``quiet`` hides the progress bar and table.
    """

    def __init__(self, cfg: TrainConfig, resume: Checkpoint | str | None = None,
                 console=None, quiet: bool = False):
        self.cfg, tr = cfg, cfg.trainer
        self.info = D.setup(tr.device)
        self.threads = torch.get_num_threads()
        try:
            self._build(resume, console, quiet)
        except BaseException:
            self.close()  # leave no process group (nor a changed thread count) behind
            raise

    def _build(self, resume, console, quiet) -> None:
        cfg, tr = self.cfg, self.cfg.trainer
        self.device = D.resolve_device(tr.device, self.info)
        self.precision = tr.precision if tr.precision != "auto" else \
            ("bf16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32")
        ckpt = resume if resume is None or isinstance(resume, Checkpoint) else \
            load_checkpoint(resume)
        if self.device.type == "cpu":  # restored by close()
            torch.set_num_threads(tr.num_threads or (ckpt.trainer_state.get("num_threads")
                                                     if ckpt else None)
                                  or cpu_threads(self.info.world_size))
        if tr.batch_size < self.info.world_size:
            raise ConfigError(f"trainer.batch_size={tr.batch_size} is the global batch; it "
                              f"must be >= the number of processes ({self.info.world_size}).")
        self.eval_batch_size = tr.eval_batch_size or tr.batch_size
        self.console = console or make_console()
        self.quiet = quiet or not self.info.is_main
        self.task = make_task(cfg.task, tr.seed)
        torch.manual_seed(tr.seed)
        model = build_model_for(self.task, cfg.model).to(self.device)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.model = D.wrap_model(model, tr.strategy, self.info, self.device)
        self.module = D.unwrap(self.model)
        self.optimizer = build_optimizer(self.module, cfg.optim)
        self.start_step = 0
        if ckpt is not None:
            self.start_step = restore_training_state(ckpt, self.module, self.optimizer)
            fresh = {g["name"]: g["base_lr"] for g in param_groups(self.module, cfg.optim)}
            for g in self.optimizer.param_groups:  # the current config's rates win
                g["base_lr"] = fresh.get(g.get("name"), g["base_lr"])
            if self.start_step >= tr.max_steps:
                raise ConfigError(f"checkpoint {ckpt.path!r} is at step {self.start_step}, "
                                  f"trainer.max_steps is {tr.max_steps}: nothing to do; raise "
                                  f"trainer.max_steps to train further.")
        self.out_dir = self._out_dir(ckpt)
        self.config_dict = resolved_config(cfg, self.task)
        if self.out_dir:
            self.config_dict["trainer"]["out_dir"] = self.out_dir
        self.history: list[dict] = []

    def _out_dir(self, ckpt: Checkpoint | None) -> str | None:
        """trainer.out_dir; else the run folder of the resumed checkpoint (when it lies in
        ``<run>/checkpoints/``); else a new ``runs/<task>-<time>`` when saving; else None
        (nothing written)."""
        tr = self.cfg.trainer
        parent = os.path.dirname(os.path.abspath(ckpt.path)) if ckpt is not None else ""
        if tr.out_dir:
            out = tr.out_dir
        elif os.path.basename(parent) == "checkpoints":
            out = os.path.dirname(parent)
        elif tr.save:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = os.path.join("runs", f"{self.task.name}-{stamp}")
        else:
            return None
        if self.info.distributed:  # rank 0's choice (clocks may straddle a second)
            box = [out]
            torch.distributed.broadcast_object_list(box, src=0)
            out = box[0]
        if self.info.is_main:
            os.makedirs(out, exist_ok=True)
        return out

    # ------------------------------------------------------------------------------ pieces
    def evaluate(self) -> dict:
        tr = self.cfg.trainer
        return evaluate_model(self.model, self.task, self.eval_batch_size, tr.eval_batches,
                              self.device, self.precision, self.info)

    def _checkpoint(self, step: int, last: dict) -> str | None:
        if not (self.out_dir and self.cfg.trainer.save):
            return None
        state = {"seed": self.cfg.trainer.seed, "max_steps": self.cfg.trainer.max_steps,
                 "world_size": self.info.world_size, "metrics": last, "rng": rng_state(),
                 "num_threads": torch.get_num_threads(),
                 "torch": torch.__version__, "lrnnx": _lrnnx_version()}
        path = save_checkpoint(os.path.join(self.out_dir, "checkpoints"), step, self.model,
                               self.optimizer, self.config_dict, state, rank=self.info.rank)
        D.barrier(self.info)
        return path

    def _train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        tr, info = self.cfg.trainer, self.info
        set_lr(self.optimizer, step, self.cfg.optim, tr.max_steps)
        gb = self.task.batch("train", step, tr.batch_size)
        normalizer = max(int((gb["targets"] != IGNORE).sum()), 1) / info.world_size
        local = _to(shard(gb, info.rank, info.world_size), self.device)
        logits = _forward(self.model, local, self.device, self.precision)
        loss, stats = loss_and_stats(logits, local["targets"], normalizer)
        loss.backward()
        grad_norm = None
        if self.cfg.optim.grad_clip:  # a tensor: read at log time (no GPU sync per step)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(),
                                                       self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return stats, grad_norm, self.task.tokens_per_batch(gb)

    def _log(self, log: MetricsLog, record: dict) -> None:
        self.history.append(record)
        if self.info.is_main:
            log.write(record)

    # ------------------------------------------------------------------------------ loop
    def fit(self) -> TrainResult:
        tr, task, info = self.cfg.trainer, self.task, self.info
        metric = task.metric
        jsonl = os.path.join(self.out_dir, "metrics.jsonl") if self.out_dir else None
        log = MetricsLog(jsonl if info.is_main else None, self.start_step)
        if not self.quiet:
            self.console.print(f"[bold]lrnnx train[/bold]: task {task.describe()}, model "
                               f"{model_spec_text(self.cfg)}, {self.n_params:,} parameters, "
                               f"{self.device} {self.precision}"
                               + (_count(torch.get_num_threads(), " ({} thread{})")
                                  if self.device.type == "cpu" else "")
                               + _count(info.world_size, ", {} process{}", "es")
                               + (f", resuming at step {self.start_step}"
                                  if self.start_step else ""))
        timer, window_t0 = Timer(), time.perf_counter()
        window = torch.zeros(3, dtype=torch.float64, device=self.device)
        window_tokens = total_tokens = 0
        train_rec: dict[str, Any] = {}
        eval_rec: dict[str, Any] = {}
        checkpoint = None
        self.model.train()
        with ProgressDisplay(self.console, tr.max_steps, self.start_step, metric,
                             enabled=tr.progress and not self.quiet) as bar:
            for step in range(self.start_step + 1, tr.max_steps + 1):
                stats, grad_norm, tokens = self._train_step(step)
                window += stats
                window_tokens += tokens
                total_tokens += tokens
                last = step == tr.max_steps
                if step % tr.log_every == 0 or last:
                    s = D.all_reduce_sum(window, info).cpu()
                    dt = time.perf_counter() - window_t0
                    loss = float(s[0] / s[1]) if s[1] else float("nan")
                    if not math.isfinite(loss):
                        raise FloatingPointError(f"training loss is {loss} at step {step}; "
                                                 f"lower optim.lr or check the data.")
                    train_rec = {"step": step, "split": "train", "loss": loss,
                                 metric: metric_value(metric, s),
                                 "lr": self.optimizer.param_groups[0]["lr"],
                                 "grad_norm": None if grad_norm is None else float(grad_norm),
                                 "tokens_per_s": window_tokens / dt,
                                 "elapsed_s": timer()}
                    self._log(log, train_rec)
                    bar.update(step, loss, train_rec[metric], train_rec["tokens_per_s"])
                    window.zero_()
                    window_tokens, window_t0 = 0, time.perf_counter()
                else:
                    bar.update(step)
                if (tr.eval_every and step % tr.eval_every == 0) or last:
                    bar.update(step, description="eval")
                    eval_rec = {"step": step, "split": "eval", **self.evaluate()}
                    self._log(log, eval_rec)
                    bar.update(step, description="train")
                if (tr.checkpoint_every and step % tr.checkpoint_every == 0) or last:
                    checkpoint = self._checkpoint(step, eval_rec) or checkpoint
        wall = timer()
        plot = self._plot(jsonl, metric)
        result = TrainResult(
            task=task.describe(), spec=model_spec_text(self.cfg), metric=metric,
            n_params=self.n_params, step=tr.max_steps, max_steps=tr.max_steps, wall_time_s=wall,
            tokens_per_s=total_tokens / wall if wall > 0 else 0.0, train=train_rec,
            eval=eval_rec, device=str(self.device), precision=self.precision,
            world_size=info.world_size, checkpoint=checkpoint, out_dir=self.out_dir, plot=plot,
            history=self.history)
        if not self.quiet:
            self.console.print(summary_table(result))
        return result

    def _plot(self, jsonl: str | None, metric: str) -> str | None:
        if not (jsonl and self.cfg.trainer.plot and self.info.is_main):
            return None
        ok, why = plot_metrics(jsonl, os.path.join(self.out_dir, "metrics.png"), metric)
        if not ok and not self.quiet:
            self.console.print(f"[yellow]no plot: {why}[/yellow]")
        return why if ok else None

    def close(self) -> None:
        """Leave the process group (if this trainer joined it) and restore torch's CPU
        thread count.

        Before leaving a group this trainer created, it drops its wrapped model and optimizer
        (unusable without the group anyway) and collects them, so the DDP / FSDP2 state that
        holds the group and its pending work objects is destroyed now, while the interpreter
        is alive, and not at interpreter shutdown, where destroying gloo's worker threads and
        work objects can abort the process ("terminate called without an active exception",
        seen rarely on rank 1 of the 2-process FSDP2 test; pytorch/pytorch#179291 describes
        the mechanism)."""
        if self.info.initialized_here and self.info.distributed:
            for name in ("optimizer", "module", "model"):
                if hasattr(self, name):
                    setattr(self, name, None)
            gc.collect()
        D.cleanup(self.info)
        torch.set_num_threads(self.threads)


def cpu_threads(world_size: int = 1) -> int:
    """CPU threads for one training process: the cores not busy with other work, at most
    torch's default (= cores) divided among the local processes, at least 1.

    Why not torch's default: its intra-op threads spin-wait for one another, so on a machine
    whose cores are busy with other processes every extra thread costs more than it gives
    (measured on a 2-core machine at load 10: 2 threads ran MQAR 4x slower than 1).  A quiet
    machine keeps all its cores.  ``trainer.num_threads`` overrides; a resumed run reuses the
    checkpoint's count, since the thread count changes float summation order.
    """
    cores = os.cpu_count() or 1
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    share = max(1, min(torch.get_num_threads(), cores) // max(world_size, 1))
    return max(1, min(share, int(cores - busy + 0.5)))


def _count(n: int, template: str, plural: str = "s") -> str:
    return template.format(n, "" if n == 1 else plural)


def _lrnnx_version() -> str:
    from lrnnx._version import __version__

    return __version__


def train(config: Any = None, overrides=(), resume: str | None = None, console=None,
          quiet: bool = False) -> TrainResult:
    """Train from ``config`` (YAML path, dict, TrainConfig or None = defaults) with dotted
    ``overrides``; with ``resume`` and no ``config``, the checkpoint's own config is used."""
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if config is None:  # the run continues where the checkpoint lies, unless overridden
            config = {**ckpt.config, "trainer": {**ckpt.config.get("trainer", {}),
                                                 "out_dir": None}}
    cfg = load_config(config, overrides)
    trainer = Trainer(cfg, resume=ckpt, console=console, quiet=quiet)
    try:
        return trainer.fit()
    finally:
        trainer.close()
