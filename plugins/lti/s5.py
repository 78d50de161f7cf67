r"""The ``s5`` layer: Simplified State Space layers (Smith, Warrington & Linderman, ICLR 2023),
https://arxiv.org/abs/2208.04933, with Event-SSM's event-driven discretization (Schöne et al.
2024, "Scalable Event-by-event Processing of Neuromorphic Sensory Signals With Deep State-Space
Models", https://arxiv.org/abs/2404.18508).

One MIMO diagonal state of P = ``d_state`` complex modes shared by the H channels::

    h_t = Lambda_bar_t h_{t-1} + B_bar_t x_t,     y_t = 2 Re(C h_t) + D * x_t
    (Lambda_bar_t, B_bar_t) = disc(Lambda, dt * tau_t)         (tau_t = timesteps, default 1)

* ``Lambda``, ``B`` (P, H), ``C`` (H, P): the ``hippo_n`` parameterization (diagonalized
  HiPPO-N, block-diagonal init with J = ``blocks`` blocks, LeCun-normal B and C rotated into the
  eigenbasis; see :mod:`lrnnx_plugins.parameterizations.hippo`); per-state learnable step
  ``dt`` (P,), ``log dt ~ U[log dt_min, log dt_max]``.
* ``D`` (H,): a *diagonal* (per-channel) feed-through, ``N(0, 1)`` init as in S5's code
  (not an H x H matrix).
* ``conj_sym`` (default True): the real system of size 2P has conjugate eigenvalue pairs; one
  of each is kept and the output is ``2 Re(...)``.  ``d_state`` counts the stored modes, so the
  paper's latent size is ``P_paper = 2 * d_state``.

Event streams (Event-SSM): ``timesteps`` (B, L) are the gaps since the previous event; every
token gets its own ``Lambda_bar_t = exp(Lambda dt tau_t)`` (asynchronous discretization).  By
default the input gain uses the same step (``zoh``: ``B_bar = (Lambda_bar - 1)/Lambda B``, so a
zero gap leaves the state unchanged and all-equal gaps c equal a regular layer with step
``dt c``); ``async_input=True`` is Event-SSM's "async" variant: the input gain uses ``dt``
alone (each event integrated over the learned step, however close it follows the previous one).

Compute modes: ``"scan"`` (``lrnnx.ops.diag_scan`` on the chosen backend), ``"conv"`` (the
recurrence materialized as per-mode powers ``Lambda_bar^l`` and run by FFT in state space:
:func:`lrnnx_plugins.lti.conv.lti_conv`, through the generic ``ssm`` layer; ``timesteps`` make
the system time-varying and always scan), ``"auto"`` (= scan: the state-space convolution does
O(log L) more work per token than the scan and measured slower on CPU and GPU).
"""

from __future__ import annotations

from typing import Literal

import lrnnx
from lrnnx import Ref
from lrnnx.errors import InputError
from lrnnx.registry.spec import Component

from lrnnx_plugins.ssm.recurrence import decay_term, input_term, readout, transition
from lrnnx_plugins.ssm.ssm import SSM, _add_skip

from .precision import full_precision


class S5(SSM):
    r"""S5 (Smith et al. 2023, https://arxiv.org/abs/2208.04933): MIMO diagonal SSM with the
    HiPPO-N eigenbasis init; event streams through ``timesteps`` (Event-SSM, Schöne et al. 2024).

    .. math::

        h_t = \bar\Lambda_t h_{t-1} + \bar B_t x_t, \quad
        y_t = 2\,\mathrm{Re}(\tilde C h_t) + D \odot x_t, \quad
        (\bar\Lambda_t, \bar B_t) = \mathrm{disc}(\Lambda, \Delta\, \tau_t, \tilde B)

    Options (defaults: the S5 reference code's, which its main LRA results use with per-task
    sizes): ``d_state`` = stored complex modes (default 128 = the code's ``ssm_size_base``
    P = 256 halved by conjugate symmetry); ``blocks`` J = 8 (block-diagonal HiPPO-N init with J
    blocks of size 2 d_state / J; must divide d_state); ``dt_min`` 0.001, ``dt_max`` 0.1;
    ``conj_sym`` True; ``disc``: ``zoh`` (default), ``bilinear`` or ``dirac`` (any registered
    discretizer); ``async_input`` (Event-SSM async gain, False); ``mode`` ``"auto"`` |
    ``"scan"`` | ``"conv"``; ``scan`` (scan backend); ``bidirectional`` (a second, independently
    initialized S5 state runs anti-causally; outputs summed, D shared).

    State: ``{"h": (B, d_state)}`` complex.  Shapes: x (B, L, d_model) -> y (B, L, d_model);
    step: x_t (B, d_model) [, timesteps (B,)] -> y_t (B, d_model).

    Example::

        s5 = lrnnx.build_layer("s5(d_state=64, blocks=4)", d_model=32)
        y, st = s5(torch.randn(2, 1000, 32), return_state=True)
        # an event stream: gaps between events as timesteps
        y = s5(torch.randn(2, 50, 32), timesteps=torch.rand(2, 50))
    """

    name = "s5"
    test_kwargs = {"d_state": 4, "blocks": 2}

    def __init__(self, d_model: int, d_state: int = 128, blocks: int = 8,
                 dt_min: float = 0.001, dt_max: float = 0.1, conj_sym: bool = True,
                 disc: Ref("discretizer") = "zoh", async_input: bool = False,
                 mode: Literal["scan", "conv", "auto"] = "auto", scan: str = "auto",
                 bidirectional: bool = False):
        param = Component("hippo_n", (("dt_min", dt_min), ("dt_max", dt_max),
                                      ("blocks", blocks), ("conj_sym", conj_sym)))
        super().__init__(d_model, d_state, param=param, disc=disc, scan=scan,
                         bidirectional=bidirectional, mode=mode)
        self.async_input = bool(async_input)
        self.blocks, self.conj_sym = blocks, conj_sym

    # ------------------------------------------------------------------ compute
    def _async(self, timesteps) -> bool:
        return self.async_input and timesteps is not None

    def _gain_scale(self, P):
        """B_scale of the input gain at the learned step alone (Event-SSM async)."""
        _, scale = transition(P, self.disc, "mimo", False, False, None)
        return scale

    def _direction(self, param, x, h0, timesteps, cu_seqlens, reverse: bool,
                   need_state: bool = True, skip=None):
        if self.mode == "conv" and timesteps is None:  # the generic layer's conv mode
            return super()._direction(param, x, h0, timesteps, cu_seqlens, reverse, need_state,
                                      skip)
        # scan, and auto = scan: S5's convolution runs in state space (P complex channels,
        # O(log L) more work per token than the scan); measured fwd+bwd, B=8, H=128,
        # d_state=128, L=1024: scan 82 vs conv 225 ms on the project CPU (1 thread, min of 7),
        # 4.8 vs 5.4 ms on an H200 (triton scan); conv never faster on CPU for L = 256..4096
        if timesteps is None:
            out = self._mimo_scan_graphed(param, x, h0, cu_seqlens, reverse, skip)
            if out is not None:
                return out
        Bt, L, H = x.shape
        P = self._params(param, x)
        A_bar, scale = transition(P, self.disc, "mimo", False, False, timesteps)
        if self._async(timesteps):  # Event-SSM async: the input gain at dt alone
            scale = self._gain_scale(P)
        a = decay_term(A_bar, Bt, L, per_token=timesteps is not None)
        b = input_term(P, scale, x, "mimo", False)
        h, h_last = lrnnx.ops.diag_scan(a, b, h0, reverse=reverse, cu_seqlens=cu_seqlens,
                                        backend=self.scan)
        return _add_skip(readout(P, h, H, "mimo", False), skip, x), h_last

    @full_precision
    def step(self, x_t, state, timesteps=None):
        """One event/token: x_t (B, d_model), state {"h": (B, d_state)} -> (y_t, new state).

        ``timesteps`` (B,) is the gap since the previous event (None: 1).
        """
        if not self._async(timesteps):
            return super().step(x_t, state, timesteps=timesteps)
        if self.bidirectional:
            raise InputError(f"layer {self.name!r} is bidirectional and cannot step: y_t "
                             f"depends on future tokens; call forward() on whole sequences, or "
                             f"build it with bidirectional=False.")
        x = x_t[:, None]
        h = self._state_in(state, x, None)
        P = self._params(self.param, x)
        A_bar, _ = transition(P, self.disc, "mimo", False, False, timesteps[:, None])
        b = input_term(P, self._gain_scale(P), x, "mimo", False)[:, 0]
        h_new = lrnnx.ops.diag_step(decay_term(A_bar, x.shape[0], 1, True)[:, 0], b, h)
        y = readout(P, h_new[:, None], self.d_model, "mimo", False)[:, 0]
        return (y + self.D * x_t).to(x_t.dtype), {"h": h_new}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, blocks={self.blocks}, conj_sym={self.conj_sym}, "
                f"async_input={self.async_input}")
