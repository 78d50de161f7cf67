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
* ``softplus`` / ``sigmoid`` with torch's semantics (softplus threshold 20).

Only long-stable ``triton.language`` features are used (``associative_scan`` with tuples and
``reverse``, ``where``, ``sum``, ``exp``, ``log``), so the kernels build on Triton 3.0 - 3.9.
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
