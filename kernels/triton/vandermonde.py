"""The SISO Vandermonde kernel of diagonal LTI convolutions (S4D) as one Triton kernel each way.

    K[g, q, l] = Re( sum_n W[g, q, n] * A_bar[g, n]^l ),   l = 0 .. L-1

``A_bar`` (G, N) and ``W`` (G, Q, N) complex64; ``K`` (G, Q, L) float32.  The PyTorch
``lrnnx_plugins.lti.conv.vandermonde`` is the slow twin: it builds power tables in complex128 and
contracts them with complex matmuls, ~40 aten ops forward + backward on an s4d train step; here it
is one launch forward and one backward, plus the logarithm and its gradient on the host.

Accuracy.  ``A^l = exp(l log A)`` with ``log A`` taken in complex128 on the host inside the
autograd Function (an exact zero of ``A`` is replaced by 1e-300 first, as in the twin).  In the kernel the phase ``l * arg A`` is formed
and reduced modulo 2 pi in float64 -- the error is l float64 ulps of the phase, as in the twin --
and only then rounded to float32 for ``cos`` / ``sin``; the magnitude ``exp(l log|A|)`` is float32
after a float64 product.  Sums over n (forward) and l (backward) accumulate in float32.

Backward (``f`` holomorphic, real loss: PyTorch's gradient of ``Re f(z)`` is ``g conj(f'(z))``)::

    S0[g, q, n] = sum_l gK[g, q, l] A^l,    S1[g, q, n] = sum_{l >= 1} l gK[g, q, l] A^(l-1)
    dW = conj(S0),    dA[g, n] = sum_q conj(W[g, q, n] S1[g, q, n])

``A^(l-1)`` has its own exponent (not ``A^l / A``), so an exact zero of ``A`` gets the exact
derivative ``W gK[1]``.  The kernel writes S0 and S1 (float32 pairs); the host forms the two
gradients.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_L = 64
BLOCK_N = 32
TWO_PI = 2.0 * math.pi
_TINY = 1e-300


@triton.jit
def _powers(lr, th, lf):
    """(magnitude, cos, sin) of A^l for log A = lr + i th (float64 (1, BN)) and l = lf (float64
    (BL, 1)): the phase is reduced modulo 2 pi in float64 before the float32 cos / sin."""
    ph = lf * th
    ph = ph - 6.283185307179586 * tl.floor(ph * 0.15915494309189535 + 0.5)
    ph32 = ph.to(tl.float32)
    mag = tl.exp((lf * lr).to(tl.float32))
    return mag, tl.cos(ph32), tl.sin(ph32)


@triton.jit
def _vand_fwd_kernel(lr_ptr, th_ptr, w_ptr, k_ptr, N, L, Q,
                     BL: tl.constexpr, BN: tl.constexpr):
    """grid (G * Q, cdiv(L, BL)): K[gq, l-block] = sum_n Re(W[gq, n] A[g, n]^l)."""
    gq = tl.program_id(0)
    g = gq // Q
    ll = tl.program_id(1) * BL + tl.arange(0, BL)
    lf = ll.to(tl.float64)[:, None]
    acc = tl.zeros([BL], tl.float32)
    for n0 in range(0, N, BN):
        n = n0 + tl.arange(0, BN)
        nm = n < N
        lr = tl.load(lr_ptr + g * N + n, mask=nm, other=0.0)[None, :]
        th = tl.load(th_ptr + g * N + n, mask=nm, other=0.0)[None, :]
        wr = tl.load(w_ptr + (gq * N + n) * 2, mask=nm, other=0.0)[None, :]
        wi = tl.load(w_ptr + (gq * N + n) * 2 + 1, mask=nm, other=0.0)[None, :]
        mag, c, s = _powers(lr, th, lf)
        acc += tl.sum(mag * (wr * c - wi * s), axis=1)  # W = 0 on masked modes
    tl.store(k_ptr + gq * L + ll, acc, mask=ll < L)


@triton.jit
def _vand_bwd_kernel(lr_ptr, th_ptr, gk_ptr, s_ptr, N, L, Q,
                     BL: tl.constexpr, BN: tl.constexpr):
    """grid (G * Q, cdiv(N, BN)): S0, S1 of (g, q) for a block of modes, a loop over l;
    written as (G*Q, N, 4) float32: Re S0, Im S0, Re S1, Im S1."""
    gq = tl.program_id(0)
    g = gq // Q
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    nm = n < N
    lr = tl.load(lr_ptr + g * N + n, mask=nm, other=0.0)[None, :]
    th = tl.load(th_ptr + g * N + n, mask=nm, other=0.0)[None, :]
    s0r = tl.zeros([BN], tl.float32)
    s0i = tl.zeros([BN], tl.float32)
    s1r = tl.zeros([BN], tl.float32)
    s1i = tl.zeros([BN], tl.float32)
    for l0 in range(0, L, BL):
        ll = l0 + tl.arange(0, BL)
        gk = tl.load(gk_ptr + gq * L + ll, mask=ll < L, other=0.0).to(tl.float32)[:, None]
        mag, c, s = _powers(lr, th, ll.to(tl.float64)[:, None])
        s0r += tl.sum(gk * mag * c, axis=0)
        s0i += tl.sum(gk * mag * s, axis=0)
        # l A^(l-1): its own exponent (exact at A = 0); l = 0 contributes nothing
        m1, c1, s1 = _powers(lr, th, tl.maximum(ll - 1, 0).to(tl.float64)[:, None])
        lw = tl.where(ll >= 1, ll.to(tl.float32), 0.0)[:, None] * gk * m1
        s1r += tl.sum(lw * c1, axis=0)
        s1i += tl.sum(lw * s1, axis=0)
    base = s_ptr + (gq * N + n) * 4
    tl.store(base, s0r, mask=nm)
    tl.store(base + 1, s0i, mask=nm)
    tl.store(base + 2, s1r, mask=nm)
    tl.store(base + 3, s1i, mask=nm)


def _on_device(t: Tensor):
    from ._host import on_device

    return on_device(t)


def _log(A_bar: Tensor) -> tuple[Tensor, Tensor]:
    """(log|A|, arg A) in float64, an exact zero of A replaced by 1e-300 (A^0 = 1, A^l = 0)."""
    a = A_bar.to(torch.complex128)
    la = torch.log(torch.where(a == 0, a + _TINY, a))
    return la.real.contiguous(), la.imag.contiguous()


class _Vandermonde(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A_bar, W, L, bl, bn):
        G, Q, N = W.shape
        lr, th = _log(A_bar)
        W = W.contiguous()
        K = torch.empty((G, Q, L), dtype=torch.float32, device=W.device)
        if G and Q and L:
            with _on_device(W):
                _vand_fwd_kernel[(G * Q, triton.cdiv(L, bl))](lr, th, torch.view_as_real(W), K,
                                                               N, L, Q, BL=bl, BN=bn)
        ctx.save_for_backward(lr, th, W)
        ctx.cfg = (L, bl, bn)
        return K

    @staticmethod
    def backward(ctx, gK):
        lr, th, W = ctx.saved_tensors
        L, bl, bn = ctx.cfg
        G, Q, N = W.shape
        S = torch.empty((G, Q, N, 4), dtype=torch.float32, device=W.device)
        if G and Q and N:
            with _on_device(W):
                _vand_bwd_kernel[(G * Q, triton.cdiv(N, bn))](lr, th, gK.contiguous(), S, N, L,
                                                               Q, BL=bl, BN=bn)
        S = torch.view_as_complex(S.view(G, Q, N, 2, 2))  # [..., 0] = S0, [..., 1] = S1
        gA = gW = None
        if ctx.needs_input_grad[0]:
            gA = (W * S[..., 1]).sum(1).conj()
        if ctx.needs_input_grad[1]:
            gW = S[..., 0].conj()
        return gA, gW, None, None, None


def vandermonde(A_bar: Tensor, W: Tensor, L: int, *, block_l: int = BLOCK_L,
                block_n: int = BLOCK_N) -> Tensor:
    """``K[g, q, l] = Re(sum_n W[g, q, n] A_bar[g, n]^l)`` for l < L: A_bar (G, N), W (G, Q, N)
    complex64, K (G, Q, L) float32; differentiable in both (see the module docstring)."""
    if A_bar.dtype != torch.complex64 or W.dtype != torch.complex64:
        raise TypeError(f"triton vandermonde: A_bar and W must be complex64, got {A_bar.dtype} "
                        f"and {W.dtype}")
    if A_bar.dim() != 2 or W.dim() != 3 or W.shape[0] != A_bar.shape[0] \
            or W.shape[2] != A_bar.shape[1]:
        raise ValueError(f"triton vandermonde: A_bar must be (G, N) and W (G, Q, N); got "
                         f"{tuple(A_bar.shape)} and {tuple(W.shape)}")
    return _Vandermonde.apply(A_bar, W, int(L), int(block_l), int(block_n))
