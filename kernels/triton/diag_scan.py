"""Triton diagonal scan ``h_t = a_t * h_{t-1} + b_t`` with a fused backward.

Same contract as ``lrnnx_kernels.diag_scan.diag_scan_ref`` (see ``kernels/diag_scan/_common.py``)::

    forward:  h_t = a_t * h_{t-1} + b_t,  t = 0..L-1,  h_{-1} = h0
    reverse:  h_t = a_t * h_{t+1} + b_t,  t = L-1..0,  h_{L}  = h0

Shapes: ``a`` (B, L, D) or (1, L, D), ``b`` (B, L, D), ``h0`` (B, D) or (N_seq, D) with packed
``cu_seqlens`` (B == 1; the recurrence restarts from ``h0[i]`` at each boundary).  Real
fp16/bf16/fp32/fp64 or complex64/complex128 (complex tensors travel as interleaved (re, im)
pairs, ``torch.view_as_real``); the state is carried in fp32 (fp64 for double inputs) and ``h`` is
returned in the promoted dtype of ``a`` and ``b``.

Kernel: grid (sequences, D / BLOCK_D).  Each program walks its sequence in tiles of BLOCK_L
tokens; inside a tile ``tl.associative_scan`` composes the affine maps ``(a_t, b_t)`` (see
``_tl.combine_real``), then ``h = A_cum * carry + B_cum`` and the carry moves to the next tile.
Masked rows are the identity ``(1, 0)``, so any L and any varlen boundary works.  Nothing is
read back from the host: ``cu_seqlens`` stays on the device.

Backward (the same kernel, ``BWD=True``, scanning in the opposite direction), with g_t the total
gradient w.r.t. h_t and PyTorch's conjugate convention::

    g_t      = grad_h_t + conj(a_{t+1}) g_{t+1}     (g at a sequence's last token starts from
                                                     grad_h_last: its multiplier is 1)
    grad_b_t = g_t,   grad_a_t = g_t * conj(h_{t-1})   (h_{-1} = h0),   grad_h0 = conj(a_0) g_0

mirrored for ``reverse``.  Example::

    h, h_last = diag_scan(a.cuda(), b.cuda(), h0.cuda(), reverse=False)
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _host
from ._tl import combine_cplx, combine_real, row2

DEFAULT_BLOCK_L = 64
DEFAULT_BLOCK_D = 32


@triton.jit
def _diag_scan_kernel(
    a_ptr, b_ptr, h0_ptr, out_ptr, last_ptr, cu_ptr, hf_ptr, h0f_ptr, ga_ptr,
    L, D,
    REVERSE: tl.constexpr, VARLEN: tl.constexpr, A_BCAST: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_B: tl.constexpr, BWD: tl.constexpr, HAS_GA: tl.constexpr, HAS_H0F: tl.constexpr,
    CPLX: tl.constexpr, ACC: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Forward: ``out = h``, ``last = h_last``.  BWD: ``b`` = grad_h, ``h0`` = grad_h_last,
    ``out`` = grad_b, ``last`` = grad_h0, ``ga`` = grad_a (per batch row), ``hf``/``h0f`` = the
    forward states and initial state; ``REVERSE`` is then the adjoint's direction."""
    W: tl.constexpr = 2 if CPLX else 1  # scalars per element
    pid_s = tl.program_id(0)
    pid_d = tl.program_id(1)
    if VARLEN:
        start = tl.load(cu_ptr + pid_s).to(tl.int32)
        end = tl.load(cu_ptr + pid_s + 1).to(tl.int32)
        batch = pid_s.to(tl.int64) * 0
    else:
        start = pid_s * 0
        end = start + L
        batch = pid_s.to(tl.int64)
    if A_BCAST:
        abatch = batch * 0
    else:
        abatch = batch
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < D
    rows = tl.arange(0, BLOCK_L)
    LAST_ROW: tl.constexpr = 0 if REVERSE else BLOCK_L - 1
    soff = (pid_s.to(tl.int64) * D + d) * W  # (N_seq, D) tensors
    cr = tl.zeros([BLOCK_D], ACC)
    ci = tl.zeros([BLOCK_D], ACC)
    if HAS_H0:
        cr = tl.load(h0_ptr + soff, mask=dm, other=0.0).to(ACC)
        if CPLX:
            ci = tl.load(h0_ptr + soff + 1, mask=dm, other=0.0).to(ACC)
    if HAS_GA:
        pr0 = tl.zeros([BLOCK_D], ACC)
        pi0 = tl.zeros([BLOCK_D], ACC)
        if HAS_H0F:
            pr0 = tl.load(h0f_ptr + soff, mask=dm, other=0.0).to(ACC)
            if CPLX:
                pi0 = tl.load(h0f_ptr + soff + 1, mask=dm, other=0.0).to(ACC)

    n_tiles = tl.cdiv(end - start, BLOCK_L)
    for k in range(0, n_tiles):
        if REVERSE:
            kk = n_tiles - 1 - k
        else:
            kk = k
        t = start + kk * BLOCK_L + rows
        tm = t < end
        m2 = tm[:, None] & dm[None, :]
        off = ((batch * L + t)[:, None] * D + d[None, :]) * W
        # The multiplier of row t: a_t, or in the adjoint the a of the token scanned just
        # before t (1 at a sequence's first token in scan order).
        if BWD:
            if REVERSE:
                ta = t + 1
                am = tm & (ta < end)
            else:
                ta = t - 1
                am = tm & (ta >= start)
        else:
            ta = t
            am = tm
        am2 = am[:, None] & dm[None, :]
        aoff = ((abatch * L + ta)[:, None] * D + d[None, :]) * W
        ar = tl.load(a_ptr + aoff, mask=am2, other=1.0).to(ACC)
        if HAS_B:
            br = tl.load(b_ptr + off, mask=m2, other=0.0).to(ACC)
        else:
            br = tl.zeros([BLOCK_L, BLOCK_D], ACC)
        if CPLX:
            ai = tl.load(a_ptr + aoff + 1, mask=am2, other=0.0).to(ACC)
            if BWD:
                ai = -ai
            if HAS_B:
                bi = tl.load(b_ptr + off + 1, mask=m2, other=0.0).to(ACC)
            else:
                bi = tl.zeros([BLOCK_L, BLOCK_D], ACC)
            Ar, Ai, Br, Bi = tl.associative_scan((ar, ai, br, bi), 0, combine_cplx, reverse=REVERSE)
            hr = Ar * cr[None, :] - Ai * ci[None, :] + Br
            hi = Ar * ci[None, :] + Ai * cr[None, :] + Bi
            tl.store(out_ptr + off + 1, hi.to(out_ptr.dtype.element_ty), mask=m2)
        else:
            Ar, Br = tl.associative_scan((ar, br), 0, combine_real, reverse=REVERSE)
            hr = Ar * cr[None, :] + Br
        tl.store(out_ptr + off, hr.to(out_ptr.dtype.element_ty), mask=m2)
        if HAS_GA:
            # grad_a_t = g_t * conj(state that a_t multiplied in the forward scan).
            if REVERSE:
                tp = t - 1
                pm = tm & (tp >= start)
            else:
                tp = t + 1
                pm = tm & (tp < end)
            pm2 = pm[:, None] & dm[None, :]
            poff = ((batch * L + tp)[:, None] * D + d[None, :]) * W
            pr = tl.load(hf_ptr + poff, mask=pm2, other=0.0).to(ACC)
            pr = tl.where(pm[:, None], pr, pr0[None, :])
            if CPLX:
                pi = tl.load(hf_ptr + poff + 1, mask=pm2, other=0.0).to(ACC)
                pi = tl.where(pm[:, None], pi, pi0[None, :])
                gar = hr * pr + hi * pi
                gai = hi * pr - hr * pi
                tl.store(ga_ptr + off + 1, gai.to(ga_ptr.dtype.element_ty), mask=m2)
            else:
                gar = hr * pr
            tl.store(ga_ptr + off, gar.to(ga_ptr.dtype.element_ty), mask=m2)
        # The carry leaves a tile at its last row in scan order.
        cr = row2(hr, rows, LAST_ROW)
        if CPLX:
            ci = row2(hi, rows, LAST_ROW)

    if BWD:
        # grad_h0 = conj(a at the sequence's first forward token) * g there; an empty
        # sequence passes grad_h_last straight through (h_last = h0).
        if REVERSE:
            tf = start
        else:
            tf = end - 1
        tv = tf + d * 0
        fm = dm & (tv >= start) & (tv < end)
        foff = ((abatch * L + tv) * D + d) * W
        far = tl.load(a_ptr + foff, mask=fm, other=1.0).to(ACC)
        if CPLX:
            fai = -tl.load(a_ptr + foff + 1, mask=fm, other=0.0).to(ACC)
            gr = far * cr - fai * ci
            ci = far * ci + fai * cr
            cr = gr
        else:
            cr = far * cr
    tl.store(last_ptr + soff, cr.to(last_ptr.dtype.element_ty), mask=dm)
    if CPLX:
        tl.store(last_ptr + soff + 1, ci.to(last_ptr.dtype.element_ty), mask=dm)


def _blocks(D: int, block_l: int, block_d: int) -> tuple[int, int]:
    bl = block_l or DEFAULT_BLOCK_L
    bd = block_d or min(DEFAULT_BLOCK_D, _host.pow2_ceil(D))
    if bl & (bl - 1) or bd & (bd - 1):
        raise ValueError(f"block sizes must be powers of two, got block_l={bl}, block_d={bd}")
    return bl, bd


def launch(a, b, h0, out, last, cu, *, reverse, bwd=False, hf=None, h0f=None, ga=None,
           block_l=0, block_d=0, num_warps=4):
    """Run the kernel.  All (B, L, D) tensors contiguous, complex ones as themselves (viewed as
    (re, im) pairs here); ``b``/``h0`` may be None (zeros)."""
    B, L, D = out.shape
    nseq = last.shape[0]
    bl, bd = _blocks(D, block_l, block_d)
    cplx = out.is_complex()
    acc = _host.acc_dtype(*(t.dtype for t in (a, b, h0, out) if t is not None))
    dmy = _host.dummy(out)
    rv = lambda t: dmy if t is None else _host.rview(t)  # noqa: E731
    grid = (nseq, triton.cdiv(D, bd))
    with _host.on_device(out):
        _diag_scan_kernel[grid](
            rv(a), rv(b), rv(h0), rv(out), rv(last), dmy if cu is None else cu,
            rv(hf), rv(h0f), rv(ga), L, D,
            REVERSE=bool(reverse), VARLEN=cu is not None, A_BCAST=a.shape[0] != B,
            HAS_H0=h0 is not None, HAS_B=b is not None, BWD=bwd, HAS_GA=ga is not None,
            HAS_H0F=h0f is not None, CPLX=cplx, ACC=_host.tl_dtype(acc),
            BLOCK_L=bl, BLOCK_D=bd, num_warps=num_warps,
        )


# ----------------------------------------------------------------------------- custom ops
@torch.library.custom_op("lrnnx::triton_diag_scan", mutates_args=())
def _diag_scan_op(a: Tensor, b: Tensor, h0: Optional[Tensor], cu_seqlens: Optional[Tensor],
                  reverse: bool, block_l: int, block_d: int) -> tuple[Tensor, Tensor]:
    B, L, D = b.shape
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    nseq = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    h = torch.empty((B, L, D), dtype=out_dtype, device=b.device)
    last = torch.empty((nseq, D), dtype=out_dtype, device=b.device)
    launch(a, b, h0, h, last, cu_seqlens, reverse=reverse, block_l=block_l, block_d=block_d)
    return h, last


@_diag_scan_op.register_fake
def _(a, b, h0, cu_seqlens, reverse, block_l, block_d):
    B, L, D = b.shape
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    nseq = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return b.new_empty((B, L, D), dtype=out_dtype), b.new_empty((nseq, D), dtype=out_dtype)


@torch.library.custom_op("lrnnx::triton_diag_scan_bwd", mutates_args=())
def _diag_scan_bwd_op(a: Tensor, h: Tensor, h0: Optional[Tensor], cu_seqlens: Optional[Tensor],
                      gh: Optional[Tensor], gl: Optional[Tensor], reverse: bool, need_a: bool,
                      block_l: int, block_d: int) -> tuple[Tensor, Tensor, Tensor]:
    B, L, D = h.shape
    nseq = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    gb = torch.empty_like(h)
    gh0 = torch.empty((nseq, D), dtype=h.dtype, device=h.device)
    bcast = a.shape[0] != B
    ga = None
    if need_a:
        # A shared a gets one gradient row per batch element, summed below in fp32/fp64.
        gdt = a.dtype
        if bcast:
            gdt = _host.acc_dtype(a.dtype, h.dtype)
            if h.is_complex():
                gdt = torch.complex128 if gdt == torch.float64 else torch.complex64
        ga = torch.empty((B, L, D), dtype=gdt, device=h.device)
    gh = None if gh is None else gh.contiguous()
    gl = None if gl is None else gl.contiguous()
    launch(a, gh, gl, gb, gh0, cu_seqlens, reverse=not reverse, bwd=True, hf=h, h0f=h0, ga=ga,
           block_l=block_l, block_d=block_d)
    if ga is None:
        ga = a.new_empty((0,))
    elif bcast:
        ga = ga.sum(0, keepdim=True).to(a.dtype)
    return ga, gb, gh0


@_diag_scan_bwd_op.register_fake
def _(a, h, h0, cu_seqlens, gh, gl, reverse, need_a, block_l, block_d):
    B, L, D = h.shape
    nseq = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    ga = a.new_empty(a.shape) if need_a else a.new_empty((0,))
    return ga, torch.empty_like(h), h.new_empty((nseq, D))


def _setup(ctx, inputs, output):
    a, b, h0, cu, reverse, block_l, block_d = inputs
    ctx.save_for_backward(a, output[0], h0, cu)
    ctx.cfg = (reverse, block_l, block_d, b.dtype, None if h0 is None else h0.dtype)


def _backward(ctx, gh, gl):
    a, h, h0, cu = ctx.saved_tensors
    reverse, block_l, block_d, b_dtype, h0_dtype = ctx.cfg
    ga, gb, gh0 = _diag_scan_bwd_op(a, h, h0, cu, gh, gl, reverse, ctx.needs_input_grad[0],
                                    block_l, block_d)
    ga = ga if ctx.needs_input_grad[0] else None
    gh0 = gh0.to(h0_dtype) if (h0 is not None and ctx.needs_input_grad[2]) else None
    return ga, gb.to(b_dtype), gh0, None, None, None, None


_diag_scan_op.register_autograd(_backward, setup_context=_setup)


# ----------------------------------------------------------------------------- public API
def _check(a: Tensor, b: Tensor, h0: Tensor | None, cu: Tensor | None) -> None:
    if a.dim() != 3 or b.dim() != 3:
        raise ValueError(f"a and b must be (B, L, D); got {tuple(a.shape)} and {tuple(b.shape)}")
    B, L, D = b.shape
    if a.shape[1:] != b.shape[1:] or a.shape[0] not in (1, B):
        raise ValueError(f"a {tuple(a.shape)} must be (B, L, D) or (1, L, D) with b "
                         f"{tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError("a and b must be on the same device")
    for name, t in (("a", a), ("b", b), ("h0", h0)):
        if t is not None and t.dtype not in _host.REAL_DTYPES + _host.COMPLEX_DTYPES:
            raise TypeError(f"triton diag_scan: {name} must be fp16/bf16/fp32/fp64 or "
                            f"complex64/complex128, got {t.dtype}")
    nseq = B
    if cu is not None:
        if B != 1:
            raise ValueError(f"cu_seqlens needs B == 1 (packed sequences); got B = {B}")
        if cu.dim() != 1 or cu.numel() < 2 or cu.dtype not in (torch.int32, torch.int64):
            raise ValueError("cu_seqlens must be a 1-D int32/int64 tensor of N_seq + 1 offsets")
        if cu.device.type == "cpu" and not torch.compiler.is_compiling():
            c = cu.tolist()  # cheap on CPU; skipped on GPU to stay free of host syncs
            if c[0] != 0 or c[-1] != L or any(x > y for x, y in zip(c, c[1:])):
                raise ValueError(f"cu_seqlens must rise from 0 to L = {L}; got {c}")
        nseq = cu.numel() - 1
    if h0 is not None and tuple(h0.shape) != (nseq, D):
        raise ValueError(f"h0 must be ({nseq}, {D}); got {tuple(h0.shape)}")


def diag_scan(a: Tensor, b: Tensor, h0: Tensor | None = None, reverse: bool = False,
              cu_seqlens: Tensor | None = None, *, block_l: int = 0,
              block_d: int = 0) -> tuple[Tensor, Tensor]:
    """Triton ``h_t = a_t * h_{t-1} + b_t``; differentiable in ``a``, ``b``, ``h0``.

    Returns ``(h, h_last)`` exactly as ``diag_scan_ref``.  ``block_l``/``block_d`` (powers of
    two, 0 = default) set the tile; tests use small tiles to cover tile boundaries.
    """
    _check(a, b, h0, cu_seqlens)
    out = torch.promote_types(a.dtype, b.dtype)
    if h0 is not None and h0.is_complex() and not out.is_complex:
        out = torch.promote_types(out, h0.dtype)
    if out.is_complex:
        # Real operands of a complex scan are promoted (differentiably: real gradients return).
        cdt = torch.complex128 if _host.real_of(out) == torch.float64 else torch.complex64
        a, b = a.to(cdt), b.to(cdt)
        out = cdt
    if h0 is not None and h0.is_complex() != out.is_complex:
        h0 = h0.to(out)
    B, L, D = b.shape
    cu = None if cu_seqlens is None else cu_seqlens.to(device=b.device, dtype=torch.int32)
    if L == 0:
        nseq = B if cu is None else cu.numel() - 1
        last = h0.to(out) if h0 is not None else b.new_zeros((nseq, D), dtype=out)
        return b.new_zeros((B, 0, D), dtype=out), last
    a, b = a.contiguous(), b.contiguous()
    h0 = None if h0 is None else h0.contiguous()
    return _diag_scan_op(a, b, h0, cu, bool(reverse), int(block_l), int(block_d))
