"""Built-in training tasks: deterministic, seeded generators that need no download.

==================  ==========  ========  ===================================================
name                model       metric    what
==================  ==========  ========  ===================================================
``mqar``            LM          accuracy  multi-query associative recall (Zoology)
``selective_copy``  LM          accuracy  copy the data tokens out of noise (Mamba)
``induction``       LM          accuracy  recall the token after a trigger (induction heads)
``char_lm``         LM          bpc       byte-level LM on local text (default: stdlib)
``signals``         classifier  accuracy  waveform shape of a generated signal
``digits``          classifier  accuracy  sklearn 8x8 digits pixel by pixel (needs sklearn)
``event_stream``    classifier  accuracy  frequency of an irregularly sampled sinusoid,
                                          through the layers' ``timesteps`` path
==================  ==========  ========  ===================================================

``make_task(section, seed)`` builds one from the config's ``task`` section.
"""

from __future__ import annotations

from typing import Any

from lrnnx.errors import ConfigError, close_matches

from .base import IGNORE, Task, TaskOptions, forward_model, loss_and_stats, make_generator, \
    metric_value, shard
from .char_lm import CharLM
from .digits import Digits
from .event_stream import EventStream
from .induction import Induction
from .mqar import MQAR
from .selective_copy import SelectiveCopy
from .signals import Signals

__all__ = ["TASKS", "make_task", "Task", "TaskOptions", "IGNORE", "forward_model",
           "loss_and_stats", "make_generator", "metric_value", "shard", "MQAR",
           "SelectiveCopy", "Induction", "CharLM", "Signals", "Digits", "EventStream"]

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (
    MQAR, SelectiveCopy, Induction, CharLM, Signals, Digits, EventStream)}


def make_task(section: Any, seed: int = 0) -> Task:
    """The task named by ``section["name"]`` (a dict or a TaskSection), its options checked."""
    params = dict(section if isinstance(section, dict) else section.model_dump())
    name = params.pop("name", "mqar")
    if name not in TASKS:
        sugg = close_matches(str(name), TASKS)
        did = f" Did you mean {sugg[0]!r}?" if sugg else ""
        raise ConfigError(f"unknown task {name!r}.{did} Tasks: {', '.join(TASKS)}.")
    return TASKS[name].from_config(params, seed=seed)
