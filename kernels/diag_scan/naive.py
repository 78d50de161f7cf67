"""Reference diagonal scan: the plain sequential loop.

    forward:  h_t = a_t * h_{t-1} + b_t   (t = 0..L-1, h_{-1} = h0)
    reverse:  h_t = a_t * h_{t+1} + b_t   (t = L-1..0, h_{L}  = h0)

This is the ground truth of every test (run it in float64).  It is slow by
design: one Python iteration per token; autograd flows through the loop.
Varlen (``cu_seqlens``) is handled literally, one sequence at a time.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import empty_result, prepare
from .step import diag_step


def _loop(a: list[Tensor], b: list[Tensor], h: Tensor, t0: int, t1: int, reverse: bool) -> tuple[list[Tensor], Tensor]:
    """Scan tokens [t0, t1) of the per-token lists ``a``, ``b`` starting from
    state ``h``; returns the states in time order and the final state."""
    order = range(t1 - 1, t0 - 1, -1) if reverse else range(t0, t1)
    states = []
    for t in order:
        h = diag_step(a[t], b[t], h)
        states.append(h)
    if reverse:
        states.reverse()
    return states, h


def diag_scan_ref(
    a: Tensor,
    b: Tensor,
    h0: Tensor | None = None,
    reverse: bool = False,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Sequential reference of ``h_t = a_t * h_{t-1} + b_t``.

    See :mod:`kernels.diag_scan._common` for the full argument contract.
    Returns ``(h, h_last)``: all states (B, L, D) and the final state(s).
    """
    args = prepare(a, b, h0, cu_seqlens)
    a, b, h0 = args.a, args.b, args.h0
    B, L, D = b.shape
    if L == 0:
        return empty_result(args)
    # unbind, not a[:, t]: the backward of L separate slices would allocate
    # L full-size zero gradients (O(L^2) memory traffic).
    a_t, b_t = a.unbind(1), b.unbind(1)
    if args.cu_seqlens is None:
        init = h0 if h0 is not None else b.new_zeros((B, D))
        states, last = _loop(a_t, b_t, init, 0, L, reverse)
        h = torch.stack(states, dim=1)
        return h.to(args.out_dtype), last.to(args.out_dtype)
    cu = args.cu_seqlens.tolist()
    pieces, lasts = [], []
    for i in range(len(cu) - 1):
        init = h0[i : i + 1] if h0 is not None else b.new_zeros((1, D))
        states, last = _loop(a_t, b_t, init, cu[i], cu[i + 1], reverse)
        pieces.extend(states)
        lasts.append(last)
    h = torch.stack(pieces, dim=1)
    return h.to(args.out_dtype), torch.cat(lasts, 0).to(args.out_dtype)
