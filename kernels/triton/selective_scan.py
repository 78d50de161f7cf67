"""Fused Triton selective (S6) scan: ``selective_scan`` with the contract of
``lrnnx_kernels.selective_scan.selective_scan_ref`` (Gu & Dao 2023,
https://arxiv.org/abs/2312.00752), discretization inside the kernel.

    y = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)

Shapes: u, delta, z (Bt, L, Dm); A (Dm, N); B, C (Bt, L, N) or grouped (Bt, L, G, N);
D, delta_bias (Dm,); timesteps (Bt, L); h0 (Bt, Dm, N).  Methods mamba/euler/zoh/bilinear/dirac.
Computed in fp32 (fp64 if any input is double); ``y`` in u's dtype, ``h_last`` in the compute
dtype.  Memory: besides inputs and outputs only the per-tile state checkpoints
(Bt, ceil(L / BLOCK_L), Dm, N) kept for the backward (see ``selective_scan_kernels.py``).

Complex S6 (as in the reference): A, B, C and h0 may be complex (u, delta, z, D, delta_bias,
timesteps are real).  When A or B is complex the state is complex: A, B, C (and h0) are cast
here, with differentiable ``.to``, to complex64 (complex128 for double inputs), the complex
kernels run (``ss_fwd_cplx_kernel`` / ``ss_bwd_cplx_kernel``), ``y = Re(sum_n C h) + D u``
(times silu(z)) and ``h_last`` is complex; gradients follow PyTorch's conjugate convention and
come back in every input's own dtype (a real A or B gets the real part).  A complex C with real
A and B keeps the state real and only ``Re(C)`` is read, so the real kernels run on ``C.real``.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
from torch import Tensor

from lrnnx_kernels.selective_scan._common import check_shapes, group_view

from . import _host
from .selective_scan_kernels import (ss_bwd_cplx_kernel, ss_bwd_kernel, ss_fwd_cplx_kernel,
                                     ss_fwd_kernel)

#: launch tunables (module attributes so a benchmark can sweep them).  Measured on an H200
#: (Bt=8, L=2048, Dm=2048, N=16, fp32): BLOCK_L=8 with 4096-element tiles (BLOCK_D=32) gave
#: forward 0.81 ms / backward 7.5 ms; BLOCK_L=16 or 8192-element tiles spill in the backward.
DEFAULT_BLOCK_L = 8
FWD_TILE = 4096  # elements of one (BLOCK_L, BLOCK_D, BLOCK_N) register tile in the forward
BWD_TILE = 4096  # ... in the backward
FWD_WARPS = 4
BWD_WARPS = 4
BWD_ATOMIC = False  # dB/dC: per-block partials (deterministic) or atomics
#: complex S6 carries two register tiles per value: tiles of half the elements (not tuned on a
#: GPU yet; the ``blocks`` budget for complex problems is ``tile // CPLX_TILE_DIV``)
CPLX_TILE_DIV = 2


def blocks(Dm: int, N: int, G: int, block_l: int, block_d: int, tile: int) -> tuple[int, int, int]:
    """(BLOCK_L, BLOCK_D, BLOCK_N).  BLOCK_D divides the channels of a group (Dm // G) when G > 1,
    so a block reads one group of B/C."""
    bl = block_l or DEFAULT_BLOCK_L
    bn = _host.pow2_ceil(N)
    if block_d:
        bd = block_d
    else:
        bd = max(1, min(_host.pow2_ceil(Dm), _host.pow2_floor(max(1, tile // (bl * bn)))))
    if bl & (bl - 1) or bd & (bd - 1):
        raise ValueError(f"block sizes must be powers of two, got block_l={bl}, block_d={bd}")
    if G > 1:
        bd = _host.pow2_divisor(Dm // G, bd)
    return bl, bd, bn


def _opt(t: Tensor | None, ref: Tensor) -> Tensor:
    return _host.dummy(ref) if t is None else t


@torch.library.custom_op("lrnnx::triton_selective_scan_fwd", mutates_args=())
def _fwd_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
            z: Optional[Tensor], delta_bias: Optional[Tensor], timesteps: Optional[Tensor],
            h0: Optional[Tensor], softplus: bool, disc: int, store_ckpt: bool, block_l: int,
            block_d: int) -> tuple[Tensor, Tensor, Tensor]:
    Bt, L, Dm = u.shape
    G, N = B.shape[2], B.shape[3]
    acc = _host.acc_dtype(*(t.dtype for t in (u, delta, A, B, C, h0) if t is not None))
    cplx = A.is_complex()  # then B, C (and h0) are complex too (see selective_scan)
    sdt = _host.complex_of(acc) if cplx else acc
    bl, bd, bn = blocks(Dm, N, G, block_l, block_d, FWD_TILE // (CPLX_TILE_DIV if cplx else 1))
    n_tiles = triton.cdiv(L, bl)
    y = torch.empty_like(u)
    last = torch.empty((Bt, Dm, N), dtype=sdt, device=u.device)
    ck = torch.empty((Bt, n_tiles, Dm, N) if store_ckpt else (0,), dtype=sdt, device=u.device)
    rv = _host.rview
    kernel = ss_fwd_cplx_kernel if cplx else ss_fwd_kernel
    with _host.on_device(u):
        kernel[(Bt, triton.cdiv(Dm, bd))](
            u, delta, rv(A), rv(B), rv(C), _opt(D, u), _opt(z, u), _opt(delta_bias, u),
            _opt(timesteps, u), _opt(None if h0 is None else rv(h0), u), y, rv(last),
            _opt(rv(ck) if store_ckpt else None, u),
            L, Dm, N, G, Dm // G, n_tiles,
            DISC=disc, SOFTPLUS=softplus, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None, HAS_TS=timesteps is not None,
            HAS_H0=h0 is not None, STORE_CKPT=store_ckpt, ACC=_host.tl_dtype(acc),
            BLOCK_L=bl, BLOCK_D=bd, BLOCK_N=bn, num_warps=FWD_WARPS)
    return y, last, ck


@_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, timesteps, h0, softplus, disc, store_ckpt, block_l,
      block_d):
    Bt, L, Dm = u.shape
    N = B.shape[3]
    acc = _host.acc_dtype(*(t.dtype for t in (u, delta, A, B, C, h0) if t is not None))
    sdt = _host.complex_of(acc) if A.is_complex() else acc
    bl = block_l or DEFAULT_BLOCK_L
    ck_shape = (Bt, (L + bl - 1) // bl, Dm, N) if store_ckpt else (0,)
    return (torch.empty_like(u), u.new_empty((Bt, Dm, N), dtype=sdt),
            u.new_empty(ck_shape, dtype=sdt))


_GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "timesteps", "h0")


@torch.library.custom_op("lrnnx::triton_selective_scan_bwd", mutates_args=())
def _bwd_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
            z: Optional[Tensor], delta_bias: Optional[Tensor], timesteps: Optional[Tensor],
            ck: Tensor, dy: Optional[Tensor], dlast: Optional[Tensor], softplus: bool, disc: int,
            block_l: int, block_d: int) -> list[Tensor]:
    Bt, L, Dm = u.shape
    G, N = B.shape[2], B.shape[3]
    cplx = A.is_complex()
    sdt = ck.dtype  # the state dtype: acc, or complex of acc
    acc = _host.real_of(sdt)
    bl, bd, bn = blocks(Dm, N, G, block_l, block_d, BWD_TILE // (CPLX_TILE_DIV if cplx else 1))
    if bl != (block_l or DEFAULT_BLOCK_L):
        raise RuntimeError("internal: the backward tile length must match the checkpoints")
    n_tiles = ck.shape[1]
    du, ddl = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else u.new_empty((0,))
    nblk = triton.cdiv(Dm, bd)
    if BWD_ATOMIC:
        dB = torch.zeros(B.shape, dtype=sdt, device=u.device)
        dC = torch.zeros(C.shape, dtype=sdt, device=u.device)
    else:  # per channel block, reduced per group below
        dB = torch.empty((nblk, Bt, L, N), dtype=sdt, device=u.device)
        dC = torch.empty((nblk, Bt, L, N), dtype=sdt, device=u.device)
    dts = torch.zeros((Bt, L), dtype=acc, device=u.device)
    dA = torch.empty((Bt, Dm, N), dtype=sdt, device=u.device)  # per batch row, summed below
    dD = torch.empty((Bt, Dm), dtype=acc, device=u.device)
    dbias = torch.empty((Bt, Dm), dtype=acc, device=u.device)
    dh0 = torch.empty((Bt, Dm, N), dtype=sdt, device=u.device)
    rv = _host.rview
    kernel = ss_bwd_cplx_kernel if cplx else ss_bwd_kernel
    with _host.on_device(u):
        kernel[(Bt, triton.cdiv(Dm, bd))](
            u, delta, rv(A), rv(B), rv(C), _opt(D, u), _opt(z, u), _opt(delta_bias, u),
            _opt(timesteps, u), rv(ck), _opt(None if dy is None else dy.contiguous(), u),
            _opt(None if dlast is None else rv(dlast.to(sdt).contiguous()), u),
            du, ddl, _opt(z if z is None else dz, u), rv(dB), rv(dC), dts, rv(dA), dD, dbias,
            rv(dh0),
            L, Dm, N, G, Dm // G, n_tiles,
            DISC=disc, SOFTPLUS=softplus, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None, HAS_TS=timesteps is not None,
            HAS_DY=dy is not None, HAS_DLAST=dlast is not None, ATOMIC=BWD_ATOMIC,
            ACC=_host.tl_dtype(acc), BLOCK_L=bl, BLOCK_D=bd, BLOCK_N=bn, num_warps=BWD_WARPS)
    if not BWD_ATOMIC:
        # Blocks never straddle groups and come in group order: G runs of nblk // G blocks
        # (G == 1: one run over all blocks, the last possibly partial).
        dB = dB.view(G, nblk // G, Bt, L, N).sum(1).permute(1, 2, 0, 3).contiguous()
        dC = dC.view(G, nblk // G, Bt, L, N).sum(1).permute(1, 2, 0, 3).contiguous()
    none = lambda: u.new_empty((0,))  # noqa: E731 - outputs must not alias each other
    return [du, ddl, dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            dD.sum(0).to(D.dtype) if D is not None else none(), dz,
            dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else none(),
            dts.to(timesteps.dtype) if timesteps is not None else none(), dh0]


@_bwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, timesteps, ck, dy, dlast, softplus, disc, block_l,
      block_d):
    like = lambda t: u.new_empty((0,)) if t is None else torch.empty_like(t)  # noqa: E731
    return [torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A),
            torch.empty_like(B), torch.empty_like(C), like(D), like(z), like(delta_bias),
            like(timesteps), u.new_empty((u.shape[0], u.shape[2], B.shape[3]), dtype=ck.dtype)]


def _setup(ctx, inputs, output):
    (u, delta, A, B, C, D, z, delta_bias, timesteps, h0, softplus, disc, store_ckpt, block_l,
     block_d) = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, timesteps, output[2])
    ctx.cfg = (softplus, disc, block_l, block_d, None if h0 is None else h0.dtype, store_ckpt)


def _backward(ctx, dy, dlast, _dck):
    u, delta, A, B, C, D, z, delta_bias, timesteps, ck = ctx.saved_tensors
    softplus, disc, block_l, block_d, h0_dtype, store_ckpt = ctx.cfg
    if not store_ckpt:
        raise RuntimeError("triton selective_scan: no checkpoints were stored (the forward ran "
                           "without gradients enabled); rerun the forward with grad enabled")
    grads = _bwd_op(u, delta, A, B, C, D, z, delta_bias, timesteps, ck, dy, dlast, softplus,
                    disc, block_l, block_d)
    out = [g if ctx.needs_input_grad[i] else None for i, g in enumerate(grads[:9])]
    dh0 = grads[9].to(h0_dtype) if (h0_dtype is not None and ctx.needs_input_grad[9]) else None
    return (*out, dh0, None, None, None, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Tensor | None = None, z: Tensor | None = None,
                   delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   discretization: str = "mamba", timesteps: Tensor | None = None,
                   h0: Tensor | None = None, return_last_state: bool = False, *,
                   block_l: int = 0, block_d: int = 0):
    """Fused selective scan; same arguments and results as ``selective_scan_ref``.

    Differentiable in every tensor input (u, delta, A, B, C, D, z, delta_bias, timesteps, h0).
    ``block_l`` / ``block_d``: tile sizes (powers of two; 0 = defaults).
    """
    check_shapes(u, delta, A, discretization)
    for name, t in (("u", u), ("delta", delta), ("D", D), ("z", z), ("delta_bias", delta_bias),
                    ("timesteps", timesteps)):
        if t is not None and t.dtype not in _host.REAL_DTYPES:
            raise TypeError(f"triton selective_scan: {name} must be fp16/bf16/fp32/fp64, "
                            f"got {t.dtype}")
    for name, t in (("A", A), ("B", B), ("C", C), ("h0", h0)):
        if t is not None and t.dtype not in _host.REAL_DTYPES + _host.COMPLEX_DTYPES:
            raise TypeError(f"triton selective_scan: {name} must be fp16/bf16/fp32/fp64/"
                            f"complex64/complex128, got {t.dtype}")
    cplx = A.is_complex() or B.is_complex()
    if h0 is not None and h0.is_complex() and not cplx:
        raise TypeError("triton selective_scan: h0 is complex but the recurrence is real (A and "
                        "B are real); pass h0.real, or complex A / B")
    Bt, L, Dm = u.shape
    N = A.shape[1]
    Bg = group_view(B, 2, Dm, "B")
    Cg = group_view(C, 2, Dm, "C")
    if Bg.shape[:2] != (Bt, L) or Bg.shape[3] != N or Cg.shape != Bg.shape:
        raise ValueError(f"B and C must be (Bt, L, N) or (Bt, L, G, N) with Bt={Bt}, L={L}, "
                         f"N={N}; got {tuple(B.shape)}, {tuple(C.shape)}")
    for name, t, shape in (("D", D, (Dm,)), ("delta_bias", delta_bias, (Dm,)),
                           ("z", z, (Bt, L, Dm)), ("timesteps", timesteps, (Bt, L)),
                           ("h0", h0, (Bt, Dm, N))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {shape}; got {tuple(t.shape)}")
    acc = _host.acc_dtype(*(t.dtype for t in (u, delta, A, B, C, h0) if t is not None))
    if cplx:  # complex state: A, B, C, h0 in the complex compute dtype (differentiable casts)
        sdt = _host.complex_of(acc)
        A, Bg, Cg = A.to(sdt), Bg.to(sdt), Cg.to(sdt)
        h0 = None if h0 is None else h0.to(sdt)
    else:
        sdt = acc
        if Cg.is_complex():  # real state: y reads Re(sum_n C h) = sum_n Re(C) h
            Cg = Cg.real
    if L == 0:
        y = u.new_zeros((Bt, 0, Dm))
        last = h0.to(sdt) if h0 is not None else u.new_zeros((Bt, Dm, N), dtype=sdt)
        return (y, last) if return_last_state else y
    c = lambda t: None if t is None else t.contiguous()  # noqa: E731
    tensors = (u, delta, A, Bg, Cg, D, z, delta_bias, timesteps, h0)
    store = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    y, last, _ = _fwd_op(c(u), c(delta), c(A), c(Bg), c(Cg), c(D), c(z), c(delta_bias),
                         c(timesteps), c(h0), bool(delta_softplus),
                         _host.DISC_CODES[discretization], store, int(block_l), int(block_d))
    return (y, last) if return_last_state else y
