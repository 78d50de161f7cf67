"""Chunked selective scan: exact, pure PyTorch, bounded memory.

The expanded state sequence (Bt, L, Dm, N) is never materialized.  L is
processed in chunks of T tokens; for each chunk::

    A_bar, s*B*u   (Bt, T, Dm, N)        via discretize(), as in the reference
    h              = diag_scan(A_bar, s*B*u, h0 = carried state)
    y              = Re(sum_n C h)       (Bt, T, Dm)
    carry          = h[:, -1]            (Bt, Dm, N)

The diagonal scan flattens (Dm, N) into the channel axis and reuses the
diag_scan machinery (chunked PyTorch by default, the C++ kernel with
``scan="cpu"``).  When gradients are needed each chunk runs under
``torch.utils.checkpoint``: the forward keeps only the chunk inputs and the
carried states, and the backward recomputes one chunk at a time, so backward
memory is ~one chunk plus (L / T) carried states.  The ``D`` skip and ``z``
gate are elementwise on (Bt, L, Dm) and applied once after the chunks.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..diag_scan.chunked import diag_scan_chunked
from ..diag_scan.cpu import diag_scan_cpu
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

_SCANS = {"chunked": diag_scan_chunked, "cpu": diag_scan_cpu}


def _chunk(method: str, scan, u: Tensor, dt: Tensor, Bg: Tensor, Cg: Tensor, A: Tensor, h: Tensor | None):
    """One chunk: (y before D/z, last state)."""
    Bt, T, Dm = u.shape
    N = A.shape[1]
    A_bar, bu = input_term(method, A, dt, u, Bg)  # (Bt, T, Dm, N)
    a = A_bar.reshape(Bt, T, Dm * N)
    b = bu.reshape(Bt, T, Dm * N)
    hs, last = scan(a, b, None if h is None else h.reshape(Bt, Dm * N))
    return contract(Cg, hs.view(Bt, T, Dm, N)), last.view(Bt, Dm, N)


def selective_scan_chunked(
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
    *,
    chunk_size: int = 128,
    scan: str = "chunked",
):
    """Selective (S6) scan, chunked over time; differentiable in every input.

    Args:
        u, delta, z: (Bt, L, Dm).  A: (Dm, N), real or complex.
        B, C: (Bt, L, N) or grouped (Bt, L, G, N) (channel d uses group
            d // (Dm // G)); complex allowed when A is complex.
        D, delta_bias: (Dm,).  delta_softplus: apply softplus to dt.
        discretization: one of ``kernels.discretize.METHODS``.
        timesteps: (Bt, L) positive per-token time steps (dt_eff = dt * ts).
        h0: (Bt, Dm, N) initial state.
        return_last_state: also return the final state.
        chunk_size: tokens per chunk (memory ~ Bt * chunk_size * Dm * N).
        scan: diagonal-scan engine, ``"chunked"`` (any device) or ``"cpu"``.

    Returns:
        ``y`` (Bt, L, Dm) in ``u``'s dtype, and ``h_last`` (Bt, Dm, N) in the
        compute dtype (>= fp32, complex if A or B is) with ``return_last_state``.
    """
    check_shapes(u, delta, A, discretization)
    if scan not in _SCANS:
        raise ValueError(f"unknown scan {scan!r}; expected one of {', '.join(_SCANS)}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    Bt, L, Dm = u.shape
    rdt = real_dtype(u, delta, A, B, C, h0)
    sdt = state_dtype(A, B, rdt)
    uc = cast(u, rdt)
    dt = prepare_dt(delta, delta_bias, delta_softplus, timesteps, rdt)
    Bg = group_view(cast(B, rdt), 2, Dm, "B")
    Cg = group_view(cast(C, rdt), 2, Dm, "C")
    Ac = cast(A, rdt)
    h = h0.to(sdt) if h0 is not None else None
    fn = _SCANS[scan]
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (uc, dt, Bg, Cg, Ac, h)
    )
    ys = []
    for t0 in range(0, L, chunk_size):
        sl = slice(t0, min(t0 + chunk_size, L))
        args = (discretization, fn, uc[:, sl], dt[:, sl], Bg[:, sl], Cg[:, sl], Ac, h)
        if grad:
            y_c, h = checkpoint(_chunk, *args, use_reentrant=False, preserve_rng_state=False)
        else:
            y_c, h = _chunk(*args)
        ys.append(y_c)
    y = torch.cat(ys, 1) if ys else uc.new_zeros((Bt, 0, Dm))
    y = finalize(y, uc, cast(D, rdt), cast(z, rdt)).to(u.dtype)
    if not return_last_state:
        return y
    if h is None:  # L == 0 and no h0
        h = torch.zeros(Bt, Dm, A.shape[1], dtype=sdt, device=u.device)
    return y, h.to(sdt)
