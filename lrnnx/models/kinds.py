"""``model.kind`` in configs: which architecture :func:`lrnnx.build_model_from_config` builds.

* ``lm``: :class:`~lrnnx.models.LM` (needs ``vocab_size``); ``backbone``:
  :class:`~lrnnx.models.Backbone`.  Both go through :func:`lrnnx.build_model`; a config without
  ``kind`` is an ``lm`` when it has ``vocab_size``, else a ``backbone``.
* ``classifier``: :func:`lrnnx.models.build_classifier`; ``unet``: :func:`lrnnx.models.build_unet`.
  The keys of the model section are that builder's arguments; the other keys are global layer
  options (checked by the builder like ``build_model``'s globals).

Example (YAML)::

    model:
      kind: classifier
      stages: [s4d*2, s4d*2]
      d_model: 64
      d_input: 3
      num_classes: 10
      pool: mean
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from lrnnx.errors import ConfigError, close_matches

__all__ = ["MODEL_KINDS", "MULTI_STACK_KINDS", "model_kind", "build_kind"]

MODEL_KINDS = ("lm", "backbone", "classifier", "unet")
#: kinds built from several spec stacks by their own builder (not by build_model)
MULTI_STACK_KINDS = ("classifier", "unet")


def model_kind(data: Any) -> str | None:
    """``model.kind`` of a resolved config dict, popped from it (None when absent), checked."""
    section = data.get("model") if isinstance(data, Mapping) else None
    if not isinstance(section, dict) or "kind" not in section:
        return None
    kind = section.pop("kind")
    if kind not in MODEL_KINDS:
        sugg = close_matches(str(kind), MODEL_KINDS)
        did = f" Did you mean {sugg[0]!r}?" if sugg else ""
        raise ConfigError(f"config: unknown model.kind {kind!r}.{did} Expected one of "
                          f"{', '.join(MODEL_KINDS)} (when kind is left out: lm if vocab_size "
                          f"is set, else backbone).")
    return kind


def build_kind(kind: str, data: Mapping):
    """Build a ``classifier`` / ``unet`` from a resolved config dict ``{model: {...}}``."""
    from .classifier import build_classifier
    from .unet import build_unet

    builder = {"classifier": build_classifier, "unet": build_unet}[kind]
    extra = sorted(set(data) - {"model"})
    if extra:
        raise ConfigError(f"config: unknown top-level key {extra[0]!r}; a {kind} config is "
                          f"{{model: {{kind: {kind}, ...}}}}.")
    section = data["model"]
    if not isinstance(section, Mapping):
        raise ConfigError(f"config: model must be a mapping of {kind} options, got "
                          f"{type(section).__name__}.")
    params = inspect.signature(builder).parameters
    named = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for name in named:
        if params[name].default is inspect.Parameter.empty and name not in section:
            sugg = close_matches(name, [str(k) for k in section])
            did = f" (did you mean {' or '.join(repr(s) for s in sugg)}?)" if sugg else ""
            raise ConfigError(f"config: required key 'model.{name}' is missing{did}; a {kind} "
                              f"takes {', '.join(named)} and global layer options.")
    return builder(**{str(k): v for k, v in section.items()})
