"""Single-token decode steps in one kernel launch each.

* :func:`diag_step` ``(a_t, b_t, h) -> h_new``: ``h_new = a_t * h + b_t`` (the formula of
  ``lrnnx_kernels.diag_scan.diag_step``), a_t (B, D) or (1, D), real or complex, computed in
  fp32 (fp64 for double inputs), returned in the promoted dtype of ``a_t`` and ``b_t``.
* :func:`selective_step`: one token of the S6 scan (see ``selective_scan.py``), real or complex
  A / B / C (complex ones as interleaved (re, im) pairs, cast like the scan does).

Example::

    h = diag_step(a[:, t], b[:, t], h)
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _host
from ._tl import discretize, discretize_cplx, sigmoid, softplus

_BLOCK = 1024


@triton.jit
def _diag_step_kernel(a_ptr, b_ptr, h_ptr, out_ptr, n, D, A_BCAST: tl.constexpr,
                      CPLX: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    if A_BCAST:
        ia = i % D
    else:
        ia = i
    if CPLX:
        ar = tl.load(a_ptr + 2 * ia, mask=m, other=0.0).to(ACC)
        ai = tl.load(a_ptr + 2 * ia + 1, mask=m, other=0.0).to(ACC)
        hr = tl.load(h_ptr + 2 * i, mask=m, other=0.0).to(ACC)
        hi = tl.load(h_ptr + 2 * i + 1, mask=m, other=0.0).to(ACC)
        br = tl.load(b_ptr + 2 * i, mask=m, other=0.0).to(ACC)
        bi = tl.load(b_ptr + 2 * i + 1, mask=m, other=0.0).to(ACC)
        outr = ar * hr - ai * hi + br
        outi = ar * hi + ai * hr + bi
        tl.store(out_ptr + 2 * i, outr.to(out_ptr.dtype.element_ty), mask=m)
        tl.store(out_ptr + 2 * i + 1, outi.to(out_ptr.dtype.element_ty), mask=m)
    else:
        a = tl.load(a_ptr + ia, mask=m, other=0.0).to(ACC)
        h = tl.load(h_ptr + i, mask=m, other=0.0).to(ACC)
        b = tl.load(b_ptr + i, mask=m, other=0.0).to(ACC)
        tl.store(out_ptr + i, (a * h + b).to(out_ptr.dtype.element_ty), mask=m)


@torch.library.custom_op("lrnnx::triton_diag_step", mutates_args=())
def _diag_step_op(a_t: Tensor, b_t: Tensor, h: Tensor) -> Tensor:
    out = torch.empty(b_t.shape, dtype=torch.promote_types(a_t.dtype, b_t.dtype),
                      device=b_t.device)
    n = b_t.numel()
    if n == 0:
        return out
    acc = _host.acc_dtype(a_t.dtype, b_t.dtype, h.dtype)
    with _host.on_device(out):
        _diag_step_kernel[(triton.cdiv(n, _BLOCK),)](
            _host.rview(a_t), _host.rview(b_t), _host.rview(h), _host.rview(out), n,
            b_t.shape[-1], A_BCAST=a_t.shape[0] != b_t.shape[0], CPLX=out.is_complex(),
            ACC=_host.tl_dtype(acc), BLOCK=_BLOCK)
    return out


@_diag_step_op.register_fake
def _(a_t, b_t, h):
    return b_t.new_empty(b_t.shape, dtype=torch.promote_types(a_t.dtype, b_t.dtype))


def _step_setup(ctx, inputs, output):
    a_t, b_t, h = inputs
    ctx.save_for_backward(a_t, h)
    ctx.dtypes = (a_t.dtype, b_t.dtype, h.dtype)


def _step_backward(ctx, g):
    # d(a h + b): grad_a = g conj(h) (summed over a shared batch row), grad_b = g,
    # grad_h = g conj(a) -- PyTorch's conjugate convention for complex inputs.
    a_t, h = ctx.saved_tensors
    da, db, dh = ctx.dtypes
    ga = gh = None
    if ctx.needs_input_grad[0]:
        ga = g * h.conj()
        if a_t.shape[0] != g.shape[0]:
            ga = ga.sum(0, keepdim=True)
        ga = ga.to(da)
    if ctx.needs_input_grad[2]:
        gh = (g * a_t.conj()).to(dh)
    return ga, g.to(db), gh


_diag_step_op.register_autograd(_step_backward, setup_context=_step_setup)


def diag_step(a_t: Tensor, b_t: Tensor, h: Tensor | None) -> Tensor:
    """``h_new = a_t * h + b_t`` in one launch; ``h=None`` is the zero state (returns ``b_t``
    in the promoted dtype).  a_t: (B, D) or (1, D); b_t, h: (B, D)."""
    if b_t.dim() != 2 or a_t.dim() != 2 or a_t.shape[1] != b_t.shape[1] \
            or a_t.shape[0] not in (1, b_t.shape[0]):
        raise ValueError(f"a_t {tuple(a_t.shape)} must be (B, D) or (1, D) with b_t "
                         f"{tuple(b_t.shape)} (B, D)")
    out = torch.promote_types(a_t.dtype, b_t.dtype)
    if h is not None and h.is_complex() and not out.is_complex:
        out = torch.promote_types(out, h.dtype)
    if h is None:
        return b_t.to(out).clone()
    if h.shape != b_t.shape:
        raise ValueError(f"h must be {tuple(b_t.shape)}; got {tuple(h.shape)}")
    if out.is_complex:
        cdt = torch.complex128 if _host.real_of(out) == torch.float64 else torch.complex64
        a_t, b_t, h = a_t.to(cdt), b_t.to(cdt), h.to(cdt)
    return _diag_step_op(a_t.contiguous(), b_t.contiguous(), h.contiguous())


# ----------------------------------------------------------------------------- selective step
@triton.jit
def _selective_step_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ts_ptr, h_ptr, y_ptr, out_ptr,
    Dm, N, G, dpg,
    DISC: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_TS: tl.constexpr, HAS_H: tl.constexpr, ACC: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One token of the S6 recurrence for a (batch row, channel block): the formulas of
    ``ss_fwd_kernel`` without the scan."""
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    b64 = pid_b.to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < Dm
    n = tl.arange(0, BLOCK_N)
    nm = n < N
    dn_m = dm[:, None] & nm[None, :]
    grp = (pid_d * BLOCK_D) // dpg
    off = b64 * Dm + d
    u = tl.load(u_ptr + off, mask=dm, other=0.0).to(ACC)
    v = tl.load(dl_ptr + off, mask=dm, other=0.0).to(ACC)
    if HAS_BIAS:
        v = v + tl.load(bias_ptr + d, mask=dm, other=0.0).to(ACC)
    if SOFTPLUS:
        v = softplus(v)
    if HAS_TS:
        v = v * tl.load(ts_ptr + b64).to(ACC)
    dt = tl.where(dm, v, 0.0)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn_m, other=0.0).to(ACC)
    boff = (b64 * G + grp) * N + n
    Bv = tl.load(B_ptr + boff, mask=nm, other=0.0).to(ACC)
    Cv = tl.load(C_ptr + boff, mask=nm, other=0.0).to(ACC)
    abar, scale = discretize(dt[:, None], A, DISC)
    soff = off[:, None] * N + n[None, :]
    h = scale * (u[:, None] * Bv[None, :])
    if HAS_H:
        h += abar * tl.load(h_ptr + soff, mask=dn_m, other=0.0).to(ACC)
    y = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        y = y + tl.load(D_ptr + d, mask=dm, other=0.0).to(ACC) * u
    if HAS_Z:
        zv = tl.load(z_ptr + off, mask=dm, other=0.0).to(ACC)
        y = y * (zv * sigmoid(zv))
    tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=dm)
    tl.store(out_ptr + soff, h.to(out_ptr.dtype.element_ty), mask=dn_m)


@triton.jit
def _selective_step_cplx_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ts_ptr, h_ptr, y_ptr, out_ptr,
    Dm, N, G, dpg,
    DISC: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_TS: tl.constexpr, HAS_H: tl.constexpr, ACC: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """:func:`_selective_step_kernel` with complex A, B, C and state (interleaved pairs):
    ``h = a h + s u B``, ``y = Re(sum_n C h) + D u`` (times silu(z))."""
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    b64 = pid_b.to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < Dm
    n = tl.arange(0, BLOCK_N)
    nm = n < N
    dn_m = dm[:, None] & nm[None, :]
    grp = (pid_d * BLOCK_D) // dpg
    off = b64 * Dm + d
    u = tl.load(u_ptr + off, mask=dm, other=0.0).to(ACC)
    v = tl.load(dl_ptr + off, mask=dm, other=0.0).to(ACC)
    if HAS_BIAS:
        v = v + tl.load(bias_ptr + d, mask=dm, other=0.0).to(ACC)
    if SOFTPLUS:
        v = softplus(v)
    if HAS_TS:
        v = v * tl.load(ts_ptr + b64).to(ACC)
    dt = tl.where(dm, v, 0.0)
    aoff = (d[:, None] * N + n[None, :]) * 2
    Ar = tl.load(A_ptr + aoff, mask=dn_m, other=0.0).to(ACC)
    Ai = tl.load(A_ptr + aoff + 1, mask=dn_m, other=0.0).to(ACC)
    boff = ((b64 * G + grp) * N + n) * 2
    Br = tl.load(B_ptr + boff, mask=nm, other=0.0).to(ACC)[None, :]
    Bi = tl.load(B_ptr + boff + 1, mask=nm, other=0.0).to(ACC)[None, :]
    Cr = tl.load(C_ptr + boff, mask=nm, other=0.0).to(ACC)[None, :]
    Ci = tl.load(C_ptr + boff + 1, mask=nm, other=0.0).to(ACC)[None, :]
    ar, ai, sr, si = discretize_cplx(dt[:, None], Ar, Ai, DISC)
    soff = (off[:, None] * N + n[None, :]) * 2
    ur = u[:, None] * Br
    ui = u[:, None] * Bi
    hr = sr * ur - si * ui
    hi = sr * ui + si * ur
    if HAS_H:
        pr = tl.load(h_ptr + soff, mask=dn_m, other=0.0).to(ACC)
        pi = tl.load(h_ptr + soff + 1, mask=dn_m, other=0.0).to(ACC)
        hr += ar * pr - ai * pi
        hi += ar * pi + ai * pr
    y = tl.sum(hr * Cr - hi * Ci, axis=1)
    if HAS_D:
        y = y + tl.load(D_ptr + d, mask=dm, other=0.0).to(ACC) * u
    if HAS_Z:
        zv = tl.load(z_ptr + off, mask=dm, other=0.0).to(ACC)
        y = y * (zv * sigmoid(zv))
    tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=dm)
    tl.store(out_ptr + soff, hr.to(out_ptr.dtype.element_ty), mask=dn_m)
    tl.store(out_ptr + soff + 1, hi.to(out_ptr.dtype.element_ty), mask=dn_m)


@torch.library.custom_op("lrnnx::triton_selective_step", mutates_args=())
def _selective_step_op(u_t: Tensor, delta_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor,
                       state: Optional[Tensor], D: Optional[Tensor], z_t: Optional[Tensor],
                       delta_bias: Optional[Tensor], timesteps_t: Optional[Tensor],
                       softplus: bool, disc: int, block_d: int) -> tuple[Tensor, Tensor]:
    Bt, Dm = u_t.shape
    G, N = B_t.shape[1], B_t.shape[2]
    acc = _host.acc_dtype(*(t.dtype for t in (u_t, delta_t, A, B_t, C_t, state) if t is not None))
    cplx = A.is_complex()  # then B_t, C_t (and state) are complex too (see selective_step)
    bn = _host.pow2_ceil(N)
    bd = block_d or max(1, min(_host.pow2_ceil(Dm),
                               _host.pow2_floor(max(1, (2048 if cplx else 4096) // bn))))
    if G > 1:
        bd = _host.pow2_divisor(Dm // G, bd)
    y = torch.empty_like(u_t)
    new = torch.empty((Bt, Dm, N), dtype=_host.complex_of(acc) if cplx else acc,
                      device=u_t.device)
    o = lambda t: _host.dummy(u_t) if t is None else t  # noqa: E731
    rv = _host.rview
    kernel = _selective_step_cplx_kernel if cplx else _selective_step_kernel
    with _host.on_device(u_t):
        kernel[(Bt, triton.cdiv(Dm, bd))](
            u_t, delta_t, rv(A), rv(B_t), rv(C_t), o(D), o(z_t), o(delta_bias), o(timesteps_t),
            o(None if state is None else rv(state)), y, rv(new), Dm, N, G, Dm // G,
            DISC=disc, SOFTPLUS=softplus, HAS_D=D is not None, HAS_Z=z_t is not None,
            HAS_BIAS=delta_bias is not None, HAS_TS=timesteps_t is not None,
            HAS_H=state is not None, ACC=_host.tl_dtype(acc), BLOCK_D=bd, BLOCK_N=bn,
            num_warps=4)
    return y, new


@_selective_step_op.register_fake
def _(u_t, delta_t, A, B_t, C_t, state, D, z_t, delta_bias, timesteps_t, softplus, disc, block_d):
    acc = _host.acc_dtype(*(t.dtype for t in (u_t, delta_t, A, B_t, C_t, state) if t is not None))
    sdt = _host.complex_of(acc) if A.is_complex() else acc
    return torch.empty_like(u_t), u_t.new_empty((u_t.shape[0], u_t.shape[1], B_t.shape[2]),
                                                dtype=sdt)


def _sstep_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:10])
    ctx.cfg = inputs[10:]


def _sstep_backward(ctx, gy, gstate):
    # A step is a scan of length 1 whose only tile checkpoint is the incoming state: reuse the
    # fused scan backward.
    from .selective_scan import _bwd_op

    u, dl, A, B, C, state, D, z, bias, ts = ctx.saved_tensors
    softplus, disc, block_d = ctx.cfg
    Bt, Dm = u.shape
    N = B.shape[2]
    acc = _host.acc_dtype(*(t.dtype for t in (u, dl, A, B, C, state) if t is not None))
    sdt = _host.complex_of(acc) if A.is_complex() else acc
    ck = (state.to(sdt) if state is not None else u.new_zeros((Bt, Dm, N), dtype=sdt))[:, None]
    one = lambda t: None if t is None else t.unsqueeze(1)  # noqa: E731
    g = _bwd_op(one(u), one(dl), A, one(B), one(C), D, one(z), bias, one(ts), ck.contiguous(),
                one(gy), gstate, softplus, disc, 0, 0)
    need = ctx.needs_input_grad
    sq = lambda i, t: t.squeeze(1) if need[i] and t.dim() > 1 else (t if need[i] else None)  # noqa
    du, ddl, dA, dB, dC, dD, dz, dbias, dts, dh = g
    dstate = dh.to(state.dtype) if (state is not None and need[5]) else None
    return (sq(0, du), sq(1, ddl), dA if need[2] else None, sq(3, dB), sq(4, dC), dstate,
            dD if need[6] else None, sq(7, dz), dbias if need[8] else None,
            dts.squeeze(1) if need[9] else None, None, None, None)


_selective_step_op.register_autograd(_sstep_backward, setup_context=_sstep_setup)


def selective_step(u_t: Tensor, delta_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor,
                   state: Tensor | None, D: Tensor | None = None, z_t: Tensor | None = None,
                   delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   discretization: str = "mamba", timesteps_t: Tensor | None = None, *,
                   block_d: int = 0) -> tuple[Tensor, Tensor]:
    """One selective-scan token in one launch; same contract as
    ``lrnnx_kernels.selective_scan.selective_step`` (real or complex A, B, C, state; complex
    inputs are cast as in :func:`~.selective_scan.selective_scan`).

    Returns ``(y_t, state)``: y_t (Bt, Dm) in u_t's dtype, the new state (Bt, Dm, N) in the
    compute dtype (fp32, fp64 for double inputs; complex64 / complex128 when A or B_t is
    complex).  Differentiable in every tensor input.
    """
    from lrnnx_kernels.selective_scan._common import check_shapes, group_view

    check_shapes(u_t.unsqueeze(1), delta_t.unsqueeze(1), A, discretization)
    for name, t in (("u_t", u_t), ("delta_t", delta_t), ("D", D), ("z_t", z_t),
                    ("delta_bias", delta_bias), ("timesteps_t", timesteps_t)):
        if t is not None and t.is_complex():
            raise TypeError(f"triton selective_step: {name} must be real, got {t.dtype}")
    cplx = A.is_complex() or B_t.is_complex()
    if state is not None and state.is_complex() and not cplx:
        raise TypeError("triton selective_step: state is complex but the recurrence is real (A "
                        "and B_t are real); pass state.real, or complex A / B_t")
    if cplx:
        acc = _host.acc_dtype(*(t.dtype for t in (u_t, delta_t, A, B_t, C_t, state)
                                if t is not None))
        sdt = _host.complex_of(acc)
        A, B_t, C_t = A.to(sdt), B_t.to(sdt), C_t.to(sdt)
        state = None if state is None else state.to(sdt)
    elif C_t.is_complex():  # real state: y reads Re(sum_n C h)
        C_t = C_t.real
    Bt, Dm = u_t.shape
    N = A.shape[1]
    Bg = group_view(B_t, 1, Dm, "B_t")
    Cg = group_view(C_t, 1, Dm, "C_t")
    if Bg.shape[0] != Bt or Bg.shape[2] != N or Cg.shape != Bg.shape:
        raise ValueError(f"B_t and C_t must be (Bt, N) or (Bt, G, N) with Bt={Bt}, N={N}; got "
                         f"{tuple(B_t.shape)}, {tuple(C_t.shape)}")
    if state is not None and tuple(state.shape) != (Bt, Dm, N):
        raise ValueError(f"state must be {(Bt, Dm, N)}; got {tuple(state.shape)}")
    if timesteps_t is not None and tuple(timesteps_t.shape) != (Bt,):
        raise ValueError(f"timesteps_t must be ({Bt},); got {tuple(timesteps_t.shape)}")
    c = lambda t: None if t is None else t.contiguous()  # noqa: E731
    return _selective_step_op(c(u_t), c(delta_t), c(A), c(Bg), c(Cg), c(state), c(D), c(z_t),
                              c(delta_bias), c(timesteps_t), bool(delta_softplus),
                              _host.DISC_CODES[discretization], int(block_d))
