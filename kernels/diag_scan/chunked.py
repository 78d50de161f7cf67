"""Chunked diagonal scan: exact, pure PyTorch, any device.

Two-level scan of ``h_t = a_t h_{t-1} + b_t`` (recursive for long L):

1. Split L into C chunks of T tokens.  Inside every chunk, scan from a zero
   state *and* accumulate the running product of ``a``, sequentially over the
   T positions but vectorized over (batch, chunk, channel)::

       hloc_t = a_t hloc_{t-1} + b_t          P_t = a_t P_{t-1}

2. The state at the end of chunk c obeys the same recurrence with
   ``a = P_end(c)``, ``b = hloc_end(c)``: a scan of length C, done by calling
   this function recursively (a plain loop once C <= T).
3. Fix-up: ``h_t = hloc_t + P_t * h_in(c)`` with ``h_in(c)`` the state
   entering chunk c.

Only multiplications and additions are used (no log-space cumsum), so
negative and complex ``a`` are exact.  Cost: ~2T vectorized ops per level
and log_T(L) levels.  A small T (16) keeps the number of ops -- each a
kernel launch on GPU and a thread barrier on CPU -- low, and each op large.
Reverse scans run the same code with the order of positions and chunks
mirrored.

Backward (custom autograd Function, itself two reverse scans' worth of work).
With g_t the total gradient w.r.t. h_t and PyTorch's conjugate convention::

    g_t        = grad_h_t + conj(a_{t+1}) g_{t+1}       (a reverse scan)
    grad_b_t   = g_t
    grad_a_t   = g_t * conj(h_{t-1})                    (h_{-1} = h0)
    grad_h0    = conj(a_0) g_0

(mirrored for ``reverse=True``).  Varlen is reduced to one plain scan by
:func:`._common.fold_varlen` before the Function, so autograd sees it.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._common import empty_result, fold_varlen, gather_last, prepare

# Chunk length T = clamp(ceil(sqrt(L)), _MIN_CHUNK, _MAX_CHUNK).  sqrt(L)
# would balance the in-chunk loop against the chunk loop of a two-level scan;
# with recursion, ops ~ 2T log_T(L) favour a small T, hence the cap.  On a
# shared 2-core CPU, every op is a thread barrier and fewer ops are markedly
# more robust.  (Tests shrink both bounds to force deep recursion.)
_MIN_CHUNK = 16
_MAX_CHUNK = 16


def _chunk_len(L: int) -> int:
    return max(_MIN_CHUNK, min(_MAX_CHUNK, math.isqrt(max(L - 1, 0)) + 1))


def _seq_scan(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
    """Plain loop over L (short sequences), vectorized over (B, D)."""
    B, L, D = b.shape
    h = b.new_empty(b.shape)
    order = range(L - 1, -1, -1) if reverse else range(L)
    prev = h0
    for t in order:
        if prev is None:
            h[:, t] = b[:, t]
        else:
            torch.addcmul(b[:, t], a[:, t], prev, out=h[:, t])
        prev = h[:, t]
    return h


def scan_core(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
    """All states of the scan; no autograd, no dtype handling.

    a: (1 or B, L, D), b: (B, L, D), h0: (B, D) or None, same dtype.
    """
    Ba = a.shape[0]
    B, L, D = b.shape
    T = _chunk_len(L)
    if L <= T:
        return _seq_scan(a, b, h0, reverse)
    C = -(-L // T)
    pad = C * T - L
    if pad:
        # Neutral padding (a = 1, b = 0) at the end: it is processed last in a
        # forward scan and first (leaving h0 unchanged) in a reverse scan.
        a = torch.cat([a, a.new_ones((Ba, pad, D))], 1)
        b = torch.cat([b, b.new_zeros((B, pad, D))], 1)
    a4 = a.reshape(Ba, C, T, D)
    b4 = b.reshape(B, C, T, D)
    hloc = b4.new_empty(b4.shape)
    P = a4.new_empty(a4.shape)
    order = list(range(T - 1, -1, -1)) if reverse else list(range(T))
    t = order[0]
    hloc[:, :, t] = b4[:, :, t]
    P[:, :, t] = a4[:, :, t]
    for prev, t in zip(order, order[1:]):
        torch.addcmul(b4[:, :, t], a4[:, :, t], hloc[:, :, prev], out=hloc[:, :, t])
        torch.mul(a4[:, :, t], P[:, :, prev], out=P[:, :, t])
    end = order[-1]
    # States at the end of every chunk (in scan order), then the state
    # entering each chunk = the previous chunk's end state (or h0).
    hc = scan_core(P[:, :, end].contiguous(), hloc[:, :, end].contiguous(), h0, reverse)
    init = h0.unsqueeze(1) if h0 is not None else hc.new_zeros((B, 1, D))
    if reverse:
        hin = torch.cat([hc[:, 1:], init], 1)
    else:
        hin = torch.cat([init, hc[:, :-1]], 1)
    hloc.addcmul_(P, hin.unsqueeze(2))
    h = hloc.view(B, C * T, D)
    return h[:, :L] if pad else h


def _shift(a: Tensor, reverse: bool) -> Tensor:
    """The transition that multiplies g in the adjoint scan, conjugated.

    forward: g_t = gh_t + conj(a_{t+1}) g_{t+1}  -> uses a shifted left;
    reverse: g_t = gh_t + conj(a_{t-1}) g_{t-1}  -> uses a shifted right.
    The value shifted in never multiplies anything (the adjoint starts at 0).
    """
    z = a.new_zeros((a.shape[0], 1, a.shape[2]))
    s = torch.cat([z, a[:, :-1]], 1) if reverse else torch.cat([a[:, 1:], z], 1)
    return s.conj().resolve_conj()


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
        h = scan_core(a, b, h0, reverse)
        ctx.save_for_backward(a, h, h0)
        ctx.reverse = reverse
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, gh: Tensor):
        a, h, h0 = ctx.saved_tensors
        reverse = ctx.reverse
        B, L, D = h.shape
        g = scan_core(_shift(a, reverse), gh.contiguous(), None, not reverse)
        grad_a = grad_h0 = None
        if ctx.needs_input_grad[0]:
            init = h0.unsqueeze(1) if h0 is not None else h.new_zeros((B, 1, D))
            # The state each a_t multiplied in the forward pass.
            hprev = torch.cat([h[:, 1:], init], 1) if reverse else torch.cat([init, h[:, :-1]], 1)
            grad_a = g * hprev.conj()
            if a.shape[0] != B:
                grad_a = grad_a.sum(0, keepdim=True)
        if h0 is not None and ctx.needs_input_grad[2]:
            t = L - 1 if reverse else 0
            grad_h0 = a[:, t].conj() * g[:, t]
        return grad_a, g, grad_h0, None


def diag_scan_chunked(
    a: Tensor,
    b: Tensor,
    h0: Tensor | None = None,
    reverse: bool = False,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunked (two-level) diagonal scan; exact, differentiable in a, b, h0.

    ``h_t = a_t * h_{t-1} + b_t`` (or ``h_t = a_t * h_{t+1} + b_t`` with
    ``reverse``); see :mod:`kernels.diag_scan._common` for shapes, dtypes and
    varlen semantics.  Returns ``(h, h_last)``.
    """
    args = prepare(a, b, h0, cu_seqlens)
    a, b, h0, cu = args.a, args.b, args.h0, args.cu_seqlens
    if b.shape[1] == 0:
        return empty_result(args)
    if cu is None:
        h = _ChunkedScan.apply(a, b, h0, reverse)
        last = h[:, 0] if reverse else h[:, -1]
    else:
        af, bf = fold_varlen(a, b, h0, cu, reverse)
        h = _ChunkedScan.apply(af, bf, None, reverse)
        last = gather_last(h, h0, cu, reverse)
    return h.to(args.out_dtype), last.clone().to(args.out_dtype)
