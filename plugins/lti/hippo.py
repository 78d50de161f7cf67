r"""HiPPO matrices and their normal-plus-low-rank (NPLR) / diagonal-plus-low-rank (DPLR) forms.

HiPPO (Gu, Dao, Ermon, Rudra & Re 2020, https://arxiv.org/abs/2008.07669) gives the state
matrices ``(A, B)`` of ``x'(t) = A x(t) + B u(t)`` whose state optimally projects the history of
``u`` onto polynomials under a measure; S4 (Gu, Goel & Re 2022,
https://arxiv.org/abs/2111.00396, Sec. 3.2 and Appendix C) writes them as
``A = V (Lambda - P Q^*) V^*`` with V unitary: the *DPLR* form its kernel algorithm needs.

Measures (n, k = 0..N-1, float64):

* ``legs`` (scaled Legendre, S4's default)::

      A_nk = -sqrt(2n+1) sqrt(2k+1)  (n > k),   -(n+1)  (n = k),   0  (n < k);   B_n = sqrt(2n+1)

  NPLR with rank 1: ``A + P P^T = -1/2 I + skew`` for ``P_n = sqrt(n + 1/2)``.
* ``legt`` (translated Legendre, as in the S4 code: both A and B halved)::

      A_nk = -1/2 sqrt(2n+1) sqrt(2k+1) * ((-1)^(n-k) if n < k else 1),   B_n = sqrt(2n+1) / 2

  NPLR with rank 2: P_0 / P_1 hold ``sqrt(2n+1) / sqrt(2)`` on the odd / even indices.
* ``fourier`` (FouT: truncated Fourier basis on a sliding window)::

      A = pi (-diag(d, +1) + diag(d, -1)) - B B^T,  d = (0, 1, 1, 2, 2, ...)[1:],
      B = (1, 0, sqrt 2, 0, sqrt 2, ...)

  NPLR with rank 1: ``P = B``.

:func:`nplr` diagonalizes the normal part ``A + P P^T = c I + S`` (S skew-symmetric) with
``eigh`` of the Hermitian ``-i S`` in float64 (stable: unitary eigenvectors, unlike
diagonalizing A itself, whose eigenvectors are exponentially ill-conditioned) and keeps one
eigenvalue of each conjugate pair (negative imaginary parts, as the S4 code does): the
conjugate-symmetric half S4 stores.

Example::

    A, B = transition("legs", 4)      # A[1, 0] = -sqrt(3), A[1, 1] = -2, A[0, 1] = 0
    Lam, P, B, V = nplr("legs", 64)   # (32,), (1, 32), (32,), (64, 32); Lam.real == -0.5
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lrnnx.errors import ConfigError

__all__ = ["MEASURES", "RANKS", "transition", "rank_correction", "nplr"]

MEASURES = ("legs", "legt", "fourier")
#: the smallest low-rank correction that makes ``A + P P^T`` normal, per measure
RANKS = {"legs": 1, "legt": 2, "fourier": 1}

_f64 = torch.float64


def _check(measure: str, N: int, even: bool = False) -> None:
    if measure not in MEASURES:
        raise ConfigError(f"HiPPO: unknown measure {measure!r}; expected one of "
                          f"{', '.join(map(repr, MEASURES))}.")
    if isinstance(N, bool) or not isinstance(N, int) or N < 1 or (even and N % 2):
        raise ConfigError(f"HiPPO: the state size N must be a positive{' even' if even else ''}"
                          f" int, got {N!r}.")


def transition(measure: str, N: int) -> tuple[Tensor, Tensor]:
    """The HiPPO ``(A (N, N), B (N,))`` of a measure, float64 (formulas: module docstring)."""
    _check(measure, N)
    n = torch.arange(N, dtype=_f64)
    r = torch.sqrt(2 * n + 1)
    if measure == "legs":
        # strictly lower part -sqrt(2n+1) sqrt(2k+1); the diagonal -(n+1) set exactly
        A = -torch.tril(r[:, None] * r[None, :], -1) - torch.diag(n + 1)
        return A, r.clone()
    if measure == "legt":
        i, j = n[:, None], n[None, :]
        sign = torch.where(i < j, (-1.0) ** (i - j), torch.ones(()))
        return -0.5 * r[:, None] * sign * r[None, :], 0.5 * r
    # fourier: sine/cosine pairs of frequencies 1, 2, ...; a constant as the first basis function
    freqs = torch.arange(N // 2, dtype=_f64)
    d = torch.stack([torch.zeros(N // 2, dtype=_f64), freqs], -1).reshape(-1)[1:]
    A = torch.zeros(N, N, dtype=_f64)
    if N > 1:
        A = math.pi * (-torch.diag(d[:N - 1], 1) + torch.diag(d[:N - 1], -1))
    B = torch.zeros(N, dtype=_f64)
    B[0::2] = math.sqrt(2)
    B[0] = 1.0
    return A - B[:, None] * B[None, :], B


def rank_correction(measure: str, N: int, rank: int | None = None) -> Tensor:
    """``P`` (rank, N) with ``A + P^T P`` normal (rows beyond the measure's own rank are 0)."""
    _check(measure, N)
    need = RANKS[measure]
    rank = need if rank is None else rank
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < need:
        raise ConfigError(f"HiPPO: measure {measure!r} needs a low-rank correction of rank >= "
                          f"{need}, got rank={rank!r}.")
    n = torch.arange(N, dtype=_f64)
    if measure == "legs":
        P = torch.sqrt(0.5 + n)[None]
    elif measure == "legt":
        p = torch.sqrt(1 + 2 * n) / math.sqrt(2)
        P = torch.stack([torch.where(n % 2 == 1, p, 0 * p), torch.where(n % 2 == 0, p, 0 * p)])
    else:
        P = transition("fourier", N)[1][None]
    return torch.cat([P, torch.zeros(rank - P.shape[0], N, dtype=_f64)])


def nplr(measure: str, N: int, rank: int | None = None, B_clip: float | None = None
         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """DPLR form ``(Lambda, P, B, V)`` of a HiPPO matrix, complex128, conjugate-symmetric half.

    With the full ``Lambda_f``, ``P_f`` (both halves), ``A = V_f (diag(Lambda_f) - P_f P_f^*)
    V_f^*`` and ``B = V_f B_f``.  Returns ``Lambda`` (N/2,), ``P`` (rank, N/2), ``B`` (N/2,)
    (all in the eigenbasis, ``P = V^* P``, ``B = V^* B``) and ``V`` (N, N/2).  ``B_clip``
    optionally clips ``Im B`` to ``[-B_clip, B_clip]`` (the S4 code's ``B_clip=2`` stabilizer;
    the paper has none, so None is the default).
    """
    _check(measure, N, even=True)
    A, B = transition(measure, N)
    P = rank_correction(measure, N, rank)
    AP = A + P.transpose(0, 1) @ P
    c = torch.diagonal(AP).mean()
    S = AP - c * torch.eye(N, dtype=_f64)
    # the normal part is c I + skew: symmetrize away rounding before the Hermitian eigensolver
    skew = 0.5 * (S - S.transpose(0, 1))
    if float((S - skew).abs().max()) > 1e-8 * max(1.0, float(S.abs().max())):
        raise AssertionError(f"HiPPO {measure!r}: A + P^T P is not c I + skew-symmetric")
    w, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))   # S V = V diag(i w)
    lam = torch.complex(c.expand_as(w), w)
    order = torch.argsort(w)                                    # ascending imaginary parts
    lam, V = lam[order][: N // 2], V[:, order][:, : N // 2]     # keep the negative half
    if float(lam.abs()[-1]) < 1e-4:
        # FouT's zero eigenvalue pair (the constant basis function): eigh returns an arbitrary
        # basis of its 2-dim eigenspace; pick (e0 + i e1)/sqrt 2 so the kept half plus its
        # conjugate spans it (the S4 code's fix)
        if N < 4 or float(lam.abs()[-2]) < 1e-4:
            raise AssertionError(f"HiPPO {measure!r}: more than one zero eigenvalue pair")
        V[:, -1] = 0
        V[0, -1] = 2 ** -0.5
        V[1, -1] = 2 ** -0.5 * 1j
    Vh = V.conj().transpose(0, 1)
    B = Vh @ B.to(torch.complex128)
    P = (Vh @ P.to(torch.complex128).transpose(0, 1)).transpose(0, 1)
    if B_clip is not None:
        B = torch.complex(B.real, B.imag.clamp(-B_clip, B_clip))
    return lam, P, B, V
