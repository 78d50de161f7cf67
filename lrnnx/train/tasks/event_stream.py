r"""Event-stream classification with per-event time deltas (``event_stream``).

An event stream is a list of irregularly timed events, each with a value; the class is a
property of the process in *time*, so the model has to integrate the real time between events,
not the event count.  Here each stream observes a sinusoid of class frequency :math:`f_c` at
Poisson event times:

.. math::

    \Delta_i \sim \mathrm{Exp}(1), \quad t_i = \sum_{j \le i} \Delta_j, \quad
    x_i = \sin(2\pi f_c t_i + \phi) + \sigma \epsilon_i,

with :math:`f_c` spaced geometrically from ``freq_min`` to ``freq_max`` (cycles per unit of
time; the mean gap is 1), phase :math:`\phi` uniform, :math:`\sigma` = ``noise_std``, and
``n`` uniform in ``[min_events, max_events]`` events.  Inputs (B, max_events, 1) values,
``timesteps`` (B, max_events) = :math:`\Delta_i`, ``lengths`` (B,) = n (padding after the
last event: value 0, timestep 1), targets (B,) class ids; metric: accuracy.

The model gets the gaps through the ``timesteps`` argument (layers with the "timesteps"
capability, e.g. ``ssm``, ``s4d``, ``lru``, scale their step size by it:
:math:`\bar A_i = \exp(\Delta_i \, dt \, A)`), as in event-based SSMs (Schöne et al. 2024,
https://arxiv.org/abs/2404.18508); set ``dt_as_feature: true`` to append them to the values
instead (a baseline for layers without the capability).

Example::

    task = EventStream.from_config({"max_events": 32, "min_events": 16})
    b = task.batch("train", 0, 8)   # inputs (8, 32, 1), timesteps (8, 32), lengths (8,)
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, model_validator

from .base import Task, TaskOptions

__all__ = ["EventStream"]


class EventStreamOptions(TaskOptions):
    num_classes: int = Field(4, ge=2)
    min_events: int = Field(32, ge=1)
    max_events: int = Field(64, ge=1)
    freq_min: float = Field(0.02, gt=0)
    freq_max: float = Field(0.3, gt=0)
    noise_std: float = Field(0.1, ge=0)
    dt_as_feature: bool = False

    @model_validator(mode="after")
    def _ranges(self):
        if self.max_events < self.min_events:
            raise ValueError(f"max_events={self.max_events} < min_events={self.min_events}")
        if self.freq_max <= self.freq_min:
            raise ValueError(f"freq_max={self.freq_max} must exceed freq_min={self.freq_min}")
        return self


class EventStream(Task):
    name = "event_stream"
    kind = "classifier"
    metric = "accuracy"
    Options = EventStreamOptions
    suggested_spec = "s4d*2"

    def model_keys(self):
        return {"num_classes": self.options.num_classes,
                "d_input": 2 if self.options.dt_as_feature else 1}

    def frequencies(self) -> torch.Tensor:
        o = self.options
        ratio = (o.freq_max / o.freq_min) ** (1 / (o.num_classes - 1))
        return o.freq_min * ratio ** torch.arange(o.num_classes, dtype=torch.float32)

    def _batch(self, split, index, batch_size, g):
        o = self.options
        B, L = batch_size, o.max_events
        y = torch.randint(0, o.num_classes, (B,), generator=g)
        lengths = torch.randint(o.min_events, o.max_events + 1, (B,), generator=g)
        gaps = -torch.log1p(-torch.rand(B, L, generator=g))        # Exp(1) by inversion
        phi = 2 * math.pi * torch.rand(B, 1, generator=g)
        t = gaps.cumsum(dim=1)
        x = torch.sin(2 * math.pi * self.frequencies()[y][:, None] * t + phi)
        x = x + o.noise_std * torch.randn(B, L, generator=g)
        valid = torch.arange(L)[None] < lengths[:, None]
        x = x * valid
        gaps = torch.where(valid, gaps, torch.ones_like(gaps))
        feats = torch.stack([x, gaps * valid], dim=-1) if o.dt_as_feature else x[..., None]
        batch = {"inputs": feats, "targets": y, "lengths": lengths}
        if not o.dt_as_feature:
            batch["timesteps"] = gaps
        return batch
