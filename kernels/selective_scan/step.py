"""One token of the selective scan (recurrent decoding).

The reference scan (``naive.py``) loops over :func:`step_core`, so decoding
and the reference share one formula; see ``_common`` for the math.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..diag_scan.step import diag_step
from ._common import (
    cast,
    check_shapes,
    contract,
    finalize,
    group_view,
    input_term,
    prepare_dt,
    real_dtype,
    state_dtype,
)


def step_core(method: str, A: Tensor, dt_t: Tensor, u_t: Tensor, Bg_t: Tensor, Cg_t: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """Advance (Bt, Dm, N) state ``h`` by one token; returns ``(y_t, h)``
    with ``y_t`` before the D skip and the z gate (compute dtype)."""
    A_bar, bu = input_term(method, A, dt_t, u_t, Bg_t)
    h = diag_step(A_bar, bu, h)
    return contract(Cg_t, h), h


def selective_step(
    u_t: Tensor,
    delta_t: Tensor,
    A: Tensor,
    B_t: Tensor,
    C_t: Tensor,
    state: Tensor | None,
    D: Tensor | None = None,
    z_t: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    discretization: str = "mamba",
    timesteps_t: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One selective-scan step.

    Args:
        u_t, delta_t, z_t: (Bt, Dm).  A: (Dm, N).  B_t, C_t: (Bt, N) or
        (Bt, G, N).  state: (Bt, Dm, N) or None (zeros).  D, delta_bias:
        (Dm,).  timesteps_t: (Bt,) positive time steps (``dt_eff = dt * ts``).

    Returns:
        ``(y_t, state)``: y_t (Bt, Dm) in ``u_t``'s dtype, the new state in
        the compute dtype (>= fp32, complex when A or B is complex).
    """
    check_shapes(u_t.unsqueeze(1), delta_t.unsqueeze(1), A, discretization)
    Bt, Dm = u_t.shape
    rdt = real_dtype(u_t, delta_t, A, B_t, C_t, state)
    sdt = state_dtype(A, B_t, rdt)
    u = cast(u_t, rdt)
    dt = prepare_dt(delta_t, delta_bias, delta_softplus, timesteps_t, rdt)
    Bg = group_view(cast(B_t, rdt), 1, Dm, "B_t")
    Cg = group_view(cast(C_t, rdt), 1, Dm, "C_t")
    h = state.to(sdt) if state is not None else torch.zeros(Bt, Dm, A.shape[1], dtype=sdt, device=u_t.device)
    y, h = step_core(discretization, cast(A, rdt), dt, u, Bg, Cg, h)
    y = finalize(y, u, cast(D, rdt), cast(z_t, rdt))
    return y.to(u_t.dtype), h
