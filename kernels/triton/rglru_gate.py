"""The RG-LRU gate (Griffin / Hawk) as one Triton kernel forward and one backward.

Given the gate pre-activations ``ga``, ``gx`` (the block-diagonal projections of ``x``), ``x`` and
``coef = -c * softplus(-Lambda)`` (one value per channel)::

    r = sigmoid(ga),  i = sigmoid(gx),  log_a = coef * r
    a = exp(log_a),   b = sqrt(1 - a^2) * i * x        (1 - a^2 = -expm1(2 log_a))

The backward takes the gradients of ``a`` and ``b`` (either may be absent) and returns those of
``ga``, ``gx``, ``x`` and ``coef``; the ``sqrt`` derivative is clipped as in Griffin
(``1 / (2 sqrt(1 - a^2))`` at ``max_sqrt_grad``).  ``coef``'s gradient is reduced over the rows in
fixed order (per-tile partial sums, then one ``sum`` over the tiles: deterministic).

The PyTorch code of ``lrnnx_plugins.recurrent.rglru`` is the slow twin: these kernels replace
its ~10 forward and ~20 backward elementwise launches (H200, ``rglru`` B32 L1024 d_model 256)
by two.  Compute is fp32 whatever the storage dtype (fp16 / bf16 / fp32); fp64 stays on the
PyTorch path.  ``1 - a^2`` uses a degree-9 Taylor series of ``expm1`` for ``|2 log_a| < 0.5``
(``a`` near 1, where ``1 - exp`` cancels), ``1 - exp`` beyond (relative error < 2e-7).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_R = 32
BLOCK_W = 64


@triton.jit
def _one_minus_a2(y):
    """-expm1(y) for y <= 0 (y = 2 log_a), accurate near 0."""
    # Horner form of y (1 + y/2 (1 + y/3 (1 + ... y/9))): error < (0.5)^10 / 10! relative
    p = 1.0 + y / 9.0
    p = 1.0 + y / 8.0 * p
    p = 1.0 + y / 7.0 * p
    p = 1.0 + y / 6.0 * p
    p = 1.0 + y / 5.0 * p
    p = 1.0 + y / 4.0 * p
    p = 1.0 + y / 3.0 * p
    p = 1.0 + y / 2.0 * p
    series = -(y * p)
    return tl.where(y > -0.5, series, 1.0 - tl.exp(y))


@triton.jit
def _tile(pid_r, pid_w, R, W, SG, BR: tl.constexpr, BW: tl.constexpr):
    """(cols, mask, offsets into x-shaped (R, W) tensors, offsets into the gates (row stride
    SG: W for separate ga / gx, 2W for the halves of one (R, 2W) projection))."""
    rows = pid_r * BR + tl.arange(0, BR)
    cols = pid_w * BW + tl.arange(0, BW)
    m = (rows[:, None] < R) & (cols[None, :] < W)
    r64 = rows.to(tl.int64)[:, None]
    return cols, m, r64 * W + cols[None, :], r64 * SG + cols[None, :]


@triton.jit
def _rglru_gate_fwd_kernel(ga_ptr, gx_ptr, x_ptr, coef_ptr, a_ptr, b_ptr, R, W, SG,
                           BR: tl.constexpr, BW: tl.constexpr):
    cols, m, off, og = _tile(tl.program_id(0), tl.program_id(1), R, W, SG, BR, BW)
    coef = tl.load(coef_ptr + cols, mask=cols < W, other=0.0).to(tl.float32)
    ga = tl.load(ga_ptr + og, mask=m, other=0.0).to(tl.float32)
    gx = tl.load(gx_ptr + og, mask=m, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
    r = tl.sigmoid(ga)
    i = tl.sigmoid(gx)
    log_a = coef[None, :] * r
    a = tl.exp(log_a)
    s = tl.sqrt(_one_minus_a2(2.0 * log_a))
    tl.store(a_ptr + off, a.to(a_ptr.dtype.element_ty), mask=m)
    tl.store(b_ptr + off, (s * i * x).to(b_ptr.dtype.element_ty), mask=m)


@triton.jit
def _rglru_gate_bwd_kernel(ga_ptr, gx_ptr, x_ptr, coef_ptr, gda_ptr, gdb_ptr,
                           dga_ptr, dgx_ptr, dx_ptr, dcoef_ptr, R, W, SG, min_s,
                           HAS_DA: tl.constexpr, HAS_DB: tl.constexpr,
                           BR: tl.constexpr, BW: tl.constexpr):
    pid_r = tl.program_id(0)
    cols, m, off, og = _tile(pid_r, tl.program_id(1), R, W, SG, BR, BW)
    coef = tl.load(coef_ptr + cols, mask=cols < W, other=0.0).to(tl.float32)
    ga = tl.load(ga_ptr + og, mask=m, other=0.0).to(tl.float32)
    gx = tl.load(gx_ptr + og, mask=m, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
    r = tl.sigmoid(ga)
    i = tl.sigmoid(gx)
    log_a = coef[None, :] * r
    a = tl.exp(log_a)
    dla = tl.zeros_like(ga)
    di = tl.zeros_like(ga)
    dx = tl.zeros_like(ga)
    if HAS_DA:
        dla += tl.load(gda_ptr + off, mask=m, other=0.0).to(tl.float32) * a
    if HAS_DB:
        gb = tl.load(gdb_ptr + off, mask=m, other=0.0).to(tl.float32)
        s = tl.sqrt(_one_minus_a2(2.0 * log_a))
        ds = gb * i * x
        di = gb * s * x
        dx = gb * s * i
        # d sqrt(1 - a^2) / d log_a = -a^2 / sqrt(1 - a^2), the sqrt clipped from below
        dla += ds * (-(a * a)) / tl.maximum(s, min_s)
    dr = dla * coef[None, :]
    tl.store(dga_ptr + og, (dr * r * (1.0 - r)).to(dga_ptr.dtype.element_ty), mask=m)
    tl.store(dgx_ptr + og, (di * i * (1.0 - i)).to(dgx_ptr.dtype.element_ty), mask=m)
    tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=m)
    part = tl.sum(tl.where(m, dla * r, 0.0), axis=0)
    tl.store(dcoef_ptr + pid_r.to(tl.int64) * W + cols, part, mask=cols < W)


def _grid(R: int, W: int, br: int, bw: int) -> tuple[int, int]:
    return triton.cdiv(R, br), triton.cdiv(W, bw)


def _forward(ctx, gates, x, coef, max_sqrt_grad, br, bw, fused):
    """``gates``: (ga, gx) (each x-shaped) or (g2,) with g2 (..., 2W) = [ga | gx]."""
    W = x.shape[-1]
    R = x.numel() // W if W else 0
    gates = tuple(g.contiguous() for g in gates)
    x = x.contiguous()
    # the dtype the PyTorch twin produces (coef * r, then the products)
    gdt = torch.promote_types(gates[0].dtype, gates[-1].dtype)
    out_dtype = torch.promote_types(torch.promote_types(gdt, x.dtype), coef.dtype)
    coef32 = coef.to(torch.float32).contiguous()
    a = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    b = torch.empty_like(a)
    ga, gx = (gates[0], gates[0][..., W:]) if fused else gates
    if R and W:
        _rglru_gate_fwd_kernel[_grid(R, W, br, bw)](ga, gx, x, coef32, a, b, R, W,
                                                    2 * W if fused else W, BR=br, BW=bw)
    ctx.save_for_backward(*gates, x, coef32)
    ctx.cfg = (max_sqrt_grad, br, bw, coef.dtype, fused)
    ctx.set_materialize_grads(False)
    return a, b


def _backward(ctx, gda, gdb):
    """Gradients of (gates..., x, coef); with fused gates one (..., 2W) tensor for both."""
    max_sqrt_grad, br, bw, coef_dtype, fused = ctx.cfg
    *gates, x, coef32 = ctx.saved_tensors
    W = x.shape[-1]
    R = x.numel() // W if W else 0
    if fused:
        dg = torch.empty_like(gates[0])
        ga, gx, dga, dgx = gates[0], gates[0][..., W:], dg, dg[..., W:]
    else:
        (ga, gx), dga, dgx = gates, torch.empty_like(gates[0]), torch.empty_like(gates[1])
    dx = torch.empty_like(x)
    nrb = triton.cdiv(R, br) if R else 0
    parts = torch.empty((nrb, W), dtype=torch.float32, device=x.device)
    if R and W:
        dummy = dx  # never read when the matching HAS_* flag is off
        _rglru_gate_bwd_kernel[_grid(R, W, br, bw)](
            ga, gx, x, coef32,
            dummy if gda is None else gda.contiguous(),
            dummy if gdb is None else gdb.contiguous(),
            dga, dgx, dx, parts, R, W, 2 * W if fused else W, 0.5 / max_sqrt_grad,
            HAS_DA=gda is not None, HAS_DB=gdb is not None, BR=br, BW=bw)
    dcoef = parts.sum(0).to(coef_dtype)
    return ((dg,) if fused else (dga, dgx)), dx, dcoef


class _RGLRUGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ga, gx, x, coef, max_sqrt_grad, br, bw):
        return _forward(ctx, (ga, gx), x, coef, max_sqrt_grad, br, bw, False)

    @staticmethod
    def backward(ctx, gda, gdb):
        (dga, dgx), dx, dcoef = _backward(ctx, gda, gdb)
        need = ctx.needs_input_grad
        return (dga if need[0] else None, dgx if need[1] else None, dx if need[2] else None,
                dcoef if need[3] else None, None, None, None)


class _RGLRUGate2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g2, x, coef, max_sqrt_grad, br, bw):
        return _forward(ctx, (g2,), x, coef, max_sqrt_grad, br, bw, True)

    @staticmethod
    def backward(ctx, gda, gdb):
        (dg,), dx, dcoef = _backward(ctx, gda, gdb)
        need = ctx.needs_input_grad
        return (dg if need[0] else None, dx if need[1] else None, dcoef if need[2] else None,
                None, None, None)


def rglru_gate(ga: Tensor, gx: Tensor, x: Tensor, coef: Tensor, max_sqrt_grad: float = 1000.0,
               *, block_r: int = BLOCK_R, block_w: int = BLOCK_W) -> tuple[Tensor, Tensor]:
    """``(a, b)`` of the RG-LRU for gate pre-activations ``ga``, ``gx`` and input ``x`` (same
    shape ``(..., W)``) and ``coef`` (W,) ``= -c softplus(-Lambda)``; differentiable in all four.
    Eager only (under torch.compile the PyTorch twin runs; inductor fuses it itself)."""
    if ga.shape != x.shape or gx.shape != x.shape or coef.shape != (x.shape[-1],):
        raise ValueError(f"rglru_gate: ga {tuple(ga.shape)}, gx {tuple(gx.shape)} must equal x "
                         f"{tuple(x.shape)}, and coef {tuple(coef.shape)} must be "
                         f"({x.shape[-1]},)")
    return _RGLRUGate.apply(ga, gx, x, coef, float(max_sqrt_grad), int(block_r), int(block_w))


def rglru_gate_fused(g2: Tensor, x: Tensor, coef: Tensor, max_sqrt_grad: float = 1000.0, *,
                     block_r: int = BLOCK_R, block_w: int = BLOCK_W) -> tuple[Tensor, Tensor]:
    """:func:`rglru_gate` with both gate pre-activations in one tensor ``g2`` (..., 2W) =
    ``[ga | gx]`` (one projection computes both gates).  Its gradient is one (..., 2W) tensor
    as well, so the projection's backward needs no concatenation of two gate gradients."""
    W = x.shape[-1]
    if g2.shape[:-1] != x.shape[:-1] or g2.shape[-1] != 2 * W or coef.shape != (W,):
        raise ValueError(f"rglru_gate_fused: g2 {tuple(g2.shape)} must be x's shape "
                         f"{tuple(x.shape)} with a last dim of {2 * W}, and coef "
                         f"{tuple(coef.shape)} must be ({W},)")
    return _RGLRUGate2.apply(g2, x, coef, float(max_sqrt_grad), int(block_r), int(block_w))
