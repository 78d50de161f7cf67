r"""Convolution mode of linear time-invariant (LTI) state-space layers.

A discrete LTI system ``h_t = A_bar h_{t-1} + B_bar x_t``, ``y_t = s Re(C h_t)`` (no skip ``D``;
the layer adds it) maps a sequence to ``y = K * x + y_zi`` with the kernel
``K_l = s Re(C A_bar^l B_bar)`` and the zero-input response ``y_zi,t = s Re(C A_bar^(t+1) h0)``
of a carried state ``h0``; the final state is
``h_L = A_bar^L h0 + sum_l A_bar^(L-1-l) B_bar x_l``.  S4 (Gu et al. 2022,
https://arxiv.org/abs/2111.00396) and S4D (https://arxiv.org/abs/2206.11893) compute ``K`` once
and convolve with FFTs, in O(L log L) per channel instead of the L sequential steps of a scan.

Diagonal systems (:class:`LTISystem`, what the ``ssm`` family and S5/LRU discretize to):

* ``siso`` -- every channel h has its own N modes: ``A_bar, B_bar, C`` (H, N), state (B, H, N).
  ``K`` (H, L) is a *Vandermonde* contraction ``K[h, l] = s Re(sum_n C B_bar A_bar^l)`` and
  ``y = irfft(rfft(x) rfft(K))`` (real signals, rfft).
* ``mimo`` -- P modes shared by the H channels: ``A_bar`` (P,), ``B_bar`` (P, H), ``C`` (H, P),
  state (B, P).  The convolution runs in state space: ``u = B_bar x`` (B, L, P),
  ``h = (A_bar^l) * u`` by FFT per mode, ``y = s Re(C h)`` -- memory O(B L P) like a scan, where a
  materialized (H, H, L) kernel would cost O(B H^2 L).

Powers without O(H N L) memory: with ``T = ceil(sqrt(L))`` and ``l = c T + j``,
``A^l = A^(cT) A^j``, so ``K[h, cT + j] = Re(sum_n (W A^(cT))[h, c, n] A^j[h, n, j])`` is one
batched matmul of (C, N) by (N, T) per channel: O(H N sqrt(L)) memory (also what autograd keeps),
O(H N L) flops.  The powers ``A^j``, ``A^(cT)`` are ``exp(l log A_bar)`` in float64
(complex128) of the *given* ``A_bar``, rounded once to the working dtype: the same in float32
loses ``l * eps`` of phase (2e-4 rad at l = 4096), more than the fp32 budget.  Using ``A_bar`` itself
(not ``exp(dt A)`` recomputed) keeps conv mode on exactly the system the scan runs.

Public API (used by the ``s4``, ``s4d``, ``lru``, ``ssm`` layers and by S5 / Centaurus / LinOSS)::

    MODES = ("scan", "conv", "auto");  AUTO_CONV_MIN_LEN (SISO), AUTO_CONV_MIN_LEN_MIMO
    check_mode(mode, where) -> mode                      ConfigError unless one of MODES
    resolve_mode(mode, L, timesteps=None, min_len=AUTO_CONV_MIN_LEN) -> "scan" | "conv"
    fft_size(n) -> int                                   smallest 2^a 3^b 5^c >= n
    fft_conv(x, K) -> y                                  causal depthwise conv, real
    fft_conv_diag(u, A_bar) -> h                         h_t = sum_s A^(t-s) u_s per mode
    powers(A_bar, L) -> (..., L)                         A^l, l < L
    vandermonde(A_bar, W, L) -> (G, Q, L)                Re(sum_n W[g,q,n] A[g,n]^l)
    vandermonde_transpose(A_bar, u) -> (G, Q, N)         sum_l A[g,n]^(L-1-l) u[g,q,l]
    LTISystem(A_bar, B_bar, C, structure, scale);  .kernel(L) -> (H, L) for siso
    lti_conv(system, x, h0=None, *, reverse=False, cu_seqlens=None, kernel=None,
             need_state=True) -> (y (B, L, H), h_last)      h_last None when not need_state

Example::

    sys = LTISystem(A_bar, B_bar, C, structure="siso", scale=2.0)     # (H, N) each
    y, h_last = lti_conv(sys, x)                  # x (B, L, H) -> y (B, L, H), h_last (B, H, N)
    y2, h2 = lti_conv(sys, x2, h0=h_last)         # continue from the carried state
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from lrnnx.errors import ConfigError, InputError

__all__ = ["MODES", "AUTO_CONV_MIN_LEN", "AUTO_CONV_MIN_LEN_MIMO", "check_mode", "resolve_mode",
           "fft_size", "fft_conv", "fft_conv_diag", "powers", "vandermonde",
           "vandermonde_transpose", "LTISystem", "lti_conv"]

MODES = ("scan", "conv", "auto")

#: ``mode="auto"`` convolves SISO systems (kernel route) from this many tokens on and scans
#: shorter ones.  Measured on the 2-core project CPU, forward + backward, B = 8, d_model = 128,
#: ``s4d`` (N = 32): L = 8: scan 9.5 ms / conv 10.1 ms; L = 16: 9.6 / 7.7; L = 64: 40 / 12.5;
#: L = 1024: 1640 / 90.
AUTO_CONV_MIN_LEN = 16
#: the same for MIMO systems (state-space route): None = never.  Measured for ``lru``
#: (P = 256): conv is 1.3x - 2.5x slower than the scan at every L from 8 to 1024 (its complex
#: FFTs over the P modes cost more than the O(L P) scan; e.g. L = 1024: scan 539 / conv 900 ms).
AUTO_CONV_MIN_LEN_MIMO: int | None = None


def check_mode(mode, where: str) -> str:
    """``mode`` if it is one of :data:`MODES`, else a ConfigError naming ``where``."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ConfigError(f"{where}: option 'mode' must be one of {', '.join(map(repr, MODES))}"
                          f" (scan: recurrence, conv: FFT convolution with the materialized "
                          f"kernel, auto: by sequence length), got {mode!r}.")
    return mode


def resolve_mode(mode: str, L: int, timesteps: Tensor | None = None,
                 min_len: int | None = AUTO_CONV_MIN_LEN) -> str:
    """The mode one forward runs in: ``"auto"`` convolves when ``L >= min_len`` (None: never).
    Irregular ``timesteps`` make the system time-varying (a different ``A_bar`` per token), so
    there is no kernel: they always scan."""
    if timesteps is not None:
        return "scan"
    if mode == "auto":
        return "conv" if min_len is not None and L >= min_len else "scan"
    return mode


def fft_size(n: int) -> int:
    """Smallest 5-smooth integer (2^a 3^b 5^c) >= n: a fast FFT length."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


# ------------------------------------------------------------------------------ FFT convolutions

def fft_conv(x: Tensor, K: Tensor) -> Tensor:
    """Causal depthwise convolution ``y[b, t, h] = sum_{s <= t} K[h, t - s] x[b, s, h]``.

    x (B, L, H) real; K (H, Lk) real (taps beyond L are ignored, missing ones are zero).
    rfft of length ``fft_size(2L - 1)``: no circular wrap-around.  Returns (B, L, H), a
    transposed view of a (B, H, L) result.

    The FFTs run over the last dim of a (B, H, n) tensor: one pad writes x transposed and
    zero-padded, so the FFT libraries (MKL, cuFFT) see contiguous signals and make no hidden
    transposing copies (an FFT over dim 1 of (B, n, H) is copied to (B, H, n) and back).
    """
    if x.is_complex() or K.is_complex():
        raise InputError("fft_conv: x and K must be real (use fft_conv_diag for complex "
                         "state-space convolutions).")
    L = x.shape[1]
    n = fft_size(2 * L - 1)
    xt = torch.nn.functional.pad(x.transpose(1, 2), (0, n - L))   # (B, H, n) contiguous
    Xf = torch.fft.rfft(xt, dim=-1)                               # (B, H, n//2+1)
    Kf = torch.fft.rfft(K[..., :L], n=n, dim=-1)                  # (H, n//2+1)
    return torch.fft.irfft(Xf * Kf, n=n, dim=-1)[..., :L].transpose(1, 2)


def _addcmul_like(y: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``y + a * b`` laid out like ``b`` (contiguous (B, L, H); y is a transposed view).

    Eager: one kernel writing into ``empty_like(b)`` (``out=``; plain ``addcmul`` would take
    y's transposed layout).  Under torch.compile: plain ``addcmul`` (inductor picks the
    layout).  Not ``out=`` there: traced inside this autograd.Function, the ``out=`` result
    lost its gradient on CUDA (torch 2.11, H200: every gradient of an s4d layer compiled with
    backend "eager" or "aot_eager" came out wrong, rel. error 1.0; correct on CPU)."""
    if torch.compiler.is_compiling():
        return torch.addcmul(y, a, b)
    return torch.addcmul(y, a, b, out=torch.empty_like(b))


class _FFTConvSkip(torch.autograd.Function):
    """``y = fft_conv(x, K) + D * x`` (x (B, L, H), K (H, L), D (H,) real) with a hand-written
    backward: 7 ops forward, ~12 backward (autograd records ~20 for the pads, FFTs, complex
    products and their conjugates).  Backward, with ``G = rfft(pad(gy))``:
    ``gx = irfft(G conj(Kf))[:L] + D gy`` (correlation with K), ``gK = irfft(sum_b G conj(Xf))``
    ``[:L]``, ``gD = sum_{b,t} gy x``.  The output is contiguous (B, L, H).  Under
    ``create_graph`` the backward recomputes ``Xf``, ``Kf`` from the saved inputs and runs the
    same formulas with differentiable ops, so higher derivatives work."""

    @staticmethod
    def forward(ctx, x, K, D):
        L = x.shape[1]
        n = fft_size(2 * L - 1)
        Xf = torch.fft.rfft(torch.nn.functional.pad(x.transpose(1, 2), (0, n - L)), dim=-1)
        Kf = torch.fft.rfft(K, n=n, dim=-1)
        y = torch.fft.irfft(Xf * Kf, n=n, dim=-1)[..., :L].transpose(1, 2)
        ctx.save_for_backward(x, K, D, Xf, Kf)
        ctx.n = n
        if D is None:
            return y.contiguous()
        return _addcmul_like(y, D, x)

    @staticmethod
    def backward(ctx, gy):
        x, K, D, Xf, Kf = ctx.saved_tensors
        n, L = ctx.n, x.shape[1]
        # create_graph: autograd must record the backward as a function of the inputs (x, K,
        # D are saved inputs, so they carry their history) and of gy; the saved spectra do not
        # (no out= either: it is not differentiable).  Ordinary backward: the saved spectra.
        graph = torch.is_grad_enabled()
        if graph and ctx.needs_input_grad[1]:
            Xf = torch.fft.rfft(torch.nn.functional.pad(x.transpose(1, 2), (0, n - L)), dim=-1)
        if graph and ctx.needs_input_grad[0]:
            Kf = torch.fft.rfft(K, n=n, dim=-1)
        G = torch.fft.rfft(torch.nn.functional.pad(gy.transpose(1, 2), (0, n - L)), dim=-1)
        gx = gK = gD = None
        if ctx.needs_input_grad[0]:
            gx = torch.fft.irfft(G * Kf.conj(), n=n, dim=-1)[..., :L].transpose(1, 2)
            if D is not None:
                gx = torch.addcmul(gx, gy, D) if graph else _addcmul_like(gx, D, gy)
        if ctx.needs_input_grad[1]:
            # sum over the batch with the conjugate.  Not einsum: "bhf,bhf->hf" runs as H*F
            # batched (1 x B) @ (B x 1) matmuls (the suspect of this branch's H200 slowdown in
            # session 4); mul + sum is one elementwise kernel and one reduction
            gK = torch.fft.irfft((G * Xf.conj()).sum(0), n=n, dim=-1)[..., :L]
        if D is not None and ctx.needs_input_grad[2]:
            # not einsum: its (H, 1, B L) x (H, B L, 1) batched matmul measured 40x slower
            gD = (gy * x).sum((0, 1))
        return gx, gK, gD


def fft_conv_skip(x: Tensor, K: Tensor, D: Tensor | None) -> Tensor:
    """``fft_conv(x, K) + D * x`` (``D`` (H,) or None), contiguous (B, L, H); one autograd
    node (see :class:`_FFTConvSkip`).  K must have exactly L taps."""
    return _FFTConvSkip.apply(x, K, D)


def fft_conv_diag(u: Tensor, A_bar: Tensor, V: Tensor | None = None) -> Tensor:
    """``h_t = sum_{s <= t} A_bar^(t-s) u_s`` (a diagonal LTI recurrence from h = 0) by FFT.

    u (B, L, P), A_bar (P,) (real or complex); ``V`` optionally the powers (P, >= L).
    Returns h (B, L, P), complex when either input is.
    """
    L = u.shape[1]
    V = powers(A_bar, L) if V is None else V[:, :L]
    n = fft_size(2 * L - 1)
    if not (u.is_complex() or V.is_complex()):
        return torch.fft.irfft(torch.fft.rfft(u, n=n, dim=1) *
                               torch.fft.rfft(V, n=n, dim=-1).transpose(0, 1), n=n, dim=1)[:, :L]
    Uf = torch.fft.fft(u, n=n, dim=1)
    Vf = torch.fft.fft(V, n=n, dim=-1)
    return torch.fft.ifft(Uf * Vf.transpose(0, 1), n=n, dim=1)[:, :L]


# ------------------------------------------------------------------------------ powers

def _split(L: int) -> tuple[int, int]:
    T = max(1, math.isqrt(max(L - 1, 0)) + 1)
    return T, -(-L // T)


#: stands in for an exact zero of A_bar before its logarithm: tiny^l underflows to 0 for
#: l >= 1 (and to 0 in any working dtype for l = 1), tiny^0 = 1, and d(tiny^l)/dA = l tiny^(l-1)
#: is the exact derivative of A^l at 0 (1 for l = 1, 0 beyond) in float64.
_TINY = 1e-300


def _power_table(A_bar: Tensor, T: int, C: int) -> tuple[Tensor, Tensor]:
    """``(small, big)``: ``A^j`` (..., T) for j < T and ``A^(cT)`` (..., C) for c < C.

    ``A^l = exp(l log A)`` in complex128, rounded once to A_bar's dtype (see the module
    docstring for why not in the working precision): the error is ``l`` float64 ulps of the
    phase, like the cumulative product it replaces, but it is a handful of elementwise ops
    forward and backward (a cumprod's backward is ~40 masked ops).  Exact zeros of A_bar are
    handled (``_TINY``); real A_bar of either sign goes through the complex logarithm and the
    real part is returned.  Differentiable.
    """
    a = A_bar.to(torch.complex128)
    zero = a == 0
    a = torch.where(zero, a + _TINY, a)          # keeps d/dA on both branches
    j = torch.arange(max(T, C), dtype=torch.float64, device=A_bar.device)
    e = torch.cat([j[:T], j[:C] * T])            # exponents: 0..T-1, then 0, T, .., (C-1) T
    P = torch.exp(torch.log(a)[..., None] * e)   # (..., T + C)
    P = P.to(A_bar.dtype) if A_bar.is_complex() else P.real.to(A_bar.dtype)
    return P[..., :T], P[..., T:]


def powers(A_bar: Tensor, L: int) -> Tensor:
    """``A_bar^l`` for l = 0..L-1, shape (*A_bar.shape, L), in A_bar's dtype."""
    T, C = _split(L)
    small, big = _power_table(A_bar, T, C)
    return (big[..., :, None] * small[..., None, :]).flatten(-2)[..., :L]


def _re_matmul(W: Tensor, V: Tensor) -> Tensor:
    """``Re(W @ V)``: one complex matmul when both are complex (one launch forward, two
    backward, instead of the concatenations of a real formulation), else real matmuls."""
    if not W.is_complex():
        return W @ (V.real if V.is_complex() else V)
    if not V.is_complex():
        return W.real @ V
    return (W @ V).real


#: "auto" | "off" | "force": when :func:`vandermonde` runs the Triton kernels
#: (``lrnnx_kernels.triton.vandermonde``: complex64 on CUDA, eager; "force" also runs CPU tensors
#: under ``TRITON_INTERPRET=1``, as the tests do).
TRITON_MODE = os.environ.get("LRNNX_VANDERMONDE_TRITON", "auto")
_HAS_TRITON: bool | None = None


def _use_triton(A_bar: Tensor, W: Tensor) -> bool:
    """Cheap (no triton import): may the Triton Vandermonde kernels run these inputs?"""
    global _HAS_TRITON
    if TRITON_MODE == "off" or torch.compiler.is_compiling() \
            or A_bar.dtype != torch.complex64 or W.dtype != torch.complex64:
        return False
    if os.environ.get("TRITON_INTERPRET", "0") == "1":  # the interpreter runs CPU tensors only
        ok = TRITON_MODE == "force" and W.device.type == "cpu"
    else:
        ok = W.is_cuda
    if ok and _HAS_TRITON is None:
        _HAS_TRITON = importlib.util.find_spec("triton") is not None
    return ok and bool(_HAS_TRITON)


def vandermonde(A_bar: Tensor, W: Tensor, L: int) -> Tensor:
    """``K[g, q, l] = Re(sum_n W[g, q, n] A_bar[g, n]^l)`` for l < L.

    A_bar (G, N), W (G, Q, N), real or complex; returns (G, Q, L) real.  Memory
    O(G (Q + N) N sqrt(L)) (no (G, N, L) power tensor), flops O(G Q N L).  complex64 inputs on
    CUDA (eager) run the fused Triton kernels (one launch each way; this code is their slow twin
    and the float64 reference of their tests).
    """
    if _use_triton(A_bar, W):
        from lrnnx_kernels.triton.vandermonde import vandermonde as triton_vandermonde

        return triton_vandermonde(A_bar, W, L)
    G, Q, N = W.shape
    T, C = _split(L)
    small, big = _power_table(A_bar, T, C)                    # (G, N, T), (G, N, C)
    Wc = W[:, None] * big.transpose(1, 2)[:, :, None, :]       # (G, C, Q, N)
    K = _re_matmul(Wc.reshape(G, C * Q, N), small)             # (G, C*Q, T)
    return K.reshape(G, C, Q, T).permute(0, 2, 1, 3).reshape(G, Q, C * T)[..., :L]


def vandermonde_transpose(A_bar: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """``(S, A^L)`` with ``S[g, q, n] = sum_{l < L} A_bar[g, n]^(L-1-l) u[g, q, l]``.

    A_bar (G, N), u (G, Q, L) real; S (G, Q, N) in the promoted dtype, ``A^L`` (G, N).  Used
    for the final state ``h_L = A^L h0 + B_bar S``.
    """
    G, Q, L = u.shape
    N = A_bar.shape[-1]
    T, C = _split(L)
    small, big = _power_table(A_bar, T, C + 1)                # big[..., C] = A^(CT)
    rev = torch.nn.functional.pad(u.flip(-1), (0, C * T - L))  # rev[r] = u[L-1-r]
    rev = rev.reshape(G, Q * C, T)
    sm = small.transpose(1, 2)                                 # (G, T, N)
    if sm.is_complex():
        S = torch.complex(rev @ sm.real, rev @ sm.imag) if not rev.is_complex() else rev @ sm
    else:
        S = rev.to(torch.promote_types(rev.dtype, sm.dtype)) @ sm
    S = (S.reshape(G, Q, C, N) * big[:, None, :, :C].transpose(-1, -2)).sum(2)
    c0, j0 = divmod(L, T)
    A_L = big[..., c0] * (small[..., j0] if j0 else 1.0)
    return S, A_L


# ------------------------------------------------------------------------------ systems

@dataclass
class LTISystem:
    """A discrete diagonal LTI system (see the module docstring for the two structures).

    Attributes:
        A_bar: siso (H, N) | mimo (P,) discrete transition (real or complex, nonzero).
        B_bar: siso (H, N) | mimo (P, H) discrete input matrix (discretizer scale and any
            normalization such as LRU's gamma already applied).
        C: siso (H, N) | mimo (H, P) output matrix.
        structure: ``"siso"`` or ``"mimo"``.
        scale: output multiplier ``s`` (2.0 for conjugate-symmetric systems).
    """

    A_bar: Tensor
    B_bar: Tensor
    C: Tensor
    structure: str = "siso"
    scale: float = 1.0

    def kernel(self, L: int) -> Tensor:
        """The SISO convolution kernel ``K[h, l] = s Re(sum_n C B_bar A_bar^l)``, (H, L) real."""
        if self.structure != "siso":
            raise ConfigError("LTISystem.kernel: only SISO systems have an (H, L) kernel; MIMO "
                              "systems convolve in state space (lti_conv does this).")
        W = (self.scale * self.C * self.B_bar)[:, None, :]       # (H, 1, N)
        return vandermonde(self.A_bar, W, L)[:, 0]

    def state_shape(self, H: int) -> tuple[int, ...]:
        return tuple(self.A_bar.shape)


def _siso(sys: LTISystem, x: Tensor, h0: Tensor | None, K: Tensor,
          need_state: bool = True, skip: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    L = x.shape[1]
    if x.is_complex() or K.is_complex():
        y = fft_conv(x, K)   # raises the InputError
    elif skip is not None or torch.is_grad_enabled():
        y = fft_conv_skip(x, K[..., :L], skip)
    else:
        y = fft_conv(x, K)
    h_last = None
    if need_state:
        u = x.permute(2, 0, 1)                                   # (H, B, L)
        S, A_L = vandermonde_transpose(sys.A_bar, u)             # (H, B, N), (H, N)
        h_last = (sys.B_bar[:, None, :] * S).transpose(0, 1)     # (B, H, N)
    if h0 is not None:
        # zero-input response s Re(C A^(t+1) h0): a Vandermonde with one row per batch element
        W = (sys.scale * sys.C * sys.A_bar)[:, None, :] * h0.transpose(0, 1)   # (H, B, N)
        y = y + vandermonde(sys.A_bar, W, L).permute(1, 2, 0)
        if need_state:
            h_last = h_last + A_L * h0
    return y, h_last


def _mimo(sys: LTISystem, x: Tensor, h0: Tensor | None, V: Tensor,
          need_state: bool = True, skip: Tensor | None = None) -> tuple[Tensor, Tensor]:
    L = x.shape[1]
    Bm = sys.B_bar.transpose(0, 1)                               # (H, P)
    u = torch.complex(x @ Bm.real, x @ Bm.imag) if Bm.is_complex() else x @ Bm
    h = fft_conv_diag(u, sys.A_bar, V)                           # (B, L, P)
    if h0 is not None:
        h = h + (V[:, :L] * sys.A_bar[:, None]).transpose(0, 1)[None] * h0[:, None, :]
    C = sys.C
    if h.is_complex():
        y = h.real @ C.real.transpose(0, 1)
        if C.is_complex():
            y = y - h.imag @ C.imag.transpose(0, 1)
    else:
        y = h @ (C.real if C.is_complex() else C).transpose(0, 1)
    y = sys.scale * y
    return (y if skip is None else torch.addcmul(y, skip, x)), h[:, -1]


def _run(sys, x, h0, pre, reverse, need_state=True, skip=None):
    if reverse:
        x = x.flip(1)
    fn = _siso if sys.structure == "siso" else _mimo
    y, h_last = fn(sys, x, h0, pre, need_state, skip)
    return (y.flip(1) if reverse else y), h_last


def lti_conv(sys: LTISystem, x: Tensor, h0: Tensor | None = None, *, reverse: bool = False,
             cu_seqlens: Tensor | None = None, kernel: Tensor | None = None,
             need_state: bool = True, skip: Tensor | None = None
             ) -> tuple[Tensor, Tensor | None]:
    """Run ``sys`` over x by FFT convolution: the outputs and final state of the recurrence.

    Args:
        sys: the discrete system (:class:`LTISystem`).
        x: (B, L, H) real input (float16 / bfloat16 are computed in float32; so is
            everything under ``torch.autocast``, which is disabled here: the Vandermonde
            matmuls and complex products need float32, see :mod:`lrnnx_plugins.lti.precision`).
        h0: carried state, siso (B, H, N) | mimo (B, P), or one row per packed sequence with
            ``cu_seqlens``; None means zeros.
        reverse: the anti-causal direction ``h_t = A h_{t+1} + B x_t`` (run on each sequence
            reversed in time); ``h_last`` is then the state after t = 0.
        cu_seqlens: packed sequences (B == 1, offsets ``[0, l1, l1+l2, ..., L]``): each one is
            convolved on its own, with one kernel generated for the longest.
        kernel: a precomputed siso kernel (H, >= L) or mimo powers (P, >= L) to reuse.
        need_state: False skips the final state (siso: a Vandermonde contraction of the whole
            input, O(B H N L)) when the caller discards it; h_last is then None (packed
            sequences always compute it).
        skip: optional (H,) feed-through ``D``: y then includes ``D * x`` (fused into the
            convolution's output pass and its backward; a contiguous y).

    Returns:
        ``(y, h_last)``: y (B, L, H), with ``D * x`` only when ``skip`` is given (not
        necessarily contiguous without it: the siso route may return a transposed view); h_last shaped like h0 (per packed sequence with
        ``cu_seqlens``; an empty sequence keeps its h0 or zeros), None when not need_state.
    """
    if sys.structure not in ("siso", "mimo"):
        raise ConfigError(f"lti_conv: structure must be 'siso' or 'mimo', got "
                          f"{sys.structure!r}.")
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return lti_conv(sys, x, h0, reverse=reverse, cu_seqlens=cu_seqlens, kernel=kernel,
                            need_state=need_state, skip=skip)
    if x.dtype in (torch.float16, torch.bfloat16):
        # FFTs need float32 at least (half-precision FFTs exist only for powers of two on GPU)
        x = x.float()
        sys = LTISystem(*(t.to(torch.complex64 if t.is_complex() else
                               torch.promote_types(t.dtype, torch.float32))
                          for t in (sys.A_bar, sys.B_bar, sys.C)), sys.structure, sys.scale)
        skip = None if skip is None else skip.float()
    if cu_seqlens is None:
        lengths, Lmax = None, x.shape[1]
    else:
        bounds = [int(v) for v in cu_seqlens.tolist()]
        lengths = list(zip(bounds, bounds[1:]))
        Lmax = max([b - a for a, b in lengths], default=0)
    if kernel is None and Lmax > 0:
        kernel = sys.kernel(Lmax) if sys.structure == "siso" else powers(sys.A_bar, Lmax)
    if lengths is None:
        return _run(sys, x, h0, kernel, reverse, need_state, skip)
    ys, finals = [], []
    shape = tuple(sys.A_bar.shape)
    sdt = torch.promote_types(torch.promote_types(sys.A_bar.dtype, sys.B_bar.dtype), x.dtype)
    if h0 is not None:
        sdt = torch.promote_types(sdt, h0.dtype)
    for i, (a, b) in enumerate(lengths):
        hi = None if h0 is None else h0[i:i + 1]
        if a == b:  # an empty sequence keeps its state
            finals.append(hi.to(sdt) if hi is not None else x.new_zeros((1, *shape), dtype=sdt))
            continue
        y_i, h_i = _run(sys, x[:, a:b], hi, kernel, reverse)
        ys.append(y_i)
        finals.append(h_i.to(sdt))
    y = torch.cat(ys, 1) if ys else x.new_zeros(x.shape)
    if skip is not None:
        y = torch.addcmul(y, skip, x)
    h_last = torch.cat(finals, 0) if finals else x.new_zeros((0, *shape), dtype=sdt)
    return y, h_last
