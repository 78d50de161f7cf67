r"""State-space duality (SSD): the chunked algorithm of Mamba2, in plain PyTorch matmuls.

Dao & Gu 2024, "Transformers are SSMs", https://arxiv.org/abs/2405.21060 (Sec. 6, "listing 1").

Recurrence (per batch row, head h with scalar decay ``A[h] < 0``, group g = g(h) of B/C)::

    a_t        = dt_t[h] * A[h]                                  (log decay, <= 0)
    H_t        = exp(a_t) * H_{t-1} + dt_t[h] * x_t[h] B_t[g]^T    H_t: (P, N)
    y_t[h]     = H_t C_t[g] + D[h] * x_t[h]

Chunked evaluation (chunk length T, ``c`` indexes chunks, ``i, j`` tokens in a chunk):

1. within a chunk, the quadratic ("attention-like") form
   ``y_i = sum_{j<=i} (C_i . B_j) exp(a_{j+1} + ... + a_i) dt_j x_j``: a masked (T, T) matmul;
2. the state each chunk adds, ``S_c = sum_j exp(a_{j+1} + ... + a_{T-1}) dt_j x_j B_j^T``;
3. a linear recurrence across chunks (state passing) ``H_c = exp(sum_chunk a) H_{c-1} + S_c``,
   starting from ``initial_state``;
4. the contribution of the incoming state, ``y_i += exp(a_0 + ... + a_i) H_{c-1} C_i``.

The cumulative log decays ``a_{j+1} + ... + a_i`` are built by :func:`segsum` as masked cumulative
sums (never as differences of two cumsums), so there is no cancellation and a log decay of
``-inf`` is exact: :func:`ssd_chunked` uses that to restart the state at packed-sequence starts
(``seq_start``).  Compute runs in float32 (float64 for float64 inputs).

Shapes: x (b, L, H, P); dt (b, L, H) (already positive: softplus and time scaling applied);
A (H,); B, C (b, L, G, N) with H divisible by G (head h uses group ``h // (H // G)``);
D (H,); states (b, H, P, N).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["segsum", "ssd_chunked", "ssd_step", "compute_dtype"]


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precisions are upcast)."""
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            return torch.float64
    return torch.float32


def segsum(a: Tensor) -> Tensor:
    """Segment sums of log decays: ``out[..., i, j] = a[..., j+1] + ... + a[..., i]`` for j <= i
    (0 on the diagonal) and ``-inf`` above it, so ``exp(out)`` is the causal decay matrix.

    a (..., T) -> (..., T, T).  Each entry is its own masked cumulative sum (no subtraction of
    prefix sums), hence exact for ``-inf`` entries and free of cancellation.
    """
    T = a.shape[-1]
    ones = torch.ones(T, T, dtype=torch.bool, device=a.device)
    # rows k, columns j: a_k where k > j, else 0; cumsum over k gives sum_{j<k<=i} a_k
    terms = a.unsqueeze(-1).expand(*a.shape, T).masked_fill(~torch.tril(ones, -1), 0.0)
    out = torch.cumsum(terms, dim=-2)
    return out.masked_fill(~torch.tril(ones), float("-inf"))


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[int, ...]:
    if x.dim() != 4:
        raise ValueError(f"ssd: x must be (b, L, H, P), got shape {tuple(x.shape)}")
    b, L, H, P = x.shape
    if tuple(dt.shape) != (b, L, H):
        raise ValueError(f"ssd: dt must be (b, L, H) = {(b, L, H)}, got {tuple(dt.shape)}")
    if tuple(A.shape) != (H,):
        raise ValueError(f"ssd: A must be (H,) = {(H,)}, got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, L) or B.shape != C.shape:
        raise ValueError(f"ssd: B and C must both be (b, L, G, N) with (b, L) = {(b, L)}, got "
                         f"{tuple(B.shape)} and {tuple(C.shape)}")
    G, N = B.shape[2], B.shape[3]
    if H % G:
        raise ValueError(f"ssd: the {H} heads must be divisible by the {G} groups of B/C")
    return b, L, H, P, G, N


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, chunk_size: int = 64,
                D: Tensor | None = None, initial_state: Tensor | None = None,
                seq_start: Tensor | None = None, return_final_state: bool = False):
    """Chunked SSD scan (see the module docstring); differentiable in every input.

    Args:
        x: (b, L, H, P) inputs; dt: (b, L, H) positive step sizes; A: (H,) negative decay rates.
        B, C: (b, L, G, N) input / output projections.  D: (H,) skip, or None.
        chunk_size: T, tokens per chunk (work ~ L * T per head for the quadratic part).
        initial_state: (b, H, P, N) state before the first token, or None (zeros).
        seq_start: optional (b, L) bool, True where a packed sequence starts: the state is reset
            to zero before that token (``initial_state`` is then ignored for that row from there).
        return_final_state: also return the state after the last token.

    Returns:
        y (b, L, H, P) in x's dtype, and with ``return_final_state`` the final state
        (b, H, P, N) in the compute dtype (float32, or float64 for float64 inputs).
    """
    b, L, H, P, G, N = _check(x, dt, A, B, C)
    if chunk_size < 1:
        raise ValueError(f"ssd: chunk_size must be >= 1, got {chunk_size}")
    R = H // G
    rdt = compute_dtype(x, dt, A, B, C, initial_state)
    if L == 0:
        y = x.new_zeros(x.shape)
        if not return_final_state:
            return y
        h = (initial_state.to(rdt) if initial_state is not None else
             torch.zeros(b, H, P, N, dtype=rdt, device=x.device))
        return y, h
    T = chunk_size
    nc = -(-L // T)
    pad = nc * T - L
    xf, dtf = x.to(rdt), dt.to(rdt)
    a = dtf * A.to(rdt)                                               # (b, L, H) log decays
    if seq_start is not None:
        a = a.masked_fill(seq_start.to(torch.bool).unsqueeze(-1), float("-inf"))
    xdt = xf * dtf.unsqueeze(-1)                                      # (b, L, H, P)
    Bf, Cf = B.to(rdt), C.to(rdt)
    if pad:  # padded tokens have a = 0 (decay 1) and no input, so the final state is unchanged
        a = torch.nn.functional.pad(a, (0, 0, 0, pad))
        xdt = torch.nn.functional.pad(xdt, (0, 0, 0, 0, 0, pad))
        Bf = torch.nn.functional.pad(Bf, (0, 0, 0, 0, 0, pad))
        Cf = torch.nn.functional.pad(Cf, (0, 0, 0, 0, 0, pad))
    a = a.view(b, nc, T, G, R).permute(0, 1, 3, 4, 2)                 # (b, c, G, R, T)
    xdt = xdt.view(b, nc, T, G, R, P)
    Bf, Cf = Bf.view(b, nc, T, G, N), Cf.view(b, nc, T, G, N)

    # 1. within chunks: masked quadratic form
    seg = segsum(a)                                                   # (b, c, G, R, T, T)
    decay = torch.exp(seg)
    CB = torch.einsum("bcign,bcjgn->bcgij", Cf, Bf)                   # (b, c, G, T, T)
    y = torch.einsum("bcgrij,bcjgrp->bcigrp", decay * CB.unsqueeze(3), xdt)

    # 2. state added by each chunk: decay from token j to the chunk end is the last row of seg
    to_end = decay[..., T - 1, :]                                     # (b, c, G, R, T)
    S = torch.einsum("bcjgn,bcjgrp->bcgrpn", Bf, xdt * to_end.permute(0, 1, 4, 2, 3)[..., None])

    # 3. state passing across chunks (linear recurrence, one step per chunk)
    a_cum = torch.cumsum(a, dim=-1)                                   # (b, c, G, R, T)
    chunk_decay = torch.exp(a_cum[..., -1])[..., None, None]          # (b, c, G, R, 1, 1)
    if initial_state is not None:
        h = initial_state.to(rdt).reshape(b, G, R, P, N)
    else:
        h = torch.zeros(b, G, R, P, N, dtype=rdt, device=x.device)
    incoming = []
    for c in range(nc):
        incoming.append(h)
        h = chunk_decay[:, c] * h + S[:, c]
    H_in = torch.stack(incoming, dim=1)                               # (b, c, G, R, P, N)

    # 4. contribution of each chunk's incoming state, decayed to token i
    y_off = torch.einsum("bcign,bcgrpn->bcigrp", Cf, H_in)
    y = y + y_off * torch.exp(a_cum).permute(0, 1, 4, 2, 3)[..., None]
    y = y.reshape(b, nc * T, H, P)[:, :L]
    if D is not None:
        y = y + D.to(rdt)[:, None] * xf
    y = y.to(x.dtype)
    if not return_final_state:
        return y
    return y, h.reshape(b, H, P, N)


def ssd_step(x_t: Tensor, dt_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor, state: Tensor,
             D: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token of the SSD recurrence.

    x_t (b, H, P), dt_t (b, H), A (H,), B_t/C_t (b, G, N), state (b, H, P, N), D (H,) or None
    -> (y_t (b, H, P) in x_t's dtype, new state (b, H, P, N) in the compute dtype).
    """
    b, H, P = x_t.shape
    G, N = B_t.shape[-2:]
    rdt = compute_dtype(x_t, dt_t, A, B_t, C_t, state)
    xf, dtf = x_t.to(rdt), dt_t.to(rdt)
    Bh = B_t.to(rdt).repeat_interleave(H // G, dim=1)                 # (b, H, N)
    Ch = C_t.to(rdt).repeat_interleave(H // G, dim=1)
    dA = torch.exp(dtf * A.to(rdt))[..., None, None]                  # (b, H, 1, 1)
    h = dA * state.to(rdt) + (xf * dtf[..., None])[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", h, Ch)
    if D is not None:
        y = y + D.to(rdt)[:, None] * xf
    return y.to(x_t.dtype), h
