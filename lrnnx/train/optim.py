r"""AdamW with parameter groups and a warmup + cosine learning-rate schedule.

Groups (``param_groups``), decided by each parameter's name and module:

* ``ssm``: SSM dynamics, the last name component in ``optim.ssm_param_suffixes`` (default
  :data:`lrnnx.train.config.SSM_PARAM_SUFFIXES`: ``A_log``, ``A_re``/``A_im``, ``log_dt``,
  ``dt_bias``, ``Lambda``, ``nu_log``, ``theta_log``, ``gamma_log``, ...): weight decay 0 and
  learning rate ``optim.ssm_lr``.  S4 and S5 train the state matrix and step size with a
  smaller rate and no decay because decay pulls :math:`\log(-A)` and :math:`\log \Delta`
  towards 0 (a fixed timescale) and large steps destabilise the recurrence (S4:
  https://arxiv.org/abs/2111.00396, App. D; S5: https://arxiv.org/abs/2208.04933, App. G).
* ``no_decay``: biases, norm weights, embeddings (``nn.Embedding`` weights, and so a tied LM
  head) and every other parameter with fewer than 2 dims (gains, ``D`` skips): weight decay 0.
* ``decay``: the remaining weight matrices, weight decay ``optim.weight_decay``.

Schedule (:func:`lr_factor`), a function of the step alone so a resumed run continues the same
curve: linear warmup :math:`s / w` for :math:`s < w`, then for progress
:math:`p = (s - w) / (S - w)` the factor :math:`r + (1 - r)\frac{1 + \cos \pi p}{2}` (cosine),
:math:`r + (1 - r)(1 - p)` (linear) or 1 (constant), with :math:`r` = ``min_lr_ratio``.

Example::

    groups = param_groups(model, cfg.optim)     # [{"name": "decay", "params": [...], ...}, ...]
    opt = build_optimizer(model, cfg.optim)
    set_lr(opt, step=10, cfg=cfg.optim, max_steps=1000)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimSection

__all__ = ["param_groups", "build_optimizer", "lr_factor", "set_lr", "group_of"]

#: module types whose weights are never decayed (norms of any flavour, embeddings)
_NORM_HINTS = ("norm",)


def group_of(name: str, param: nn.Parameter, module: nn.Module, suffixes) -> str:
    """``"ssm"``, ``"no_decay"`` or ``"decay"`` for the parameter ``name`` of ``module``."""
    if name.rsplit(".", 1)[-1] in suffixes:
        return "ssm"
    if isinstance(module, nn.Embedding) or param.dim() < 2 or \
            any(h in type(module).__name__.lower() for h in _NORM_HINTS):
        return "no_decay"
    return "decay"


def _named_with_modules(model: nn.Module):
    """(full name, parameter, owning module), each parameter once (tied ones by first name)."""
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            yield (f"{mod_name}.{p_name}" if mod_name else p_name), p, module


def param_groups(model: nn.Module, cfg: OptimSection) -> list[dict]:
    """AdamW parameter groups of ``model`` (see the module doc); empty groups are dropped.

    Each group carries ``name``, ``base_lr`` (its peak rate) and its parameters as ``(name,
    parameter)`` pairs (torch keeps the names as ``param_names``, which checkpoints key the
    optimizer state by).  A tied weight (LM head = embedding) is listed once, under the group
    of its first owner.
    """
    suffixes = set(cfg.ssm_param_suffixes)
    groups = {
        "decay": {"lr": cfg.lr, "weight_decay": cfg.weight_decay},
        "no_decay": {"lr": cfg.lr, "weight_decay": 0.0},
        "ssm": {"lr": cfg.ssm_lr if cfg.ssm_lr is not None else cfg.lr, "weight_decay": 0.0},
    }
    members: dict[str, list] = {k: [] for k in groups}
    for name, p, module in _named_with_modules(model):
        members[group_of(name, p, module, suffixes)].append((name, p))
    out = []
    for key, hp in groups.items():
        if members[key]:
            out.append({"name": key, "params": members[key], "base_lr": hp["lr"], **hp})
    return out


def build_optimizer(model: nn.Module, cfg: OptimSection) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas),
                             eps=cfg.eps)


def lr_factor(step: int, max_steps: int, cfg: OptimSection) -> float:
    """Multiplier of each group's ``base_lr`` at optimizer step ``step`` (1-based)."""
    w = cfg.warmup_steps
    if w and step <= w:
        return step / w
    if cfg.schedule == "constant" or max_steps <= w:
        return 1.0
    p = min(max((step - w) / (max_steps - w), 0.0), 1.0)
    r = cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return r + (1 - r) * (1 - p)
    return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * p))


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: OptimSection,
           max_steps: int) -> float:
    """Set every group's lr for ``step``; returns the factor."""
    f = lr_factor(step, max_steps, cfg)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * f
    return f
