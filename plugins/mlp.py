"""Built-in plugin: the ``mlp`` layer, a gated position-wise MLP (SwiGLU / GeGLU).

Shazeer 2020, "GLU Variants Improve Transformer", https://arxiv.org/abs/2002.05202.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

import lrnnx
from lrnnx.errors import ConfigError

#: hidden widths are rounded up to a multiple of this (aligned matmuls; LLaMA-style sizing)
HIDDEN_MULTIPLE = 8


def hidden_size(d_model: int, expand: float) -> int:
    """``ceil(expand * d_model)`` rounded up to a multiple of 8.

    The product is first rounded to 6 decimals so float noise (``8/3 * 48 = 128.00000000000003``)
    does not bump the width to the next multiple.  E.g. d_model=64, expand=8/3 -> 176.
    """
    raw = math.ceil(round(expand * d_model, 6))
    return max(HIDDEN_MULTIPLE, -(-raw // HIDDEN_MULTIPLE) * HIDDEN_MULTIPLE)


_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu}


class GatedMLP(lrnnx.Layer):
    r"""Gated MLP applied independently at every position.

    .. math::

        y_t = W_\text{down}\,\big(\sigma(W_\text{gate} x_t) \odot W_\text{up} x_t\big)

    with :math:`\sigma` = SiLU (SwiGLU, default) or GELU (GeGLU).  :math:`W_\text{gate},
    W_\text{up}: d_\text{model} \to h` (one fused ``Linear(d_model, 2h)``) and
    :math:`W_\text{down}: h \to d_\text{model}`, where ``h = hidden_size(d_model, expand)`` is
    ``ceil(expand * d_model)`` rounded up to a multiple of 8.  The default ``expand = 8/3``
    keeps the parameter count of a plain 4x MLP (three matrices instead of two).

    Options: ``d_model``; ``expand`` (> 0); ``activation`` ("silu" | "gelu"); ``bias``.

    Position-wise, so stateless: ``init_state`` is ``{}``, ``step`` equals ``forward`` on one
    token, and packed varlen input needs no special handling.  ``timesteps`` are accepted and
    ignored: the map does not depend on time, so irregular sampling does not change it (this lets
    an MLP sit in a stack with time-aware SSM layers).

    Shapes: x (B, L, d_model) -> y (B, L, d_model); step: x_t (B, d_model) -> y_t (B, d_model).

    Example::

        mlp = lrnnx.build_layer("mlp(expand=4, activation=gelu)", d_model=64)
        y = mlp(torch.randn(2, 10, 64))
    """

    name = "mlp"
    capabilities = frozenset({"step", "varlen", "timesteps"})

    def __init__(self, d_model: int, expand: float = 8 / 3,
                 activation: Literal["silu", "gelu"] = "silu", bias: bool = False):
        super().__init__()
        if d_model <= 0:
            raise ConfigError(f"layer 'mlp': d_model must be a positive int, got {d_model}.")
        if not (expand > 0 and math.isfinite(expand)):
            raise ConfigError(f"layer 'mlp': option 'expand' must be a finite number > 0, got "
                              f"{expand!r}; the hidden width is expand * d_model.")
        self.d_model = d_model
        self.expand = expand
        self.activation = activation
        self.hidden = hidden_size(d_model, expand)
        self.w_in = nn.Linear(d_model, 2 * self.hidden, bias=bias)
        self.w_out = nn.Linear(self.hidden, d_model, bias=bias)

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(_ACTIVATIONS[self.activation](gate) * up)

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        y = self._mix(x)
        if return_state:
            return y, ({} if state is None else state)
        return y

    def step(self, x_t, state, timesteps=None):
        return self._mix(x_t), state

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, hidden={self.hidden}, activation={self.activation!r}"


@lrnnx.hookimpl
def register_layers(register):
    register(GatedMLP)
