"""Triton fused causal depthwise conv1d (Mamba / Mamba2 / Hawk), optional fused SiLU.

Same contract as ``lrnnx_plugins.common.causal_conv.CausalConv1d.forward`` (non-varlen)::

    y[b, t, d] = act(bias[d] + sum_{j<K} w[d, j] * xt[b, t-K+1+j, d])
    xt[b, s, d] = x[b, s, d] for 0 <= s < L,  state[b, d, K-1+s] for -(K-1) <= s < 0

``x`` (B, L, D) with unit channel stride (any batch / time strides, e.g. a ``chunk`` of the
input projection, is read in place), ``weight`` (D, K), ``bias`` (D,) or None, ``state``
(B, D, K-1) or None (zeros), ``act`` identity or silu.  fp16/bf16/fp32/fp64; computed in fp32
(fp64 for double), ``y`` in the dtype of ``x``.  ``K`` is a constexpr (1..8 supported, any K
works).  The new state (the last K-1 inputs of the window) is a slice of ``x`` / ``state``,
taken in PyTorch outside the op (so autograd differentiates it).

Layout: the kernels read ``state`` transposed to (B, K-1, D) and the weights as (K, D) (tiny
host copies), so every load is along contiguous channels; only tiles that start before t = 0 read
the state (a scalar branch).

Forward kernel: grid (L / BLOCK_L, D / BLOCK_D, B); a program sums K shifted (BLOCK_L, BLOCK_D)
loads of x (the overlapping rows hit L1/L2) and writes y once.

Backward kernel, with g = dy (identity) or dy * silu'(pre) (silu: ``pre`` recomputed from x, never
stored)::

    dx[s]    = sum_j w[:, j] * g[s + K-1-j]      (s in [-(K-1), L): s < 0 is d state)
    dw[:, j] = sum_{b,t} g[t] * xt[t - K+1+j],   dbias = sum_{b,t} g[t]

grid (chunks of TILES tiles of BLOCK_L rows, D / BLOCK_D, B).  g is computed once per time step
(with silu from K shifted x loads and one sigmoid) and written to the program's scratch rows in an
L2-resident fp32 buffer (BLOCK_L + KS rows of BLOCK_D per program); after a barrier the dx tile
reads its K shifted windows of g from there, and the last K-1 rows of g slide to the front for the
next tile (each program first computes the K-1 rows of g past its chunk start, so chunks are
independent).  The previous kernel recomputed g at each of the K windows (K^2 loads and K
sigmoids per element): 0.53 -> 0.23 ms at B32 L1024 D512 fp32 on the H200.  dw / dbias are
reduced deterministically: a program accumulates its chunk in fp32 registers and writes one
partial row to an fp32 buffer (B * chunks, D, K), which the host sums with ``torch.sum`` -- no
atomics, so gradients are bitwise reproducible run to run.  ``TILES`` grows until the grid is
~``TARGET_PROGRAMS`` programs, which bounds that buffer (B32 L1024 D512: 1024 partial rows,
8 MB).  The chunk-0 programs also write d state (rows -(K-1)..-1).

Eager calls on plain tensors run the kernels through an autograd.Function twin (``_ConvFn``);
under torch.compile / export the ``torch.library`` custom ops run (fake implementations).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _host

# Tiles.  ptxas (sm_90, bf16, K = 4, fused silu): forward 64 x 64 / 8 warps 128 registers.
# Backward: 16 x 64 / 2 warps, ~8 programs' tiles in flight per SM; chosen on the H200 (B32 D512
# fp32, benchmarks/NOTES.md session 5): 0.23 ms at L1024 vs 0.27-0.31 for 32-64 x 32-64 tiles
# with 4-8 warps and 0.53 ms for the previous kernel (K^2 recomputing loads).
FWD_BLOCK_L = 64
FWD_BLOCK_D = 64
FWD_NUM_WARPS = 8
BWD_BLOCK_L = 16
BWD_BLOCK_D = 64
BWD_NUM_WARPS = 2
TARGET_PROGRAMS = 8192  # backward: tiles per program grow until the grid is about this size
MAX_TILES = 16
MAX_K = 8


@triton.jit
def _load_xt(xb, sb, u0, rows, dm2, L, D, sxl, K: tl.constexpr, HAS_STATE: tl.constexpr,
             ACC: tl.constexpr):
    """xt at times ``u0 + rows``: x for 0 <= u < L, the state for -(K-1) <= u < 0 (read only by
    tiles that start before 0).  ``xb``: (1, BLOCK_D) pointers to x[b, 0, d]; ``sb``: to
    state_t[b, K-1, d] (the state transposed to (B, K-1, D), so row u < 0 is at sb + u * D)."""
    u2 = (u0 + rows)[:, None]
    v = tl.load(xb + u2.to(tl.int64) * sxl, mask=(u2 >= 0) & (u2 < L) & dm2, other=0.0).to(ACC)
    if HAS_STATE:
        if u0 < 0:
            v += tl.load(sb + u2 * D, mask=(u2 < 0) & (u2 >= 1 - K) & dm2, other=0.0).to(ACC)
    return v


@triton.jit
def _pre_act(xb, sb, w_ptr, bias, t0, rows, d, dm, dm2, L, D, sxl,
             K: tl.constexpr, HAS_STATE: tl.constexpr, ACC: tl.constexpr):
    """bias + sum_j w[:, j] * xt[t - K+1+j] for times t = t0 + rows, a (rows, BLOCK_D) tile."""
    acc = bias[None, :] + tl.zeros([rows.shape[0], d.shape[0]], ACC)
    for j in tl.static_range(K):
        wj = tl.load(w_ptr + d * K + j, mask=dm, other=0.0).to(ACC)  # weight (D, K)
        acc += wj[None, :] * _load_xt(xb, sb, t0 - (K - 1) + j, rows, dm2, L, D, sxl, K,
                                      HAS_STATE, ACC)
    return acc


@triton.jit
def _bases(x_ptr, s_ptr, b, d, D, sxb, K: tl.constexpr):
    xb = x_ptr + b * sxb + d[None, :]
    sb = s_ptr + (b * (K - 1) + (K - 1)) * D + d[None, :]
    return xb, sb


@triton.jit
def _causal_conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, s_ptr, y_ptr, L, D, sxb, sxl,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr,
    ACC: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = tl.arange(0, BLOCK_L)
    t0 = pid_l * BLOCK_L
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < D
    dm2 = dm[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dm, other=0.0).to(ACC)
    else:
        bias = tl.zeros([BLOCK_D], ACC)
    xb, sb = _bases(x_ptr, s_ptr, b, d, D, sxb, K)
    acc = _pre_act(xb, sb, w_ptr, bias, t0, rows, d, dm, dm2, L, D, sxl, K, HAS_STATE, ACC)
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    t2 = (t0 + rows)[:, None]
    tl.store(y_ptr + (b * L + t2) * D + d[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(t2 < L) & dm2)


@triton.jit
def _g_tile(xb, sb, gb, w_ptr, bias, t0, rows, d, dm, dm2, L, D, sxl,
            K: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr):
    """g = dL/d pre at times t0 + rows (0 outside [0, L)); ``gb``: (1, BLOCK_D) pointers to
    dy[b, 0, d].  With silu the pre-activation is recomputed from K shifted x loads."""
    t2 = (t0 + rows)[:, None]
    g = tl.load(gb + t2.to(tl.int64) * D, mask=(t2 >= 0) & (t2 < L) & dm2, other=0.0).to(ACC)
    if SILU:
        pre = _pre_act(xb, sb, w_ptr, bias, t0, rows, d, dm, dm2, L, D, sxl, K, HAS_STATE, ACC)
        sig = 1.0 / (1.0 + tl.exp(-pre))
        g = g * (sig * (1.0 + pre * (1.0 - sig)))
    return g


@triton.jit
def _wb_acc(dwacc, dbacc, g, xb, sb, t0, rows, jj, dm2, L, D, sxl,
            K: tl.constexpr, HAS_STATE: tl.constexpr, ACC: tl.constexpr):
    """dw[:, j] += sum_t g[t] xt[t - K+1+j], dbias += sum_t g[t] for the g tile at t0 + rows."""
    dbacc += tl.sum(g, axis=0)
    for j in tl.static_range(K):
        xj = _load_xt(xb, sb, t0 - (K - 1) + j, rows, dm2, L, D, sxl, K, HAS_STATE, ACC)
        dwacc += tl.where(jj[:, None] == j, tl.sum(g * xj, axis=0)[None, :], 0.0)
    return dwacc, dbacc


@triton.jit
def _window_dx(sc, w_ptr, off, hi, rows, d, dm, D, K: tl.constexpr, ACC: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """sum_lag w[:, K-1-lag] * g[scratch row off + rows + lag]; rows outside [0, hi) read 0."""
    dx = tl.zeros([rows.shape[0], BLOCK_D], ACC)
    for lag in tl.static_range(K):
        r2 = (off + lag + rows)[:, None]
        g = tl.load(sc + r2 * BLOCK_D, mask=(r2 >= 0) & (r2 < hi), other=0.0,
                    cache_modifier=".cg")
        wj = tl.load(w_ptr + d * K + (K - 1 - lag), mask=dm, other=0.0).to(ACC)
        dx += wj[None, :] * g
    return dx


@triton.jit
def _causal_conv_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, s_ptr, dy_ptr, dx_ptr, ds_ptr, dw_ptr, db_ptr, sc_ptr,
    L, D, sxb, sxl, TILES, n_chunks,
    K: tl.constexpr, KW: tl.constexpr, KS: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_STATE: tl.constexpr, NEED_DS: tl.constexpr, NEED_WB: tl.constexpr,
    SILU: tl.constexpr, ACC: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dx (B, L, D); ds (B, K-1, D) d state (chunk-0 programs); dw partials (B*chunks, D, K)
    and db partials (B*chunks, D) in fp32/fp64, one row per program.

    g = dL/d pre is computed once per time step and written to this program's scratch rows
    (BLOCK_L + KS rows of BLOCK_D, L2-resident): rows [0, K-1) hold g[r0 .. r0+K-1) carried
    from the previous tile, rows [K-1, K-1+BLOCK_L) the tile's new g[r0+K-1 ..); after a
    barrier the dx tile at r0 + rows reads its K windows from there, then the last K-1 rows
    slide to the front."""
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < D
    dm2 = dm[None, :]
    rows = tl.arange(0, BLOCK_L)
    r = tl.arange(0, KS)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dm, other=0.0).to(ACC)
    else:
        bias = tl.zeros([BLOCK_D], ACC)
    xb, sb = _bases(x_ptr, s_ptr, b, d, D, sxb, K)
    gb = dy_ptr + b * L * D + d[None, :]
    dxb = dx_ptr + b * L * D + d[None, :]
    prog = (b * n_chunks + pid_c) * tl.num_programs(1) + pid_d
    sc = sc_ptr + prog * ((BLOCK_L + KS) * BLOCK_D) + tl.arange(0, BLOCK_D)[None, :]
    jj = tl.arange(0, KW)
    dwacc = tl.zeros([KW, BLOCK_D], ACC)
    dbacc = tl.zeros([BLOCK_D], ACC)
    c0 = pid_c * TILES * BLOCK_L
    c1 = c0 + TILES * BLOCK_L
    if K > 1:
        # prefix: g[c0 .. c0+K-1) -> scratch rows [0, K-1)
        rm = (r < K - 1)[:, None]
        gp = _g_tile(xb, sb, gb, w_ptr, bias, c0, r, d, dm, dm2, L, D, sxl,
                     K, HAS_STATE, SILU, ACC)
        gp = tl.where(rm, gp, 0.0)
        tl.store(sc + r[:, None] * BLOCK_D, gp, mask=rm)
        if NEED_WB:
            dwacc, dbacc = _wb_acc(dwacc, dbacc, gp, xb, sb, c0, r, jj, dm2, L, D, sxl,
                                   K, HAS_STATE, ACC)
        tl.debug_barrier()
        if NEED_DS:
            if pid_c == 0:
                # d state = dx at s = -(K-1) + r: g[s + lag] is scratch row r - (K-1) + lag
                dsx = _window_dx(sc, w_ptr, 1 - K, K - 1, r, d, dm, D, K, ACC, BLOCK_D)
                tl.store(ds_ptr + (b * (K - 1) + r[:, None]) * D + d[None, :],
                         dsx.to(ds_ptr.dtype.element_ty), mask=rm & dm2)
    for i in range(TILES):
        r0 = c0 + i * BLOCK_L
        t0 = r0 + (K - 1)
        g = _g_tile(xb, sb, gb, w_ptr, bias, t0, rows, d, dm, dm2, L, D, sxl,
                    K, HAS_STATE, SILU, ACC)
        tl.store(sc + (K - 1 + rows)[:, None] * BLOCK_D, g)
        if NEED_WB:
            g = tl.where((t0 + rows)[:, None] < c1, g, 0.0)  # later rows: the next chunk's
            dwacc, dbacc = _wb_acc(dwacc, dbacc, g, xb, sb, t0, rows, jj, dm2, L, D, sxl,
                                   K, HAS_STATE, ACC)
        tl.debug_barrier()
        dx = _window_dx(sc, w_ptr, 0, BLOCK_L + K - 1, rows, d, dm, D, K, ACC, BLOCK_D)
        s2 = (r0 + rows)[:, None]
        tl.store(dxb + s2.to(tl.int64) * D, dx.to(dx_ptr.dtype.element_ty), mask=(s2 < L) & dm2)
        if K > 1:
            # slide scratch rows [BLOCK_L, BLOCK_L+K-1) to [0, K-1) for the next tile; the
            # barrier also keeps the next tile's g stores behind every lane's dx loads
            rm = (r < K - 1)[:, None]
            carry = tl.load(sc + (BLOCK_L + r)[:, None] * BLOCK_D, mask=rm, other=0.0,
                            cache_modifier=".cg")
            tl.debug_barrier()
            tl.store(sc + r[:, None] * BLOCK_D, carry, mask=rm)
        else:
            tl.debug_barrier()
    if NEED_WB:
        prow = b * n_chunks + pid_c
        tl.store(dw_ptr + (prow * D + d[None, :]) * K + jj[:, None], dwacc,
                 mask=(jj[:, None] < K) & dm2)
        tl.store(db_ptr + prow * D + d, dbacc, mask=dm)


# ----------------------------------------------------------------------------- launchers
def _blocks(D: int, block_l: int, block_d: int, dl: int, dd: int) -> tuple[int, int]:
    bl = block_l or dl
    bd = block_d or min(dd, _host.pow2_ceil(D))
    if bl & (bl - 1) or bd & (bd - 1):
        raise ValueError(f"block sizes must be powers of two, got block_l={bl}, block_d={bd}")
    return bl, bd


def _x_strides(x: Tensor) -> tuple[Tensor, int, int]:
    if x.stride(2) != 1:
        x = x.contiguous()
    return x, x.stride(0), x.stride(1)


def _state_t(state: Tensor | None, K: int) -> Tensor | None:
    """The state as (B, K-1, D), channels contiguous like x (a tiny copy)."""
    return None if state is None or K == 1 else state.transpose(1, 2).contiguous()


def _fwd(x, weight, bias, state, silu, block_l, block_d):
    B, L, D = x.shape
    K = weight.shape[1]
    state = _state_t(state, K)
    bl, bd = _blocks(D, block_l, block_d, FWD_BLOCK_L, FWD_BLOCK_D)
    x, sxb, sxl = _x_strides(x)
    y = torch.empty((B, L, D), dtype=x.dtype, device=x.device)
    acc = _host.acc_dtype(x.dtype)
    dmy = _host.dummy(x)
    grid = (triton.cdiv(L, bl), triton.cdiv(D, bd), B)
    with _host.on_device(x):
        _causal_conv_fwd_kernel[grid](
            x, weight, dmy if bias is None else bias, dmy if state is None else state, y,
            L, D, sxb, sxl,
            K=K, HAS_BIAS=bias is not None, HAS_STATE=state is not None, SILU=silu,
            ACC=_host.tl_dtype(acc), BLOCK_L=bl, BLOCK_D=bd, num_warps=FWD_NUM_WARPS,
        )
    return y


def _tiles(B: int, L: int, D: int, bl: int, bd: int, tiles: int) -> int:
    n_tiles = triton.cdiv(L, bl)
    if tiles <= 0:
        progs = n_tiles * triton.cdiv(D, bd) * B
        tiles = max(1, min(MAX_TILES, progs // TARGET_PROGRAMS))
    return min(tiles, n_tiles)


def _bwd(x, weight, bias, state, dy, silu, need_ds, need_wb, block_l, block_d, tiles):
    B, L, D = x.shape
    K = weight.shape[1]
    bl, bd = _blocks(D, block_l, block_d, BWD_BLOCK_L, BWD_BLOCK_D)
    ks = _host.pow2_ceil(max(K - 1, 1))
    bl = max(bl, ks)  # the carried K-1 rows of g fit in one tile (and in the first chunk)
    x, sxb, sxl = _x_strides(x)
    state = _state_t(state, K)
    dy = dy.contiguous()
    acc = _host.acc_dtype(x.dtype)
    tiles = _tiles(B, L, D, bl, bd, tiles)
    n_chunks = triton.cdiv(triton.cdiv(L, bl), tiles)
    kw = _host.pow2_ceil(K)
    dx = torch.empty((B, L, D), dtype=x.dtype, device=x.device)
    need_ds = need_ds and state is not None and K > 1
    ds = torch.empty((B, K - 1, D), dtype=state.dtype, device=x.device) if need_ds else None
    dmy = _host.dummy(x)
    if need_wb:
        dw_part = torch.empty((B * n_chunks, D, K), dtype=acc, device=x.device)
        db_part = torch.empty((B * n_chunks, D), dtype=acc, device=x.device)
    grid = (n_chunks, triton.cdiv(D, bd), B)
    # g = dL/d pre of each program's current tile and the K-1 rows carried into the next one
    scratch = torch.empty((n_chunks * grid[1] * B, bl + ks, bd), dtype=acc, device=x.device)
    with _host.on_device(x):
        _causal_conv_bwd_kernel[grid](
            x, weight, dmy if bias is None else bias, dmy if state is None else state, dy, dx,
            dmy if ds is None else ds, dw_part if need_wb else dmy, db_part if need_wb else dmy,
            scratch, L, D, sxb, sxl, tiles, n_chunks,
            K=K, KW=kw, KS=ks, HAS_BIAS=bias is not None,
            HAS_STATE=state is not None, NEED_DS=need_ds, NEED_WB=need_wb, SILU=silu,
            ACC=_host.tl_dtype(acc), BLOCK_L=bl, BLOCK_D=bd, num_warps=BWD_NUM_WARPS,
        )
    if need_wb:
        dw = dw_part.sum(0)
        db = db_part.sum(0)
    else:
        dw = db = None
    if ds is not None:
        ds = ds.transpose(1, 2).contiguous()
    return dx, ds, dw, db


# ----------------------------------------------------------------------------- custom ops
@torch.library.custom_op("lrnnx::triton_causal_conv", mutates_args=())
def _conv_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], state: Optional[Tensor],
             silu: bool, block_l: int, block_d: int, bwd_tiles: int) -> Tensor:
    return _fwd(x, weight, bias, state, silu, block_l, block_d)


@_conv_op.register_fake
def _(x, weight, bias, state, silu, block_l, block_d, bwd_tiles):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("lrnnx::triton_causal_conv_bwd", mutates_args=())
def _conv_bwd_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], state: Optional[Tensor],
                 dy: Tensor, silu: bool, need_ds: bool, need_wb: bool, block_l: int,
                 block_d: int, bwd_tiles: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, d state or empty, dw or empty, dbias or empty); dw/dbias in the accumulation dtype."""
    dx, ds, dw, db = _bwd(x, weight, bias, state, dy, silu, need_ds, need_wb, block_l, block_d,
                          bwd_tiles)
    def e():  # a distinct empty tensor per absent output (outputs must not alias)
        return x.new_empty((0,))

    if db is None or bias is None:
        db = e()
    return dx, (e() if ds is None else ds), (e() if dw is None else dw), db


@_conv_bwd_op.register_fake
def _(x, weight, bias, state, dy, silu, need_ds, need_wb, block_l, block_d, bwd_tiles):
    B, L, D = x.shape
    K = weight.shape[1]
    acc = _host.acc_dtype(x.dtype)
    ds = (state.new_empty((B, D, K - 1)) if (need_ds and state is not None and K > 1)
          else x.new_empty((0,)))
    dw = x.new_empty((D, K), dtype=acc) if need_wb else x.new_empty((0,))
    db = x.new_empty((D,), dtype=acc) if (need_wb and bias is not None) else x.new_empty((0,))
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), ds, dw, db


def _setup(ctx, inputs, output):
    x, weight, bias, state, silu, block_l, block_d, bwd_tiles = inputs
    ctx.save_for_backward(x, weight, bias, state)
    ctx.cfg = (silu, block_l, block_d, bwd_tiles)


def _grads(x, weight, bias, state, dy, cfg, needs, bwd_op):
    """The four input gradients (None where not needed) from one backward launch."""
    silu, block_l, block_d, bwd_tiles = cfg
    nx, nw, nb, ns = needs
    need_ds = bool(ns and state is not None)
    need_wb = bool(nw or (nb and bias is not None))
    dx, ds, dw, db = bwd_op(x, weight, bias, state, dy, silu, need_ds, need_wb, block_l,
                            block_d, bwd_tiles)
    K = weight.shape[1]
    gx = dx if nx else None
    gw = dw.to(weight.dtype) if nw else None
    gb = db.to(bias.dtype) if (nb and bias is not None) else None
    gs = None
    if need_ds:
        gs = ds if (K > 1 and ds is not None) else torch.zeros_like(state)
    return gx, gw, gb, gs


def _backward(ctx, dy):
    x, weight, bias, state = ctx.saved_tensors
    return (*_grads(x, weight, bias, state, dy, ctx.cfg, ctx.needs_input_grad[:4],
                    _conv_bwd_op), None, None, None, None)


_conv_op.register_autograd(_backward, setup_context=_setup)


class _ConvFn(torch.autograd.Function):
    """The eager twin of the custom op (same forward and backward code, no custom-op dispatch:
    ~60 us less CPU per call on the H200 host, see ``_host.plain_eager``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, state, silu, block_l, block_d, bwd_tiles):
        ctx.save_for_backward(x, weight, bias, state)
        ctx.cfg = (silu, block_l, block_d, bwd_tiles)
        return _fwd(x, weight, bias, state, silu, block_l, block_d)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, state = ctx.saved_tensors
        return (*_grads(x, weight, bias, state, dy, ctx.cfg, ctx.needs_input_grad[:4], _bwd),
                None, None, None, None)


# ----------------------------------------------------------------------------- public API
def new_state(x: Tensor, state: Tensor | None, K: int) -> Tensor:
    """The last K-1 inputs of the window (B, D, K-1), in the dtype of ``x`` (differentiable)."""
    B, L, D = x.shape
    if L >= K - 1:
        return x[:, L - (K - 1):].transpose(1, 2).contiguous()
    st = x.new_zeros(B, D, K - 1) if state is None else state.to(x.dtype)
    return torch.cat([st[:, :, L:], x.transpose(1, 2)], dim=2)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                  state: Tensor | None = None, activation: str | None = None, *,
                  block_l: int = 0, block_d: int = 0,
                  bwd_tiles: int = 0) -> tuple[Tensor, Tensor]:
    """Fused causal depthwise conv; returns ``(y, new_state)`` as ``CausalConv1d.forward``.

    Differentiable in ``x``, ``weight``, ``bias`` and ``state``.  ``activation``: None or
    ``"silu"`` (fused; its backward recomputes the pre-activation).  ``block_l`` / ``block_d``
    (powers of two, 0 = default) set both kernels' tiles and ``bwd_tiles`` the tiles per backward
    program (0 = auto); tests use small values to cross tile and chunk boundaries.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be (B, L, D); got {tuple(x.shape)}")
    B, L, D = x.shape
    if weight.dim() != 2 or weight.shape[0] != D:
        raise ValueError(f"weight must be ({D}, K); got {tuple(weight.shape)}")
    K = weight.shape[1]
    if not 1 <= K <= MAX_K:
        raise ValueError(f"triton causal_conv1d supports 1 <= K <= {MAX_K}, got K = {K}")
    if bias is not None and tuple(bias.shape) != (D,):
        raise ValueError(f"bias must be ({D},); got {tuple(bias.shape)}")
    if state is not None and tuple(state.shape) != (B, D, K - 1):
        raise ValueError(f"state must be ({B}, {D}, {K - 1}); got {tuple(state.shape)}")
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    for name, t in (("x", x), ("weight", weight), ("bias", bias), ("state", state)):
        if t is not None and t.dtype not in _host.REAL_DTYPES:
            raise TypeError(f"triton causal_conv1d: {name} must be fp16/bf16/fp32/fp64, got "
                            f"{t.dtype}")
    ns = new_state(x, state, K)
    if L == 0:
        return x.new_zeros(B, 0, D), ns
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    state = None if state is None else state.contiguous()
    args = (x, weight, bias, state, activation == "silu", int(block_l), int(block_d),
            int(bwd_tiles))
    if not _host.plain_eager(x, weight, bias, state):
        return _conv_op(*args), ns
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, weight, bias, state)):
        return _ConvFn.apply(*args), ns
    return _fwd(*args[:7]), ns
