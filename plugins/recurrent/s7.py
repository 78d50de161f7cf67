r"""S7 (``s7``): a selective, stably reparameterized diagonal SSM.

Soydan, Zubić, Messikommer, Mishra & Scaramuzza 2024, "S7: Selective and Simplified State Space
Layers for Sequence Modeling", https://arxiv.org/abs/2410.03464.  Stable reparameterization:
Wang & Li 2024, "StableSSM", https://arxiv.org/abs/2311.14495.

With x_t in R^H (H = d_model) and a real diagonal state h_t in R^N (N = d_state):

.. math::

    \Delta_t = \operatorname{softplus}(W_\Delta x_t + b_\Delta) \in \mathbb{R}^N, \qquad
    \Lambda = -\frac{1}{w^2 + 1/2} \in [-2, 0)^N,

    \bar A_t = \exp(\Lambda \Delta_t \tau_t), \qquad
    \bar B_t x_t = \frac{\exp(\Lambda \Delta_t) - 1}{\Lambda} \odot (W_B x_t), \qquad
    h_t = \bar A_t \odot h_{t-1} + \bar B_t x_t,

    s_t = W_C h_t + D \odot x_t, \qquad
    y_t = s_t \odot \sigma\big(W_g \operatorname{GeLU}(s_t) + b_g\big)

(:math:`\tau_t` = ``timesteps``, 1 without them).  Stability by construction:
:math:`\Lambda < 0` and :math:`\Delta_t > 0` give :math:`0 < \bar A_t < 1` for every input, and
the reparameterization :math:`\Lambda = -1/(w^2 + 1/2)` is StableSSM's "best" one (bounded
gradient scale).  The paper writes it in discrete time, :math:`\bar A = 1 - (w^2 + 1/2)^{-1}`
(its Euler step with :math:`\Delta = 1`, range :math:`[-1, 1)`); the continuous form with a zero-
order hold used here (as the authors' ``stablessm_a`` + ``zoh``/``async`` code path) keeps
:math:`\bar A_t` strictly inside (0, 1) and lets ``timesteps`` stretch the decay.

Selectivity follows the authors' implementation: the per-token step :math:`\Delta_t` makes
:math:`\bar A_t` and :math:`\bar B_t = \operatorname{diag}(\gamma_t) W_B` input-dependent;
:math:`W_B, W_C, D` are fixed.  :math:`\bar B_t x_t` is formed as a (B, L, N) tensor
(:math:`\gamma_t \odot W_B x_t`), never as a per-token N x H matrix: no (B, L, N, d_model) tensor
exists in forward or backward.  Events (``timesteps``): the paper's asynchronous discretization
(its Eq. 12 code path) decays the state over the elapsed time :math:`\tau_t` while the input gain
uses :math:`\Delta_t` alone, so :math:`\tau_t = 1` equals no timesteps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import lrnnx
import lrnnx.ops as ops
from lrnnx.errors import ConfigError

from ._common import batch_rows, check_scan, param_dtype_device, state_tensor

#: StableSSM reparameterization Lambda = -1 / (A_SCALE * w**2 + B_OFFSET) (the paper's a, b)
A_SCALE, B_OFFSET = 1.0, 0.5
#: initial Lambda: -1/2, the real part of the HiPPO-LegS (DPLR) eigenvalues the authors start from
LAMBDA_INIT = -0.5


def stable_lambda(w: torch.Tensor) -> torch.Tensor:
    """StableSSM continuous-time reparameterization ``-1 / (w**2 + 1/2)``, in [-2, 0)."""
    return -1.0 / (A_SCALE * w * w + B_OFFSET)


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = y`` for y > 0 (stable for small y)."""
    return y + torch.log(-torch.expm1(-y))


class S7(lrnnx.Layer):
    r"""S7 layer: input-dependent, stably reparameterized diagonal SSM with a gated output.

    See the module docstring for the recurrence.  Options:

    * ``d_state`` (N, default 64): real state size.
    * ``dt_min``, ``dt_max`` (1e-3, 1e-1): initial steps, :math:`b_\Delta` =
      softplus\ :sup:`-1` of log-uniform draws in that range (the authors' and Mamba's init);
      :math:`W_\Delta \sim U(\pm r^{-1/2})` with :math:`r = \lceil H/16 \rceil` (the authors').
    * ``gate`` (True): the output gate :math:`s_t \odot \sigma(W_g \operatorname{GeLU}(s_t))` of
      the authors' sequence layer (GeLU in its tanh form, as their JAX code; the residual
      connection is the block's job here).
    * ``scan``: scan backend of :func:`lrnnx.ops.diag_scan` ("auto" or a registered name).

    Init: :math:`w = \sqrt{3/2}` (so :math:`\Lambda = -1/2`), :math:`W_B \sim N(0, 1/H)`,
    :math:`W_C \sim N(0, 1/N)`, :math:`D \sim N(0, 1)`, gate: PyTorch's Linear default.

    State: ``{"h": (B, d_state)}`` (``(N_seq, d_state)`` with ``cu_seqlens``).
    Shapes: x (B, L, d_model) -> y (B, L, d_model); timesteps (B, L) >= 0 (elapsed time per
    token; 1 = one regular step); step: x_t (B, d_model) -> y_t (B, d_model), timesteps (B,).
    Memory: O(B L (N + H)) activations.

    Example::

        s7 = lrnnx.build_layer("s7(d_state=32)", d_model=64)
        y, st = s7(torch.randn(2, 100, 64), return_state=True)
        y_t, st = s7.step(torch.randn(2, 64), st)
        y_ev = s7(torch.randn(2, 100, 64), timesteps=torch.rand(2, 100))   # event stream
    """

    name = "s7"
    capabilities = frozenset({"step", "varlen", "timesteps"})
    test_kwargs = {"d_state": 6}

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, gate: bool = True, scan: str = "auto"):
        super().__init__()
        if d_model <= 0:
            raise ConfigError(f"layer 's7': d_model must be a positive int, got {d_model}.")
        if d_state <= 0:
            raise ConfigError(f"layer 's7': option 'd_state' must be >= 1, got {d_state}.")
        if not (0 < dt_min <= dt_max and math.isfinite(dt_max)):
            raise ConfigError(f"layer 's7': options 'dt_min', 'dt_max' need 0 < dt_min <= "
                              f"dt_max < inf, got dt_min={dt_min}, dt_max={dt_max}.")
        self.d_model, self.d_state, self.use_gate = d_model, d_state, gate
        self.dt_min, self.dt_max = dt_min, dt_max
        self.scan = check_scan("s7", scan)
        H, N = d_model, d_state
        self.dt_proj = nn.Linear(H, N)
        bound = math.ceil(H / 16) ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        dt = torch.exp(torch.empty(N, dtype=torch.float64).uniform_(math.log(dt_min),
                                                                     math.log(dt_max)))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inverse_softplus(dt.clamp(min=1e-4)))
        self.w = nn.Parameter(torch.full((N,), math.sqrt(-1.0 / LAMBDA_INIT - B_OFFSET)
                                         / math.sqrt(A_SCALE)))
        self.B = nn.Linear(H, N, bias=False)
        nn.init.normal_(self.B.weight, std=H ** -0.5)
        self.C = nn.Linear(N, H, bias=False)
        nn.init.normal_(self.C.weight, std=N ** -0.5)
        self.D = nn.Parameter(torch.randn(H))
        self.gate_proj = nn.Linear(H, H) if gate else None

    def init_state(self, batch_size: int, device=None, dtype=None):
        device, dtype = param_dtype_device(self, device, dtype)
        return {"h": torch.zeros(batch_size, self.d_state, device=device, dtype=dtype)}

    def _coefficients(self, x, timesteps):
        """``(A_bar, B_bar x)``, both shaped like ``x[..., :N]``."""
        dt = F.softplus(self.dt_proj(x))                    # (..., N)
        lam = stable_lambda(self.w)                         # (N,), in [-2, 0)
        z = lam * dt
        gain = torch.expm1(z) / lam                         # ZOH input gain, ~dt for small dt
        if timesteps is not None:
            z = z * timesteps.unsqueeze(-1)
        return torch.exp(z), gain * self.B(x)

    def _readout(self, h, x):
        s = self.C(h) + self.D * x
        if self.gate_proj is None:
            return s
        return s * torch.sigmoid(self.gate_proj(F.gelu(s, approximate="tanh")))

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        rows = batch_rows(x, cu_seqlens)
        h0 = state_tensor(self, state, "h", (rows, self.d_state), x, cu_seqlens is not None)
        a, b = self._coefficients(x, timesteps)
        h, h_last = ops.diag_scan(a, b, h0, cu_seqlens=cu_seqlens, backend=self.scan)
        y = self._readout(h, x)
        return (y, {"h": h_last}) if return_state else y

    def step(self, x_t, state, timesteps=None):
        h = state_tensor(self, state, "h", (x_t.shape[0], self.d_state), x_t)
        a, b = self._coefficients(x_t, timesteps)
        h = ops.diag_step(a, b, h, backend=self.scan)
        return self._readout(h, x_t), {"h": h}

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, gate={self.use_gate}, "
                f"dt_min={self.dt_min}, dt_max={self.dt_max}")
