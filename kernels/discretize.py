"""Discretization of a continuous diagonal system ``h' = A h + B u``.

One implementation per formula; every scan path (reference loops, chunked
PyTorch, C++ and the single-step decoders) calls :func:`discretize`, so the
paths can only differ in how they *run* the recurrence, never in its math.

With ``x = dt * A`` (elementwise, broadcasting ``A`` against ``dt``):

=========  ==========================  ================================
method     A_bar                        B_scale  (B_bar = B_scale * B)
=========  ==========================  ================================
zoh        exp(x)                       (A_bar - 1) / A = dt * phi1(x)
bilinear   (1 + x/2) / (1 - x/2)        dt / (1 - x/2)
mamba      exp(x)                       dt
euler      exp(x)                       dt      (same formula as mamba)
dirac      exp(x)                       1
=========  ==========================  ================================

``phi1(x) = expm1(x) / x`` is evaluated without cancellation: a Taylor series
for ``|x| < 0.1`` (this also keeps the gradient exact at ``A -> 0`` where the
zoh input scale tends to ``dt``), ``expm1(x) / x`` otherwise, with a stable
complex ``expm1`` written out by hand because ``torch.expm1`` lacks complex
support on some backends/versions.

Event / asynchronous streams: a per-token time step ``timesteps`` scales the
step size, ``dt_eff = dt * timesteps`` (:func:`effective_dt`), and is then fed
to the chosen formula, so it scales both the transition and the input.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["METHODS", "discretize", "effective_dt", "phi1"]

METHODS: tuple[str, ...] = ("zoh", "bilinear", "mamba", "euler", "dirac")

# Taylor branch of phi1 below this |x|.  With 12 terms the truncation error is
# |x|^12 / 13! < 2e-22 relative, far below fp64 rounding.  Lower precisions need fewer
# terms: 7 leave |x|^8 / 9! < 3e-14, far below fp32 rounding (6e-8); each term saves two
# elementwise ops forward and ~three backward (the series dominates the launch count of a
# conv-mode s4d step on GPU).
_SERIES_RADIUS = 0.1
_SERIES_TERMS = 12
_SERIES_TERMS_FP32 = 7


def _series_terms(dtype: torch.dtype) -> int:
    """Taylor terms of phi1 for tensors of ``dtype`` (float64 / complex128: 12, else 7)."""
    return _SERIES_TERMS if dtype in (torch.float64, torch.complex128) else _SERIES_TERMS_FP32


def _expm1(x: Tensor) -> Tensor:
    """``exp(x) - 1`` accurate for small |x|, real or complex.

    Complex: with x = a + ib,
    ``Re = expm1(a) cos(b) - 2 sin(b/2)^2`` (both terms are small when x is),
    ``Im = exp(a) sin(b)``.
    """
    if not x.is_complex():
        return torch.expm1(x)
    a, b = x.real, x.imag
    s = torch.sin(0.5 * b)
    re = torch.expm1(a) * torch.cos(b) - 2.0 * s * s
    im = torch.exp(a) * torch.sin(b)
    return torch.complex(re, im)


def _phi1_reference(x: Tensor) -> Tensor:
    """Plain-autograd phi1 (the pre-fusion implementation); kept as the test oracle."""
    small = x.abs() < _SERIES_RADIUS
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    one = torch.ones((), dtype=x.dtype, device=x.device)
    xs = torch.where(small, x, zero)
    # Horner for sum_{k>=0} x^k / (k+1)!
    terms = _series_terms(x.dtype)
    series = torch.full_like(xs, 1.0 / _factorial(terms + 1))
    for k in range(terms - 1, -1, -1):
        series = series * xs + 1.0 / _factorial(k + 1)
    xb = torch.where(small, one, x)
    big = _expm1(xb) / xb
    return torch.where(small, series, big)


def _exp_phi1_dphi1(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(exp(x), phi1(x), phi1'(x))`` in one pass (no autograd bookkeeping needed).

    Small ``|x|``: Horner gives ``phi2(x) = sum_k x^k / (k+2)!`` (the same polynomial as the
    degree-``terms`` phi1 series, one step earlier), then ``phi1 = 1 + x phi2`` and
    ``phi1' = phi1 - phi2`` (exact identity; its series is the term-by-term derivative of the
    phi1 polynomial, and there is no cancellation: phi1 ~ 1, phi2 ~ 1/2).
    Large ``|x|``: ``phi1 = expm1(x) / x`` and ``phi1' = (exp(x) - phi1) / x``.
    The unselected branch sees a harmless stand-in (0 resp. 1) so it stays finite.
    """
    small = x.abs() < _SERIES_RADIUS
    xs = torch.where(small, x, 0.0)
    terms = _series_terms(x.dtype)
    # phi2 has degree terms - 1: coefficients 1/(k+2)!, k = terms-1 .. 0
    p2 = xs * (1.0 / _factorial(terms + 1)) + 1.0 / _factorial(terms)
    for k in range(terms - 3, -1, -1):
        p2 = p2 * xs + 1.0 / _factorial(k + 2)
    ps = p2 * xs + 1.0
    dps = ps - p2
    E = torch.exp(x)
    xb = torch.where(small, 1.0, x)
    if x.is_complex():
        # _expm1(xb) with fewer ops: Im expm1(x) = Im exp(x) (E; where xb != x the value is
        # discarded by the final where) and Re = expm1(a) cos(b) - 2 sin(b/2)^2 as one addcmul
        a, b = xb.real, xb.imag
        s = torch.sin(0.5 * b)
        em1 = torch.complex(torch.addcmul(torch.expm1(a) * torch.cos(b), s, s, value=-2.0),
                            E.imag)
    else:
        em1 = torch.expm1(xb)
    big = em1 / xb
    dbig = (E - big) / xb
    return E, torch.where(small, ps, big), torch.where(small, dps, dbig)


def _dphi1_differentiable(x: Tensor) -> Tensor:
    """``phi1'(x)`` from differentiable ops (double backward only): series / ``(exp - phi1)/x``."""
    small = x.abs() < _SERIES_RADIUS
    xs = torch.where(small, x, 0.0)
    terms = _series_terms(x.dtype)
    p2 = xs * (1.0 / _factorial(terms + 1)) + 1.0 / _factorial(terms)
    for k in range(terms - 3, -1, -1):
        p2 = p2 * xs + 1.0 / _factorial(k + 2)
    dps = (p2 * xs + 1.0) - p2
    xb = torch.where(small, 1.0, x)
    dbig = (torch.exp(xb) - _ExpPhi1.apply(xb)[1]) / xb
    return torch.where(small, dps, dbig)


class _ExpPhi1(torch.autograd.Function):
    """``x -> (exp(x), phi1(x))`` with a hand-written backward (real or complex ``x``).

    The plain-autograd form records every Horner step (about 100 aten ops forward+backward
    for complex fp32 on a conv-mode s4d step); here the forward also produces ``phi1'`` and
    the backward is ``g_E conj(exp x) + g_phi1 conj(phi1'(x))`` (both holomorphic).  Under
    ``create_graph`` the backward recomputes ``phi1'`` from differentiable ops (recursing
    into this function), so higher derivatives work too.
    """

    @staticmethod
    def forward(ctx, x):
        E, P, D = _exp_phi1_dphi1(x)
        ctx.save_for_backward(x, E, D)
        ctx.set_materialize_grads(False)
        return E, P

    @staticmethod
    def backward(ctx, gE, gP):
        x, E, D = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: keep the dependence of E, D on x
            E = torch.exp(x)
            D = _dphi1_differentiable(x)
        if x.is_complex():
            E, D = E.conj(), D.conj()
        g = None
        if gP is not None:
            g = gP * D
        if gE is not None:
            g = gE * E if g is None else g + gE * E
        return g


#: below this |dt A| the fused complex64 zoh uses phi1 = 1, phi1' = 1/2 (errors |x|/2 and
#: |x|/3 relative, < 1e-8); above it the complex128 quotients (exp(x) - 1)/x and
#: (exp(x) - phi1)/x lose about 1e-16/|x| relative to cancellation (< 1e-8): both far below
#: complex64 rounding (6e-8).
_ZOH64_RADIUS = 1e-8


class _ZohComplex64(torch.autograd.Function):
    """``(A, dt) -> (exp(dt A), dt phi1(dt A))`` for complex64 ``A``, real float32 ``dt``.

    The zero-order hold of a complex64 system in ~12 elementwise ops forward and ~12 backward
    (the generic :class:`_ExpPhi1` path records a 7-term Horner series and its products: ~45):
    ``x = dt * A`` is formed in complex64 exactly as the generic path does, then evaluated in
    complex128 where the plain quotients are accurate to far below complex64 rounding (see
    :data:`_ZOH64_RADIUS`), and rounded once.  Backward (holomorphic in A, real dt):
    ``d A_bar / dA = dt A_bar``, ``d A_bar / d dt = A A_bar``, ``d B_scale / dA = dt^2 phi1'``,
    ``d B_scale / d dt = A_bar``.  Under ``create_graph`` (grad mode on in the backward) the
    intermediates are recomputed from the saved inputs with differentiable ops (see
    :meth:`backward`), so higher derivatives work; the ordinary backward uses the saved ones.
    """

    @staticmethod
    def forward(ctx, A, dt):
        x = dt * A
        z = x.to(torch.complex128)
        E = torch.exp(z)
        small = z.abs() < _ZOH64_RADIUS
        P = torch.where(small, 1.0, (E - 1.0) / z)
        A_bar = E.to(torch.complex64)
        scale = (dt * P).to(torch.complex64)
        ctx.save_for_backward(A, dt, z, E, P, small, A_bar)
        ctx.set_materialize_grads(False)
        return A_bar, scale

    @staticmethod
    def backward(ctx, gE, gS):
        A, dt, z, E, P, small, A_bar = ctx.saved_tensors
        if gE is None and gS is None:
            return None, None
        if torch.is_grad_enabled():
            # create_graph: rebuild A_bar and phi1' from the inputs with ops autograd records.
            # Not the forward's plain quotients: differentiating (E - P) / z amplifies their
            # complex128 cancellation error (~1e-16 / |z|) by another 1 / |z| per order, and
            # the small-|z| constants would have a zero derivative.  _ExpPhi1 / its phi1' (a
            # 12-term series below |z| = 0.1, quotients above) are accurate to complex128
            # rounding and differentiable to any order.
            z = (dt * A).to(torch.complex128)
            E = torch.exp(z)
            A_bar = E.to(torch.complex64)
            D = _dphi1_differentiable(z).to(torch.complex64)
        elif gS is not None:
            D = torch.where(small, 0.5, (E - P) / z).to(torch.complex64)
        # u = dL/d(x) conj-convention: gE conj(A_bar) + gS dt conj(phi1')
        u = None
        if gS is not None:
            u = (gS * dt) * D.conj()
        if gE is not None:
            u = gE * A_bar.conj() if u is None else torch.addcmul(u, gE, A_bar.conj())
        gA = gdt = None
        if ctx.needs_input_grad[0]:
            gA = (u * dt).sum_to_size(A.shape)
        if ctx.needs_input_grad[1]:
            # d/d dt: gE conj(A A_bar) + gS conj(A_bar) = conj(A_bar) (gE conj(A) + gS)
            v = gS if gE is None else (gE * A.conj() if gS is None else
                                       torch.addcmul(gS, gE, A.conj()))
            gdt = (v * A_bar.conj()).real.sum_to_size(dt.shape)
        return gA, gdt


def exp_phi1(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(exp(x), phi1(x))``, fused (see :func:`phi1`)."""
    return _ExpPhi1.apply(x)


def phi1(x: Tensor) -> Tensor:
    """``phi1(x) = (exp(x) - 1) / x`` with ``phi1(0) = 1``; real or complex.

    A Taylor series for ``|x| < 0.1``, ``expm1(x) / x`` otherwise, selected with
    ``torch.where`` on "safe" inputs (each branch sees a harmless stand-in in the other's
    region, so nothing inf/nan is produced).  One autograd node with an analytic backward
    (``phi1' = (exp(x) - phi1(x)) / x``, series for small ``|x|``); differentiable to any order.
    """
    return _ExpPhi1.apply(x)[1]


def _factorial(n: int) -> float:
    out = 1.0
    for i in range(2, n + 1):
        out *= i
    return out


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(
            f"unknown discretization method {method!r}; expected one of {', '.join(METHODS)}"
        )
    return method


def _zoh64_ok(A: Tensor, dt: Tensor) -> bool:
    """The fused complex64 zoh (:class:`_ZohComplex64`) applies: complex64 ``A``, float32
    ``dt`` whose broadcast with ``A`` has ``A``'s shape (the layers' (H, N) x (H, 1) and
    (P,) x (P,)); everything else runs the generic, any-order differentiable formula."""
    return (A.dtype == torch.complex64 and dt.dtype == torch.float32
            and dt.dim() <= A.dim()
            and all(d in (1, a) for d, a in zip(dt.shape[::-1], A.shape[::-1])))


def _discretize(method: str, A: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Like :func:`discretize` but ``B_scale`` is only *broadcastable* to
    ``A_bar`` (for mamba/euler it is ``dt`` itself, for dirac a 0-d one).

    The scan kernels use this form to avoid materializing a full-size scale
    when it only depends on ``dt`` (e.g. ``(B, L, D, 1)`` instead of
    ``(B, L, D, N)`` in the selective scan).
    """
    _check_method(method)
    if dt.is_complex():
        raise ValueError("dt must be real")
    if method == "zoh" and _zoh64_ok(A, dt):
        return _ZohComplex64.apply(A, dt)
    x = dt * A
    if method == "bilinear":
        denom = 1.0 - 0.5 * x
        return (1.0 + 0.5 * x) / denom, dt / denom
    if method == "zoh":
        A_bar, p = _ExpPhi1.apply(x)
        return A_bar, dt * p
    A_bar = torch.exp(x)
    if method in ("mamba", "euler"):
        return A_bar, dt.to(x.real.dtype)
    # dirac: the input enters as an impulse, unscaled.
    return A_bar, torch.ones((), dtype=x.real.dtype, device=x.device)


def discretize(method: str, A: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Discretize a diagonal continuous-time system.

    Args:
        method: one of :data:`METHODS`.
        A: continuous state matrix diagonal, real or complex (usually < 0 real part).
        dt: real step sizes (> 0), broadcastable against ``A``.

    Returns:
        ``(A_bar, B_scale)``, both of the broadcast shape of ``A`` and ``dt``.
        ``A_bar`` has the dtype of ``dt * A``; ``B_scale`` is complex for zoh
        and bilinear with complex ``A`` and real otherwise.  For mamba, euler
        and dirac ``B_scale`` is a broadcast (expanded) view: do not write to
        it in place.  The discrete input matrix is ``B_bar = B_scale * B``.

    Raises:
        ValueError: unknown ``method`` (the message lists the methods).
    """
    A_bar, scale = _discretize(method, A, dt)
    shape = torch.broadcast_shapes(A_bar.shape, scale.shape)
    return A_bar.expand(shape), scale.expand(shape)


def effective_dt(dt: Tensor, timesteps: Tensor | None) -> Tensor:
    """Per-token step size for event / asynchronous streams.

    ``dt_eff = dt * timesteps``.  ``timesteps`` may have one dimension fewer
    than ``dt`` (e.g. ``(B, L)`` against ``(B, L, D)``); it is then broadcast
    over the trailing channel dimension.  ``None`` returns ``dt`` unchanged.
    """
    if timesteps is None:
        return dt
    if timesteps.dim() == dt.dim() - 1:
        timesteps = timesteps.unsqueeze(-1)
    return dt * timesteps
