"""Public selective (S6) scan: ``lrnnx.ops.selective_scan`` and ``lrnnx.ops.selective_step``.

Mamba's input-dependent SSM (Gu & Dao 2023, https://arxiv.org/abs/2312.00752) in lrnnx layout
(B, L, D), for channel d, state n, token t::

    dt       = softplus?(delta + delta_bias) [* timesteps]          (Bt, L, Dm)
    A_bar, s = discretize(method, A[d, n], dt[b, t, d])              (lrnnx.ops.discretize)
    h_t[d,n] = A_bar * h_{t-1}[d,n] + s * B_t[g(d), n] * u_t[d]
    y_t[d]   = Re(sum_n C_t[g(d), n] * h_t[d, n]) + D[d] * u_t[d]
    y_t     *= silu(z_t)                                             (if z is given)

with ``g(d) = d // (Dm // G)`` for grouped ``B``/``C`` (Bt, L, G, N).  Inputs are validated here
(:mod:`.validation`), then a scan backend runs the op (:mod:`.dispatch`).
"""

from __future__ import annotations

import torch
from lrnnx_kernels.discretize import METHODS

from . import dispatch
from .validation import check_selective

Tensor = torch.Tensor


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Tensor | None = None, z: Tensor | None = None,
                   delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   discretization: str = "mamba", timesteps: Tensor | None = None,
                   h0: Tensor | None = None, return_last_state: bool = False,
                   backend: str = "auto"):
    """Selective scan over a whole sequence; differentiable in every tensor input.

    Args:
        u, delta, z: (Bt, L, Dm), real.  A: (Dm, N), real or complex (continuous-time).
        B, C: (Bt, L, N) or grouped (Bt, L, G, N) with G dividing Dm; may be complex.
        D, delta_bias: (Dm,), real.  delta_softplus: apply softplus to ``delta + delta_bias``.
        discretization: one of ``lrnnx.ops.METHODS`` (zoh, bilinear, mamba, euler, dirac).
        timesteps: (Bt, L) real per-token time steps (event streams): ``dt_eff = dt * ts``.
        h0: (Bt, Dm, N) initial state (None means zeros).
        return_last_state: also return the final state.
        backend: ``"auto"`` or a registered scan backend name.

    Returns:
        ``y`` (Bt, L, Dm) in ``u``'s dtype, or ``(y, h_last)`` with h_last (Bt, Dm, N) in the
        compute dtype (>= fp32; complex when A or B is complex).

    Example::

        >>> u = torch.randn(2, 10, 4); A = -torch.rand(4, 8)
        >>> y = lrnnx.ops.selective_scan(u, torch.rand(2, 10, 4), A, torch.randn(2, 10, 8),
        ...                              torch.randn(2, 10, 8), delta_softplus=True)
        >>> y.shape
        torch.Size([2, 10, 4])
    """
    problem = check_selective(
        "selective_scan", step=False, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z,
        delta_bias=delta_bias, delta_softplus=delta_softplus, discretization_=discretization,
        timesteps=timesteps, h0=h0, methods=METHODS, return_last_state=return_last_state)
    return dispatch.call(
        "selective_scan", backend, problem, u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
        delta_softplus=delta_softplus, discretization=discretization, timesteps=timesteps,
        h0=h0, return_last_state=return_last_state)


def selective_step(u_t: Tensor, delta_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor,
                   state: Tensor | None, D: Tensor | None = None, z_t: Tensor | None = None,
                   delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   discretization: str = "mamba", timesteps_t: Tensor | None = None, *,
                   backend: str = "auto") -> tuple[Tensor, Tensor]:
    """One token of :func:`selective_scan` (recurrent decoding), with the same formulas.

    Args:
        u_t, delta_t, z_t: (Bt, Dm).  A: (Dm, N).  B_t, C_t: (Bt, N) or (Bt, G, N).
        state: (Bt, Dm, N) or None (zeros).  D, delta_bias: (Dm,).  timesteps_t: (Bt,).

    Returns:
        ``(y_t, state)``: y_t (Bt, Dm) in ``u_t``'s dtype, the new state (Bt, Dm, N) in the
        compute dtype.  Stepping through a sequence reproduces ``selective_scan``.

    Example::

        >>> y_t, st = lrnnx.ops.selective_step(torch.randn(2, 4), torch.rand(2, 4),
        ...     -torch.rand(4, 8), torch.randn(2, 8), torch.randn(2, 8), None)
        >>> st.shape
        torch.Size([2, 4, 8])
    """
    problem = check_selective(
        "selective_step", step=True, u=u_t, delta=delta_t, A=A, B=B_t, C=C_t, D=D, z=z_t,
        delta_bias=delta_bias, delta_softplus=delta_softplus, discretization_=discretization,
        timesteps=timesteps_t, h0=state, methods=METHODS)
    return dispatch.call(
        "selective_step", backend, problem, u_t, delta_t, A, B_t, C_t, state, D=D, z_t=z_t,
        delta_bias=delta_bias, delta_softplus=delta_softplus, discretization=discretization,
        timesteps_t=timesteps_t)
