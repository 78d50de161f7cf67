"""The ``s4d`` layer: diagonal S4 (Gu et al. 2022) on the generic ``ssm`` layer."""

from __future__ import annotations

from typing import Literal

from lrnnx import Ref
from lrnnx.registry.spec import Component

from .ssm import SSM


class S4D(SSM):
    r"""S4D: Gu, Gupta, Goel & Ré 2022, "On the Parameterization and Initialization of Diagonal
    State Space Models", https://arxiv.org/abs/2206.11893.

    .. math::

        h_t = e^{\Delta A} h_{t-1} + (e^{\Delta A} - 1) A^{-1} B\, x_t, \qquad
        y_t = 2\,\mathrm{Re}(C h_t) + D x_t

    per channel (SISO, state (H, d_state)), computed as a recurrence (``mode="scan"``) or as
    the paper's convolution with the Vandermonde kernel
    ``K_l = 2 Re(sum_n C_n B_bar_n A_bar_n^l)`` (``mode="conv"``: FFT convolution, the carried
    state's zero-input response added and the final state by a Vandermonde contraction;
    :mod:`lrnnx_plugins.lti.conv`); ``mode="auto"`` (default) convolves from
    ``lrnnx_plugins.lti.conv.AUTO_CONV_MIN_LEN`` = 16 tokens on (the measured crossover);
    ``timesteps`` always scan.
    = ``ssm(param=s4d_<init>(dt_min, dt_max), disc=zoh)`` (details:
    :mod:`lrnnx_plugins.parameterizations.s4d`).

    Options: ``d_state`` (complex modes stored per channel, default 32 = the paper's / official
    code's N = 64, which keeps N/2 modes of conjugate pairs); ``init``: ``"lin"``
    (``A_n = -1/2 + i pi n``, default), ``"inv"`` (``-1/2 + i N/pi (N/(2n+1) - 1)``) or
    ``"real"`` (``-(n+1)``, a real SSM); ``dt_min``, ``dt_max`` (log-uniform step init, 0.001,
    0.1); ``complex`` (None: complex for lin/inv, real for real); ``disc`` (``zoh`` as in the
    paper, or ``bilinear``); ``scan``; ``bidirectional`` (see ``ssm``); ``mode``.

    State: ``{"h": (B, d_model, d_state)}`` (complex unless real).

    Shapes: x (B, L, d_model) -> y (B, L, d_model); step: x_t (B, d_model) -> y_t (B, d_model).

    Example::

        s4d = lrnnx.build_layer("s4d(d_state=32, init=inv)", d_model=64)
        y, st = s4d(torch.randn(2, 1000, 64), return_state=True)
    """

    name = "s4d"
    test_kwargs = {"d_state": 4}

    def __init__(self, d_model: int, d_state: int = 32,
                 init: Literal["lin", "inv", "real"] = "lin", dt_min: float = 0.001,
                 dt_max: float = 0.1, complex: bool | None = None,
                 disc: Ref("discretizer") = "zoh", scan: str = "auto",
                 bidirectional: bool = False,
                 mode: Literal["scan", "conv", "auto"] = "auto"):
        param = Component(f"s4d_{init}", (("complex", complex), ("dt_min", dt_min),
                                          ("dt_max", dt_max)))
        super().__init__(d_model, d_state, param=param, disc=disc, scan=scan,
                         bidirectional=bidirectional, mode=mode)
        self.init = init

    def extra_repr(self) -> str:
        return f"init={self.init!r}, {super().extra_repr()}"
