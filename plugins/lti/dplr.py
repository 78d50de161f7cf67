r"""The math of S4's diagonal-plus-low-rank (DPLR) SSM: kernel, recurrent step, state passing.

Gu, Goel & Re 2022, "Efficiently Modeling Long Sequences with Structured State Spaces",
https://arxiv.org/abs/2111.00396.  Per channel h (H of them) the continuous system is

.. math::

    x'(t) = A x(t) + B u(t),\quad y = C x,\qquad A = \Lambda - P Q^T,\ Q = \bar P
    \ (\text{i.e. } \Lambda - P P^*)

in the eigenbasis of the normal part (:func:`lrnnx_plugins.lti.hippo.nplr`).  A real system of
size N is stored as M = N/2 modes, one per conjugate pair: ``Lam, B, C`` (H, M), ``P``
(r, H, M); the full vectors are ``[v, conj(v)]`` and ``y = 2 Re(C x)`` on the stored half.

Bilinear discretization (step ``dt``, (H,)):
``A_bar = (I - dt/2 A)^-1 (I + dt/2 A)``, ``B_bar = (I - dt/2 A)^-1 dt B``.

* **Kernel** (Algorithm 1): ``K_l = C A_bar^l B_bar`` (l < L) from its truncated generating
  function at the roots of unity ``omega_k = exp(-2 pi i k / L)``:
  ``K^(omega) = C~ (I - omega A_bar)^-1 B_bar`` with ``C~ = C (I - A_bar^L)`` and
  ``(I - omega A_bar)^-1 B_bar = dt M^-1 B``, ``M = a I - b (dt/2) A``, ``a = 1 - omega``,
  ``b = 1 + omega``.  ``M = D + beta P Q^T`` (``D = a - b dt Lam / 2`` diagonal,
  ``beta = b dt / 2``), so by Woodbury
  ``K^ = dt [r_CB - beta r_CP (I + beta r_QP)^-1 r_QB]`` with the sums
  ``r_XY = sum_n X_n Y_n / D_n = (1/b) sum_n X_n Y_n / (z - dt Lam_n / 2)``,
  ``z = (1 - omega)/(1 + omega) = -i tan(theta/2)``: Cauchy sums (:mod:`.cauchy`) at nodes on
  the imaginary axis; then ``K = irfft(K^)``.  This is the paper's
  ``2/(1+omega) [k00 - k01 (1 + k11)^-1 k10]``; the node ``omega = -1``, where ``2/(1+omega)``
  has a pole, is evaluated in the pole-free form ``1 / D_n = 1/2``.
* **Step** (O(N r) per token): ``(2/dt - A) x' = (2/dt + A) x + 2 B u`` with the left side
  inverted by Woodbury is again diagonal plus rank r, ``x' = d x - U (W^T x) + B_bar u``
  (:func:`step_setup`); on conjugate-symmetric states ``W^T x = 2 Re(W_half . x)`` is real.
* **State passing**: the zero-input response ``C A_bar^(t+1) x0`` is the kernel of the input
  vector ``B_s = (1/dt)(I + dt/2 A) x0`` (so that ``B_bar_s = A_bar x0``); the final state
  ``x_L = A_bar^L x0 + (I - A_bar^L) S`` with
  ``S = (1/L) sum_k U_k (I - conj(omega_k) A_bar)^-1 B_bar`` (U = DFT of the reversed input,
  Parseval on the truncated generating function of the Krylov vectors ``A_bar^j B_bar``).
  ``A_bar`` is again diagonal plus rank r (:func:`discrete`), so ``A_bar^L`` is applied to the
  few vectors that need it (``C`` for ``C~``, ``x0 - S``) by L cheap steps, or for long L by
  repeated squaring of the dense (2M, 2M) matrix (:func:`apply_power`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .cauchy import cauchy

__all__ = ["DPLRSystem", "full", "discrete", "dense_discrete", "matrix_power", "apply_power",
           "POWER_STEP_MAX", "kernel", "step_setup", "step", "re_dot", "zero_input_inputs",
           "final_state"]


def full(v: Tensor) -> Tensor:
    """``[v, conj(v)]`` along the last dim: the full vector of a conjugate-symmetric half."""
    return torch.cat([v, v.conj()], -1)


@dataclass
class DPLRSystem:
    """Continuous DPLR parameters (conjugate-symmetric halves): Lam (H, M), P (r, H, M),
    B (H, M), dt (H,) real.  ``A = Lam - P P^*`` (= ``Lam - P Q^T``, ``Q = conj(P)``) on the
    full state."""

    Lam: Tensor
    P: Tensor
    B: Tensor
    dt: Tensor


def _re_inner(P: Tensor, x: Tensor) -> Tensor:
    """``Q^T x`` on full conjugate-symmetric vectors: ``2 Re(sum_n conj(P_r) x)``; P (r, H, M),
    x (..., H, M) -> (..., r, H) real."""
    return 2.0 * torch.einsum("rhm,...hm->...rh", P.conj(), x).real.to(P.dtype)


def discrete(s: DPLRSystem) -> tuple[Tensor, Tensor, Tensor]:
    """``A_bar = diag(d) - sum_r U_r W_r^T`` on the full state: ``(d (H, 2M), U, W (r, H, 2M))``
    (the full vectors of :func:`step_setup`'s halves)."""
    d, U, W, _ = step_setup(s)
    return full(d), full(U.movedim(-1, 0)), full(W.movedim(-1, 0))


def dense_discrete(s: DPLRSystem) -> Tensor:
    """The dense bilinear ``A_bar`` (H, 2M, 2M) of the full state."""
    d, U, W = discrete(s)
    return torch.diag_embed(d) - torch.einsum("rhn,rhm->hnm", U, W)


def matrix_power(A: Tensor, n: int) -> Tensor:
    """``A^n`` (..., N, N) by repeated squaring (log2(n) matmuls)."""
    out, base = None, A
    while n:
        if n & 1:
            out = base if out is None else out @ base
        n >>= 1
        if n:
            base = base @ base
    if out is None:
        return torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(A)
    return out


#: ``apply_power`` steps vectors one DPLR product at a time up to this power (O(n N r) work in
#: n small ops) and squares the dense matrix above it (O(N^3 log n)).  Measured on the project
#: CPU (d_model = 128, N = 64, complex128, forward + backward of C~): n = 64: 45 vs 102 ms,
#: n = 256: 182 vs 163 ms, n = 1024: 570 vs 177 ms, n = 4096: 2465 vs 274 ms.
POWER_STEP_MAX = 256


def apply_power(s: DPLRSystem, v: Tensor, n: int, row: bool,
                step_max: int = POWER_STEP_MAX) -> Tensor:
    """``v A_bar^n`` (``row=True``) or ``A_bar^n v`` for full vectors v (..., H, 2M)."""
    if n > step_max:
        Ap = matrix_power(dense_discrete(s), n)
        return torch.einsum("...hn,hnm->...hm" if row else "...hm,hnm->...hn", v, Ap)
    d, U, W = discrete(s)
    if row:
        U, W = W, U          # v A = v d - sum_r (v . U_r) W_r  is  (A^T v^T)^T
    for _ in range(n):
        v = d * v - torch.einsum("rhn,...rh->...hn", U, torch.einsum("rhn,...hn->...rh", W, v))
    return v


def _nodes(L: int, count: int, sign: float, like: Tensor) -> tuple[Tensor, Tensor]:
    """``a = 1 - omega``, ``b = 1 + omega`` at ``omega_k = exp(sign 2 pi i k / L)``, k < count."""
    k = torch.arange(count, dtype=torch.float64, device=like.device)
    omega = torch.polar(torch.ones_like(k), sign * 2 * math.pi * k / L).to(like.dtype)
    return 1 - omega, 1 + omega


def _resolvent_sums(v: Tensor, w: Tensor, L: int, count: int, sign: float) -> Tensor:
    """``r[h, k, j] = sum_n v[h, n, j] / (a_k - b_k w[h, n])`` over the full (conjugate-pair)
    state, at the nodes of :func:`_nodes`.

    ``a - b w = b (z - w)`` with ``z = a / b = -i tan(theta / 2)`` on the imaginary axis, so
    this is a standard Cauchy sum times ``1 / b``; the node ``omega = -1`` (``b = 0``, present
    when ``2k = L``) has ``1 / (a - b w) = 1/2`` exactly and is summed directly.
    """
    m = L // 2                                       # omega = -1 is the node k = L/2
    pole = L % 2 == 0 and m < count                  # (decided in Python: torch.compile-able)
    k = torch.arange(count, dtype=torch.float64, device=v.device)
    if pole:
        k = torch.cat([k[:m], k[m + 1:]])
    theta = (sign * 2 * math.pi / L) * k
    zt = torch.complex(torch.zeros_like(theta), -torch.tan(theta / 2)).to(v.dtype)
    inv_b = (1.0 / (1 + torch.polar(torch.ones_like(theta), theta))).to(v.dtype)
    r = cauchy(v, zt, w, conj=True) * inv_b[None, :, None]
    if not pole:
        return r
    half = 0.5 * (v.sum(1) + v.conj().sum(1))                              # (H, J)
    return torch.cat([r[:, :m], half[:, None], r[:, m:]], 1)


def _woodbury(r: Tensor, beta: Tensor, n_left: int, n_right: int, rank: int) -> Tensor:
    """``r00 - beta r01 (I + beta r11)^-1 r10`` for r (H, K, n_left + rank, n_right + rank)."""
    r00 = r[:, :, :n_left, :n_right]
    r01 = r[:, :, :n_left, n_right:]
    r10 = r[:, :, n_left:, :n_right]
    r11 = r[:, :, n_left:, n_right:]
    b = beta[..., None, None]
    if rank == 1:
        return r00 - b * r01 * r10 / (1 + b * r11)
    eye = torch.eye(rank, dtype=r.dtype, device=r.device)
    return r00 - b * (r01 @ torch.linalg.solve(eye + b * r11, r10))


def kernel(s: DPLRSystem, Cs: Tensor, L: int, Bs: Tensor | None = None) -> Tensor:
    """Kernels ``K[h, l, i, j] = C~_i A_bar^l B_bar_j`` (full state: real) for l < L.

    Cs: the truncated ``C~`` (I, H, M) (one per output, e.g. forward and backward C);
    Bs: extra input vectors (J-1, H, M) after ``B`` (zero-input responses).  Returns
    (H, L, I, J) real, ``j = 0`` being ``B``.
    """
    rank = s.P.shape[0]
    right = s.B[None] if Bs is None else torch.cat([s.B[None], Bs], 0)       # (J, H, M)
    nl, nr = Cs.shape[0], right.shape[0]
    left = torch.cat([Cs, s.P.conj()], 0)                                    # Q = conj(P)
    right = torch.cat([right, s.P], 0)
    v = left[:, None] * right[None]                                          # (I+r, J+r, H, M)
    v = v.permute(2, 3, 0, 1).reshape(*s.B.shape, -1)                        # (H, M, ...)
    _, b = _nodes(L, L // 2 + 1, -1.0, s.B)
    w = s.dt[:, None] * s.Lam / 2
    r = _resolvent_sums(v, w, L, L // 2 + 1, -1.0)
    r = r.reshape(s.B.shape[0], -1, nl + rank, nr + rank)
    beta = b[None, :] * (s.dt[:, None] / 2)                                  # (H, K)
    k = s.dt[:, None, None, None] * _woodbury(r, beta, nl, nr, rank)
    return torch.fft.irfft(k, n=L, dim=1)


def zero_input_inputs(s: DPLRSystem, x0: Tensor) -> Tensor:
    """``B_s = (1/dt)(I + dt/2 A) x0`` (Bt, H, M): the input vector whose ``B_bar`` is
    ``A_bar x0``, so the kernel of ``B_s`` is the zero-input response ``A_bar^(t+1) x0``."""
    Ax = s.Lam * x0 - torch.einsum("rhm,brh->bhm", s.P, _re_inner(s.P, x0))
    return x0 / s.dt[:, None] + Ax / 2


def final_state(s: DPLRSystem, u: Tensor, x0: Tensor | None,
                step_max: int = POWER_STEP_MAX) -> Tensor:
    """``x_L = A_bar^L x0 + sum_l A_bar^(L-1-l) B_bar u_l`` (Bt, H, M) for u (Bt, L, H) real.

    ``= S + A_bar^L (x0 - S)`` with S the Parseval sum of the module docstring; costs
    O(Bt H M L + H M L r) plus one :func:`apply_power`.
    """
    Bt, L, H = u.shape
    M = s.B.shape[-1]
    rank = s.P.shape[0]
    a, b = _nodes(L, L, +1.0, s.B)                                           # conj(omega_k)
    w = s.dt[:, None] * s.Lam / 2
    right = torch.cat([s.B[None], s.P], 0)                                   # (1+r, H, M)
    v = (s.P.conj()[:, None] * right[None]).permute(2, 3, 0, 1).reshape(H, M, -1)
    r = _resolvent_sums(v, w, L, L, +1.0).reshape(H, L, rank, 1 + rank)    # r_Q[B, P]
    beta = b[None, :] * (s.dt[:, None] / 2)                                  # (H, L)
    eye = torch.eye(rank, dtype=r.dtype, device=r.device)
    c = torch.linalg.solve(eye + beta[..., None, None] * r[..., 1:], r[..., :1])[..., 0]
    Dinv = 1.0 / (a[None, :, None] - b[None, :, None] * w[:, None, :])       # (H, L, M)
    G = Dinv * (s.B[:, None, :] - beta[..., None] * torch.einsum("rhm,hkr->hkm", s.P, c))
    G = s.dt[:, None, None] * G                    # (I - conj(omega_k) A_bar)^-1 B_bar, half
    U = torch.fft.fft(u.flip(1).to(G.real.dtype), dim=1)                     # (Bt, L, H)
    S = full(torch.einsum("bkh,hkm->bhm", U.to(G.dtype), G) / L)
    rest = -S if x0 is None else full(x0) - S
    return (S + apply_power(s, rest, L, row=False, step_max=step_max))[..., :M]


def step_setup(s: DPLRSystem, dt: Tensor | None = None
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The discrete system ``A_bar = diag(d) - U W^T``, ``B_bar`` as conjugate-symmetric halves.

    Woodbury on ``(2/dt - A)^-1`` (``A = Lam - P Q^T``, ``Q = conj(P)``) gives
    ``A_bar = diag(Dg E) - (4/dt) (Dg P) R^-1 (Q^T Dg)`` and
    ``B_bar = 2 [Dg B - Dg P R^-1 (Q^T Dg B)]`` with ``Dg = 1/(2/dt - Lam)``,
    ``E = 2/dt + Lam``, ``R = I + Q^T Dg P`` (real r x r on conjugate-symmetric vectors): the
    bilinear transform keeps the diagonal-plus-rank-r structure.  ``dt`` defaults to ``s.dt``
    and may have leading batch dims (..., H) (per-token steps).

    Returns ``d`` (..., H, M), ``U``, ``W`` (..., H, M, r), ``B_bar`` (..., H, M).
    """
    dt = s.dt if dt is None else dt
    c = (2.0 / dt)[..., None]
    Dg = 1.0 / (c - s.Lam)
    P = s.P.movedim(0, -1)                                                   # (H, M, r)
    R = 2.0 * torch.einsum("hmr,...hm,hms->...hrs", P.conj(), Dg, P).real
    eye = torch.eye(P.shape[-1], dtype=R.dtype, device=R.device)
    Rinv = torch.linalg.inv(eye + R).to(P.dtype)                             # (..., H, r, r)
    DgP = Dg[..., None] * P
    U = (2.0 * c)[..., None] * DgP                                           # (4/dt) Dg P
    W = torch.einsum("...hrs,hms,...hm->...hmr", Rinv, P.conj(), Dg)         # R^-1 Q^T Dg
    qdb = 2.0 * torch.einsum("hmr,...hm->...hr", P.conj(), Dg * s.B).real.to(P.dtype)
    Bb = 2.0 * (Dg * s.B - torch.einsum("...hmr,...hrs,...hs->...hm", DgP, Rinv, qdb))
    return Dg * (c + s.Lam), U, W, Bb


def step(setup, x: Tensor, u: Tensor) -> Tensor:
    """One step ``x' = A_bar x + B_bar u`` = ``d x - U (W^T x) + B_bar u`` (O(N r)):
    x (Bt, H, M) complex half state, u (Bt, H) real.  On the conjugate-symmetric full state
    ``W^T x = 2 Re(sum_m W_m x_m)`` is real."""
    d, U, W, Bb = setup
    if U.shape[-1] == 1:   # rank 1 (legs, fourier): plain products are faster than einsum
        s = 2.0 * re_dot(W[..., 0], x)[..., None]
        return d * x - U[..., 0] * s + Bb * u[..., None]
    s = 2.0 * torch.einsum("...hmr,bhm->bhr", W, x).real.to(x.dtype)
    return d * x - torch.einsum("...hmr,bhr->bhm", U, s) + Bb * u[..., None]


def re_dot(c: Tensor, x: Tensor) -> Tensor:
    """``Re(sum_m c_m x_m)`` over the last dim, as one real product and sum (complex sums on
    CPU are several times slower than real ones)."""
    W = torch.stack((c.real, -c.imag), -1)
    return (torch.view_as_real(x) * W).sum((-1, -2))
