"""``lru_ring``: the Linear Recurrent Unit's stable exponential parameterization (MIMO, discrete).

Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu & De 2023, "Resurrecting Recurrent Neural
Networks for Long Sequences", https://arxiv.org/abs/2303.06349.  One state of P = ``d_state``
complex modes is shared by the H channels, already in discrete time::

    h_t = lambda * h_{t-1} + gamma * (B x_t),     y_t = Re(C h_t)  (+ D x_t, in the layer)
    lambda_p = exp(-exp(nu_log_p) + i exp(theta_log_p))

Init (the paper and the code of its appendix, ``init_lru_parameters``):

* ring init: ``|lambda|`` uniform on the ring ``[r_min, r_max]`` of the complex plane::

      u1, u2 ~ U[0, 1]
      nu_log    = log(-1/2 log(u1 (r_max^2 - r_min^2) + r_min^2))
                                          so |lambda|^2 ~ U[r_min^2, r_max^2]
      theta_log = log(max_phase u2)                                    phase in [0, max_phase]

* normalization ``gamma_log = log(sqrt(1 - |lambda|^2))`` (learned afterwards), so the state
  variance does not blow up as ``|lambda| -> 1``;
* ``B = (N(0, 1) + i N(0, 1)) / sqrt(2H)`` (P, H), ``C = (N(0, 1) + i N(0, 1)) / sqrt(P)``
  (H, P) (Glorot-style scaling).

Defaults ``r_min=0, r_max=1, max_phase=2 pi`` are those of the appendix code (which writes
6.28); the paper's long-range runs use rings closer to 1 (e.g. ``r_min=0.9, r_max=0.999``) and
smaller phases.  ``complex=False`` gives a real LRU: theta is fixed at 0 and B, C are real
(``N(0, 1)/sqrt(H)`` and ``N(0, 1)/sqrt(P)``).

Event streams: ``log_A = -exp(nu_log) + i exp(theta_log)`` is returned too, so a gap of t steps
decays by ``exp(t log_A) = lambda^t`` with the learned (unwrapped) phase.

Example::

    p = lrnnx.get_parameterization("lru_ring")(d_model=8, d_state=16, r_min=0.9, r_max=0.99)
    p().A.abs()    # in [0.9, 0.99]
    layer = lrnnx.build_layer("ssm(param=lru_ring(r_min=0.9), d_state=64)", d_model=32)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lrnnx.errors import ConfigError

from .base import SSMParameterization, SSMParams, as_complex, complex_param


class LRURing(SSMParameterization):
    """LRU ring init (Orvieto et al. 2023, https://arxiv.org/abs/2303.06349); discrete, MIMO.

    A = lambda (P,), B (P, H), C (H, P), gamma (P,); ``dt`` is None.  Options: ``r_min``,
    ``r_max`` (0 <= r_min < r_max <= 1; default 0, 1), ``max_phase`` (>= 0; default 2 pi).
    """

    name = "lru_ring"
    structure = "mimo"
    discrete = True

    def __init__(self, d_model: int, d_state: int, complex: bool | None = None,
                 r_min: float = 0.0, r_max: float = 1.0, max_phase: float = 2 * math.pi) -> None:
        super().__init__(d_model, d_state, complex)
        where = f"parameterization {self.name!r}"
        if not (0.0 <= r_min < r_max <= 1.0):
            raise ConfigError(f"{where}: the ring needs 0 <= r_min < r_max <= 1, got "
                              f"r_min={r_min}, r_max={r_max}.")
        if not (math.isfinite(max_phase) and max_phase >= 0):
            raise ConfigError(f"{where}: option 'max_phase' must be a finite number >= 0, got "
                              f"{max_phase}.")
        self.r_min, self.r_max, self.max_phase = r_min, r_max, max_phase
        H, P = d_model, d_state
        u1 = torch.rand(P, dtype=torch.float64)
        u2 = torch.rand(P, dtype=torch.float64)
        r2 = u1 * (r_max**2 - r_min**2) + r_min**2
        # |lambda| = 0 exactly (u1 = 0 with r_min = 0) would make nu infinite: keep it tiny
        r2 = r2.clamp(min=1e-12, max=1.0 - 1e-12)
        nu = -0.5 * torch.log(r2)
        self.nu_log = nn.Parameter(torch.log(nu).float())
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1.0 - r2)).float())
        if self.complex:
            # max_phase = 0 (or u2 = 0) gives theta = 0 and theta_log = -inf: clamp to a tiny
            # phase instead so the parameter and its gradient stay finite
            theta = (max_phase * u2).clamp(min=1e-12)
            self.theta_log = nn.Parameter(torch.log(theta).float())
            B = torch.complex(torch.randn(P, H), torch.randn(P, H)) / math.sqrt(2 * H)
            C = torch.complex(torch.randn(H, P), torch.randn(H, P)) / math.sqrt(P)
            self.B, self.C = complex_param(B), complex_param(C)
        else:
            self.register_parameter("theta_log", None)
            self.B = nn.Parameter(torch.randn(P, H) / math.sqrt(H))
            self.C = nn.Parameter(torch.randn(H, P) / math.sqrt(P))

    def forward(self, x: Tensor | None = None) -> SSMParams:
        log_r = -torch.exp(self.nu_log)
        gamma = torch.exp(self.gamma_log)
        if not self.complex:
            return SSMParams(A=torch.exp(log_r), B=self.B, C=self.C, gamma=gamma, log_A=log_r)
        log_A = torch.complex(log_r, torch.exp(self.theta_log))
        return SSMParams(A=torch.exp(log_A), B=as_complex(self.B), C=as_complex(self.C),
                         gamma=gamma, log_A=log_A)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, r_min={self.r_min}, r_max={self.r_max}, "
                f"max_phase={self.max_phase:.4g}")
