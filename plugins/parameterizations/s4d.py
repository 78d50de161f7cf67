"""S4D parameterizations: ``s4d_lin``, ``s4d_inv``, ``s4d_real`` (SISO, continuous time).

Gu, Gupta, Goel & Ré 2022, "On the Parameterization and Initialization of Diagonal State Space
Models", https://arxiv.org/abs/2206.11893.  Every channel h = 1..H has its own diagonal system
``h'(t) = A h(t) + B x_h(t)``, ``y_h = 2 Re(C h)`` with n = 0..N'-1 (N' = ``d_state``) and

* S4D-Lin:  ``A_n = -1/2 + i pi n``
* S4D-Inv:  ``A_n = -1/2 + i (N/pi) (N/(2n+1) - 1)``  with N = 2 N' (the paper's state size)
* S4D-Real: ``A_n = -(n + 1)``

``d_state`` counts the complex modes actually stored: the paper's N-dimensional real system keeps
one mode of each of its N/2 conjugate pairs and outputs ``2 Re(C h)`` (``conj_sym``), so
``d_state = N'`` corresponds to the paper's ``N = 2 N'``.  With ``complex=False`` (the default of
``s4d_real`` only) the system is real: N' real states, ``A`` real, ``y = C h``.

Init (the paper's defaults): ``B_n = 1``; ``C ~ N(0, 1)`` complex (real and imaginary parts each
of variance 1/2), real ``C ~ N(0, 1)``; ``log dt_h ~ U[log dt_min, log dt_max]`` with
``(dt_min, dt_max) = (0.001, 0.1)``.  The real part of A is stored as ``log(-Re A)`` so
``Re A < 0`` always.

Example::

    p = lrnnx.get_parameterization("s4d_lin")(d_model=4, d_state=3)
    p().A[0]     # -1/2 + i pi n:  -0.5+0j, -0.5+3.1416j, -0.5+6.2832j
    layer = lrnnx.build_layer("ssm(param=s4d_inv(dt_min=0.01), d_state=32)", d_model=64)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import (
    SSMParameterization,
    SSMParams,
    as_complex,
    check_dt_range,
    complex_param,
    log_uniform_dt,
)


class S4DBase(SSMParameterization):
    """Shared body of the S4D family; subclasses give ``init_A(N') -> complex (N',)``."""

    structure = "siso"

    def __init__(self, d_model: int, d_state: int, complex: bool | None = None,
                 dt_min: float = 0.001, dt_max: float = 0.1) -> None:
        super().__init__(d_model, d_state, complex)
        check_dt_range(f"parameterization {self.name!r}", dt_min, dt_max)
        self.dt_min, self.dt_max = dt_min, dt_max
        H, N = d_model, d_state
        A = self.init_A(N).to(torch.complex128)
        self.log_neg_A_re = nn.Parameter(torch.log(-A.real).float().expand(H, N).clone())
        self.log_dt = nn.Parameter(log_uniform_dt(H, dt_min, dt_max))
        if self.complex:
            self.A_im = nn.Parameter(A.imag.float().expand(H, N).clone())
            self.B = complex_param(torch.ones(H, N, dtype=torch.complex64))
            self.C = complex_param(torch.randn(H, N, dtype=torch.complex64))
        else:
            self.register_parameter("A_im", None)
            self.B = nn.Parameter(torch.ones(H, N))
            self.C = nn.Parameter(torch.randn(H, N))

    @staticmethod
    def init_A(n: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor | None = None) -> SSMParams:
        A_re = -torch.exp(self.log_neg_A_re)
        dt = torch.exp(self.log_dt)
        if not self.complex:
            return SSMParams(A=A_re, B=self.B, C=self.C, dt=dt)
        A = torch.complex(A_re, self.A_im)
        return SSMParams(A=A, B=as_complex(self.B), C=as_complex(self.C), dt=dt, conj_sym=True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dt_min={self.dt_min}, dt_max={self.dt_max}"


class S4DLin(S4DBase):
    """S4D-Lin: ``A_n = -1/2 + i pi n`` (Gu et al. 2022, https://arxiv.org/abs/2206.11893).

    Options: ``dt_min``, ``dt_max`` (log-uniform step-size init range, default 0.001, 0.1);
    ``complex`` (default True; False keeps only the real part ``-1/2``).
    """

    name = "s4d_lin"

    @staticmethod
    def init_A(n: int) -> Tensor:
        k = torch.arange(n, dtype=torch.float64)
        return torch.complex(torch.full_like(k, -0.5), math.pi * k)


class S4DInv(S4DBase):
    """S4D-Inv: ``A_n = -1/2 + i (N/pi)(N/(2n+1) - 1)``, N = 2 d_state (Gu et al. 2022).

    Approximates the spectrum of HiPPO-LegS (the imaginary parts follow its asymptotics).
    Options as :class:`S4DLin`.
    """

    name = "s4d_inv"

    @staticmethod
    def init_A(n: int) -> Tensor:
        k = torch.arange(n, dtype=torch.float64)
        N = 2 * n  # the paper's state size: n stored modes of N/2 conjugate pairs
        return torch.complex(torch.full_like(k, -0.5), N / math.pi * (N / (2 * k + 1) - 1))


class S4DReal(S4DBase):
    """S4D-Real: ``A_n = -(n + 1)`` (Gu et al. 2022); real by default (``complex=False``).

    With ``complex=True`` the imaginary parts start at 0 and are learned.
    """

    name = "s4d_real"
    default_complex = False

    @staticmethod
    def init_A(n: int) -> Tensor:
        k = torch.arange(n, dtype=torch.float64)
        return torch.complex(-(k + 1), torch.zeros_like(k))
