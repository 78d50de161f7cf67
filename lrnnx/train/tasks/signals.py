r"""Sequential classification of generated waveforms (``signals``).

Each example is one waveform sampled at ``seq_len`` regular steps,
:math:`x_t = a\,w(2\pi f t / L + \phi) + \sigma \epsilon_t`, with the shape :math:`w` given by
the class (``sine``, ``square``, ``sawtooth``, ``triangle``, ``chirp`` (frequency rising
linearly to 3f), ``noise`` (smoothed Gaussian noise)), frequency :math:`f` uniform in
``[freq_min, freq_max]`` cycles per sequence, phase :math:`\phi` uniform, amplitude :math:`a`
uniform in [0.5, 1.5] and noise :math:`\sigma` = ``noise_std``.  Inputs (B, L, 1) float,
targets (B,) class ids; metric: accuracy.  It is the smallest test of "read a whole signal,
then decide" (the sequential-MNIST family) and needs no data files.

Example::

    task = Signals.from_config({"seq_len": 64})
    b = task.batch("train", 0, 8)          # inputs (8, 64, 1), targets (8,)
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, field_validator, model_validator

from .base import Task, TaskOptions

__all__ = ["Signals", "WAVEFORMS"]

WAVEFORMS = ("sine", "square", "sawtooth", "triangle", "chirp", "noise")


def _wave(kind: str, phase: torch.Tensor, t01: torch.Tensor, g: torch.Generator):
    """Waveform ``kind`` at ``phase`` (radians, (B, L)); ``t01``: time in [0, 1) (B, L)."""
    if kind == "sine":
        return torch.sin(phase)
    if kind == "square":
        return torch.sign(torch.sin(phase))
    frac = torch.remainder(phase / (2 * math.pi), 1.0)
    if kind == "sawtooth":
        return 2 * frac - 1
    if kind == "triangle":
        return 1 - 4 * (frac - 0.5).abs()
    if kind == "chirp":  # instantaneous frequency f -> 3f: phase' = phase * (1 + t)
        return torch.sin(phase * (1 + t01))
    noise = torch.randn(phase.shape, generator=g, dtype=phase.dtype)
    kernel = torch.ones(1, 1, 5, dtype=phase.dtype) / math.sqrt(5)
    return torch.nn.functional.conv1d(noise[:, None], kernel, padding=2)[:, 0]


class SignalsOptions(TaskOptions):
    seq_len: int = Field(128, ge=2)
    classes: list[str] = Field(default_factory=lambda: ["sine", "square", "sawtooth",
                                                        "triangle"])
    freq_min: float = Field(1.0, gt=0)
    freq_max: float = Field(6.0, gt=0)
    noise_std: float = Field(0.1, ge=0)

    @field_validator("classes")
    @classmethod
    def _known(cls, v):
        bad = [c for c in v if c not in WAVEFORMS]
        if bad or len(v) < 2 or len(set(v)) != len(v):
            raise ValueError(f"classes must be 2 or more distinct waveforms of {WAVEFORMS}, "
                             f"got {v}")
        return v

    @model_validator(mode="after")
    def _range(self):
        if self.freq_max < self.freq_min:
            raise ValueError(f"freq_max={self.freq_max} < freq_min={self.freq_min}")
        return self


class Signals(Task):
    name = "signals"
    kind = "classifier"
    metric = "accuracy"
    Options = SignalsOptions
    suggested_spec = "s4d*2"

    def model_keys(self):
        return {"num_classes": len(self.options.classes), "d_input": 1}

    def _batch(self, split, index, batch_size, g):
        o = self.options
        B, L = batch_size, o.seq_len
        y = torch.randint(0, len(o.classes), (B,), generator=g)
        freq = o.freq_min + (o.freq_max - o.freq_min) * torch.rand(B, 1, generator=g)
        phi = 2 * math.pi * torch.rand(B, 1, generator=g)
        amp = 0.5 + torch.rand(B, 1, generator=g)
        t01 = (torch.arange(L, dtype=torch.float32) / L).expand(B, L)
        phase = 2 * math.pi * freq * t01 + phi
        x = torch.zeros(B, L)
        for c, kind in enumerate(o.classes):  # every shape drawn for all rows: a row's data
            wave = _wave(kind, phase, t01, g)  # does not depend on the other rows' classes
            x = torch.where((y == c)[:, None], wave, x)
        x = amp * x + o.noise_std * torch.randn(B, L, generator=g)
        return {"inputs": x[..., None], "targets": y}
