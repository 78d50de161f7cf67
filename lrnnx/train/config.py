"""The training config: four YAML sections checked by pydantic (unknown keys are errors).

A config is ``{task, model, optim, trainer}``; every key has a default, so an empty config
trains the default hybrid on MQAR (``lrnnx train`` with no arguments)::

    task:    {name: mqar, vocab_size: 128, seq_len: 64, num_kv_pairs: 8}   # + task options
    model:   {spec: "s4d(d_state=16) + attn", d_model: 64, block: prenorm}  # + layer globals
    optim:   {lr: 3e-3, ssm_lr: 1e-3, weight_decay: 0.1, warmup_steps: 100, grad_clip: 1.0}
    trainer: {max_steps: 1000, batch_size: 32, eval_every: 200, seed: 0, precision: auto}

``load_config(path_or_dict, overrides)`` merges OmegaConf dotted overrides
(``model.spec="attn*2" trainer.max_steps=500``) and validates.  A misspelled key fails with a
``ConfigError`` naming the section, the key, close matches and the accepted keys.  The task's
own options are checked by the task (:mod:`lrnnx.train.tasks`); extra keys of ``model`` are
global layer options, checked by :func:`lrnnx.build_model` against the layers of the spec.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from lrnnx.errors import ConfigError, close_matches

__all__ = ["TrainConfig", "TaskSection", "ModelSection", "OptimSection", "TrainerSection",
           "SSM_PARAM_SUFFIXES", "load_config", "config_to_dict"]

#: parameter-name suffixes of SSM dynamics (the state matrix, the step size): they get no weight
#: decay and the separate learning rate ``optim.ssm_lr``, as in S4 (Gu et al. 2022,
#: https://arxiv.org/abs/2111.00396) and S5 (Smith et al. 2023, https://arxiv.org/abs/2208.04933).
#: Matched against the last component of the parameter name.  Covers the built-in layers:
#: s4d/ssm/s5 (log_neg_A_re, A_im, log_dt), s4 (log_neg_lam_re, lam_im), lru (nu_log,
#: theta_log, gamma_log), mamba/mamba2 (A_log, A_imag, dt_bias), rglru/hawk (a_param = the
#: paper's Lambda), linoss (A_hat, dt_hat), plus common spellings of other codebases.
SSM_PARAM_SUFFIXES: tuple[str, ...] = (
    "A_log", "A_re", "A_im", "A_imag", "A_real", "log_neg_A_re", "log_neg_a", "log_A_real",
    "log_neg_lam_re", "lam_im", "A_hat", "log_dt", "dt_bias", "dt_hat", "log_step", "Lambda",
    "Lambda_re", "Lambda_im", "a_param", "nu_log", "theta_log", "gamma_log",
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskSection(BaseModel):
    """``name`` of a built-in task (see ``lrnnx.train.tasks.TASKS``); the other keys are that
    task's options, checked by the task."""

    model_config = ConfigDict(extra="allow")
    name: str = "mqar"


class ModelSection(BaseModel):
    """Model architecture.  ``spec`` (a spec string or its expanded list form) builds an
    :class:`~lrnnx.models.LM` for token tasks or a one-stage classifier for classification
    tasks; ``stages`` (a list of specs) builds a multi-stage classifier.  The task fills in
    ``vocab_size`` / ``num_classes`` / ``d_input``; other keys are global options
    (``n_heads: 2``) or classifier options (``pool``, ``pool_factor``, ``head_pool``)."""

    model_config = ConfigDict(extra="allow")
    spec: str | list[Any] | None = "s4d(d_state=16) + attn"
    stages: list[Any] | None = None
    d_model: int = Field(64, gt=0)
    block: str = "prenorm"


class OptimSection(_Section):
    """AdamW with parameter groups, linear warmup, then a cosine (or constant / linear) decay.

    Groups: decayed weights (``weight_decay``); biases, norms, embeddings and every other
    parameter with fewer than 2 dims (no decay); SSM dynamics named by ``ssm_param_suffixes``
    (no decay, learning rate ``ssm_lr``; None = ``lr``)."""

    lr: float = Field(3e-3, gt=0)
    ssm_lr: float | None = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)
    ssm_param_suffixes: list[str] = Field(default_factory=lambda: list(SSM_PARAM_SUFFIXES))


class TrainerSection(_Section):
    """The loop: steps, global batch, eval cadence, seeds, device, precision, outputs."""

    max_steps: int = Field(1000, gt=0)
    batch_size: int = Field(32, gt=0, description="global batch (split over ranks)")
    eval_every: int = Field(200, ge=0, description="0: evaluate only at the end")
    eval_batches: int = Field(8, gt=0)
    eval_batch_size: int | None = Field(None, gt=0)
    log_every: int = Field(10, gt=0)
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    strategy: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    out_dir: str | None = None
    checkpoint_every: int = Field(0, ge=0, description="0: checkpoint only at the end")
    save: bool = True
    progress: bool = True
    plot: bool = True
    num_threads: int | None = Field(None, gt=0)


class TrainConfig(_Section):
    task: TaskSection = Field(default_factory=TaskSection)
    model: ModelSection = Field(default_factory=ModelSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    trainer: TrainerSection = Field(default_factory=TrainerSection)


_SECTIONS = {"task": TaskSection, "model": ModelSection, "optim": OptimSection,
             "trainer": TrainerSection}


def _fields(section: str) -> list[str]:
    return list(_SECTIONS[section].model_fields) if section in _SECTIONS else list(_SECTIONS)


def pydantic_error(exc: pydantic.ValidationError, where: str = "config") -> ConfigError:
    """A ConfigError from the first error of ``exc``: the dotted key, close matches for an
    unknown key, else pydantic's message with the value given."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    dotted = ".".join(loc)
    if err["type"] == "extra_forbidden":
        key, section = loc[-1], (loc[0] if len(loc) > 1 else "")
        accepted = _fields(section)
        sugg = close_matches(key, accepted)
        dotted_sugg = [f"{section}.{s}" if section else s for s in sugg]
        did = f" Did you mean {' or '.join(repr(s) for s in dotted_sugg)}?" if sugg else ""
        what = f"section {section!r}" if section else "the config (top level)"
        return ConfigError(f"{where}: unknown key {dotted!r} in {what}.{did} Accepted: "
                           f"{', '.join(accepted)}.")
    return ConfigError(f"{where}: {dotted}: {err['msg']} (got {err.get('input')!r}).")


def load_config(source: Any = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A validated :class:`TrainConfig` from a YAML path, a dict, a TrainConfig or None
    (the defaults), with OmegaConf dotted ``overrides`` (``"trainer.max_steps=500"``)."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(source, TrainConfig):
        source = config_to_dict(source)
    if source is None:
        conf = OmegaConf.create({})
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            hint = " (a directory: pass its config.yaml, or use --resume for a checkpoint)" \
                if os.path.isdir(path) else ""
            raise ConfigError(f"config file {path!r} does not exist{hint}.")
        try:
            conf = OmegaConf.load(path)
        except Exception as exc:  # noqa: BLE001 - yaml and omegaconf raise many types
            raise ConfigError(f"cannot read config {path!r}: {exc}") from exc
        if not isinstance(conf, DictConfig):
            raise ConfigError(f"config {path!r} must be a mapping of sections (task, model, "
                              f"optim, trainer), got a list.")
    elif isinstance(source, (Mapping, DictConfig)):
        conf = OmegaConf.create(dict(source) if not isinstance(source, DictConfig) else source)
    else:
        raise ConfigError(f"a training config is a YAML path or a dict, got "
                          f"{type(source).__name__}.")
    if overrides:
        bad = [o for o in overrides if not isinstance(o, str) or "=" not in o
               or not o.split("=", 1)[0].strip()]
        if bad:
            raise ConfigError(f"override {bad[0]!r} must look like section.key=value, e.g. "
                              f"trainer.max_steps=500 or model.spec='attn*2'.")
        for o in overrides:
            section = o.split("=", 1)[0].strip().split(".")[0]
            if section not in _SECTIONS:
                sugg = close_matches(section, _SECTIONS)
                did = f" Did you mean {sugg[0]!r}?" if sugg else ""
                raise ConfigError(f"override {o!r}: unknown section {section!r}.{did} "
                                  f"Overrides are dotted keys in task, model, optim or trainer "
                                  f"(e.g. trainer.max_steps=500).")
        for o in overrides:  # one at a time, so an error names the override
            try:
                conf = OmegaConf.merge(conf, OmegaConf.from_dotlist([o]))
            except OmegaConfBaseException as exc:
                raise ConfigError(f"cannot apply override {o!r}: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - the YAML parser of the value
                raise ConfigError(f"cannot parse the value of override {o!r} as YAML "
                                  f"({type(exc).__name__}); quote values with YAML syntax "
                                  f"characters such as * & ! [ {{ (e.g. task.pattern='*.txt')."
                                  ) from None
    try:
        data = OmegaConf.to_container(conf, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve config: {exc}") from exc
    for name, value in data.items():
        if name in _SECTIONS and value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"config: section {name!r} must be a mapping of keys, got "
                              f"{type(value).__name__} {value!r}.")
    data = {k: (v if v is not None else {}) for k, v in data.items()}
    try:
        return TrainConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise pydantic_error(exc) from None


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain dict (YAML-ready) of a config, extras of ``task`` and ``model`` included."""
    out = cfg.model_dump(mode="json")
    out["optim"]["betas"] = list(cfg.optim.betas)
    return out
