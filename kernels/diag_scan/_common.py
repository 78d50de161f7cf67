"""Argument checking, dtype policy and varlen bookkeeping shared by every
``diag_scan`` implementation (reference, chunked, C++).

Contract (all paths)::

    f(a, b, h0=None, reverse=False, cu_seqlens=None) -> (h, h_last)

    forward:  h_t = a_t * h_{t-1} + b_t,  t = 0..L-1,  h_{-1} = h0
    reverse:  h_t = a_t * h_{t+1} + b_t,  t = L-1..0,  h_{L}  = h0

* ``a``: (B, L, D) or (1, L, D) (broadcast over batch); ``b``: (B, L, D).
* ``h`` has the promoted dtype of ``a`` and ``b``; the state is carried in at
  least fp32 (bf16/fp16 are computed in fp32 and cast at the end).
* ``h0``: (B, D) or (N_seq, D) with ``cu_seqlens``; ``None`` means zeros.
* ``cu_seqlens``: (N_seq + 1,) int tensor, 0 = cu[0] <= cu[1] <= ... <= cu[-1]
  = L, with B == 1.  The recurrence restarts at every boundary from
  ``h0[i]``; ``h_last`` is (N_seq, D): the state after each sequence's last
  token (its first token when ``reverse``), ``h0[i]`` (or 0) when empty.
* ``h_last`` has the dtype of ``h``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ScanArgs:
    a: Tensor  # compute dtype
    b: Tensor  # compute dtype
    h0: Tensor | None  # compute dtype
    cu_seqlens: Tensor | None  # int64
    out_dtype: torch.dtype
    compute_dtype: torch.dtype


def compute_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """State dtype: at least fp32 (complex64)."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if dtype == torch.complex32:
        return torch.complex64
    return dtype


def prepare(a: Tensor, b: Tensor, h0: Tensor | None, cu_seqlens: Tensor | None) -> ScanArgs:
    """Validate shapes, pick dtypes and cast to the compute dtype.

    A real ``a`` with complex ``b`` (or vice versa) is promoted to complex:
    the cast is differentiable, so autograd returns a real gradient for the
    real operand.
    """
    if a.dim() != 3 or b.dim() != 3:
        raise ValueError(f"a and b must be (B, L, D); got {tuple(a.shape)} and {tuple(b.shape)}")
    B, L, D = b.shape
    if a.shape[1:] != b.shape[1:] or a.shape[0] not in (1, B):
        raise ValueError(f"a {tuple(a.shape)} must be (B, L, D) or (1, L, D) with b {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError("a and b must be on the same device")
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    if not (out_dtype.is_floating_point or out_dtype.is_complex):
        raise TypeError(f"diag_scan needs floating or complex inputs, got {a.dtype}, {b.dtype}")
    cdt = compute_dtype_for(out_dtype)
    nseq = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"cu_seqlens needs B == 1 (packed sequences); got B = {B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError("cu_seqlens must be a 1-D int32/int64 tensor of N_seq + 1 offsets")
        cu_seqlens = cu_seqlens.to(device=b.device, dtype=torch.int64)
        if cu_seqlens.device.type == "cpu":
            # Cheap here; on accelerators it would force a host sync, so skip.
            cu = cu_seqlens.tolist()
            if cu[0] != 0 or cu[-1] != L or any(x > y for x, y in zip(cu, cu[1:])):
                raise ValueError(f"cu_seqlens must rise from 0 to L = {L}; got {cu}")
        nseq = cu_seqlens.numel() - 1
    if h0 is not None:
        if h0.shape != (nseq, D):
            raise ValueError(f"h0 must be ({nseq}, {D}); got {tuple(h0.shape)}")
        if h0.is_complex() and not cdt.is_complex:
            cdt = compute_dtype_for(torch.promote_types(cdt, h0.dtype))
            out_dtype = torch.promote_types(out_dtype, h0.dtype)
        h0 = h0.to(cdt)
    return ScanArgs(a.to(cdt), b.to(cdt), h0, cu_seqlens, out_dtype, cdt)


def varlen_masks(cu_seqlens: Tensor, L: int, reverse: bool) -> tuple[Tensor, Tensor]:
    """Per-token sequence id and "first token in scan order" mask, sync-free.

    ``searchsorted(right=True) - 1`` maps a token to the *last* sequence whose
    start is <= t, i.e. skips empty sequences that share its offset.
    """
    t = torch.arange(L, device=cu_seqlens.device)
    seq = torch.searchsorted(cu_seqlens, t, right=True) - 1
    if reverse:
        first = t == cu_seqlens[seq + 1] - 1
    else:
        first = t == cu_seqlens[seq]
    return seq, first


def fold_varlen(a: Tensor, b: Tensor, h0: Tensor | None, cu_seqlens: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
    """Turn a packed varlen scan into one plain scan.

    At each sequence's first token (in scan order) the carried state must be
    forgotten and replaced by ``h0[i]``: set ``a_t := 0`` and
    ``b_t := b_t + a_t * h0[i]``.  Differentiable in ``a``, ``b``, ``h0``.
    """
    L = b.shape[1]
    seq, first = varlen_masks(cu_seqlens, L, reverse)
    m = first.view(1, L, 1)
    if h0 is not None:
        b = b + torch.where(m, a * h0[seq].unsqueeze(0), torch.zeros((), dtype=b.dtype, device=b.device))
    a = torch.where(m, torch.zeros((), dtype=a.dtype, device=a.device), a)
    return a, b


def gather_last(h: Tensor, h0: Tensor | None, cu_seqlens: Tensor, reverse: bool) -> Tensor:
    """(N_seq, D) final states of a packed scan output ``h`` (1, L, D)."""
    L = h.shape[1]
    starts, ends = cu_seqlens[:-1], cu_seqlens[1:]
    idx = starts if reverse else ends - 1
    idx = idx.clamp(0, max(L - 1, 0))
    out = h[0, idx]
    empty = (ends == starts).unsqueeze(-1)
    fill = h0 if h0 is not None else torch.zeros((), dtype=h.dtype, device=h.device)
    return torch.where(empty, fill, out)


def empty_result(args: ScanArgs) -> tuple[Tensor, Tensor]:
    """L == 0: no states, h_last = h0 (or zeros)."""
    B, L, D = args.b.shape
    n = B if args.cu_seqlens is None else args.cu_seqlens.numel() - 1
    h = args.b.new_zeros((B, 0, D)).to(args.out_dtype)
    hl = args.h0 if args.h0 is not None else args.b.new_zeros((n, D))
    return h, hl.to(args.out_dtype)
