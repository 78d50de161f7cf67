r"""``UNet``: a causal U-Net of LRNN stacks, waveform to waveform: (B, L, C_in) -> (B, L, C_out).

In the style of aTENNuate (Pei et al. 2024, "Real-time Speech Enhancement on Raw Signals with
Deep State-space Modeling", https://arxiv.org/abs/2409.03377): an encoder that alternates LRNN
stacks with strided downsampling, a bottleneck stack, and a decoder that upsamples, adds the skip
connection of its level and runs another stack.  With widths :math:`w_0..w_n` and factors
:math:`k_0..k_{n-1}` (levels :math:`i < n`)::

    h_0 = in_proj(x)                                              (B, L, w_0)
    s_i = enc_i(h_i);  h_{i+1} = down_i(s_i)                      down: k_i steps -> 1 (linear)
    u_n = mid(h_n)
    u_i = dec_i(up_i(shift(u_{i+1})) + s_i)                       up: 1 step -> k_i (linear)
    y   = out_proj(u_0)[:, :L]

``down_i`` maps each window of :math:`k_i` steps (flattened, :math:`k_i w_i` features) to one
coarse step (a Conv1d with kernel = stride = :math:`k_i`); ``up_i`` maps one coarse step to
:math:`k_i` fine steps (its transpose).  Causality: coarse step j summarizes fine steps up to
:math:`j k_i + k_i - 1`, so ``shift`` delays the coarse sequence by one coarse step before
upsampling; fine step t then only receives coarse information about steps :math:`< t`'s window,
i.e. inputs :math:`\le t`.  With causal stacks (no bidirectional layers) the whole network is
causal: ``y[:, t]`` depends on ``x[:, :t+1]`` only.  Any length works: the input is zero-padded on
the right to a multiple of :math:`K = \prod_i k_i` and the output cropped, and right padding
cannot reach earlier outputs of a causal network.

Example::

    net = lrnnx.models.build_unet("s4d*2", d_model=16, d_input=1, factors=(4, 4))
    y = net(torch.randn(2, 1000, 1))                                  # (2, 1000, 1)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lrnnx.errors import ConfigError, InputError, InputTypeError

from .backbone import Backbone
from .validation import check_positive_int

__all__ = ["UNet", "build_unet"]


class UNet(nn.Module):
    """Causal U-Net of Backbone stacks (see the module doc); built by :func:`build_unet`.

    ``encoders[i]`` / ``decoders[i]`` have width ``widths[i]``, ``bottleneck`` ``widths[n]``;
    ``forward(x (B, L, d_input)) -> (B, L, d_output)``.
    """

    def __init__(self, encoders: Sequence[Backbone], bottleneck: Backbone,
                 decoders: Sequence[Backbone], factors: Sequence[int], d_input: int,
                 d_output: int):
        super().__init__()
        n = len(factors)
        if len(encoders) != n or len(decoders) != n:
            raise ConfigError(f"UNet: needs one encoder and one decoder per factor ({n}), got "
                              f"{len(encoders)} encoders and {len(decoders)} decoders.")
        for k in factors:
            check_positive_int("UNet", "factors[i]", k)
        check_positive_int("UNet", "d_input", d_input)
        check_positive_int("UNet", "d_output", d_output)
        widths = [e.d_model for e in encoders] + [bottleneck.d_model]
        if [d.d_model for d in decoders] != widths[:n]:
            raise ConfigError(f"UNet: decoder widths {[d.d_model for d in decoders]} must "
                              f"equal the encoder widths {widths[:n]}.")
        self.factors, self.widths = tuple(factors), widths
        self.d_input, self.d_output = d_input, d_output
        self.total_factor = math.prod(self.factors)
        self.in_proj = nn.Linear(d_input, widths[0])
        self.encoders = nn.ModuleList(encoders)
        self.down = nn.ModuleList(nn.Linear(k * widths[i], widths[i + 1])
                                  for i, k in enumerate(self.factors))
        self.bottleneck = bottleneck
        self.up = nn.ModuleList(nn.Linear(widths[i + 1], k * widths[i])
                                for i, k in enumerate(self.factors))
        self.decoders = nn.ModuleList(decoders)
        self.out_proj = nn.Linear(widths[0], d_output)
        self._config: dict | None = None

    def config(self) -> dict:
        """The plain dict that :func:`lrnnx.build_model_from_config` rebuilds this from."""
        if self._config is None:
            raise RuntimeError("this UNet was not made by build_unet, so it has no config; "
                               "build it with lrnnx.models.build_unet(...).")
        return copy.deepcopy(self._config)

    def _check_x(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"UNet: x must be a torch.Tensor (B, L, {self.d_input}), got "
                                 f"{type(x).__name__}.")
        if not x.is_floating_point():
            raise InputTypeError(f"UNet: x must be floating point, got {x.dtype}; use "
                                 f"x.float().")
        if x.dim() != 3 or x.shape[-1] != self.d_input:
            hint = " (add a channel dim with x[..., None])" if x.dim() == 2 else ""
            raise InputError(f"UNet: x must have shape (B, L, d_input={self.d_input}), got "
                             f"{tuple(x.shape)}{hint}.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        B, L, _ = x.shape
        if L == 0:
            return x.new_zeros(B, 0, self.d_output)
        K = self.total_factor
        h = self.in_proj(F.pad(x, (0, 0, 0, -L % K)))  # right padding keeps causality
        skips = []
        for enc, down, k in zip(self.encoders, self.down, self.factors):
            h = enc(h)
            skips.append(h)
            h = down(h.reshape(B, h.shape[1] // k, k * h.shape[2]))
        h = self.bottleneck(h)
        for i in reversed(range(len(self.factors))):
            # delay by one coarse step: coarse step j has seen fine steps up to the end of its
            # window, which may lie in the future of the fine steps it is upsampled to
            h = F.pad(h, (0, 0, 1, 0))[:, :-1]
            h = self.up[i](h).reshape(B, h.shape[1] * self.factors[i], self.widths[i])
            h = self.decoders[i](h + skips[i])
        return self.out_proj(h)[:, :L]


def _level_specs(spec: Any, n: int) -> list:
    """``spec`` -> n + 1 specs (levels 0..n-1, then the bottleneck)."""
    per_level = isinstance(spec, (list, tuple)) and bool(spec) and \
        all(isinstance(s, (str, list, tuple)) for s in spec)
    if not per_level:
        return [spec] * (n + 1)  # one spec (a string or the {name, kwargs} list form)
    if len(spec) != n + 1:
        raise ConfigError(f"build_unet: a list of specs needs one per level plus the "
                          f"bottleneck ({n} factors -> {n + 1} specs), got {len(spec)}.")
    return list(spec)


def build_unet(spec: Any, d_model: int, d_input: int = 1, d_output: int | None = None,
               factors: Sequence[int] = (4, 4), widths: Sequence[int] | None = None,
               block: str = "prenorm", **globals: Any) -> UNet:
    """Build a :class:`UNet`.

    ``spec``: one spec for every stack, or a list of ``len(factors) + 1`` specs (level i's
    encoder and decoder use ``spec[i]``, the bottleneck ``spec[-1]``).  ``widths``: one per
    level plus the bottleneck (default ``d_model * 2**i``).  ``d_output`` defaults to
    ``d_input``.  ``block`` / ``globals`` as in :func:`lrnnx.build_model`.
    """
    from lrnnx.build import build_backbones

    check_positive_int("build_unet", "d_model", d_model)
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence) or not factors:
        raise ConfigError(f"build_unet: factors must be a non-empty list of positive ints (the "
                          f"downsampling of each level), got {factors!r}.")
    factors = list(factors)
    for k in factors:
        check_positive_int("build_unet", "factors[i]", k)
    n = len(factors)
    widths = [d_model * 2 ** i for i in range(n + 1)] if widths is None else list(widths)
    if len(widths) != n + 1:
        raise ConfigError(f"build_unet: widths needs {n + 1} entries ({n} levels + the "
                          f"bottleneck), got {len(widths)}.")
    specs = _level_specs(spec, n)
    d_output = d_input if d_output is None else d_output
    stacks, block_text = build_backbones(specs[:n] + [specs[n]] + specs[:n],
                                         widths[:n] + [widths[n]] + widths[:n], block, **globals)
    model = UNet(stacks[:n], stacks[n], stacks[n + 1:], factors, d_input, d_output)
    spec_cfg = stacks[0].spec if len(set(b.spec for b in stacks)) == 1 else \
        [b.spec for b in stacks[:n + 1]]
    cfg = {"kind": "unet", "spec": spec_cfg, "d_model": d_model, "d_input": d_input,
           "d_output": d_output, "factors": factors, "widths": widths, "block": block_text,
           **globals}
    model._config = {"model": cfg}
    return model
