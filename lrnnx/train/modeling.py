"""From a training config to a task and a model, and back to a self-contained config.

* :func:`build_model_for` merges what the task fixes (``vocab_size`` for LM tasks;
  ``num_classes`` and ``d_input`` for classification tasks) into the ``model`` section and
  builds an :class:`~lrnnx.models.LM` or a :class:`~lrnnx.models.Classifier` through
  :func:`lrnnx.build_model_from_config` (which checks specs and global options).
* :func:`resolved_config` is the config a checkpoint stores: every default filled in, the
  task-fixed keys written out and each spec expanded to its layer list
  (``[{name: s4d, kwargs: {d_state: 16}}, {name: attn, kwargs: {}}]``), so the checkpoint
  rebuilds the same model even if spec defaults or repeat syntax change.
* :func:`load_for_inference` rebuilds task + model from a checkpoint folder (evaluate,
  generate).

Example::

    cfg = load_config(None, ["model.spec=attn*2"])
    task = make_task(cfg.task, cfg.trainer.seed)
    model = build_model_for(task, cfg.model)       # LM(vocab_size=128) for mqar
"""

from __future__ import annotations

from typing import Any

from lrnnx.errors import ConfigError

from .config import ModelSection, TrainConfig, config_to_dict, load_config
from .tasks import Task, make_task

__all__ = ["model_data", "build_model_for", "resolved_config", "load_for_inference",
           "model_spec_text"]


def model_data(task: Task, section: ModelSection) -> dict[str, Any]:
    """The ``model`` dict for :func:`lrnnx.build_model_from_config` (``kind`` included)."""
    data = section.model_dump()
    for key, value in task.model_keys().items():
        if data.get(key) is not None and data[key] != value:
            raise ConfigError(f"model.{key}={data[key]!r} conflicts with task {task.name!r}, "
                              f"which needs {key}={value!r}; drop model.{key} (the task sets "
                              f"it).")
        data[key] = value
    stages = data.pop("stages", None)
    kind = data.pop("kind", None)
    if task.kind == "lm":
        if kind not in (None, "lm"):
            raise ConfigError(f"model.kind={kind!r} does not fit task {task.name!r}, which "
                              f"trains a language model; drop model.kind.")
        if stages is not None:
            raise ConfigError(f"model.stages is for classification tasks; task {task.name!r} "
                              f"trains a language model: use model.spec.")
        if data.get("spec") is None:
            raise ConfigError(f"task {task.name!r} needs model.spec (e.g. 'attn*2').")
        return {"kind": "lm", **data}
    if kind not in (None, "classifier"):
        raise ConfigError(f"model.kind={kind!r} does not fit task {task.name!r}, which trains "
                          f"a classifier; drop model.kind.")
    if stages is not None:
        if "spec" in section.model_fields_set and section.spec is not None:
            raise ConfigError("model: give either spec (one stage) or stages (a list of specs, "
                              "one per stage), not both.")
        data.pop("spec", None)
        data["stages"] = stages
    elif data.get("spec") is None:
        raise ConfigError(f"task {task.name!r} needs model.spec or model.stages.")
    return {"kind": "classifier", **data}


def build_model_for(task: Task, section: ModelSection):
    """The model the ``model`` section describes, sized for ``task``."""
    from lrnnx.build import build_model_from_config

    return build_model_from_config({"model": model_data(task, section)})


def _expand(spec: Any) -> Any:
    from lrnnx.registry.spec import spec_from_config, spec_to_config

    if isinstance(spec, str):
        return spec_to_config(spec)
    return spec_to_config(spec_from_config(spec))


def resolved_config(cfg: TrainConfig, task: Task) -> dict:
    """The config a checkpoint stores (see the module doc)."""
    out = config_to_dict(cfg)
    model = model_data(task, cfg.model)
    model.pop("kind")
    if "stages" in model:
        model["stages"] = [_expand(s) for s in model["stages"]]
    else:
        model["spec"] = _expand(model["spec"])
    out["model"] = model
    return out


def model_spec_text(cfg: TrainConfig) -> str:
    """A short human-readable spec of the model section (for tables)."""
    from lrnnx.registry.spec import format_spec, spec_from_config

    def text(s):
        return s if isinstance(s, str) else format_spec(spec_from_config(s))

    m = cfg.model
    body = " | ".join(text(s) for s in m.stages) if m.stages else text(m.spec)
    return f"{body}  (d_model={m.d_model})"


def load_for_inference(path: str, device: str = "auto", overrides=()):
    """``(cfg, task, model, ckpt)`` of a checkpoint, the model in eval mode on ``device``."""
    import torch

    from .checkpoint import load_checkpoint, load_weights
    from .distributed import DistInfo, resolve_device

    ckpt = load_checkpoint(path)
    cfg = load_config(ckpt.config, overrides)
    task = make_task(cfg.task, cfg.trainer.seed)
    torch.manual_seed(cfg.trainer.seed)
    model = build_model_for(task, cfg.model)
    load_weights(model, ckpt.weights)
    model.to(resolve_device(device, DistInfo())).eval()
    return cfg, task, model, ckpt
