r"""The ``centaurus`` layer: SSM blocks with convolution-like channel connectivity, Pei 2025,
"Let SSMs be ConvNets: State-space Modeling with Optimal Tensor Contractions" (ICLR 2025),
https://arxiv.org/abs/2501.13230 (reference code: github.com/Brainchip-Inc/Centaurus).

Every mode is a diagonal SSM with S4D-Lin poles ``A_n = -softplus(a_n) + i b_n`` (init
``-1/2 + i pi n``, n < N = ``d_state``), discretized with a step per SSM channel
(``(A_bar, g) = disc(A, dt)``; the default ``mamba`` is the paper's simplified ZOH
``A_bar = exp(dt A)``, ``g = dt``), and a real readout of each mode.  The ``connectivity``
options differ in how input channels c, states and output channels d are wired -- the SSM
analogues of conv layers (H = d_model, J = ``blocks``, h = states, ``Re`` per mode):

==========  =====================================  ===============================  ==========
name        recurrence (per token)                 output                           state
==========  =====================================  ===============================  ==========
pointwise   h_s = A_bar_s h_s + g_s (B x)_s          y = C Re(h)      B (J N, H)     (J N,)
neck        h_jn = A_bar h_jn + g E_jn (B x)_j       y = C sum_n Re(h_jn)  B (J, H)  (J, N)
dws         h_cn = A_bar h_cn + g x_c                y = W (sum_n E_cn Re(h_cn))      (H, N)
full        h_dcn = A_bar h_dcn + g x_c              y_d = sum_cn E_dcn Re(h_dcn)     (H, H, N)
==========  =====================================  ===============================  ==========

``pointwise`` is S5-like (the code's ``'s5'``: J blocks of N modes, dt per block), ``neck`` a
bottleneck (project to J SSM channels of N modes mixed by E, project back), ``dws`` S4D-like
depthwise SSMs followed by a pointwise (1x1) mixing W, ``full`` a full "convolution" with an
independent N-mode SSM for every (output, input) pair.  Any ``d_state`` works in every mode.

Convolution mode and the contraction order
------------------------------------------
As a convolution, ``pointwise`` and ``neck`` are the contraction ``y[b,d,l] = sum C[d,s]
K[s,l'] B[s,c] x[b,c,l-l']`` (S SSM channels: J N for pointwise, J for neck).  Two orders:

* project first: ``u = B x`` (B L S H flops), S depthwise FFT convolutions, ``y = C v``
  (B L S H): cost ``B L S (H_in + H_out)``; state space memory B L S.
* kernel first: ``K[d,c,l] = sum_s C[d,s] K_s(l) B[s,c]`` (H_out H_in S L flops), then one
  full convolution ``Y(f) = K(f) X(f)`` (B H_out H_in L per frequency): cost
  ``L H_in H_out (S + B)``.

Dividing both by ``B L S H_in H_out``: kernel first is cheaper when
``1/H_in + 1/H_out > 1/B + 1/S`` -- few channels, large batch and many states (the rule of
the reference code).  FFT costs are left out: they are ``O(log L)`` per channel and token on
both sides, small against ``H`` and ``S + B``.  ``contraction="auto"`` applies the rule;
kernel first needs no state (it never forms B x), so a call that passes or returns a state
projects first.  ``dws`` is depthwise (its own order), ``full`` is a full convolution with the
kernel ``K[d,c,l] = sum_n E Re(g A_bar^l)`` (:func:`lrnnx_plugins.lti.conv.vandermonde`).

Shapes: x (B, L, d_model) -> y (B, L, d_model); step: x_t (B, d_model) -> y_t (B, d_model).
State: ``{"h": (B, *state)}`` complex (table above).  No skip D (the paper's residuals live in
the blocks).

Example::

    layer = lrnnx.build_layer("centaurus(connectivity=neck, d_state=16, blocks=8)", d_model=64)
    y, st = layer(torch.randn(2, 1000, 64), return_state=True)
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

import lrnnx
from lrnnx import Ref
from lrnnx.errors import ConfigError, InputError, InputTypeError

from lrnnx_plugins.parameterizations.base import check_dt_range
from lrnnx_plugins.ssm.components import build_discretizer, check_scan

from .conv import (LTISystem, check_mode, fft_size, lti_conv, resolve_mode, vandermonde,
                   vandermonde_transpose)
from .precision import full_precision


def kernel_first(batch: int, channels_in: int, channels_out: int, ssm_channels: int) -> bool:
    """True when building the full (H_out, H_in, L) kernel is cheaper than projecting first:
    ``L H_in H_out (S + B) < B L S (H_in + H_out)`` (see the module docstring)."""
    return 1 / channels_in + 1 / channels_out > 1 / batch + 1 / ssm_channels


def full_conv(x: Tensor, K: Tensor) -> Tensor:
    """Causal full convolution ``y[b, t, d] = sum_{c, s<=t} K[d, c, t-s] x[b, s, c]`` by FFT.

    x (B, L, H_in) real, K (H_out, H_in, >= L) real -> (B, L, H_out)."""
    L = x.shape[1]
    n = fft_size(2 * L - 1)
    Xf = torch.fft.rfft(x, n=n, dim=1)                        # (B, F, H_in)
    Kf = torch.fft.rfft(K[..., :L], n=n, dim=-1)              # (H_out, H_in, F)
    return torch.fft.irfft(torch.einsum("bfc,dcf->bfd", Xf, Kf), n=n, dim=1)[:, :L]


class CentaurusCore(nn.Module):
    """The parameters of one direction, and the three maps of the recurrence: input lift,
    discretization and readout (init: the reference code's)."""

    def __init__(self, H: int, N: int, J: int, connectivity: str, dt_min: float, dt_max: float):
        super().__init__()
        self.H, self.N, self.J, self.connectivity = H, N, J, connectivity
        shape = {"pointwise": (J * N,), "neck": (J, N), "dws": (H, N), "full": (H, H, N)}
        self.state_shape = shape[connectivity]
        self.state_numel = math.prod(self.state_shape)
        n_dt = {"pointwise": J, "neck": J, "dws": H, "full": H}[connectivity]
        n = torch.arange(N, dtype=torch.float64)
        im = (math.pi * n).repeat(J) if connectivity == "pointwise" else math.pi * n
        self.A_re = nn.Parameter(torch.full(self.state_shape, math.log(math.expm1(0.5))))
        self.A_im = nn.Parameter(im.float().expand(self.state_shape).clone())
        dt = torch.logspace(math.log10(dt_min), math.log10(dt_max), n_dt, dtype=torch.float64)
        self.log_dt = nn.Parameter(dt.log().float())
        if connectivity == "pointwise":
            self.B = nn.Parameter(torch.full((J * N, H), 1 / math.sqrt(H)))
            self.C = nn.Parameter(torch.randn(H, J * N) * math.sqrt(2 / (J * N)))
        elif connectivity == "neck":
            self.B = nn.Parameter(torch.full((J, H), 1 / math.sqrt(H)))
            self.C = nn.Parameter(torch.randn(H, J) * math.sqrt(2 / (J * N)))
            self.E = nn.Parameter(torch.randn(J, N) * math.sqrt(2))
        elif connectivity == "dws":
            self.E = nn.Parameter(torch.full((H, N), 1 / math.sqrt(N)))
            self.W = nn.Parameter(torch.empty(H, H))
            nn.init.kaiming_uniform_(self.W, a=math.sqrt(5))   # = nn.Conv1d(H, H, 1) init
        else:
            self.E = nn.Parameter(torch.full((H, H, N), 1 / math.sqrt(H)))

    def dt(self) -> Tensor:
        """Per-state step sizes, broadcastable to the state shape."""
        dt = self.log_dt.exp()
        if self.connectivity == "pointwise":
            return dt.repeat_interleave(self.N)
        return dt[:, None, None] if self.connectivity == "full" else dt[:, None]

    def discretize(self, disc, timesteps: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(A_bar, g)`` of the state shape, or (Bt, L, *state) with timesteps."""
        A = torch.complex(-nn.functional.softplus(self.A_re), self.A_im)
        dt = self.dt()
        if timesteps is not None:
            dt = dt * timesteps.reshape(*timesteps.shape, *[1] * len(self.state_shape))
        return disc(A, dt.to(self.A_re.dtype))

    def lift(self, x: Tensor, g: Tensor) -> Tensor:
        """Scan input ``b`` (Bt, L, S) of x (Bt, L, H) and the input gain g."""
        Bt, L, _ = x.shape
        c = self.connectivity
        if c == "pointwise":
            b = (x @ self.B.transpose(0, 1)) * g
        elif c == "neck":
            b = (x @ self.B.transpose(0, 1))[..., None] * (self.E * g)
        elif c == "dws":
            b = x[..., None] * g
        else:
            b = x[..., None, :, None] * g
        return b.reshape(Bt, L, self.state_numel)

    def read(self, h: Tensor) -> Tensor:
        """y (Bt, L, H) of the states h (Bt, L, S)."""
        r = h.real.reshape(*h.shape[:2], *self.state_shape)
        c = self.connectivity
        if c == "pointwise":
            return r @ self.C.transpose(0, 1)
        if c == "neck":
            return r.sum(-1) @ self.C.transpose(0, 1)
        if c == "dws":
            return (r * self.E).sum(-1) @ self.W.transpose(0, 1)
        return (r * self.E).sum((-1, -2))

    # ------------------------------------------------------------------ conv mode
    def conv(self, A_bar: Tensor, g: Tensor, x: Tensor, h0: Tensor | None, need_state: bool,
             order: str) -> tuple[Tensor, Tensor | None]:
        """(y, final state (n, *state) or None) of one time-ordered sequence batch."""
        c = self.connectivity
        g = g.expand(A_bar.shape)
        if c == "full":
            return self._conv_full(A_bar, g, x, h0, need_state)
        S = self.J * self.N if c == "pointwise" else self.J if c == "neck" else self.H
        if c != "dws" and h0 is None and not need_state and (
                order == "kernel" or (order == "auto" and kernel_first(x.shape[0], self.H,
                                                                       self.H, S))):
            return full_conv(x, self.kernel(A_bar, g, x.shape[1])), None
        if c == "pointwise":
            system = LTISystem(A_bar, g[:, None] * self.B, self.C, "mimo")
            return lti_conv(system, x, h0)
        if c == "neck":
            system = LTISystem(A_bar, g * self.E, torch.ones_like(self.E), "siso")
            v, h_last = lti_conv(system, x @ self.B.transpose(0, 1), h0)
            return v @ self.C.transpose(0, 1), h_last
        z, h_last = lti_conv(LTISystem(A_bar, g, self.E, "siso"), x, h0)
        return z @ self.W.transpose(0, 1), h_last

    def kernel(self, A_bar: Tensor, g: Tensor, L: int) -> Tensor:
        """The full kernel K (H_out, H_in, L) of pointwise / neck / full."""
        c, H = self.connectivity, self.H
        if c == "pointwise":    # K[d,c,l] = sum_s C[d,s] Re(g_s B[s,c] A_s^l)
            W = (self.C[:, None, :] * (g[:, None] * self.B).transpose(0, 1)[None])
            return vandermonde(A_bar[None], W.reshape(1, H * H, -1), L).reshape(H, H, L)
        if c == "neck":         # K[d,c,l] = sum_j C[d,j] k_j(l) B[j,c]
            k = vandermonde(A_bar, (g * self.E)[:, None], L)[:, 0]          # (J, L)
            return torch.einsum("dj,jl,jc->dcl", self.C, k, self.B)
        W = (g * self.E).reshape(H * H, 1, self.N)
        return vandermonde(A_bar.reshape(H * H, self.N), W, L).reshape(H, H, L)

    def _conv_full(self, A_bar, g, x, h0, need_state):
        H, N = self.H, self.N
        Bt, L, _ = x.shape
        y = full_conv(x, self.kernel(A_bar, g, L))
        if h0 is not None:      # zero-input response Re sum_cn E A^(t+1) h0, grouped by d
            Wz = (self.E * A_bar)[None] * h0                                  # (n, D, C, N)
            y = y + vandermonde(A_bar.reshape(H, H * N), Wz.transpose(0, 1).reshape(
                H, Bt, H * N), L).permute(1, 2, 0)
        if not need_state:
            return y, None
        # h_L[d,c,n] = g A^L-1-l x_c summed over l (+ A^L h0), grouped by input channel c
        Ag = A_bar.transpose(0, 1).reshape(H, H * N)                          # (C, D N)
        S, A_L = vandermonde_transpose(Ag, x.permute(2, 0, 1))                # (C, n, D N)
        h_last = S.reshape(H, Bt, H, N).permute(1, 2, 0, 3) * g
        if h0 is not None:
            h_last = h_last + A_L.reshape(H, H, N).transpose(0, 1) * h0
        return y, h_last


class Centaurus(lrnnx.Layer):
    r"""Centaurus SSM layer (Pei 2025, https://arxiv.org/abs/2501.13230): diagonal SSMs wired
    like conv layers -- ``connectivity`` = ``pointwise`` | ``neck`` | ``dws`` | ``full`` (module
    docstring: recurrences, state shapes, contraction order).

    .. math::

        h_t = \bar A \odot h_{t-1} + g \odot \mathrm{lift}(x_t), \qquad
        y_t = \mathrm{read}(\mathrm{Re}\, h_t)

    Options (defaults: the reference code's ``Centaurus`` network: ``mode='s5'`` =
    pointwise, ``num_states=16``, ``state_blocks=4``): ``d_state`` N modes per SSM channel
    (16); ``connectivity`` (``"pointwise"``); ``blocks`` J (4; SSM channels of ``neck``, dt
    blocks of ``pointwise``; unused by ``dws`` / ``full``); ``dt_min``, ``dt_max`` (0.001, 0.1:
    dt geometrically spaced over the SSM channels, as the reference code); ``disc`` (``mamba``
    = the paper's simplified ZOH ``A_bar = exp(dt A)``, ``B_bar = dt B``; ``zoh``,
    ``bilinear``, ... work too); ``mode`` ``"auto"`` | ``"scan"`` | ``"conv"``; ``contraction``
    ``"auto"`` | ``"project"`` | ``"kernel"`` (conv mode of pointwise / neck); ``scan``;
    ``bidirectional`` (an independent anti-causal copy; outputs summed).

    ``mode="auto"``: ``dws`` convolves from ``lrnnx_plugins.lti.conv.AUTO_CONV_MIN_LEN``
    tokens, ``full`` at every length (scan mode materializes B L H^2 N states), ``pointwise``
    and ``neck`` scan (measured: ``_mode``).  ``timesteps`` (event streams, ``dt * tau_t``)
    always scan.

    Shapes: x (B, L, d_model) -> y (B, L, d_model); step: x_t (B, d_model) -> y_t.

    Example::

        layer = lrnnx.build_layer("centaurus(connectivity=dws, d_state=8)", d_model=32)
        y = layer(torch.randn(2, 100, 32))
    """

    name = "centaurus"
    capabilities = frozenset({"step", "varlen", "timesteps", "bidirectional"})
    test_kwargs = {"d_state": 3, "blocks": 2}

    def __init__(self, d_model: int, d_state: int = 16,
                 connectivity: Literal["pointwise", "neck", "dws", "full"] = "pointwise",
                 blocks: int = 4, dt_min: float = 0.001, dt_max: float = 0.1,
                 disc: Ref("discretizer") = "mamba",
                 mode: Literal["scan", "conv", "auto"] = "auto",
                 contraction: Literal["auto", "project", "kernel"] = "auto",
                 scan: str = "auto", bidirectional: bool = False):
        super().__init__()
        where = f"layer {self.name!r}"
        for opt, v in (("d_model", d_model), ("d_state", d_state), ("blocks", blocks)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{where}: {opt} must be a positive int, got {v!r}.")
        check_dt_range(where, dt_min, dt_max)
        self.d_model, self.d_state, self.blocks = d_model, d_state, blocks
        self.connectivity, self.contraction = connectivity, contraction
        self.bidirectional = bool(bidirectional)
        self.mode = check_mode(mode, where)
        self.scan = check_scan(scan, where)
        self.disc = build_discretizer(disc, where)
        args = (d_model, d_state, blocks, connectivity, dt_min, dt_max)
        self.core = CentaurusCore(*args)
        self.core_rev = CentaurusCore(*args) if self.bidirectional else None

    def init_state(self, batch_size: int, device=None, dtype=None):
        p = self.core.A_re
        dtype = _complex_of(p.dtype if dtype is None else dtype)
        return {"h": torch.zeros(batch_size, *self.core.state_shape,
                                 device=p.device if device is None else device, dtype=dtype)}

    def _state_in(self, state, x: Tensor, cu_seqlens) -> Tensor | None:
        if state is None:
            return None
        where = f"layer {self.name!r}"
        if self.bidirectional:
            raise InputError(f"{where} is bidirectional: it cannot continue from a state (the "
                             f"backward direction needs the whole sequence); drop state=, or "
                             f"build the layer with bidirectional=False.")
        n = x.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
        want = (n, *self.core.state_shape)
        h = state.get("h")
        if not isinstance(h, Tensor) or tuple(h.shape) != want:
            got = tuple(h.shape) if isinstance(h, Tensor) else f"keys {sorted(state)}"
            rows = "one row per packed sequence" if cu_seqlens is not None else "B rows"
            raise InputError(f"{where}: state['h'] must be a tensor of shape {want} ({rows}, "
                             f"connectivity={self.connectivity!r}), got {got}; use "
                             f"init_state({n}) or the state returned by a previous call.")
        if h.device != x.device:
            raise InputError(f"{where}: state['h'] is on {h.device} but x is on {x.device}; "
                             f"move it with .to(x.device).")
        if h.dtype != _complex_of(x.dtype):
            raise InputTypeError(f"{where}: state['h'] must have dtype {_complex_of(x.dtype)} "
                                 f"for x of dtype {x.dtype}, got {h.dtype}; build it with "
                                 f"init_state(B, dtype={x.dtype}).")
        return h

    def resolved_mode(self, L: int, timesteps: torch.Tensor | None = None) -> str:
        """``"scan"`` or ``"conv"``: how a forward over ``L`` tokens runs (see ``_mode``)."""
        return self._mode(L, timesteps)

    def _mode(self, L: int, timesteps) -> str:
        """auto: conv where the kernel sums the N modes away (dws: H channels convolved instead
        of H N scanned; full: H^2 kernels instead of H^2 N states), scan where conv would run
        in state space (pointwise, neck).  Measured fwd+bwd, B=8, H=128, L=1024, defaults, on
        the project CPU (1 thread, min of 7) / an H200: dws conv 108 vs scan 683 ms / 4.4 vs
        3.1 ms (conv wins on the GPU from L = 4096); pointwise scan 30 vs conv 45 ms / 2.6 vs
        2.9 ms; neck scan 20 vs conv 16 ms / 2.7 vs 4.3 ms."""
        if self.mode != "auto" or self.connectivity == "dws":
            return resolve_mode(self.mode, L, timesteps)
        return resolve_mode("conv" if self.connectivity == "full" else "scan", L, timesteps)

    def _direction(self, core: CentaurusCore, x, h0, timesteps, cu_seqlens, reverse, need):
        A_bar, g = core.discretize(self.disc, timesteps)
        if self._mode(x.shape[1], timesteps) == "scan":
            Bt, L, _ = x.shape
            S = core.state_numel
            a = A_bar.reshape(Bt, L, S) if timesteps is not None else \
                A_bar.reshape(1, 1, S).expand(1, L, S)
            b = core.lift(x, g.reshape(Bt, L, *core.state_shape) if timesteps is not None
                          else g)
            h, h_last = lrnnx.ops.diag_scan(a, b, None if h0 is None else h0.reshape(
                h0.shape[0], S), reverse=reverse, cu_seqlens=cu_seqlens, backend=self.scan)
            return core.read(h), h_last.reshape(h_last.shape[0], *core.state_shape)
        order = self.contraction
        spans = [(0, x.shape[1])] if cu_seqlens is None else \
            list(zip(cu_seqlens.tolist(), cu_seqlens.tolist()[1:]))
        ys, finals = [], []
        for i, (a, b) in enumerate(spans):
            x_i = x if cu_seqlens is None else x[:, a:b]
            h_i = h0 if (h0 is None or cu_seqlens is None) else h0[i:i + 1]
            if a == b:
                finals.append(h_i if h_i is not None else
                              self.init_state(1, x.device, x.dtype)["h"])
                continue
            x_i = x_i.flip(1) if reverse else x_i
            y_i, f_i = core.conv(A_bar, g, x_i, h_i, need, order)
            ys.append(y_i.flip(1) if reverse else y_i)
            finals.append(f_i)
        y = torch.cat(ys, 1) if ys else x.new_zeros(x.shape)
        return y, (torch.cat(finals, 0) if need and finals else None)

    @full_precision
    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        h0 = self._state_in(state, x, cu_seqlens)
        y, h_last = self._direction(self.core, x, h0, timesteps, cu_seqlens, False,
                                    return_state)
        if self.core_rev is not None:
            y = y + self._direction(self.core_rev, x, None, timesteps, cu_seqlens, True,
                                    False)[0]
        y = y.to(x.dtype)
        if not return_state:
            return y
        if h_last is None:  # nothing to carry when there were no sequences
            h_last = self.init_state(0, x.device, x.dtype)["h"]
        return y, {"h": h_last.to(_complex_of(x.dtype))}

    @full_precision
    def step(self, x_t, state, timesteps=None):
        """One token: x_t (B, d_model), state {"h": (B, *state)} -> (y_t, new state).
        ``timesteps`` (B,) optionally gives the gap since the previous token."""
        if self.bidirectional:
            raise InputError(f"layer {self.name!r} is bidirectional and cannot step: y_t "
                             f"depends on future tokens; call forward() on whole sequences, or "
                             f"build it with bidirectional=False.")
        x = x_t[:, None]
        h = self._state_in(state, x, None)
        ts = None if timesteps is None else timesteps[:, None]
        A_bar, g = self.core.discretize(self.disc, ts)
        shape = self.core.state_shape
        if ts is not None:
            A_bar, g = A_bar[:, 0], g.expand(A_bar.shape)[:, 0]
        b = self.core.lift(x, g[:, None] if ts is not None else g)[:, 0]
        n = h.shape[0]
        h_new = A_bar.reshape(n if ts is not None else 1, *shape) * h + b.reshape(n, *shape)
        y = self.core.read(h_new.reshape(n, 1, self.core.state_numel))[:, 0]
        return y.to(x_t.dtype), {"h": h_new}

    def extra_repr(self) -> str:
        disc = getattr(self.disc, "name", type(self.disc).__name__)
        return (f"d_model={self.d_model}, d_state={self.d_state}, connectivity="
                f"{self.connectivity!r}, blocks={self.blocks}, disc={disc}, mode={self.mode!r}, "
                f"contraction={self.contraction!r}, scan={self.scan!r}, "
                f"bidirectional={self.bidirectional}")


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    if dtype.is_complex:
        return dtype
    return torch.complex128 if dtype == torch.float64 else torch.complex64
