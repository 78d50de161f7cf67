r"""The ``linoss`` layer: Oscillatory State-Space Models (LinOSS), Rusch & Rus, ICLR 2025,
"Oscillatory State-Space Models", https://arxiv.org/abs/2410.03943.

Continuous model: P uncoupled forced harmonic oscillators ``y'' = -A y + B u`` (A diagonal,
``A = relu(A_hat) >= 0``), with ``z = y'`` the state ``x = [z; y]``.  Per oscillator p, with the
step ``dt = sigmoid(dt_hat)`` in (0, 1), the paper's two discretizations give the 2x2 block
recurrence ``x_t = M x_{t-1} + F u_t`` (u = B x_in, complex):

* IM (implicit):  ``S = 1 / (1 + dt^2 A)``,
  ``M = [[S, -dt A S], [dt S, S]]``, ``F = [dt S; dt^2 S]``
  (the paper and its code write the top-left entry as ``1 - dt^2 A S``, which equals ``S``;
  the eigenvalues ``S (1 +- i dt sqrt(A))`` have modulus ``sqrt(S) <= 1``: dissipative).
* IMEX (symplectic Euler): ``M = [[1, -dt A], [dt, 1 - dt^2 A]]``, ``F = [dt; dt^2]``
  (``det M = 1``: energy conserving for ``dt^2 A <= 4``).

Output ``y_out = Re(C y) + D u_in`` with complex ``B`` (P, H), ``C`` (H, P) and a per-channel
skip ``D`` (H,).  The paper's block (norm -> LinOSS -> GELU -> GLU -> residual) is not part of
this layer: it is the SSM mixer; stack it with blocks.

Running the 2x2 blocks through the diagonal scan (``lrnnx.ops.diag_scan``), exactly
------------------------------------------------------------------------------------
Diagonalizing M fails where it matters: at ``A = 0`` (every oscillator whose ``A_hat <= 0``) M is
a Jordan block ``[[1, 0], [dt, 1]]``, and near it the eigenvectors ``[+-i sqrt(A), 1]`` coalesce,
so reading ``y`` back from the two eigen-coordinates divides by ``2 i sqrt(A)`` (cancellation:
error ~ eps / sqrt(A)).  Instead the layer uses the complex *Schur* form, a unitary change of
basis (up to the scalar ``n``) that exists and is perfectly conditioned for every A >= 0:

    q1 = [a, 1] (an eigenvector of lambda_1 = m22 + m21 a),  Q = [[a, 1], [1, -conj(a)]],
    Q^-1 = Q^H / n,  n = 1 + |a|^2,   T = Q^-1 M Q = [[lambda_1, t12], [0, lambda_2]]

with ``a = i sqrt(A)`` (IM) or ``a = sqrt(A) (r + i sqrt(1 - r^2))``, ``r = dt sqrt(A) / 2``
(IMEX), ``lambda_2 = tr M - lambda_1``, ``t12 = (conj(a) (m11 - m12 conj(a)) + m21 -
m22 conj(a)) / n``.  In ``w = Q^-1 x`` the recurrence is triangular, i.e. two diagonal scans::

    w2_t = lambda_2 w2_{t-1} + g2 u_t                     (scan 1)
    w1_t = lambda_1 w1_{t-1} + (t12 w2_{t-1} + g1 u_t)    (scan 2, input from scan 1)
    z = a w1 + w2,   y = w1 - conj(a) w2,   g = Q^-1 F

Convolution mode materializes the impulse responses ``T^l g`` in complex128 from the same
(rounded) coefficients the scan uses -- ``lambda^l`` by :func:`lrnnx_plugins.lti.conv.powers`, the
off-diagonal ``tau_l`` by the recurrence ``tau_{l+1} = lambda_1 tau_l + t12 lambda_2^l`` (one
diagonal scan over l) -- and convolves with FFTs (:func:`~lrnnx_plugins.lti.conv.fft_conv_diag`).

Shapes: x (B, L, d_model) -> y (B, L, d_model); step: x_t (B, d_model) -> y_t (B, d_model).
State: ``{"h": (B, 2, d_state)}`` complex, ``h[:, 0]`` = z (velocity), ``h[:, 1]`` = y
(position); with packed varlen input one row per sequence.

Example::

    layer = lrnnx.build_layer("linoss(d_state=64, disc=IMEX)", d_model=32)
    y, st = layer(torch.randn(2, 100, 32), return_state=True)
    y_t, st = layer.step(torch.randn(2, 32), st)
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

import lrnnx
from lrnnx.errors import ConfigError, InputError, InputTypeError
from lrnnx_plugins.ssm.components import check_scan

from .conv import check_mode, fft_conv_diag, powers
from .precision import full_precision


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype of a state computed in ``dtype`` (complex64 below float64)."""
    if dtype.is_complex:
        return dtype
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _safe_sqrt(A: Tensor) -> Tensor:
    """sqrt(A) for A >= 0 with a finite gradient at A = 0 (where relu made A exactly 0 the
    gradient wrt A_hat is 0 anyway; sqrt's own derivative there is infinite)."""
    pos = A > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, A, torch.ones_like(A))),
                       torch.zeros_like(A))


class Oscillators(nn.Module):
    """The learnable part of one direction: A_hat, dt_hat (P,), B (P, H), C (H, P) complex.

    Init (the paper's code): ``A_hat, dt_hat ~ U[0, 1]``; real and imaginary parts of B
    uniform in ``+-1/sqrt(H)``, of C in ``+-1/sqrt(P)``.
    """

    def __init__(self, d_model: int, d_state: int):
        super().__init__()
        H, P = d_model, d_state
        self.A_hat = nn.Parameter(torch.rand(P))
        self.dt_hat = nn.Parameter(torch.rand(P))
        self.B = nn.Parameter((torch.rand(P, H, 2) * 2 - 1) / math.sqrt(H))
        self.C = nn.Parameter((torch.rand(H, P, 2) * 2 - 1) / math.sqrt(P))

    def blocks(self, disc: str) -> tuple[Tensor, ...]:
        """``(m11, m12, m21, m22, f1, f2)``, each (P,) real: the 2x2 blocks of M and F."""
        A = torch.relu(self.A_hat)
        dt = torch.sigmoid(self.dt_hat)
        one = torch.ones_like(A)
        if disc == "IM":
            S = 1.0 / (1.0 + dt * dt * A)
            return S, -dt * A * S, dt * S, S, dt * S, dt * dt * S
        return one, -dt * A, dt, 1.0 - dt * dt * A, dt, dt * dt

    def schur(self, disc: str) -> dict[str, Tensor]:
        """The triangular form (see the module docstring): lam1, lam2, t12, a, g1, g2 (P,)."""
        m11, m12, m21, m22, f1, f2 = self.blocks(disc)
        A = torch.relu(self.A_hat)
        sA = _safe_sqrt(A)
        if disc == "IM":
            a = torch.complex(torch.zeros_like(sA), sA)
        else:
            r = 0.5 * torch.sigmoid(self.dt_hat) * sA
            # sqrt(1 - r^2); beyond the stability limit (r > 1) it is i sqrt(r^2 - 1) and a real
            root = torch.sqrt(torch.complex(1.0 - r * r, torch.zeros_like(r)))
            a = sA * (r + 1j * root)
        ac = a.conj()
        n = 1.0 + (a * ac).real
        lam1 = m22 + m21 * a
        lam2 = (m11 + m22) - lam1
        t12 = (ac * (m11 - m12 * ac) + (m21 - m22 * ac)) / n
        return {"lam1": lam1, "lam2": lam2, "t12": t12, "a": a,
                "g1": (ac * f1 + f2) / n, "g2": (f1 - a * f2) / n}

    def project(self, x: Tensor) -> Tensor:
        """u = B x: (Bt, L, H) real -> (Bt, L, P) complex (two real matmuls)."""
        B = self.B
        return torch.complex(x @ B[..., 0].transpose(0, 1), x @ B[..., 1].transpose(0, 1))

    def readout(self, y: Tensor) -> Tensor:
        """Re(C y): (..., P) complex -> (..., H) real."""
        C = self.C
        return y.real @ C[..., 0].transpose(0, 1) - y.imag @ C[..., 1].transpose(0, 1)


# ----------------------------------------------------------------------------- scan mode

def _previous(w2: Tensor, init: Tensor | None, reverse: bool, cu: Tensor | None) -> Tensor:
    """``w2`` of the previous token in scan order (t-1, or t+1 when reverse), with the initial
    state (or zeros) at every sequence start."""
    n = w2.shape[0] if cu is None else cu.numel() - 1
    init = w2.new_zeros(n, w2.shape[-1]) if init is None else init.to(w2.dtype)
    if cu is None:
        if reverse:
            return torch.cat([w2[:, 1:], init[:, None]], 1)
        return torch.cat([init[:, None], w2[:, :-1]], 1)
    pad = w2.new_zeros(1, 1, w2.shape[-1])
    prev = torch.cat([w2[:, 1:], pad], 1) if reverse else torch.cat([pad, w2[:, :-1]], 1)
    first = (cu[1:] - 1) if reverse else cu[:-1]
    keep = cu[1:] > cu[:-1]                     # empty sequences have no first token
    idx = first[keep].long()
    return prev.index_put((torch.zeros_like(idx), idx), init[keep])


def _to_w(s: dict, x0: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """Schur coordinates (w1, w2) of a state x0 (n, 2, P) = [z; y]."""
    if x0 is None:
        return None, None
    z, y = x0[:, 0], x0[:, 1]
    n = 1.0 + (s["a"] * s["a"].conj()).real
    return (s["a"].conj() * z + y) / n, (z - s["a"] * y) / n


def _from_w(s: dict, w1: Tensor, w2: Tensor) -> tuple[Tensor, Tensor]:
    """(z, y) of Schur coordinates."""
    return s["a"] * w1 + w2, w1 - s["a"].conj() * w2


def scan_oscillators(s: dict, u: Tensor, x0: Tensor | None, reverse: bool = False,
                     cu_seqlens: Tensor | None = None, backend: str = "auto"
                     ) -> tuple[Tensor, Tensor]:
    """Positions y (Bt, L, P) and the final state (n, 2, P) of ``x_t = M x_{t-1} + F u_t``."""
    Bt, L, P = u.shape
    w10, w20 = _to_w(s, x0)
    run = dict(reverse=reverse, cu_seqlens=cu_seqlens, backend=backend)
    w2, w2_last = lrnnx.ops.diag_scan(s["lam2"].expand(1, L, P), s["g2"] * u, w20, **run)
    b1 = s["t12"] * _previous(w2, w20, reverse, cu_seqlens) + s["g1"] * u
    w1, w1_last = lrnnx.ops.diag_scan(s["lam1"].expand(1, L, P), b1, w10, **run)
    _, y = _from_w(s, w1, w2)
    z_last, y_last = _from_w(s, w1_last, w2_last)
    return y, torch.stack([z_last, y_last], 1)


# ----------------------------------------------------------------------------- conv mode

def impulse_responses(s: dict, L: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(p1, p2, tau)`` (P, L+1) in complex128: ``T^l = [[p1_l, tau_l], [0, p2_l]]``."""
    c128 = torch.complex128
    lam1, lam2, t12 = (s[k].to(c128) for k in ("lam1", "lam2", "t12"))
    p1, p2 = powers(lam1, L + 1), powers(lam2, L + 1)
    # tau_0 = 0, tau_{l+1} = lam1 tau_l + t12 lam2^l: one diagonal scan over l
    tau, _ = lrnnx.ops.diag_scan(lam1.expand(1, L, lam1.shape[0]),
                                 (t12[:, None] * p2[:, :L]).transpose(0, 1)[None])
    tau = torch.cat([torch.zeros_like(t12)[:, None], tau[0].transpose(0, 1)], 1)
    return p1, p2, tau


def _conv_one(s: dict, u: Tensor, x0: Tensor | None, resp, reverse: bool):
    L = u.shape[1]
    if reverse:
        u = u.flip(1)
    p1, p2, tau = resp
    dt = u.dtype
    c = {k: s[k].to(torch.complex128)[:, None] for k in ("g1", "g2", "a")}
    Tw1 = c["g1"] * p1[:, :L] + c["g2"] * tau[:, :L]           # (T^l g)_1, (P, L)
    Tw2 = c["g2"] * p2[:, :L]                                   # (T^l g)_2
    k_y = (Tw1 - c["a"].conj() * Tw2).to(dt)
    y = fft_conv_diag(u, s["lam1"], k_y)
    flip1, flip2 = Tw1.flip(-1).to(dt), Tw2.flip(-1).to(dt)     # weight of u_s: T^(L-1-s) g
    w1 = torch.einsum("blp,pl->bp", u, flip1)
    w2 = torch.einsum("blp,pl->bp", u, flip2)
    w10, w20 = _to_w(s, x0)
    if w10 is not None:
        P1, P2, TA = (t[:, 1:L + 1].to(dt).transpose(0, 1) for t in (p1, p2, tau))
        y = y + (P1 * w10[:, None] + TA * w20[:, None]) - s["a"].conj() * P2 * w20[:, None]
        w1 = w1 + p1[:, L].to(dt) * w10 + tau[:, L].to(dt) * w20
        w2 = w2 + p2[:, L].to(dt) * w20
    z_last, y_last = _from_w(s, w1, w2)
    return (y.flip(1) if reverse else y), torch.stack([z_last, y_last], 1)


def conv_oscillators(s: dict, u: Tensor, x0: Tensor | None, reverse: bool = False,
                     cu_seqlens: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`scan_oscillators`, by FFT convolution."""
    if cu_seqlens is None:
        return _conv_one(s, u, x0, impulse_responses(s, u.shape[1]), reverse)
    bounds = [int(v) for v in cu_seqlens.tolist()]
    spans = list(zip(bounds, bounds[1:]))
    resp = impulse_responses(s, max([b - a for a, b in spans], default=0))
    ys, finals = [], []
    for i, (a, b) in enumerate(spans):
        xi = None if x0 is None else x0[i:i + 1]
        if a == b:
            finals.append(xi if xi is not None else u.new_zeros(1, 2, u.shape[-1]))
            continue
        y_i, f_i = _conv_one(s, u[:, a:b], xi, resp, reverse)
        ys.append(y_i)
        finals.append(f_i)
    y = torch.cat(ys, 1) if ys else u.new_zeros(u.shape)
    return y, torch.cat(finals, 0) if finals else u.new_zeros(0, 2, u.shape[-1])


# ----------------------------------------------------------------------------- the layer

class LinOSS(lrnnx.Layer):
    r"""LinOSS (Rusch & Rus 2025, https://arxiv.org/abs/2410.03943): a bank of forced harmonic
    oscillators, discretized implicitly (IM) or implicit-explicit (IMEX).

    .. math::

        x_t = M x_{t-1} + F\, (B u_t), \quad x = [z; y], \quad
        y^{out}_t = \mathrm{Re}(C\, y_t) + D \odot u_t

    (M, F: see the module docstring; computed exactly through ``lrnnx.ops.diag_scan`` in the
    complex Schur basis of each 2x2 block).

    Options: ``d_state`` (P oscillators, default 64: the middle of the paper's grid
    {16, 64, 256}); ``disc``: ``"IM"`` (default, dissipative) or ``"IMEX"`` (conservative);
    ``mode``: ``"scan"``, ``"conv"`` (FFT with the materialized impulse response) or
    ``"auto"`` (= scan, measured faster for this state-space convolution on CPU and GPU);
    ``scan``: scan backend name or ``"auto"``;
    ``bidirectional``: add an anti-causal direction with its own A, dt, B, C (outputs summed, D
    shared; no step / state passing then).

    Init as the paper's code: ``A_hat, dt_hat ~ U[0, 1]``, ``A = relu(A_hat)``,
    ``dt = sigmoid(dt_hat)``; B, C complex uniform (``+-1/sqrt(fan_in)``); ``D ~ N(0, 1)``.

    State: ``{"h": (B, 2, d_state)}`` complex (velocity z, position y).  Shapes: x (B, L, H) ->
    y (B, L, H); step: x_t (B, H) -> y_t (B, H).

    Example::

        layer = lrnnx.build_layer("linoss(d_state=16, disc=IMEX)", d_model=8)
        y = layer(torch.randn(2, 50, 8))
    """

    name = "linoss"
    capabilities = frozenset({"step", "varlen", "bidirectional"})
    test_kwargs = {"d_state": 4}

    def __init__(self, d_model: int, d_state: int = 64, disc: Literal["IM", "IMEX"] = "IM",
                 mode: Literal["scan", "conv", "auto"] = "auto", scan: str = "auto",
                 bidirectional: bool = False):
        super().__init__()
        where = f"layer {self.name!r}"
        for opt, v in (("d_model", d_model), ("d_state", d_state)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{where}: {opt} must be a positive int, got {v!r}.")
        if disc not in ("IM", "IMEX"):
            raise ConfigError(f"{where}: option 'disc' must be 'IM' or 'IMEX', got {disc!r}.")
        self.d_model, self.d_state, self.disc = d_model, d_state, disc
        self.mode = check_mode(mode, where)
        self.scan = check_scan(scan, where)
        self.bidirectional = bool(bidirectional)
        # D first: input checks compare x's dtype with the first real parameter
        self.D = nn.Parameter(torch.randn(d_model))
        self.osc = Oscillators(d_model, d_state)
        self.osc_rev = Oscillators(d_model, d_state) if self.bidirectional else None

    def init_state(self, batch_size: int, device=None, dtype=None):
        device = self.D.device if device is None else device
        dtype = _complex_of(self.D.dtype if dtype is None else dtype)
        return {"h": torch.zeros(batch_size, 2, self.d_state, device=device, dtype=dtype)}

    def _state_in(self, state, x: Tensor, cu_seqlens) -> Tensor | None:
        """The incoming state["h"] (n, 2, P), checked; None for no state."""
        if state is None:
            return None
        where = f"layer {self.name!r}"
        if self.bidirectional:
            raise InputError(f"{where} is bidirectional: it cannot continue from a state (the "
                             f"backward direction needs the whole sequence); drop state=, or "
                             f"build the layer with bidirectional=False.")
        n = x.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
        want = (n, 2, self.d_state)
        h = state.get("h")
        if not isinstance(h, Tensor) or tuple(h.shape) != want:
            got = tuple(h.shape) if isinstance(h, Tensor) else f"keys {sorted(state)}"
            rows = "one row per packed sequence" if cu_seqlens is not None else "B rows"
            raise InputError(f"{where}: state['h'] must be a tensor of shape {want} ({rows}: "
                             f"velocity z, position y per oscillator), got {got}; use "
                             f"init_state({n}) or the state returned by a previous call.")
        if h.device != x.device:
            raise InputError(f"{where}: state['h'] is on {h.device} but x is on {x.device}; "
                             f"move it with .to(x.device).")
        if h.dtype != _complex_of(x.dtype):
            raise InputTypeError(f"{where}: state['h'] must have dtype {_complex_of(x.dtype)} "
                                 f"for x of dtype {x.dtype}, got {h.dtype}; build it with "
                                 f"init_state(B, dtype={x.dtype}).")
        return h

    def _direction(self, osc: Oscillators, x, x0, cu_seqlens, reverse: bool, mode: str):
        s = osc.schur(self.disc)
        u = osc.project(x)
        if mode == "conv":
            y, last = conv_oscillators(s, u, x0, reverse, cu_seqlens)
        else:
            y, last = scan_oscillators(s, u, x0, reverse, cu_seqlens, self.scan)
        return osc.readout(y), last

    @full_precision
    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        x0 = self._state_in(state, x, cu_seqlens)
        # auto = scan: the convolution runs in state space (2P complex channels, O(log L) more
        # work per token than the scan); measured fwd+bwd, B=8, H=128, P=64, L=1024: scan 80
        # vs conv 91 ms (IM) on the project CPU (1 thread, min of 7), 6.1 vs 9.6 ms on an H200
        # (triton scan); conv is not faster at L = 256 or 4096 either
        mode = "conv" if self.mode == "conv" else "scan"
        y, last = self._direction(self.osc, x, x0, cu_seqlens, False, mode)
        if self.osc_rev is not None:
            y = y + self._direction(self.osc_rev, x, None, cu_seqlens, True, mode)[0]
        y = (y + self.D * x).to(x.dtype)
        return (y, {"h": last}) if return_state else y

    @full_precision
    def step(self, x_t, state):
        """One token: x_t (B, d_model), state {"h": (B, 2, P)} -> (y_t, new state)."""
        if self.bidirectional:
            raise InputError(f"layer {self.name!r} is bidirectional and cannot step: y_t "
                             f"depends on future tokens; call forward() on whole sequences, or "
                             f"build it with bidirectional=False.")
        h = self._state_in(state, x_t[:, None], None)
        m11, m12, m21, m22, f1, f2 = self.osc.blocks(self.disc)
        u = self.osc.project(x_t)
        z, y = h[:, 0], h[:, 1]
        z, y = m11 * z + m12 * y + f1 * u, m21 * z + m22 * y + f2 * u
        y_t = (self.osc.readout(y) + self.D * x_t).to(x_t.dtype)
        return y_t, {"h": torch.stack([z, y], 1)}

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, disc={self.disc!r}, "
                f"mode={self.mode!r}, scan={self.scan!r}, bidirectional={self.bidirectional}")
