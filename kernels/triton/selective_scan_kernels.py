"""Triton kernels of the fused selective (S6) scan: forward and backward.

Math (real ``A``; channel d, state n, token t; see ``lrnnx_kernels.selective_scan._common``)::

    dt_t     = softplus?(delta_t + delta_bias) * timesteps_t
    a_t, s_t = discretize(method, A[d, n], dt_t)            (_tl.discretize)
    h_t      = a_t h_{t-1} + s_t u_t B_t[g(d), n]
    y_t      = (sum_n C_t[g(d), n] h_t + D u_t) * silu(z_t)

Layout: grid (Bt, Dm / BLOCK_D); a program keeps its state (BLOCK_D, BLOCK_N) in registers and
walks L in tiles of BLOCK_L tokens.  A tile's (BLOCK_L, BLOCK_D, BLOCK_N) transitions are built
in registers and scanned with ``tl.associative_scan``; nothing of size (Bt, L, Dm, N) touches
memory.  Every BLOCK_D block lies inside one group of B/C (the host picks BLOCK_D so).  The
forward optionally stores the state *entering* each tile, ``ckpt`` (Bt, n_tiles, Dm, N).

Backward, per tile from the last to the first (lambda_t = dLoss/dh_t, total)::

    h_{t-1} = exclusive scan from ckpt[k]     (transitions of rows t-1; row 0 is the identity)
    h_t     = a_t h_{t-1} + s_t u_t B_t
    lambda_t = C_t gy_t + a_{t+1} lambda_{t+1}   (reverse scan; a_L := 1, lambda_L := dh_last)
    d a_t = lambda_t h_{t-1},  d s_t = lambda_t u_t B_t,  d(s u B) / du, dB ... as written below

so each tile costs three discretizations (rows t-1, t, t+1) and two scans, all in registers.
Reductions over channels: dB, dC are written per channel block (deterministic; ``ATOMIC``
switches to ``tl.atomic_add``) and dtimesteps is atomically accumulated, in fp32/fp64; dA, dD,
ddelta_bias are written per batch row; the host sums the partial results.

Complex S6 (``ss_fwd_cplx_kernel`` / ``ss_bwd_cplx_kernel``, below): the same layout and steps
with complex A, B, C and state, each complex value a (re, im) pair of register tiles, the
complex discretizations of ``_tl`` and the adjoint in PyTorch's conjugate convention (the
formulas are in ``ss_bwd_cplx_kernel``'s docstring; they match kernels/cuda/csrc/selective_bwd.cu).
"""
import triton
import triton.language as tl

from ._tl import (BILINEAR, DIRAC, ZOH, cmul, combine_cplx, combine_real, discretize,
                  discretize_cplx, discretize_grads, discretize_grads_cplx, row3, sigmoid,
                  softplus, softplus_grad)


@triton.jit
def _dt_tile(dl_ptr, ts_ptr, off, toff, m2, tm, bias, HAS_BIAS: tl.constexpr,
             SOFTPLUS: tl.constexpr, HAS_TS: tl.constexpr, ACC: tl.constexpr):
    """``(dt_eff, dt_before_timesteps, pre_softplus, timesteps)`` of a (rows, BLOCK_D) tile; zero
    where masked (dt = 0 makes the transition the identity)."""
    v = tl.load(dl_ptr + off, mask=m2, other=0.0).to(ACC)
    if HAS_BIAS:
        v = v + bias[None, :]
    if SOFTPLUS:
        sp = softplus(v)
    else:
        sp = v
    sp = tl.where(m2, sp, 0.0)
    if HAS_TS:
        ts = tl.load(ts_ptr + toff, mask=tm, other=0.0).to(ACC)
        dt = sp * ts[:, None]
    else:
        ts = tl.zeros(tm.shape, ACC)
        dt = sp
    return dt, sp, v, ts


@triton.jit
def ss_fwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ts_ptr, h0_ptr,
    y_ptr, last_ptr, ck_ptr,
    L, Dm, N, G, dpg, n_tiles,
    DISC: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_TS: tl.constexpr, HAS_H0: tl.constexpr, STORE_CKPT: tl.constexpr,
    ACC: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    b64 = pid_b.to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < Dm
    n = tl.arange(0, BLOCK_N)
    nm = n < N
    rows = tl.arange(0, BLOCK_L)
    grp = (pid_d * BLOCK_D) // dpg
    dn_m = dm[:, None] & nm[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn_m, other=0.0).to(ACC)
    bias = tl.zeros([BLOCK_D], ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dm, other=0.0).to(ACC)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dm, other=0.0).to(ACC)
    soff = (b64 * Dm + d)[:, None] * N + n[None, :]
    h = tl.zeros([BLOCK_D, BLOCK_N], ACC)
    if HAS_H0:
        h = tl.load(h0_ptr + soff, mask=dn_m, other=0.0).to(ACC)
    for k in range(0, n_tiles):
        t = k * BLOCK_L + rows
        tm = t < L
        m2 = tm[:, None] & dm[None, :]
        off = (b64 * L + t)[:, None] * Dm + d[None, :]
        u = tl.load(u_ptr + off, mask=m2, other=0.0).to(ACC)
        dt, sp, v, ts = _dt_tile(dl_ptr, ts_ptr, off, b64 * L + t, m2, tm, bias,
                                 HAS_BIAS, SOFTPLUS, HAS_TS, ACC)
        bm = tm[:, None] & nm[None, :]
        boff = ((b64 * L + t) * G + grp)[:, None] * N + n[None, :]
        Bv = tl.load(B_ptr + boff, mask=bm, other=0.0).to(ACC)
        Cv = tl.load(C_ptr + boff, mask=bm, other=0.0).to(ACC)
        abar, scale = discretize(dt[:, :, None], A[None, :, :], DISC)
        beta = scale * (u[:, :, None] * Bv[:, None, :])
        if STORE_CKPT:
            tl.store(ck_ptr + ((b64 * n_tiles + k) * Dm + d)[:, None] * N + n[None, :],
                     h.to(ck_ptr.dtype.element_ty), mask=dn_m)
        Ac, Bc = tl.associative_scan((abar, beta), 0, combine_real)
        hs = Ac * h[None, :, :] + Bc
        y = tl.sum(hs * Cv[:, None, :], axis=2)
        if HAS_D:
            y = y + Dv[None, :] * u
        if HAS_Z:
            zv = tl.load(z_ptr + off, mask=m2, other=0.0).to(ACC)
            y = y * (zv * sigmoid(zv))
        tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=m2)
        h = row3(hs, rows, BLOCK_L - 1)
    tl.store(last_ptr + soff, h.to(last_ptr.dtype.element_ty), mask=dn_m)


@triton.jit
def ss_bwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ts_ptr, ck_ptr,
    dy_ptr, dlast_ptr,
    du_ptr, ddl_ptr, dz_ptr, dB_ptr, dC_ptr, dts_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    L, Dm, N, G, dpg, n_tiles,
    DISC: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_TS: tl.constexpr, HAS_DY: tl.constexpr, HAS_DLAST: tl.constexpr,
    ATOMIC: tl.constexpr, ACC: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    b64 = pid_b.to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < Dm
    n = tl.arange(0, BLOCK_N)
    nm = n < N
    rows = tl.arange(0, BLOCK_L)
    grp = (pid_d * BLOCK_D) // dpg
    dn_m = dm[:, None] & nm[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn_m, other=0.0).to(ACC)
    A3 = A[None, :, :]
    bias = tl.zeros([BLOCK_D], ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dm, other=0.0).to(ACC)
    Dv = tl.zeros([BLOCK_D], ACC)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dm, other=0.0).to(ACC)
    soff = (b64 * Dm + d)[:, None] * N + n[None, :]
    lam = tl.zeros([BLOCK_D, BLOCK_N], ACC)  # lambda of the first token after the tile
    if HAS_DLAST:
        lam = tl.load(dlast_ptr + soff, mask=dn_m, other=0.0).to(ACC)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], ACC)
    dD_acc = tl.zeros([BLOCK_D], ACC)
    dbias_acc = tl.zeros([BLOCK_D], ACC)
    for kr in range(0, n_tiles):
        k = n_tiles - 1 - kr
        t = k * BLOCK_L + rows
        tm = t < L
        m2 = tm[:, None] & dm[None, :]
        bm = tm[:, None] & nm[None, :]
        tm3 = m2[:, :, None] & nm[None, None, :]
        off = (b64 * L + t)[:, None] * Dm + d[None, :]
        boff = ((b64 * L + t) * G + grp)[:, None] * N + n[None, :]
        # rows t - 1 inside the tile (row 0 -> identity), for the exclusive scan h_{t-1}
        pm = tm & (rows > 0)
        pm2 = pm[:, None] & dm[None, :]
        pbm = pm[:, None] & nm[None, :]
        u_p = tl.load(u_ptr + off - Dm, mask=pm2, other=0.0).to(ACC)
        dt_p, sp_p, v_p, ts_p = _dt_tile(dl_ptr, ts_ptr, off - Dm, b64 * L + t - 1, pm2, pm,
                                         bias, HAS_BIAS, SOFTPLUS, HAS_TS, ACC)
        B_p = tl.load(B_ptr + boff - G * N, mask=pbm, other=0.0).to(ACC)
        a_p, s_p = discretize(dt_p[:, :, None], A3, DISC)
        Ap, Bp = tl.associative_scan((a_p, s_p * (u_p[:, :, None] * B_p[:, None, :])), 0,
                                     combine_real)
        ck = tl.load(ck_ptr + ((b64 * n_tiles + k) * Dm + d)[:, None] * N + n[None, :],
                     mask=dn_m, other=0.0).to(ACC)
        hprev = Ap * ck[None, :, :] + Bp
        # rows t
        u = tl.load(u_ptr + off, mask=m2, other=0.0).to(ACC)
        dt, sp, v, ts = _dt_tile(dl_ptr, ts_ptr, off, b64 * L + t, m2, tm, bias,
                                 HAS_BIAS, SOFTPLUS, HAS_TS, ACC)
        Bv = tl.load(B_ptr + boff, mask=bm, other=0.0).to(ACC)
        Cv = tl.load(C_ptr + boff, mask=bm, other=0.0).to(ACC)
        dt3 = dt[:, :, None]
        a, s, dadx, ds_ddt, ds_dA = discretize_grads(dt3, A3, DISC)
        uB = u[:, :, None] * Bv[:, None, :]
        hcur = a * hprev + s * uB
        # rows t + 1 (may be the next tile's first row): the multiplier a_{t+1} of lambda
        nx = tm & (t + 1 < L)
        nx2 = nx[:, None] & dm[None, :]
        dt_n, sp_n, v_n, ts_n = _dt_tile(dl_ptr, ts_ptr, off + Dm, b64 * L + t + 1, nx2, nx,
                                         bias, HAS_BIAS, SOFTPLUS, HAS_TS, ACC)
        a_n, s_n = discretize(dt_n[:, :, None], A3, DISC)
        # output gate and skip
        if HAS_DY:
            dy = tl.load(dy_ptr + off, mask=m2, other=0.0).to(ACC)
        else:
            dy = tl.zeros([BLOCK_L, BLOCK_D], ACC)
        if HAS_Z:
            zv = tl.load(z_ptr + off, mask=m2, other=0.0).to(ACC)
            y = tl.sum(hcur * Cv[:, None, :], axis=2) + Dv[None, :] * u
            sz = sigmoid(zv)
            dz = dy * y * (sz * (1.0 + zv * (1.0 - sz)))
            tl.store(dz_ptr + off, dz.to(dz_ptr.dtype.element_ty), mask=m2)
            gy = dy * (zv * sz)
        else:
            gy = dy
        dD_acc += tl.sum(gy * u, axis=0)
        # adjoint: lambda_t = C_t gy_t + a_{t+1} lambda_{t+1}
        Mc, Gc = tl.associative_scan((a_n, gy[:, :, None] * Cv[:, None, :]), 0, combine_real,
                                     reverse=True)
        lt = tl.where(tm3, Mc * lam[None, :, :] + Gc, 0.0)
        lam = row3(lt, rows, 0)
        # parameter gradients
        ga = lt * hprev * dadx  # d/dx of a_t, times lambda h_{t-1}
        gs = lt * uB
        ls = lt * s
        du = tl.sum(ls * Bv[:, None, :], axis=2) + gy * Dv[None, :]
        tl.store(du_ptr + off, du.to(du_ptr.dtype.element_ty), mask=m2)
        dB_t = tl.sum(ls * u[:, :, None], axis=1)
        dC_t = tl.sum(gy[:, :, None] * hcur, axis=1)
        if ATOMIC:
            tl.atomic_add(dB_ptr + boff, dB_t, mask=bm)
            tl.atomic_add(dC_ptr + boff, dC_t, mask=bm)
        else:  # one (Bt, L, N) slice per channel block, summed per group on the host
            poff = ((pid_d * tl.num_programs(0) + b64) * L + t)[:, None] * N + n[None, :]
            tl.store(dB_ptr + poff, dB_t.to(dB_ptr.dtype.element_ty), mask=bm)
            tl.store(dC_ptr + poff, dC_t.to(dC_ptr.dtype.element_ty), mask=bm)
        gdt = tl.sum(ga * A3 + gs * ds_ddt, axis=2)
        dA_acc += tl.sum(ga * dt3 + gs * ds_dA, axis=0)
        if HAS_TS:
            tl.atomic_add(dts_ptr + b64 * L + t, tl.sum(gdt * sp, axis=1), mask=tm)
            gsp = gdt * ts[:, None]
        else:
            gsp = gdt
        if SOFTPLUS:
            gv = gsp * softplus_grad(v)
        else:
            gv = gsp
        gv = tl.where(m2, gv, 0.0)
        dbias_acc += tl.sum(gv, axis=0)
        tl.store(ddl_ptr + off, gv.to(ddl_ptr.dtype.element_ty), mask=m2)
    # dh0 = a_0 * lambda_0
    r0 = rows < 1
    r02 = r0[:, None] & dm[None, :]
    off0 = (b64 * L + rows)[:, None] * Dm + d[None, :]
    dt0, sp0, v0, ts0 = _dt_tile(dl_ptr, ts_ptr, off0, b64 * L + rows, r02, r0, bias,
                                 HAS_BIAS, SOFTPLUS, HAS_TS, ACC)
    a0, s0 = discretize(dt0[:, :, None], A3, DISC)
    dh0 = row3(a0, rows, 0) * lam
    tl.store(dh0_ptr + soff, dh0.to(dh0_ptr.dtype.element_ty), mask=dn_m)
    out = (b64 * Dm + d)
    tl.store(dA_ptr + soff, dA_acc.to(dA_ptr.dtype.element_ty), mask=dn_m)
    tl.store(dD_ptr + out, dD_acc.to(dD_ptr.dtype.element_ty), mask=dm)
    tl.store(dbias_ptr + out, dbias_acc.to(dbias_ptr.dtype.element_ty), mask=dm)


# ----------------------------------------------------------------------------- complex S6
# Complex A, B, C (the host casts all three to the complex compute dtype when A or B is complex)
# travel as interleaved (re, im) pairs (``torch.view_as_real``), as do h0, the last state, the
# checkpoints, dlast and the complex gradients; u, delta, z, D, delta_bias, timesteps are real.
# The layout and the tiling are those of the real kernels above; every complex value is a pair of
# real register tiles.


@triton.jit
def _cscale(sr, si, xr, xi, DISC: tl.constexpr):
    """``s * x`` for the input scale ``s`` (real for mamba/euler/dirac: skip the imaginary part)."""
    if DISC == ZOH:
        return sr * xr - si * xi, sr * xi + si * xr
    elif DISC == BILINEAR:
        return sr * xr - si * xi, sr * xi + si * xr
    else:
        return sr * xr, sr * xi


@triton.jit
def _scale_grads(gAr, gAi, gdt, tsr, tsi, asr, asi, gsr, gsi, DISC: tl.constexpr):
    """Add the input scale's terms to (dt, A) gradients ``gdt`` (real) and ``gA``:
    ``gdt + Re(conj(ds/ddt) G(s))``, ``gA + conj(ds/dA) G(s)`` (``ts``: ds/ddt, ``as``: ds/dA),
    skipping the terms that vanish (mamba/euler: ds/ddt = 1, ds/dA = 0; dirac: both 0)."""
    if DISC == ZOH:
        return (gdt + tsr * gsr + tsi * gsi, gAr + asr * gsr + asi * gsi,
                gAi + asr * gsi - asi * gsr)
    elif DISC == BILINEAR:
        return (gdt + tsr * gsr + tsi * gsi, gAr + asr * gsr + asi * gsi,
                gAi + asr * gsi - asi * gsr)
    elif DISC == DIRAC:
        return gdt, gAr, gAi
    else:
        return gdt + gsr, gAr, gAi


@triton.jit
def ss_fwd_cplx_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ts_ptr, h0_ptr,
    y_ptr, last_ptr, ck_ptr,
    L, Dm, N, G, dpg, n_tiles,
    DISC: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_TS: tl.constexpr, HAS_H0: tl.constexpr, STORE_CKPT: tl.constexpr,
    ACC: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """:func:`ss_fwd_kernel` with complex A, B, C, h0, last state and checkpoints:
    ``h_t = a_t h_{t-1} + s_t u_t B_t``, ``y_t = Re(sum_n C_t h_t) + D u_t`` (times silu(z_t))."""
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    b64 = pid_b.to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < Dm
    n = tl.arange(0, BLOCK_N)
    nm = n < N
    rows = tl.arange(0, BLOCK_L)
    grp = (pid_d * BLOCK_D) // dpg
    dn_m = dm[:, None] & nm[None, :]
    aoff = (d[:, None] * N + n[None, :]) * 2
    Ar = tl.load(A_ptr + aoff, mask=dn_m, other=0.0).to(ACC)[None, :, :]
    Ai = tl.load(A_ptr + aoff + 1, mask=dn_m, other=0.0).to(ACC)[None, :, :]
    bias = tl.zeros([BLOCK_D], ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dm, other=0.0).to(ACC)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dm, other=0.0).to(ACC)
    soff = ((b64 * Dm + d)[:, None] * N + n[None, :]) * 2
    hr = tl.zeros([BLOCK_D, BLOCK_N], ACC)
    hi = tl.zeros([BLOCK_D, BLOCK_N], ACC)
    if HAS_H0:
        hr = tl.load(h0_ptr + soff, mask=dn_m, other=0.0).to(ACC)
        hi = tl.load(h0_ptr + soff + 1, mask=dn_m, other=0.0).to(ACC)
    for k in range(0, n_tiles):
        t = k * BLOCK_L + rows
        tm = t < L
        m2 = tm[:, None] & dm[None, :]
        off = (b64 * L + t)[:, None] * Dm + d[None, :]
        u = tl.load(u_ptr + off, mask=m2, other=0.0).to(ACC)
        dt, sp, v, ts = _dt_tile(dl_ptr, ts_ptr, off, b64 * L + t, m2, tm, bias,
                                 HAS_BIAS, SOFTPLUS, HAS_TS, ACC)
        bm = tm[:, None] & nm[None, :]
        boff = (((b64 * L + t) * G + grp)[:, None] * N + n[None, :]) * 2
        Br = tl.load(B_ptr + boff, mask=bm, other=0.0).to(ACC)
        Bi = tl.load(B_ptr + boff + 1, mask=bm, other=0.0).to(ACC)
        Cr = tl.load(C_ptr + boff, mask=bm, other=0.0).to(ACC)
        Ci = tl.load(C_ptr + boff + 1, mask=bm, other=0.0).to(ACC)
        ar, ai, sr, si = discretize_cplx(dt[:, :, None], Ar, Ai, DISC)
        u3 = u[:, :, None]
        br, bi = _cscale(sr, si, u3 * Br[:, None, :], u3 * Bi[:, None, :], DISC)
        if STORE_CKPT:
            coff = (((b64 * n_tiles + k) * Dm + d)[:, None] * N + n[None, :]) * 2
            tl.store(ck_ptr + coff, hr.to(ck_ptr.dtype.element_ty), mask=dn_m)
            tl.store(ck_ptr + coff + 1, hi.to(ck_ptr.dtype.element_ty), mask=dn_m)
        Mr, Mi, Gr, Gi = tl.associative_scan((ar, ai, br, bi), 0, combine_cplx)
        hsr = Mr * hr[None, :, :] - Mi * hi[None, :, :] + Gr
        hsi = Mr * hi[None, :, :] + Mi * hr[None, :, :] + Gi
        y = tl.sum(hsr * Cr[:, None, :] - hsi * Ci[:, None, :], axis=2)
        if HAS_D:
            y = y + Dv[None, :] * u
        if HAS_Z:
            zv = tl.load(z_ptr + off, mask=m2, other=0.0).to(ACC)
            y = y * (zv * sigmoid(zv))
        tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=m2)
        hr = row3(hsr, rows, BLOCK_L - 1)
        hi = row3(hsi, rows, BLOCK_L - 1)
    tl.store(last_ptr + soff, hr.to(last_ptr.dtype.element_ty), mask=dn_m)
    tl.store(last_ptr + soff + 1, hi.to(last_ptr.dtype.element_ty), mask=dn_m)


@triton.jit
def ss_bwd_cplx_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ts_ptr, ck_ptr,
    dy_ptr, dlast_ptr,
    du_ptr, ddl_ptr, dz_ptr, dB_ptr, dC_ptr, dts_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    L, Dm, N, G, dpg, n_tiles,
    DISC: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_TS: tl.constexpr, HAS_DY: tl.constexpr, HAS_DLAST: tl.constexpr,
    ATOMIC: tl.constexpr, ACC: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """:func:`ss_bwd_kernel` for complex A, B, C, with PyTorch's conjugate convention (the
    gradient of a complex z is dLoss/dRe z + i dLoss/dIm z; every conj is the identity for real
    data)::

        lambda_t = gy_t conj(C_t) + conj(a_{t+1}) lambda_{t+1}     (lambda_L = dlast)
        G(x)     = conj(da/dx) lambda_t conj(h_{t-1})               (x = dt A)
        G(s)     = u_t lambda_t conj(B_t)
        ddt      = sum_n Re(conj(A) G(x)) + Re(conj(ds/ddt) G(s))
        dA      += dt G(x) + conj(ds/dA) G(s)
        du       = sum_n Re(conj(B_t) conj(s) lambda_t) + gy_t D
        dB_t    += sum_d u_t conj(s) lambda_t,   dC_t += sum_d gy_t conj(h_t)
        dh0      = conj(a_0) lambda_0
    """
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    b64 = pid_b.to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < Dm
    n = tl.arange(0, BLOCK_N)
    nm = n < N
    rows = tl.arange(0, BLOCK_L)
    grp = (pid_d * BLOCK_D) // dpg
    dn_m = dm[:, None] & nm[None, :]
    aoff = (d[:, None] * N + n[None, :]) * 2
    Ar = tl.load(A_ptr + aoff, mask=dn_m, other=0.0).to(ACC)[None, :, :]
    Ai = tl.load(A_ptr + aoff + 1, mask=dn_m, other=0.0).to(ACC)[None, :, :]
    bias = tl.zeros([BLOCK_D], ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dm, other=0.0).to(ACC)
    Dv = tl.zeros([BLOCK_D], ACC)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dm, other=0.0).to(ACC)
    soff = ((b64 * Dm + d)[:, None] * N + n[None, :]) * 2
    lr = tl.zeros([BLOCK_D, BLOCK_N], ACC)  # lambda of the first token after the tile
    li = tl.zeros([BLOCK_D, BLOCK_N], ACC)
    if HAS_DLAST:
        lr = tl.load(dlast_ptr + soff, mask=dn_m, other=0.0).to(ACC)
        li = tl.load(dlast_ptr + soff + 1, mask=dn_m, other=0.0).to(ACC)
    dAr = tl.zeros([BLOCK_D, BLOCK_N], ACC)
    dAi = tl.zeros([BLOCK_D, BLOCK_N], ACC)
    dD_acc = tl.zeros([BLOCK_D], ACC)
    dbias_acc = tl.zeros([BLOCK_D], ACC)
    for kr in range(0, n_tiles):
        k = n_tiles - 1 - kr
        t = k * BLOCK_L + rows
        tm = t < L
        m2 = tm[:, None] & dm[None, :]
        bm = tm[:, None] & nm[None, :]
        tm3 = m2[:, :, None] & nm[None, None, :]
        off = (b64 * L + t)[:, None] * Dm + d[None, :]
        boff = (((b64 * L + t) * G + grp)[:, None] * N + n[None, :]) * 2
        # rows t - 1 inside the tile (row 0 -> identity), for the exclusive scan h_{t-1}
        pm = tm & (rows > 0)
        pm2 = pm[:, None] & dm[None, :]
        pbm = pm[:, None] & nm[None, :]
        u_p = tl.load(u_ptr + off - Dm, mask=pm2, other=0.0).to(ACC)[:, :, None]
        dt_p, sp_p, v_p, ts_p = _dt_tile(dl_ptr, ts_ptr, off - Dm, b64 * L + t - 1, pm2, pm,
                                         bias, HAS_BIAS, SOFTPLUS, HAS_TS, ACC)
        Bpr = tl.load(B_ptr + boff - 2 * G * N, mask=pbm, other=0.0).to(ACC)[:, None, :]
        Bpi = tl.load(B_ptr + boff - 2 * G * N + 1, mask=pbm, other=0.0).to(ACC)[:, None, :]
        apr, api, spr, spi = discretize_cplx(dt_p[:, :, None], Ar, Ai, DISC)
        bpr, bpi = _cscale(spr, spi, u_p * Bpr, u_p * Bpi, DISC)
        Pr, Pi, Qr, Qi = tl.associative_scan((apr, api, bpr, bpi), 0, combine_cplx)
        coff = (((b64 * n_tiles + k) * Dm + d)[:, None] * N + n[None, :]) * 2
        ckr = tl.load(ck_ptr + coff, mask=dn_m, other=0.0).to(ACC)[None, :, :]
        cki = tl.load(ck_ptr + coff + 1, mask=dn_m, other=0.0).to(ACC)[None, :, :]
        hpr = Pr * ckr - Pi * cki + Qr
        hpi = Pr * cki + Pi * ckr + Qi
        # rows t
        u = tl.load(u_ptr + off, mask=m2, other=0.0).to(ACC)
        dt, sp, v, ts = _dt_tile(dl_ptr, ts_ptr, off, b64 * L + t, m2, tm, bias,
                                 HAS_BIAS, SOFTPLUS, HAS_TS, ACC)
        Br = tl.load(B_ptr + boff, mask=bm, other=0.0).to(ACC)[:, None, :]
        Bi = tl.load(B_ptr + boff + 1, mask=bm, other=0.0).to(ACC)[:, None, :]
        Cr = tl.load(C_ptr + boff, mask=bm, other=0.0).to(ACC)[:, None, :]
        Ci = tl.load(C_ptr + boff + 1, mask=bm, other=0.0).to(ACC)[:, None, :]
        dt3 = dt[:, :, None]
        u3 = u[:, :, None]
        ar, ai, sr, si, xar, xai, tsr, tsi, asr, asi = discretize_grads_cplx(dt3, Ar, Ai, DISC)
        ubr = u3 * Br
        ubi = u3 * Bi
        bsr, bsi = _cscale(sr, si, ubr, ubi, DISC)
        hcr = ar * hpr - ai * hpi + bsr
        hci = ar * hpi + ai * hpr + bsi
        # rows t + 1 (may be the next tile's first row): the multiplier a_{t+1} of lambda
        nx = tm & (t + 1 < L)
        nx2 = nx[:, None] & dm[None, :]
        dt_n, sp_n, v_n, ts_n = _dt_tile(dl_ptr, ts_ptr, off + Dm, b64 * L + t + 1, nx2, nx,
                                         bias, HAS_BIAS, SOFTPLUS, HAS_TS, ACC)
        anr, ani, snr, sni = discretize_cplx(dt_n[:, :, None], Ar, Ai, DISC)
        # output gate and skip
        if HAS_DY:
            dy = tl.load(dy_ptr + off, mask=m2, other=0.0).to(ACC)
        else:
            dy = tl.zeros([BLOCK_L, BLOCK_D], ACC)
        if HAS_Z:
            zv = tl.load(z_ptr + off, mask=m2, other=0.0).to(ACC)
            y = tl.sum(hcr * Cr - hci * Ci, axis=2) + Dv[None, :] * u
            sz = sigmoid(zv)
            dz = dy * y * (sz * (1.0 + zv * (1.0 - sz)))
            tl.store(dz_ptr + off, dz.to(dz_ptr.dtype.element_ty), mask=m2)
            gy = dy * (zv * sz)
        else:
            gy = dy
        dD_acc += tl.sum(gy * u, axis=0)
        # adjoint: lambda_t = gy_t conj(C_t) + conj(a_{t+1}) lambda_{t+1}
        gy3 = gy[:, :, None]
        Mr, Mi, Gr, Gi = tl.associative_scan((anr, -ani, gy3 * Cr, -(gy3 * Ci)), 0, combine_cplx,
                                             reverse=True)
        ltr = tl.where(tm3, Mr * lr[None, :, :] - Mi * li[None, :, :] + Gr, 0.0)
        lti = tl.where(tm3, Mr * li[None, :, :] + Mi * lr[None, :, :] + Gi, 0.0)
        lr = row3(ltr, rows, 0)
        li = row3(lti, rows, 0)
        # G(x) = lambda conj(da/dx h_{t-1});  G(s) = u lambda conj(B);  conj(s) lambda
        qr, qi = cmul(xar, xai, hpr, hpi)
        gxr = ltr * qr + lti * qi
        gxi = lti * qr - ltr * qi
        gsr = u3 * (ltr * Br + lti * Bi)
        gsi = u3 * (lti * Br - ltr * Bi)
        lsr, lsi = _cscale(sr, -si, ltr, lti, DISC)  # conj(s) lambda
        du = tl.sum(lsr * Br + lsi * Bi, axis=2) + gy * Dv[None, :]
        tl.store(du_ptr + off, du.to(du_ptr.dtype.element_ty), mask=m2)
        dBr = tl.sum(lsr * u3, axis=1)
        dBi = tl.sum(lsi * u3, axis=1)
        dCr = tl.sum(gy3 * hcr, axis=1)
        dCi = -tl.sum(gy3 * hci, axis=1)
        if ATOMIC:
            tl.atomic_add(dB_ptr + boff, dBr, mask=bm)
            tl.atomic_add(dB_ptr + boff + 1, dBi, mask=bm)
            tl.atomic_add(dC_ptr + boff, dCr, mask=bm)
            tl.atomic_add(dC_ptr + boff + 1, dCi, mask=bm)
        else:  # one (Bt, L, N) slice per channel block, summed per group on the host
            poff = (((pid_d * tl.num_programs(0) + b64) * L + t)[:, None] * N + n[None, :]) * 2
            tl.store(dB_ptr + poff, dBr.to(dB_ptr.dtype.element_ty), mask=bm)
            tl.store(dB_ptr + poff + 1, dBi.to(dB_ptr.dtype.element_ty), mask=bm)
            tl.store(dC_ptr + poff, dCr.to(dC_ptr.dtype.element_ty), mask=bm)
            tl.store(dC_ptr + poff + 1, dCi.to(dC_ptr.dtype.element_ty), mask=bm)
        gdt, gAr, gAi = _scale_grads(dt3 * gxr, dt3 * gxi, Ar * gxr + Ai * gxi, tsr, tsi, asr,
                                     asi, gsr, gsi, DISC)
        gdt = tl.sum(gdt, axis=2)
        dAr += tl.sum(gAr, axis=0)
        dAi += tl.sum(gAi, axis=0)
        if HAS_TS:
            tl.atomic_add(dts_ptr + b64 * L + t, tl.sum(gdt * sp, axis=1), mask=tm)
            gsp = gdt * ts[:, None]
        else:
            gsp = gdt
        if SOFTPLUS:
            gv = gsp * softplus_grad(v)
        else:
            gv = gsp
        gv = tl.where(m2, gv, 0.0)
        dbias_acc += tl.sum(gv, axis=0)
        tl.store(ddl_ptr + off, gv.to(ddl_ptr.dtype.element_ty), mask=m2)
    # dh0 = conj(a_0) lambda_0
    r0 = rows < 1
    r02 = r0[:, None] & dm[None, :]
    off0 = (b64 * L + rows)[:, None] * Dm + d[None, :]
    dt0, sp0, v0, ts0 = _dt_tile(dl_ptr, ts_ptr, off0, b64 * L + rows, r02, r0, bias,
                                 HAS_BIAS, SOFTPLUS, HAS_TS, ACC)
    a0r, a0i, s0r, s0i = discretize_cplx(dt0[:, :, None], Ar, Ai, DISC)
    a0r = row3(a0r, rows, 0)
    a0i = row3(a0i, rows, 0)
    tl.store(dh0_ptr + soff, (a0r * lr + a0i * li).to(dh0_ptr.dtype.element_ty), mask=dn_m)
    tl.store(dh0_ptr + soff + 1, (a0r * li - a0i * lr).to(dh0_ptr.dtype.element_ty), mask=dn_m)
    out = (b64 * Dm + d)
    tl.store(dA_ptr + soff, dAr.to(dA_ptr.dtype.element_ty), mask=dn_m)
    tl.store(dA_ptr + soff + 1, dAi.to(dA_ptr.dtype.element_ty), mask=dn_m)
    tl.store(dD_ptr + out, dD_acc.to(dD_ptr.dtype.element_ty), mask=dm)
    tl.store(dbias_ptr + out, dbias_acc.to(dbias_ptr.dtype.element_ty), mask=dm)
