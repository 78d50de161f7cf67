r"""The ``s4`` layer: Structured State Space sequence model (S4) with a DPLR HiPPO state matrix."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

import lrnnx
from lrnnx.errors import InputError, InputTypeError

from lrnnx_plugins.parameterizations.base import as_complex, check_dt_range, complex_param, \
    log_uniform_dt

from . import dplr
from .conv import check_mode, fft_conv, resolve_mode
from .hippo import nplr
from .precision import full_precision


_REAL_OF = {torch.complex64: torch.float32, torch.complex128: torch.float64}

class S4(lrnnx.Layer):
    r"""S4: Gu, Goel & Ré 2022, "Efficiently Modeling Long Sequences with Structured State
    Spaces" (ICLR 2022), https://arxiv.org/abs/2111.00396.

    Per channel h = 1..d_model an independent SSM of N = 2 ``d_state`` real states with a
    HiPPO matrix in diagonal-plus-low-rank form, discretized by the bilinear transform:

    .. math::

        A = \Lambda - P P^*,\quad \bar A = (I - \tfrac{\Delta}{2} A)^{-1}(I + \tfrac{\Delta}{2} A),
        \quad \bar B = (I - \tfrac{\Delta}{2} A)^{-1} \Delta B

        x_t = \bar A x_{t-1} + \bar B u_t, \qquad y_t = C x_t + D u_t
        \quad\Longleftrightarrow\quad y = K * u + D u,\ K_l = C \bar A^l \bar B

    Two compute modes that agree (tests/test_s4.py):

    * ``mode="conv"``: the kernel K by the paper's Algorithm 1 (truncated generating function
      ``C~ = C (I - A_bar^L)``, Cauchy kernel, Woodbury correction, inverse FFT;
      :mod:`lrnnx_plugins.lti.dplr`), then an FFT convolution.  A carried state adds its
      zero-input response ``C A_bar^(t+1) x0`` (the kernel of ``(1/dt)(I + dt/2 A) x0``) and
      ``return_state=True`` computes ``x_L`` in closed form.  Kernel math runs in complex128
      whatever the layer's dtype, and the convolution in x's dtype: near a resonance the
      Cauchy denominators ``z - dt Lambda / 2`` cancel to ``dt/4``, and complex64 kernel math
      measured 1.1e-5 (legt, default dt) up to 7.6e-4 (fourier, dt in [1e-4, 1e-3]) relative
      error against complex128 -- above the float32 budget.
    * ``mode="scan"``: the recurrence, one O(N r) step per token with the discrete DPLR
      ``A_bar = diag(d) - U W^T`` (a Python loop: for short sequences and as the reference);
      ``step`` is the same update.
    * ``mode="auto"`` (default): conv for L >= ``auto_conv_min_len`` (16: measured on the
      project CPU, B = 8, d_model = 128, forward + backward: L = 8 scan 17.9 / conv 19.3 ms,
      L = 16 30.1 / 25.5 ms, L = 1024 1228 / 661 ms), scan below.  ``timesteps`` always scan
      (dt then varies per token).

    Parameters (initialized as in the paper / reference code): ``Lambda, P, B`` from the NPLR
    form of the HiPPO matrix of measure ``init`` (``legs`` default, ``legt`` with rank 2,
    ``fourier``; :mod:`lrnnx_plugins.lti.hippo`), copied per channel and trained;
    ``Re Lambda`` stored as ``log(-Re Lambda)`` (clamped at ``-Re Lambda >= 1e-4`` for the
    measures whose normal part has zero real part, as the reference code does);
    ``C ~ N(0, 1)`` complex; ``log dt ~ U[log dt_min, log dt_max]`` = [0.001, 0.1]; ``D ~ N(0,
    1)``.  The layer is the SSM convolution plus skip; the paper's GELU / output linear / GLU are
    blocks to stack (``s4 + mlp``), not options of the layer.

    Options: ``d_state`` (M = N/2 complex modes per channel, default 32, i.e. the paper's
    N = 64); ``init``; ``rank`` (None: the measure's rank); ``dt_min``, ``dt_max``; ``disc``
    (only ``"bilinear"``: the DPLR structure the kernel needs survives only the bilinear
    transform); ``mode``; ``bidirectional``: a second output matrix ``C_rev`` reads an
    anti-causal run of the same (Lambda, P, B, dt) system (as the reference code's
    ``bidirectional``), outputs summed; such a layer cannot step or take a state.

    State: ``{"h": (B, d_model, d_state)}`` complex (the stored half of the conjugate pairs).
    Packed varlen input (``cu_seqlens``) restarts per sequence (state per sequence).
    ``timesteps`` (B, L) scale the step size per token (``dt_t = dt * timesteps_t``).

    Shapes: x (B, L, d_model) -> y (B, L, d_model); step: x_t (B, d_model) -> y_t (B, d_model).

    Example::

        s4 = lrnnx.build_layer("s4(d_state=32, init=legs)", d_model=64)
        y, st = s4(torch.randn(2, 1024, 64), return_state=True)      # conv mode (auto)
        y_t, st = s4.step(torch.randn(2, 64), st)                    # recurrent decoding
    """

    name = "s4"
    capabilities = frozenset({"step", "varlen", "timesteps", "bidirectional"})
    test_kwargs = {"d_state": 4}
    #: ``mode="auto"`` convolves sequences of at least this many tokens
    auto_conv_min_len = 16

    def __init__(self, d_model: int, d_state: int = 32,
                 init: Literal["legs", "legt", "fourier"] = "legs", rank: int | None = None,
                 dt_min: float = 0.001, dt_max: float = 0.1,
                 disc: Literal["bilinear"] = "bilinear",
                 mode: Literal["scan", "conv", "auto"] = "auto", bidirectional: bool = False):
        super().__init__()
        where = f"layer {self.name!r}"
        for opt, v in (("d_model", d_model), ("d_state", d_state)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise lrnnx.errors.ConfigError(f"{where}: {opt} must be a positive int, got "
                                               f"{v!r}.")
        check_dt_range(where, dt_min, dt_max)
        self.d_model, self.d_state, self.init, self.disc = d_model, d_state, init, disc
        self.dt_min, self.dt_max = dt_min, dt_max
        self.mode, self.bidirectional = check_mode(mode, where), bool(bidirectional)
        try:
            lam, P, B, _ = nplr(init, 2 * d_state, rank)
        except lrnnx.errors.ConfigError as exc:
            raise lrnnx.errors.ConfigError(f"{where}: {exc}") from None
        self.rank = P.shape[0] if rank is None else rank
        H = d_model
        self.D = nn.Parameter(torch.randn(H))   # first: input checks compare x with it
        self.log_dt = nn.Parameter(log_uniform_dt(H, dt_min, dt_max))
        self.log_neg_lam_re = nn.Parameter(
            torch.log((-lam.real).clamp(min=1e-4)).float().expand(H, -1).clone())
        self.lam_im = nn.Parameter(lam.imag.float().expand(H, -1).clone())
        self.P = complex_param(P[:, None].expand(-1, H, -1))
        self.B = complex_param(B.expand(H, -1))
        self.C = complex_param(torch.randn(H, d_state, dtype=torch.complex64))
        self.C_rev = complex_param(torch.randn(H, d_state, dtype=torch.complex64)) \
            if self.bidirectional else None

    # ------------------------------------------------------------------ parameters & state
    # (a table, not dtype.to_real(): torch.compile cannot trace that method)
    def system(self, dtype: torch.dtype | None = None) -> dplr.DPLRSystem:
        """The continuous DPLR system ``(Lambda, P, B, dt)``, optionally cast to ``dtype``."""
        lam = torch.complex(-torch.exp(self.log_neg_lam_re), self.lam_im)
        s = dplr.DPLRSystem(lam, as_complex(self.P), as_complex(self.B), torch.exp(self.log_dt))
        if dtype is not None:
            s = dplr.DPLRSystem(s.Lam.to(dtype), s.P.to(dtype), s.B.to(dtype),
                                s.dt.to(_REAL_OF.get(dtype, dtype)))
        return s

    def resolved_mode(self, L: int, timesteps: torch.Tensor | None = None) -> str:
        """``"scan"`` or ``"conv"``: how a forward over ``L`` tokens runs (``mode="auto"``
        convolves from ``auto_conv_min_len`` tokens on; irregular timesteps always scan)."""
        return resolve_mode(self.mode, L, timesteps, self.auto_conv_min_len)

    def _cdtype(self) -> torch.dtype:
        return torch.complex128 if self.D.dtype == torch.float64 else torch.complex64

    def init_state(self, batch_size: int, device=None, dtype=None):
        device = self.D.device if device is None else device
        dtype = self.D.dtype if dtype is None else dtype
        cdt = torch.complex128 if dtype in (torch.float64, torch.complex128) else \
            torch.complex64
        return {"h": torch.zeros(batch_size, self.d_model, self.d_state, device=device,
                                 dtype=cdt)}

    def _state_in(self, state, n: int, x):
        if state is None:
            return None
        where = f"layer {self.name!r}"
        if self.bidirectional:
            raise InputError(f"{where} is bidirectional: it cannot continue from a state (the "
                             f"backward direction needs the whole sequence); drop state=, or "
                             f"build the layer with bidirectional=False.")
        want = (n, self.d_model, self.d_state)
        h = state.get("h") if isinstance(state, dict) else None
        if not isinstance(h, torch.Tensor) or tuple(h.shape) != want:
            got = tuple(h.shape) if isinstance(h, torch.Tensor) else sorted(state)
            raise InputError(f"{where}: state must be {{'h': tensor of shape {want}}} (one row "
                             f"per batch element or packed sequence), got {got}; use "
                             f"init_state({n}) or the state returned by forward.")
        if h.device != x.device:
            raise InputError(f"{where}: state['h'] is on {h.device} but x is on {x.device}; "
                             f"move it with .to(x.device).")
        if not h.is_complex():
            raise InputTypeError(f"{where}: state['h'] must be complex (the stored half of the "
                                 f"conjugate pairs), got {h.dtype}; use init_state().")
        return h

    # ------------------------------------------------------------------ compute
    def _readout(self, C, h):
        return 2.0 * dplr.re_dot(C, h)

    def _scan(self, s, x, h0, ts, C, reverse=False):
        """The recurrence token by token: y (Bt, L, H) without skip, final state."""
        Bt, L, H = x.shape
        h = x.new_zeros(Bt, H, self.d_state, dtype=s.B.dtype) if h0 is None else h0.to(s.B.dtype)
        setup = dplr.step_setup(s) if ts is None else None
        ys = [None] * L
        xs = x.to(s.dt.dtype).unbind(1)   # views whose backward does not allocate all of x
        for t in (range(L - 1, -1, -1) if reverse else range(L)):
            st = setup
            if ts is not None:
                st = dplr.step_setup(s, s.dt * ts[:, t, None].to(s.dt.dtype))
            h = dplr.step(st, h, xs[t])
            ys[t] = self._readout(C, h)
        return torch.stack(ys, 1), h

    def _conv(self, s, x, h0, need_state, Cs, lengths, packed):
        """Conv mode over the segments ``lengths`` [(a, b)] of x (Bt, L, H): y, final states.

        ``packed``: the segments are packed sequences (h0 has one row per segment) rather than
        the one segment of a batch (h0 has one row per batch element)."""
        Lmax = max(b - a for a, b in lengths)
        Ct = [dplr.full(C) - dplr.apply_power(s, dplr.full(C), Lmax, row=True) for C in Cs]
        Ct = [c[..., :self.d_state] for c in Ct]
        Bs = None if h0 is None else dplr.zero_input_inputs(s, h0)
        K = dplr.kernel(s, torch.stack(Ct), Lmax, Bs)              # (H, Lmax, I, 1 + n0)
        # the kernel is exact to float64; the convolution itself runs in x's precision
        K = K.to(x.dtype)
        ys, finals = [], []
        for i, (a, b) in enumerate(lengths):
            xi = x[:, a:b]
            y = fft_conv(xi, K[:, :, 0, 0])
            if h0 is not None:
                zi = K[:, : b - a, 0, 1:]                          # (H, Li, n0)
                zi = zi[..., i:i + 1] if packed else zi
                y = y + zi.permute(2, 1, 0)
            if len(Cs) > 1:
                y = y + fft_conv(xi.flip(1), K[:, :, 1, 0]).flip(1)
            ys.append(y)
            if need_state:
                x0 = None if h0 is None else (h0[i:i + 1] if packed else h0)
                finals.append(dplr.final_state(s, xi, x0))
        return ys, finals

    @full_precision
    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        Bt, L, H = x.shape
        n = Bt if cu_seqlens is None else cu_seqlens.numel() - 1
        h0 = self._state_in(state, n, x)
        if cu_seqlens is None:
            lengths = [(0, L)]
        else:
            bounds = [int(v) for v in cu_seqlens.tolist()]
            lengths = list(zip(bounds, bounds[1:]))
        Lmax = max(b - a for a, b in lengths)
        mode = self.resolved_mode(Lmax, timesteps)
        Cs = [as_complex(self.C)] + ([as_complex(self.C_rev)] if self.bidirectional else [])
        wide = torch.complex128 if mode == "conv" else self._cdtype()
        s = self.system(wide)
        Cs = [C.to(wide) for C in Cs]
        nonempty = [i for i, (a, b) in enumerate(lengths) if b > a]
        ys, fin_map = [], {}
        if mode == "conv" and nonempty:
            # one kernel (at the longest length) for every packed sequence
            sub_h0 = None if h0 is None else \
                (h0 if cu_seqlens is None else h0[nonempty]).to(wide)
            ys, finals = self._conv(s, x, sub_h0, return_state, Cs,
                                    [lengths[i] for i in nonempty], cu_seqlens is not None)
            fin_map = dict(zip(nonempty, finals))
        elif mode != "conv":
            for i in nonempty:
                a, b = lengths[i]
                hi = None if h0 is None else (h0[i:i + 1] if cu_seqlens is not None else h0)
                ti = None if timesteps is None else timesteps[:, a:b]
                y, fin_map[i] = self._scan(s, x[:, a:b], hi, ti, Cs[0])
                if self.bidirectional:
                    y = y + self._scan(s, x[:, a:b], None, ti, Cs[1], reverse=True)[0]
                ys.append(y)
        y = torch.cat(ys, 1) if ys else x.new_zeros(x.shape)
        y = (y.to(x.dtype) + self.D * x).to(x.dtype)
        if not return_state:
            return y
        cdt = self._cdtype()
        rows = []
        for i in range(n):
            if i in fin_map:
                rows.append(fin_map[i].to(cdt))
            else:  # an empty packed sequence keeps its state
                rows.append(h0[i:i + 1].to(cdt) if h0 is not None else
                            self.init_state(1, x.device, x.dtype)["h"])
        return y, {"h": torch.cat(rows, 0) if cu_seqlens is not None else rows[0]}

    @full_precision
    def step(self, x_t, state, timesteps=None):
        """One token: x_t (B, d_model), state {"h": (B, d_model, d_state)} -> (y_t, state).

        ``timesteps`` (B,) optionally scales this token's step size."""
        if self.bidirectional:
            raise InputError(f"layer {self.name!r} is bidirectional and cannot step: y_t "
                             f"depends on future tokens; call forward() on whole sequences, or "
                             f"build it with bidirectional=False.")
        h = self._state_in(state, x_t.shape[0], x_t)
        s = self.system(self._cdtype())
        setup = dplr.step_setup(s) if timesteps is None else \
            dplr.step_setup(s, s.dt * timesteps[:, None].to(s.dt.dtype))
        h = dplr.step(setup, h.to(s.B.dtype), x_t.to(s.dt.dtype))
        y = self._readout(as_complex(self.C).to(h.dtype), h)
        return (y.to(x_t.dtype) + self.D * x_t).to(x_t.dtype), {"h": h}

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, init={self.init!r}, "
                f"rank={self.rank}, mode={self.mode!r}, bidirectional={self.bidirectional}")
