"""Shared pieces of the selective (S6) scan: dtype policy, step-size
preparation, grouped B/C, the per-token input term and the C contraction.

Semantics (lrnnx layout, channel d, state n, token t)::

    dt       = softplus?(delta + delta_bias)            (B, L, Dm)
    dt_eff   = dt * timesteps                           (event streams)
    A_bar, s = discretize(method, A[d, n], dt_eff[b, t, d])
    h_t[d,n] = A_bar * h_{t-1}[d,n] + s * B_t[g(d), n] * u_t[d]
    y_t[d]   = Re( sum_n C_t[g(d), n] * h_t[d, n] ) + D[d] * u_t[d]
    y_t     *= silu(z_t)                                (if z is given)

with ``g(d) = d // (Dm // G)`` for grouped ``B``/``C`` of shape (B, L, G, N).
Everything is computed in at least fp32 (complex64 when A or B is complex).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..discretize import _check_method, _discretize, effective_dt


def real_dtype(*tensors: Tensor | None) -> torch.dtype:
    """fp64 if any input is double precision, else fp32."""
    for t in tensors:
        if t is not None and t.dtype in (torch.float64, torch.complex128):
            return torch.float64
    return torch.float32


def complex_of(rdt: torch.dtype) -> torch.dtype:
    return torch.complex128 if rdt == torch.float64 else torch.complex64


def cast(t: Tensor | None, rdt: torch.dtype) -> Tensor | None:
    """Cast to the compute precision, keeping real/complex kind."""
    if t is None:
        return None
    return t.to(complex_of(rdt) if t.is_complex() else rdt)


def state_dtype(A: Tensor, B: Tensor, rdt: torch.dtype) -> torch.dtype:
    return complex_of(rdt) if (A.is_complex() or B.is_complex()) else rdt


def group_view(X: Tensor, lead: int, Dm: int, name: str) -> Tensor:
    """View ``B``/``C`` with an explicit group axis: (*lead, G, N).

    ``lead`` is the number of leading (batch[, time]) dims.
    """
    if X.dim() == lead + 1:
        X = X.unsqueeze(-2)
    if X.dim() != lead + 2:
        raise ValueError(f"{name} must have {lead + 1} or {lead + 2} dims, got {tuple(X.shape)}")
    if Dm % X.shape[-2] != 0:
        raise ValueError(f"Dm = {Dm} is not divisible by the {X.shape[-2]} groups of {name}")
    return X


def prepare_dt(
    delta: Tensor,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    timesteps: Tensor | None,
    rdt: torch.dtype,
) -> Tensor:
    """``dt_eff = softplus?(delta + delta_bias) * timesteps`` in ``rdt``."""
    dt = delta.to(rdt)
    if delta_bias is not None:
        dt = dt + delta_bias.to(rdt)
    if delta_softplus:
        dt = F.softplus(dt)
    return effective_dt(dt, None if timesteps is None else timesteps.to(rdt))


def input_term(method: str, A: Tensor, dt: Tensor, u: Tensor, Bg: Tensor) -> tuple[Tensor, Tensor]:
    """``(A_bar, s * B * u)`` for a block of tokens, shape (*lead, Dm, N).

    dt, u: (*lead, Dm); Bg: (*lead, G, N); A: (Dm, N).  ``s * u`` is formed
    before broadcasting against N when the scale does not depend on A
    (mamba/euler/dirac), so no extra (…, Dm, N) scale tensor is built.
    """
    A_bar, s = _discretize(method, A, dt.unsqueeze(-1))
    su = s * u.unsqueeze(-1)  # (*lead, Dm, 1 or N)
    lead, Dm = u.shape[:-1], u.shape[-1]
    G, N = Bg.shape[-2], Bg.shape[-1]
    bu = su.reshape(*lead, G, Dm // G, su.shape[-1]) * Bg.unsqueeze(-2)
    return A_bar, bu.reshape(*lead, Dm, N)


def contract(Cg: Tensor, h: Tensor) -> Tensor:
    """``y[d] = Re(sum_n C[g(d), n] h[d, n])``; Cg: (*lead, G, N), h: (*lead, Dm, N)."""
    lead, Dm, N = h.shape[:-2], h.shape[-2], h.shape[-1]
    G = Cg.shape[-2]
    hg = h.reshape(*lead, G, Dm // G, N)
    if h.is_complex():
        y = torch.einsum("...kn,...n->...k", hg.real, Cg.real)
        if Cg.is_complex():
            y = y - torch.einsum("...kn,...n->...k", hg.imag, Cg.imag)
    else:
        y = torch.einsum("...kn,...n->...k", hg, Cg.real if Cg.is_complex() else Cg)
    return y.reshape(*lead, Dm)


def finalize(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """Skip connection and gate: ``(y + D u) * silu(z)``."""
    if D is not None:
        y = y + D * u
    if z is not None:
        y = y * F.silu(z)
    return y


def check_shapes(u: Tensor, delta: Tensor, A: Tensor, method: str) -> None:
    _check_method(method)
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (B, L, Dm); got {tuple(u.shape)}, {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != u.shape[-1]:
        raise ValueError(f"A must be (Dm, N) with Dm = {u.shape[-1]}; got {tuple(A.shape)}")
