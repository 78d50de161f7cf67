"""``selective``: Mamba's input-dependent (S6) parameterization (SISO, continuous time).

Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
https://arxiv.org/abs/2312.00752 (Sec. 3.2, Algorithm 2; init from the reference code).  For
every token the step size and the input/output matrices are projections of the input::

    (dt_raw, B_t, C_t) = split(x_proj(x_t))          dt_raw (R,), B_t (N,), C_t (N,)
    dt_t = softplus(dt_proj(dt_raw))                  (H,)   (dt_proj has a bias)
    A = -exp(A_log)                                   (H, N), input-independent

so ``h_t[h, n] = A_bar(dt_t[h]) h_{t-1}[h, n] + B_scale(dt_t[h]) B_t[n] x_t[h]`` and
``y_t[h] = Re(sum_n C_t[n] h_t[h, n])`` (+ D x in the layer).  R = ``dt_rank`` (default
``ceil(d_model / 16)``).

Init (Mamba's reference code): ``A_log = log(n + 1)`` (S4D-Real, n = 0..N-1, for every channel);
``dt_proj.weight ~ U[-R^-1/2, R^-1/2]`` (``dt_scale = 1``); ``dt_proj.bias = softplus^-1(dt0)``
with ``dt0 = exp(U[log dt_min, log dt_max])`` clamped to >= ``dt_init_floor`` (1e-4), so the
initial step sizes are log-uniform in [dt_min, dt_max] = [0.001, 0.1]; ``x_proj`` has the
default ``nn.Linear`` init and no bias.  ``complex=True`` adds learned imaginary parts
``Im A_n = pi n`` (S4D-Lin) with real ``B_t``, ``C_t``.

Output shapes (x of shape (Bt, L, H)): A (H, N); B, C (Bt, L, N); dt (Bt, L, H).

Example::

    p = lrnnx.get_parameterization("selective")(d_model=8, d_state=4)
    prm = p(torch.randn(2, 5, 8))    # prm.dt (2, 5, 8), prm.B and prm.C (2, 5, 4)
    layer = lrnnx.build_layer("ssm(param=selective, disc=mamba, d_state=16)", d_model=64)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrnnx.errors import ConfigError, InputError

from .base import SSMParameterization, SSMParams, check_dt_range, check_positive


def inverse_softplus(y: Tensor) -> Tensor:
    """``softplus^-1(y) = y + log(-expm1(-y))`` for y > 0 (stable for small and large y)."""
    return y + torch.log(-torch.expm1(-y))


class Selective(SSMParameterization):
    """Mamba's selective parameterization (Gu & Dao 2023, https://arxiv.org/abs/2312.00752).

    Options: ``dt_rank`` (None -> ceil(d_model / 16)), ``dt_min``, ``dt_max`` (0.001, 0.1),
    ``dt_init_floor`` (1e-4), ``complex`` (default False).  ``forward(x)`` needs x (Bt, L, H).
    """

    name = "selective"
    structure = "siso"
    selective = True
    default_complex = False

    def __init__(self, d_model: int, d_state: int, complex: bool | None = None,
                 dt_rank: int | None = None, dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4) -> None:
        super().__init__(d_model, d_state, complex)
        where = f"parameterization {self.name!r}"
        check_dt_range(where, dt_min, dt_max)
        check_positive(where, dt_init_floor=dt_init_floor)
        if dt_rank is None:
            dt_rank = math.ceil(d_model / 16)
        if isinstance(dt_rank, bool) or dt_rank < 1:
            raise ConfigError(f"{where}: option 'dt_rank' must be a positive int or None, got "
                              f"{dt_rank!r}.")
        self.dt_rank, self.dt_min, self.dt_max = dt_rank, dt_min, dt_max
        H, N = d_model, d_state
        self.x_proj = nn.Linear(H, dt_rank + 2 * N, bias=False)
        self.dt_proj = nn.Linear(dt_rank, H, bias=True)
        bound = dt_rank ** -0.5
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -bound, bound)
            u = torch.rand(H, dtype=torch.float64)
            dt0 = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt0 = dt0.clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(inverse_softplus(dt0).float())
        n = torch.arange(N, dtype=torch.float32)
        self.A_log = nn.Parameter(torch.log(n + 1).expand(H, N).clone())
        if self.complex:
            self.A_im = nn.Parameter((math.pi * n).expand(H, N).clone())
        else:
            self.register_parameter("A_im", None)

    def forward(self, x: Tensor | None = None) -> SSMParams:
        if x is None or not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(f"parameterization {self.name!r}: forward(x) needs the layer input "
                             f"x of shape (Bt, L, {self.d_model}) (it is input-dependent), got "
                             f"{got}.")
        N, R = self.d_state, self.dt_rank
        dt_raw, B, C = torch.split(self.x_proj(x), [R, N, N], dim=-1)
        dt = F.softplus(self.dt_proj(dt_raw))
        A = -torch.exp(self.A_log)
        if self.complex:
            A = torch.complex(A, self.A_im)
        return SSMParams(A=A, B=B, C=C, dt=dt)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, dt_rank={self.dt_rank}, dt_min={self.dt_min}, "
                f"dt_max={self.dt_max}")
