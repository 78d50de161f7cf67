r"""minGRU (``mingru``) and minLSTM (``minlstm``): gated RNNs whose gates see only the input.

Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, "Were RNNs All We Needed?",
https://arxiv.org/abs/2410.01201.

With :math:`k_\ast = W_\ast x_t + b_\ast` (one fused Linear, d_model -> n * hidden):

.. math::

    \text{minGRU:}\quad z_t = \sigma(k_z), \qquad
    h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t,

    \text{minLSTM:}\quad f'_t = \frac{\sigma(k_f)}{\sigma(k_f) + \sigma(k_i)}, \;
    i'_t = \frac{\sigma(k_i)}{\sigma(k_f) + \sigma(k_i)}, \qquad
    h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t,

    \tilde h_t = g(k_h) \;(\texttt{mode="log"}) \quad\text{or}\quad k_h \;(\texttt{mode="plain"}),
    \qquad g(v) = \begin{cases} v + 1/2 & v \ge 0 \\ \sigma(v) & v < 0 \end{cases}

and :math:`y_t = W_o h_t` when ``expand != 1`` (else :math:`y_t = h_t`).  Because the gates do
not depend on :math:`h_{t-1}`, training runs as one parallel scan (:func:`lrnnx.ops.diag_scan`,
``a = 1 - z`` or ``f'``) and decoding as the sequential recurrence (``step``).

``mode``: the paper trains its models with the log-space implementation of its Appendix B,
which needs :math:`\tilde h_t > 0` and therefore uses the activation g; that is the default
here (``"log"``).  ``lrnnx.ops.diag_scan`` is exact in linear space, so no log-space scan is
needed: ``"log"`` reproduces the paper's log-space model up to rounding (the gates are computed
from log-sigmoids as there, e.g. :math:`f' = \sigma(\log\sigma(k_f) - \log\sigma(k_i))`), and
``"plain"`` is the main-text parameterization with an unconstrained :math:`\tilde h_t`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

import lrnnx
import lrnnx.ops as ops
from lrnnx.errors import ConfigError

from ._common import batch_rows, check_scan, param_dtype_device, state_tensor


def g(v: torch.Tensor) -> torch.Tensor:
    """The paper's positive activation: ``v + 1/2`` for v >= 0, ``sigmoid(v)`` below (C^1 at 0)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


class _MinRNN(lrnnx.Layer):
    """Shared body of minGRU / minLSTM; subclasses set ``n_parts`` and ``_gates``."""

    capabilities = frozenset({"step", "varlen"})
    test_kwargs = {"expand": 1.5}
    n_parts = 0

    def __init__(self, d_model: int, expand: float = 1.0, mode: Literal["log", "plain"] = "log",
                 bias: bool = True, scan: str = "auto"):
        super().__init__()
        name = self.name
        if d_model <= 0:
            raise ConfigError(f"layer {name!r}: d_model must be a positive int, got {d_model}.")
        if not (expand > 0 and math.isfinite(expand)):
            raise ConfigError(f"layer {name!r}: option 'expand' must be a finite number > 0, got "
                              f"{expand!r}; the hidden width is round(expand * d_model).")
        hidden = int(round(expand * d_model))
        if hidden < 1:
            raise ConfigError(f"layer {name!r}: expand={expand} gives a hidden width of "
                              f"{hidden} at d_model={d_model}; use a larger expand.")
        self.d_model, self.expand, self.mode, self.hidden = d_model, expand, mode, hidden
        self.scan = check_scan(name, scan)
        self.proj = nn.Linear(d_model, self.n_parts * hidden, bias=bias)
        # the paper projects back only when the hidden width differs from the input's
        self.out = nn.Linear(hidden, d_model, bias=bias) if expand != 1 else None

    def _gates(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _candidate(self, k_h: torch.Tensor) -> torch.Tensor:
        return g(k_h) if self.mode == "log" else k_h

    def _coefficients(self, x):
        """``(a_t, b_t)`` of ``h_t = a_t h_{t-1} + b_t``, each (..., hidden)."""
        *k_gates, k_h = self.proj(x).chunk(self.n_parts, dim=-1)
        keep, write = self._gates(*k_gates)
        return keep, write * self._candidate(k_h)

    def _output(self, h):
        return h if self.out is None else self.out(h)

    def init_state(self, batch_size: int, device=None, dtype=None):
        device, dtype = param_dtype_device(self, device, dtype)
        return {"h": torch.zeros(batch_size, self.hidden, device=device, dtype=dtype)}

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        rows = batch_rows(x, cu_seqlens)
        h0 = state_tensor(self, state, "h", (rows, self.hidden), x, cu_seqlens is not None)
        a, b = self._coefficients(x)
        h, h_last = ops.diag_scan(a, b, h0, cu_seqlens=cu_seqlens, backend=self.scan)
        y = self._output(h)
        return (y, {"h": h_last}) if return_state else y

    def step(self, x_t, state):
        h = state_tensor(self, state, "h", (x_t.shape[0], self.hidden), x_t)
        a, b = self._coefficients(x_t)
        h = ops.diag_step(a, b, h, backend=self.scan)
        return self._output(h), {"h": h}

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, hidden={self.hidden}, mode={self.mode!r}, "
                f"out_proj={self.out is not None}")


class MinGRU(_MinRNN):
    r"""minGRU: :math:`h_t = (1 - z_t) h_{t-1} + z_t \tilde h_t`, :math:`z_t = \sigma(W_z x_t)`.

    See the module docstring.  Options: ``expand`` (hidden = round(expand * d_model), default
    1; an output projection hidden -> d_model is added when expand != 1), ``mode`` ("log":
    :math:`\tilde h = g(W_h x)`, the paper's trained variant, default; "plain":
    :math:`\tilde h = W_h x`), ``bias`` (of the projections), ``scan`` (scan backend).
    Init: PyTorch's Linear default.

    State: ``{"h": (B, hidden)}`` (``(N_seq, hidden)`` with ``cu_seqlens``).
    Shapes: x (B, L, d_model) -> y (B, L, d_model); step: x_t (B, d_model) -> y_t (B, d_model).

    Example::

        gru = lrnnx.build_layer("mingru(expand=2)", d_model=64)
        y, st = gru(torch.randn(2, 10, 64), return_state=True)
        y_t, st = gru.step(torch.randn(2, 64), st)
    """

    name = "mingru"
    n_parts = 2

    def _gates(self, k_z):
        # 1 - sigmoid(k) = sigmoid(-k): no cancellation when z -> 1
        return torch.sigmoid(-k_z), torch.sigmoid(k_z)


class MinLSTM(_MinRNN):
    r"""minLSTM: :math:`h_t = f'_t h_{t-1} + i'_t \tilde h_t` with normalized gates
    :math:`f' = f/(f+i)`, :math:`i' = i/(f+i)`, :math:`f = \sigma(W_f x_t)`, :math:`i = \sigma(W_i
    x_t)`.

    See the module docstring; options, state and shapes as :class:`MinGRU` (the fused projection
    has three parts: f, i, h~).

    Example::

        lstm = lrnnx.build_layer("minlstm(mode=plain)", d_model=64)
        y = lstm(torch.randn(2, 10, 64))
    """

    name = "minlstm"
    n_parts = 3

    def _gates(self, k_f, k_i):
        # f/(f+i) = sigmoid(log f - log i), computed from log-sigmoids as in the paper's log-space
        # code; i' from its own difference (not 1 - f') keeps precision when f' -> 1.
        diff = F.logsigmoid(k_f) - F.logsigmoid(k_i)
        return torch.sigmoid(diff), torch.sigmoid(-diff)
