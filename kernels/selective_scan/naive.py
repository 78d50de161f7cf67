"""Reference selective scan: one Python iteration per token (ground truth).

Loops over :func:`.step.step_core`; see ``_common`` for the math.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import cast, check_shapes, finalize, group_view, prepare_dt, real_dtype, state_dtype
from .step import step_core


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    discretization: str = "mamba",
    timesteps: Tensor | None = None,
    h0: Tensor | None = None,
    return_last_state: bool = False,
):
    """Sequential S6 scan.  Same contract as :func:`selective_scan_chunked`.

    Returns ``y`` (Bt, L, Dm) in ``u``'s dtype, plus ``h_last`` (Bt, Dm, N)
    in the compute dtype when ``return_last_state``.
    """
    check_shapes(u, delta, A, discretization)
    Bt, L, Dm = u.shape
    rdt = real_dtype(u, delta, A, B, C, h0)
    sdt = state_dtype(A, B, rdt)
    uc = cast(u, rdt)
    dt = prepare_dt(delta, delta_bias, delta_softplus, timesteps, rdt)
    Bg = group_view(cast(B, rdt), 2, Dm, "B")
    Cg = group_view(cast(C, rdt), 2, Dm, "C")
    Ac = cast(A, rdt)
    h = h0.to(sdt) if h0 is not None else torch.zeros(Bt, Dm, A.shape[1], dtype=sdt, device=u.device)
    ys = []
    for t in range(L):
        y_t, h = step_core(discretization, Ac, dt[:, t], uc[:, t], Bg[:, t], Cg[:, t], h)
        ys.append(y_t)
    y = torch.stack(ys, 1) if ys else uc.new_zeros((Bt, 0, Dm))
    y = finalize(y, uc, cast(D, rdt), cast(z, rdt)).to(u.dtype)
    return (y, h) if return_last_state else y
