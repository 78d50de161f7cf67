"""``hippo_n``: the S5 parameterization, diagonalized HiPPO-N (MIMO, continuous time).

Smith, Warrington & Linderman 2023, "Simplified State Space Layers for Sequence Modeling" (S5),
https://arxiv.org/abs/2208.04933.  One state of P = ``d_state`` complex modes is shared by the H
channels::

    h'(t) = Lambda h(t) + B~ x(t),   y(t) = 2 Re(C~ h(t))        (x2: conjugate symmetry)

Init (the S5 paper and its reference code):

* HiPPO-LegS ``A_nk = -sqrt(2n+1) sqrt(2k+1)`` (n > k), ``-(n+1)`` (n = k), 0 (n < k) is
  normal plus low rank: ``A = S - P P^T`` with ``P_n = sqrt(n + 1/2)``.  Its normal part
  ``S = A + P P^T`` is ``-1/2 I`` plus a skew-symmetric matrix ``S_skew``.
* ``S_skew = V diag(i w) V^*``: the eigenvectors V and real w come from ``torch.linalg.eigh``
  of the Hermitian ``-i S_skew`` in float64, so ``Lambda = -1/2 + i w`` (real part exactly -1/2).
* Conjugate symmetry (``conj_sym=True``, the default): the real system of size 2P has its
  eigenvalues in conjugate pairs; keep one of each (the first P, as S5 does) and output
  ``2 Re(...)``.  ``d_state`` is the number of stored modes P.
* ``blocks = J``: block-diagonal init with J copies of the HiPPO-N eigenbasis of size
  2P/J (P/J with ``conj_sym=False``), as S5 does for larger states.
* ``B~ = V^{-1} B`` with ``B`` (2P, H) LeCun normal (fan-in 2P as in S5's JAX init);
  ``C~ = C V`` with ``C`` (H, 2P) complex, real and imaginary parts LeCun normal (fan-in 2P).
  V is unitary, so ``V^{-1} = V^*``.
* per-state step ``log dt_p ~ U[log dt_min, log dt_max]``, (0.001, 0.1).

``Re Lambda`` is stored as ``log(-Re Lambda)`` so it stays negative during training.

Example::

    p = lrnnx.get_parameterization("hippo_n")(d_model=8, d_state=4)
    p().A.real     # all -0.5
    layer = lrnnx.build_layer("ssm(param=hippo_n(blocks=2), d_state=16)", d_model=64)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lrnnx.errors import ConfigError

from .base import (
    SSMParameterization,
    SSMParams,
    as_complex,
    check_dt_range,
    complex_param,
    lecun_normal,
    log_uniform_dt,
)


def hippo_legs(n: int) -> Tensor:
    """The HiPPO-LegS state matrix A (n, n) in float64."""
    p = torch.sqrt(1 + 2 * torch.arange(n, dtype=torch.float64))
    A = torch.tril(p[:, None] * p[None, :]) - torch.diag(torch.arange(n, dtype=torch.float64))
    return -A


def hippo_n_eig(n: int) -> tuple[Tensor, Tensor]:
    """Eigenvalues (n,) and unitary eigenvectors (n, n) of HiPPO-N (normal part of LegS), float64.

    ``Lambda = -1/2 + i w`` in ascending order of w, with ``S_skew V = V diag(i w)``.
    """
    A = hippo_legs(n)
    P = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)
    S = A + P[:, None] * P[None, :]
    S_skew = 0.5 * (S - S.T)  # S = -1/2 I + S_skew exactly; symmetrize away the rounding
    w, V = torch.linalg.eigh(-1j * S_skew.to(torch.complex128))
    lam = torch.complex(torch.full_like(w, -0.5), w)
    return lam, V


class HippoN(SSMParameterization):
    """S5's diagonalized HiPPO-N init (Smith et al. 2023, https://arxiv.org/abs/2208.04933).

    MIMO: A (P,), B (P, H), C (H, P), dt (P,), with P = ``d_state``.  Options: ``dt_min``,
    ``dt_max`` (0.001, 0.1); ``blocks`` (block-diagonal init, must divide ``d_state``);
    ``conj_sym`` (keep one mode per conjugate pair, output 2 Re; default True).
    Always complex (``complex=False`` is rejected).
    """

    name = "hippo_n"
    structure = "mimo"

    def __init__(self, d_model: int, d_state: int, complex: bool | None = None,
                 dt_min: float = 0.001, dt_max: float = 0.1, blocks: int = 1,
                 conj_sym: bool = True) -> None:
        super().__init__(d_model, d_state, complex)
        where = f"parameterization {self.name!r}"
        if not self.complex:
            raise ConfigError(f"{where}: the HiPPO-N eigenvalues are complex (-1/2 + i w), so "
                              f"complex=False is not possible; use s4d_real for a real SSM.")
        check_dt_range(where, dt_min, dt_max)
        if isinstance(blocks, bool) or blocks < 1 or d_state % blocks:
            raise ConfigError(f"{where}: option 'blocks' must be a positive divisor of "
                              f"d_state={d_state}, got {blocks!r}.")
        self.dt_min, self.dt_max, self.blocks, self.conj_sym = dt_min, dt_max, blocks, conj_sym
        H, P = d_model, d_state
        keep = P // blocks                       # modes stored per block
        size = 2 * keep if conj_sym else keep    # HiPPO matrix size per block
        lam, V = hippo_n_eig(size)
        lam, V = lam[:keep], V[:, :keep]         # (keep,), (size, keep)
        Lam = lam.repeat(blocks)                 # (P,)
        V_full = torch.block_diag(*([V] * blocks))  # (blocks*size, P)
        full = blocks * size                     # the latent size of the real system
        B = lecun_normal(full, H, fan_in=full).to(torch.float64)
        C = torch.complex(lecun_normal(H, full, fan_in=full),
                          lecun_normal(H, full, fan_in=full)).to(torch.complex128)
        B_t = V_full.conj().T @ B.to(torch.complex128)  # V^-1 B, (P, H)
        C_t = C @ V_full                                # C V, (H, P)
        self.log_neg_A_re = nn.Parameter(torch.log(-Lam.real).float())
        self.A_im = nn.Parameter(Lam.imag.float())
        self.B = complex_param(B_t)
        self.C = complex_param(C_t)
        self.log_dt = nn.Parameter(log_uniform_dt(P, dt_min, dt_max))

    def forward(self, x: Tensor | None = None) -> SSMParams:
        A = torch.complex(-torch.exp(self.log_neg_A_re), self.A_im)
        return SSMParams(A=A, B=as_complex(self.B), C=as_complex(self.C),
                         dt=torch.exp(self.log_dt), conj_sym=self.conj_sym)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, dt_min={self.dt_min}, dt_max={self.dt_max}, "
                f"blocks={self.blocks}, conj_sym={self.conj_sym}")
