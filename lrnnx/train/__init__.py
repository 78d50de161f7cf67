"""Training, evaluation and generation for lrnnx models (``lrnnx train / evaluate / generate``).

* :func:`train` / :class:`Trainer`: the loop (AdamW with SSM parameter groups, warmup +
  cosine, grad clipping, bf16 autocast on GPU, seeded and resumable), on one process or under
  ``torchrun`` with DDP / FSDP2.
* :func:`load_config` / :class:`TrainConfig`: the YAML config (task, model, optim, trainer).
* :data:`TASKS` / :func:`make_task`: built-in tasks (MQAR, selective copying, induction heads,
  char-level LM, signal / digit / event-stream classification).
* :func:`save_checkpoint` / :func:`load_checkpoint`: safetensors + YAML + JSON, never pickle.
* :func:`evaluate_model`, :func:`load_for_inference`: score or sample a checkpoint.

Names resolve on first use (``lrnnx.train.cli`` is imported by the ``lrnnx`` command, which must
not pay for torch until a command runs).

Example::

    from lrnnx.train import train
    result = train("configs/mqar.yaml", ["trainer.max_steps=300"])
    print(result.eval["accuracy"])
"""

from __future__ import annotations

import importlib

_LAZY = {
    "train": "trainer", "Trainer": "trainer", "TrainResult": "trainer",
    "evaluate_model": "trainer",
    "load_config": "config", "TrainConfig": "config", "SSM_PARAM_SUFFIXES": "config",
    "TASKS": "tasks", "Task": "tasks", "make_task": "tasks",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "resolve_checkpoint": "checkpoint", "Checkpoint": "checkpoint",
    "build_model_for": "modeling", "load_for_inference": "modeling",
    "resolved_config": "modeling",
    "build_optimizer": "optim", "param_groups": "optim", "lr_factor": "optim",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'lrnnx.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
