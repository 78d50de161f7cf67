r"""Halo exchange of a causal convolution under context parallelism.

A causal depthwise convolution of width K (``y_t = sum_j w_j x_{t-K+1+j}``, see
:class:`lrnnx_plugins.common.causal_conv.CausalConv1d`) needs, on rank r, the K-1 inputs before its
first token: the *halo*, i.e. the last K-1 inputs of the ranks before it (or of the initial
window ``state`` for the tokens before the global start).  With chunk lengths ``L_j`` the window
after rank j is

.. math::  W_{-1} = \text{state}, \qquad W_j = \text{last } K-1 \text{ of } [W_{j-1}, x^{(j)}]

so rank r's halo is ``W_{r-1}`` and the global final window (the conv's returned state) is
``W_{R-1}``.  A chunk shorter than K-1 makes the halo reach further back; :func:`exchange_halo`
gathers every rank's last ``min(L_j, K-1)`` inputs (and rank 0's ``state``) in one all-gather and
evaluates the recursion locally, so any split works.  Backward all-gathers each rank's gradient of
(halo, final window) and routes it to the ranks that own those inputs (sums of the same index
maps).  Communication: one all-gather of the chunk lengths and one of 2 x (B, D, K-1) per call,
forward and backward.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..errors import InputError
from .combine import all_gather, grad_anchor, position, resolve_group

__all__ = ["exchange_halo", "window_sources"]


def window_sources(lens: list[int], width: int) -> tuple[list[list[int]], list[int]]:
    """Index maps into the pool ``[state | tail_0 | ... | tail_{R-1}]`` (each ``width`` columns;
    tail j holds rank j's last ``min(L_j, width)`` inputs right-aligned).

    Returns ``(halo[r], final)``: the pool columns of rank r's halo ``W_{r-1}`` and of the global
    final window ``W_{R-1}``, oldest first.
    """
    W = list(range(width))  # W_{-1} = state columns
    halos = []
    for j, n in enumerate(lens):
        halos.append(list(W))
        m = min(n, width)
        base = (j + 1) * width
        W = (W + [base + width - m + c for c in range(m)])[-width:] if width else []
    return halos, W


class _Halo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tail: Tensor, state: Tensor, n_local: int, L: int, group, anchor=None):
        """tail (B, D, width) right-aligned last inputs (first width-n_local columns zero);
        state (B, D, width) the initial window (used from rank 0)."""
        width = tail.shape[-1]
        pos, R = position(group)
        n = torch.tensor([L], device=tail.device, dtype=torch.int64)
        lens = all_gather(n, group).flatten().tolist()
        g = all_gather(torch.stack([tail, state]), group)  # (R, 2, B, D, width)
        pool = torch.cat([g[0, 1]] + [g[j, 0] for j in range(R)], dim=-1)
        halos, final = window_sources(lens, width)
        ctx.maps = (halos, final)
        ctx.group, ctx.pos, ctx.R, ctx.width, ctx.n_local = group, pos, R, width, n_local
        idx = torch.tensor(halos[pos], device=tail.device)
        fidx = torch.tensor(final, device=tail.device)
        return pool.index_select(-1, idx), pool.index_select(-1, fidx)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_halo: Tensor, g_final: Tensor):
        halos, final = ctx.maps
        width, R, pos = ctx.width, ctx.R, ctx.pos
        gg = all_gather(torch.stack([g_halo, g_final]), ctx.group)  # (R, 2, B, D, width)
        pool = gg.new_zeros(*gg.shape[2:-1], (R + 1) * width)
        for r in range(R):
            pool.index_add_(-1, torch.tensor(halos[r], device=pool.device), gg[r, 0])
            pool.index_add_(-1, torch.tensor(final, device=pool.device), gg[r, 1])
        g_tail = pool[..., (pos + 1) * width:(pos + 2) * width].clone()
        g_tail[..., :width - ctx.n_local] = 0  # padding columns are no one's input
        g_state = pool[..., :width] if pos == 0 else None  # only rank 0 reads the state
        return g_tail, g_state, None, None, None, None


def exchange_halo(x: Tensor, state: Tensor | None, width: int, group=None,
                  cu_seqlens: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The window before this rank's first token, and the global final window.

    Args:
        x: this rank's chunk (B, L_r, D) (L_r may differ between ranks, 0 included).
        state: (B, D, width) window before the global first token (rank 0's is used; None means
            zeros), in CausalConv1d's state layout (oldest first).
        width: K - 1 of the convolution (the same on every rank).
        group: process group (None: the innermost ``context_parallel`` block's, else default).
        cu_seqlens: must be None (packed varlen input cannot be split along time).

    Returns:
        ``(halo, final)``, both (B, D, width) in x's dtype: pass ``halo`` as the conv's state for
        this chunk; ``final`` (the last ``width`` inputs of the whole sequence, the same on every
        rank) is the conv state to return.  Differentiable in ``x`` and ``state``.

    Example::

        halo, final = exchange_halo(x_r, None, conv.kernel_size - 1)
        y_r, _ = conv(x_r, halo)     # (outside a context_parallel block)
    """
    if cu_seqlens is not None:
        raise InputError("CausalConv1d: cu_seqlens must be None under context parallelism "
                         "(packed variable-length batches cannot be split along time), got a "
                         "tensor; run packed batches without lrnnx.distributed.context_parallel.")
    if group is None:
        from .context import current_group

        group = current_group()
    group = resolve_group(group, "lrnnx.distributed.exchange_halo")
    B, L, D = x.shape
    if state is not None and tuple(state.shape) != (B, D, width):
        raise InputError(f"CausalConv1d: state must be of shape {(B, D, width)} (B, channels, "
                         f"kernel_size - 1) under context parallelism, got "
                         f"{tuple(state.shape)}; pass the conv state of a previous call.")
    if width == 0:
        empty = x.new_zeros(B, D, 0)
        return empty, empty
    m = min(L, width)
    tail = x[:, L - m:].transpose(1, 2)  # (B, D, m)
    tail = torch.cat([tail.new_zeros(B, D, width - m), tail], -1)
    st = x.new_zeros(B, D, width) if state is None else state.to(x.dtype)
    return _Halo.apply(tail, st, m, L, group, grad_anchor())
