"""Triton device functions shared by the scan kernels.

* ``combine_real`` / ``combine_cplx``: the associative operator of a first-order linear
  recurrence.  An element ``(a, b)`` is the affine map ``h -> a h + b``; composing "first
  ``(a1, b1)``, then ``(a2, b2)``" gives ``(a1 a2, a2 b1 + b2)`` (Blelloch 1990; Martin & Cundy
  2018, https://arxiv.org/abs/1709.04057).  ``tl.associative_scan`` always calls
  ``combine(earlier_in_scan_order, later)``; with ``reverse=True`` the scan order runs from the
  last row to the first (the interpreter and the GPU lowering both flip, scan, flip back), so
  the same operator computes the anti-causal recurrence ``h_t = a_t h_{t+1} + b_t``.
* ``row2`` / ``row3``: extract one row of a tile (the carry between tiles) with a masked sum,
  which is exact (one nonzero term) and independent of the reduction order.
* ``discretize`` / ``discretize_grads``: the formulas of ``lrnnx_kernels.discretize`` for real
  ``A`` (``x = dt * A``), and their partial derivatives for the fused backward.
* ``discretize_cplx`` / ``discretize_grads_cplx``: the same for complex ``A`` (dt real), every
  complex number a ``(re, im)`` pair of real tensors; all the formulas are holomorphic in ``x``,
  so the derivatives are the real ones evaluated at complex ``x``.  ``cmul`` / ``cdiv`` /
  ``cexp`` / ``expm1`` are the complex (and real) helpers they need.
* ``softplus`` / ``sigmoid`` with torch's semantics (softplus threshold 20).

Only long-stable ``triton.language`` features are used (``associative_scan`` with tuples and
``reverse``, ``where``, ``sum``, ``exp``, ``log``, ``sin``, ``cos``), so the kernels build on
Triton 3.0 - 3.9.
"""
import triton
import triton.language as tl

# Discretization codes (constexpr): the order of ``DISC_CODES`` in ``_host.py``.
# (Globals read inside @triton.jit must be ``tl.constexpr`` instances.)
MAMBA = tl.constexpr(0)  # also "euler": A_bar = exp(x), B_scale = dt
ZOH = tl.constexpr(1)  # A_bar = exp(x), B_scale = dt * phi1(x) = expm1(x) / A
BILINEAR = tl.constexpr(2)  # A_bar = (1 + x/2) / (1 - x/2), B_scale = dt / (1 - x/2)
DIRAC = tl.constexpr(3)  # A_bar = exp(x), B_scale = 1


@triton.jit
def combine_real(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def combine_cplx(ar1, ai1, br1, bi1, ar2, ai2, br2, bi2):
    # (a1, b1) then (a2, b2) -> (a1 a2, a2 b1 + b2), complex products written out.
    ar = ar1 * ar2 - ai1 * ai2
    ai = ar1 * ai2 + ai1 * ar2
    br = ar2 * br1 - ai2 * bi1 + br2
    bi = ar2 * bi1 + ai2 * br1 + bi2
    return ar, ai, br, bi


@triton.jit
def row2(x, rows, r):
    """Row ``r`` of a (BLOCK_L, BLOCK_D) tile as a (BLOCK_D,) vector."""
    return tl.sum(tl.where((rows == r)[:, None], x, 0.0), axis=0)


@triton.jit
def row3(x, rows, r):
    """Row ``r`` of a (BLOCK_L, BLOCK_D, BLOCK_N) tile as a (BLOCK_D, BLOCK_N) tensor."""
    return tl.sum(tl.where((rows == r)[:, None, None], x, 0.0), axis=0)


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def log1p(y):
    """``log(1 + y)`` accurate for small ``y`` (Goldberg's trick, no libdevice needed)."""
    u = 1.0 + y
    d = u - 1.0
    safe = tl.where(d == 0.0, 1.0, d)
    return tl.where(d == 0.0, y, tl.log(u) * (y / safe))


@triton.jit
def softplus(v):
    """``torch.nn.functional.softplus`` (beta 1, threshold 20)."""
    vs = tl.minimum(v, 20.0)
    return tl.where(v > 20.0, v, log1p(tl.exp(vs)))


@triton.jit
def softplus_grad(v):
    """d softplus / dv (1 above the threshold, as in torch)."""
    return tl.where(v > 20.0, 1.0, sigmoid(v))


@triton.jit
def _phi1(x):
    """``(exp(x) - 1) / x``: 12-term Taylor series for |x| < 0.1 (as in discretize.py)."""
    small = tl.abs(x) < 0.1
    xs = tl.where(small, x, 0.0)
    # Horner for sum_{k=0}^{12} x^k / (k+1)!
    s = xs * 0.0 + 1.0 / 6227020800.0  # 1/13!
    s = s * xs + 1.0 / 479001600.0
    s = s * xs + 1.0 / 39916800.0
    s = s * xs + 1.0 / 3628800.0
    s = s * xs + 1.0 / 362880.0
    s = s * xs + 1.0 / 40320.0
    s = s * xs + 1.0 / 5040.0
    s = s * xs + 1.0 / 720.0
    s = s * xs + 1.0 / 120.0
    s = s * xs + 1.0 / 24.0
    s = s * xs + 1.0 / 6.0
    s = s * xs + 0.5
    s = s * xs + 1.0
    xb = tl.where(small, 1.0, x)
    return tl.where(small, s, (tl.exp(xb) - 1.0) / xb)


@triton.jit
def _dphi1(x, ex, p1):
    """phi1'(x) = (exp(x) - phi1(x)) / x; series sum_j (j+1) x^j / (j+2)! for |x| < 0.1."""
    small = tl.abs(x) < 0.1
    xs = tl.where(small, x, 0.0)
    s = xs * 0.0 + 12.0 / 6227020800.0  # j = 11: 12 / 13!
    s = s * xs + 11.0 / 479001600.0
    s = s * xs + 10.0 / 39916800.0
    s = s * xs + 9.0 / 3628800.0
    s = s * xs + 8.0 / 362880.0
    s = s * xs + 7.0 / 40320.0
    s = s * xs + 6.0 / 5040.0
    s = s * xs + 5.0 / 720.0
    s = s * xs + 4.0 / 120.0
    s = s * xs + 3.0 / 24.0
    s = s * xs + 2.0 / 6.0
    s = s * xs + 0.5
    xb = tl.where(small, 1.0, x)
    return tl.where(small, s, (ex - p1) / xb)


@triton.jit
def discretize(dt, A, DISC: tl.constexpr):
    """``(A_bar, B_scale)`` for ``x = dt * A`` (dt and A broadcast against each other).

    Masked (padding) entries use ``dt = 0``, which gives ``A_bar = 1`` for every method: the
    identity element of the scan.
    """
    x = dt * A
    if DISC == BILINEAR:
        den = 1.0 - 0.5 * x
        abar = (1.0 + 0.5 * x) / den
        scale = dt / den
    else:
        abar = tl.exp(x)
        if DISC == ZOH:
            scale = dt * _phi1(x)
        elif DISC == DIRAC:
            scale = x * 0.0 + 1.0
        else:
            scale = dt + x * 0.0
    return abar, scale


@triton.jit
def discretize_grads(dt, A, DISC: tl.constexpr):
    """``(A_bar, B_scale, dA_bar/dx, dB_scale/ddt, dB_scale/dA)`` at ``x = dt * A``.

    zoh: ``B_scale = expm1(x) / A`` so ``dB_scale/ddt = exp(x)`` exactly and
    ``dB_scale/dA = dt^2 phi1'(x)``; bilinear: ``dA_bar/dx = dB_scale/ddt = 1 / (1 - x/2)^2``,
    ``dB_scale/dA = dt^2 / (2 (1 - x/2)^2)``.
    """
    x = dt * A
    zero = x * 0.0
    if DISC == BILINEAR:
        den = 1.0 - 0.5 * x
        abar = (1.0 + 0.5 * x) / den
        scale = dt / den
        inv2 = 1.0 / (den * den)
        dadx = inv2
        ds_ddt = inv2
        ds_dA = 0.5 * dt * dt * inv2
    else:
        abar = tl.exp(x)
        dadx = abar
        if DISC == ZOH:
            p1 = _phi1(x)
            scale = dt * p1
            ds_ddt = abar
            ds_dA = dt * dt * _dphi1(x, abar, p1)
        elif DISC == DIRAC:
            scale = zero + 1.0
            ds_ddt = zero
            ds_dA = zero
        else:
            scale = dt + zero
            ds_ddt = zero + 1.0
            ds_dA = zero
    return abar, scale, dadx, ds_ddt, ds_dA


# ----------------------------------------------------------------------------- complex A
# A complex number is a pair (re, im) of real tensors of one shape (or broadcastable shapes).


@triton.jit
def cmul(ar, ai, br, bi):
    return ar * br - ai * bi, ar * bi + ai * br


@triton.jit
def cdiv(ar, ai, br, bi):
    """``a / b`` = ``a conj(b) / |b|^2``."""
    inv = 1.0 / (br * br + bi * bi)
    return (ar * br + ai * bi) * inv, (ai * br - ar * bi) * inv


@triton.jit
def cexp(xr, xi):
    e = tl.exp(xr)
    return e * tl.cos(xi), e * tl.sin(xi)


@triton.jit
def expm1(x):
    """Real ``exp(x) - 1`` without cancellation near 0 (Kahan: ``(u - 1) x / log(u)``,
    ``u = exp(x)``); plain ``exp(x) - 1`` for |x| > 0.5, where nothing cancels."""
    u = tl.exp(x)
    um1 = u - 1.0
    near = (tl.abs(x) <= 0.5) & (um1 != 0.0)
    lu = tl.log(tl.where(near, u, 2.0))
    return tl.where(tl.abs(x) > 0.5, um1, tl.where(um1 == 0.0, x, um1 * (x / lu)))


@triton.jit
def _chorner(sr, si, xr, xi, c):
    """One Horner step ``s * x + c`` (c real)."""
    return sr * xr - si * xi + c, sr * xi + si * xr


@triton.jit
def _phi1_cplx(xr, xi):
    """Complex ``phi1(x) = expm1(x) / x``: the 12-term series for |x| < 0.1, else the stable
    complex expm1 of ``discretize._expm1`` (``Re = expm1(a) cos(b) - 2 sin(b/2)^2``,
    ``Im = exp(a) sin(b)``) divided by x."""
    small = xr * xr + xi * xi < 0.01
    sr0 = tl.where(small, xr, 0.0)
    si0 = tl.where(small, xi, 0.0)
    sr = sr0 * 0.0 + 1.0 / 6227020800.0  # 1/13!
    si = sr0 * 0.0
    sr, si = _chorner(sr, si, sr0, si0, 1.0 / 479001600.0)
    sr, si = _chorner(sr, si, sr0, si0, 1.0 / 39916800.0)
    sr, si = _chorner(sr, si, sr0, si0, 1.0 / 3628800.0)
    sr, si = _chorner(sr, si, sr0, si0, 1.0 / 362880.0)
    sr, si = _chorner(sr, si, sr0, si0, 1.0 / 40320.0)
    sr, si = _chorner(sr, si, sr0, si0, 1.0 / 5040.0)
    sr, si = _chorner(sr, si, sr0, si0, 1.0 / 720.0)
    sr, si = _chorner(sr, si, sr0, si0, 1.0 / 120.0)
    sr, si = _chorner(sr, si, sr0, si0, 1.0 / 24.0)
    sr, si = _chorner(sr, si, sr0, si0, 1.0 / 6.0)
    sr, si = _chorner(sr, si, sr0, si0, 0.5)
    sr, si = _chorner(sr, si, sr0, si0, 1.0)
    br = tl.where(small, 1.0, xr)
    bi = tl.where(small, 0.0, xi)
    sh = tl.sin(0.5 * bi)
    er = expm1(br) * tl.cos(bi) - 2.0 * sh * sh
    ei = tl.exp(br) * tl.sin(bi)
    qr, qi = cdiv(er, ei, br, bi)
    return tl.where(small, sr, qr), tl.where(small, si, qi)


@triton.jit
def _dphi1_cplx(xr, xi, er, ei, pr, pi):
    """Complex ``phi1'(x) = (exp(x) - phi1(x)) / x`` (series for |x| < 0.1); ``e = exp(x)``,
    ``p = phi1(x)``."""
    small = xr * xr + xi * xi < 0.01
    sr0 = tl.where(small, xr, 0.0)
    si0 = tl.where(small, xi, 0.0)
    sr = sr0 * 0.0 + 12.0 / 6227020800.0  # j = 11: 12 / 13!
    si = sr0 * 0.0
    sr, si = _chorner(sr, si, sr0, si0, 11.0 / 479001600.0)
    sr, si = _chorner(sr, si, sr0, si0, 10.0 / 39916800.0)
    sr, si = _chorner(sr, si, sr0, si0, 9.0 / 3628800.0)
    sr, si = _chorner(sr, si, sr0, si0, 8.0 / 362880.0)
    sr, si = _chorner(sr, si, sr0, si0, 7.0 / 40320.0)
    sr, si = _chorner(sr, si, sr0, si0, 6.0 / 5040.0)
    sr, si = _chorner(sr, si, sr0, si0, 5.0 / 720.0)
    sr, si = _chorner(sr, si, sr0, si0, 4.0 / 120.0)
    sr, si = _chorner(sr, si, sr0, si0, 3.0 / 24.0)
    sr, si = _chorner(sr, si, sr0, si0, 2.0 / 6.0)
    sr, si = _chorner(sr, si, sr0, si0, 0.5)
    br = tl.where(small, 1.0, xr)
    bi = tl.where(small, 0.0, xi)
    qr, qi = cdiv(er - pr, ei - pi, br, bi)
    return tl.where(small, sr, qr), tl.where(small, si, qi)


@triton.jit
def discretize_cplx(dt, Ar, Ai, DISC: tl.constexpr):
    """``(A_bar, B_scale)`` as ``(abar_re, abar_im, scale_re, scale_im)`` for complex ``A`` and
    real ``dt`` (``x = dt * A``).  ``scale_im`` is 0 for mamba/euler/dirac (a real scale).
    Masked entries (``dt = 0``) give ``A_bar = 1``, the identity of the scan."""
    xr = dt * Ar
    xi = dt * Ai
    zero = xr * 0.0
    if DISC == BILINEAR:
        dr = 1.0 - 0.5 * xr
        di = -0.5 * xi
        ar, ai = cdiv(1.0 + 0.5 * xr, 0.5 * xi, dr, di)
        sr, si = cdiv(dt + zero, zero, dr, di)
    else:
        ar, ai = cexp(xr, xi)
        if DISC == ZOH:
            pr, pi = _phi1_cplx(xr, xi)
            sr = dt * pr
            si = dt * pi
        elif DISC == DIRAC:
            sr = zero + 1.0
            si = zero
        else:
            sr = dt + zero
            si = zero
    return ar, ai, sr, si


@triton.jit
def discretize_grads_cplx(dt, Ar, Ai, DISC: tl.constexpr):
    """Complex :func:`discretize_grads`: ``(abar, scale, dA_bar/dx, dB_scale/ddt, dB_scale/dA)``,
    each as a (re, im) pair (10 tensors), at ``x = dt * A``.  The maps are holomorphic, so these
    are complex derivatives; the backward applies PyTorch's convention (conjugates) itself."""
    xr = dt * Ar
    xi = dt * Ai
    zero = xr * 0.0
    if DISC == BILINEAR:
        dr = 1.0 - 0.5 * xr
        di = -0.5 * xi
        ar, ai = cdiv(1.0 + 0.5 * xr, 0.5 * xi, dr, di)
        sr, si = cdiv(dt + zero, zero, dr, di)
        d2r, d2i = cmul(dr, di, dr, di)
        ir, ii = cdiv(zero + 1.0, zero, d2r, d2i)
        gar = ir
        gai = ii
        gtr = ir
        gti = ii
        h = 0.5 * dt * dt
        gAr = h * ir
        gAi = h * ii
    else:
        ar, ai = cexp(xr, xi)
        gar = ar
        gai = ai
        if DISC == ZOH:
            pr, pi = _phi1_cplx(xr, xi)
            sr = dt * pr
            si = dt * pi
            gtr = ar
            gti = ai
            qr, qi = _dphi1_cplx(xr, xi, ar, ai, pr, pi)
            gAr = dt * dt * qr
            gAi = dt * dt * qi
        elif DISC == DIRAC:
            sr = zero + 1.0
            si = zero
            gtr = zero
            gti = zero
            gAr = zero
            gAi = zero
        else:
            sr = dt + zero
            si = zero
            gtr = zero + 1.0
            gti = zero
            gAr = zero
            gAi = zero
    return ar, ai, sr, si, gar, gai, gtr, gti, gAr, gAi


@triton.jit
def _discretize_cplx_test_kernel(dt_ptr, A_ptr, out_ptr, n, DISC: tl.constexpr,
                                 BLOCK: tl.constexpr):
    """Elementwise complex discretization over flat ``dt`` (real) and ``A`` (interleaved
    (re, im)): rows 0-4 of ``out`` (also interleaved) are abar, scale, dA_bar/dx, dB_scale/ddt,
    dB_scale/dA; rows 5-6 the differences between the two helpers (tests)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    dt = tl.load(dt_ptr + offs, mask=m, other=0.0)
    Ar = tl.load(A_ptr + 2 * offs, mask=m, other=0.0)
    Ai = tl.load(A_ptr + 2 * offs + 1, mask=m, other=0.0)
    ar, ai, sr, si = discretize_cplx(dt, Ar, Ai, DISC)
    gr, gi, hr, hi, dar, dai, dtr, dti, dAr, dAi = discretize_grads_cplx(dt, Ar, Ai, DISC)
    o = 2 * offs
    tl.store(out_ptr + o, ar, mask=m)
    tl.store(out_ptr + o + 1, ai, mask=m)
    tl.store(out_ptr + 2 * n + o, sr, mask=m)
    tl.store(out_ptr + 2 * n + o + 1, si, mask=m)
    tl.store(out_ptr + 4 * n + o, dar, mask=m)
    tl.store(out_ptr + 4 * n + o + 1, dai, mask=m)
    tl.store(out_ptr + 6 * n + o, dtr, mask=m)
    tl.store(out_ptr + 6 * n + o + 1, dti, mask=m)
    tl.store(out_ptr + 8 * n + o, dAr, mask=m)
    tl.store(out_ptr + 8 * n + o + 1, dAi, mask=m)
    tl.store(out_ptr + 10 * n + o, gr - ar, mask=m)
    tl.store(out_ptr + 10 * n + o + 1, gi - ai, mask=m)
    tl.store(out_ptr + 12 * n + o, hr - sr, mask=m)
    tl.store(out_ptr + 12 * n + o + 1, hi - si, mask=m)


@triton.jit
def _discretize_test_kernel(dt_ptr, A_ptr, out_ptr, n, DISC: tl.constexpr, BLOCK: tl.constexpr):
    """Elementwise :func:`discretize` + :func:`discretize_grads` over flat ``dt``, ``A`` (tests)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    dt = tl.load(dt_ptr + offs, mask=m, other=0.0)
    A = tl.load(A_ptr + offs, mask=m, other=0.0)
    abar, scale = discretize(dt, A, DISC)
    g_abar, g_scale, dadx, ds_ddt, ds_dA = discretize_grads(dt, A, DISC)
    tl.store(out_ptr + offs, abar, mask=m)
    tl.store(out_ptr + n + offs, scale, mask=m)
    tl.store(out_ptr + 2 * n + offs, dadx, mask=m)
    tl.store(out_ptr + 3 * n + offs, ds_ddt, mask=m)
    tl.store(out_ptr + 4 * n + offs, ds_dA, mask=m)
    tl.store(out_ptr + 5 * n + offs, g_abar - abar, mask=m)
    tl.store(out_ptr + 6 * n + offs, g_scale - scale, mask=m)
