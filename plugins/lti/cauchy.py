r"""Pure-PyTorch Cauchy kernel with bounded memory (S4's "black-box Cauchy kernel").

S4 (Gu, Goel & Re 2022, https://arxiv.org/abs/2111.00396, Algorithm 1 step 2) evaluates
resolvent sums at the L roots of unity:

.. math::

    r[h, k, j] = \sum_n \frac{v[h, n, j]}{z_k - w[h, n]}

for H systems (h), K nodes ``z_k`` (k) and J numerators per system (j), computed per chunk of
nodes as one real matmul ``[Re, -Im](1 / (z - w))`` (H, Kc, 2N) @ ``[[Re v, Im v], [Im v,
-Re v]]`` (H, 2N, 2J): complex reciprocals and products on CPU are several times slower than the
same math spelled out on real and imaginary parts (8 real elementwise ops per Cauchy entry).

Memory: the Cauchy matrix of one chunk, H * Kc * N entries, never the full H * K * N.  When
gradients are needed and the whole matrix would exceed :data:`CHECKPOINT_ELEMENTS`, each chunk
runs under activation checkpointing, so the backward pass recomputes it chunk by chunk and
autograd keeps only the inputs: O(H (Kc N + K J)) memory in total instead of O(H K N).
``chunk`` defaults to what fits :data:`CHUNK_ELEMENTS`.

Example::

    r = cauchy(v, z, w)            # v (H, N, J), z (K,), w (H, N) -> (H, K, J)
    r = cauchy(v, z, w, conj=True) # also sums the conjugate pairs (conj(v), conj(w))
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = ["CHUNK_ELEMENTS", "CHECKPOINT_ELEMENTS", "cauchy", "cauchy_naive"]

#: entries of the per-chunk Cauchy matrix (H * Kc * N); 2^22 = 32 MiB per real float64 plane
CHUNK_ELEMENTS = 1 << 22
#: above this many entries in total, chunks run under activation checkpointing
CHECKPOINT_ELEMENTS = 1 << 23


def cauchy_naive(v: Tensor, z: Tensor, w: Tensor) -> Tensor:
    """The reference: materializes the whole (H, K, N) complex Cauchy matrix."""
    return (1.0 / (z[:, None] - w[:, None, :])) @ v


def _block(v: Tensor, z: Tensor, w: Tensor) -> Tensor:
    p = z.real[:, None] - w.real[:, None, :]            # z - w = p + i q     (H, Kc, N)
    q = z.imag[:, None] - w.imag[:, None, :]
    inv = 1.0 / (p * p + q * q)                         # 1/(z - w) = (p - i q) / |z - w|^2
    D = torch.cat([p * inv, q * inv], -1)               # [Re, -Im] of 1/(z - w)
    vr, vi = v.real, v.imag
    # Re = Re(1/z) vr + (-Im(1/z)) vi ;  Im = Re(1/z) vi - (-Im(1/z)) vr
    V = torch.cat([torch.cat([vr, vi], -1), torch.cat([vi, -vr], -1)], -2)   # (H, 2N, 2J)
    return torch.complex(*(D @ V).chunk(2, -1))


def cauchy(v: Tensor, z: Tensor, w: Tensor, *, conj: bool = False,
           chunk: int | None = None) -> Tensor:
    r"""``r[h, k, j] = sum_n v[h, n, j] / (z[k] - w[h, n])``, chunked over the nodes k.

    Args:
        v: numerators (H, N, J), complex.
        z: nodes (K,), complex (constants: no gradient is taken through them).
        w: poles (H, N), complex.
        conj: add the conjugate pairs, ``sum_n [v / (z - w) + conj(v) / (z - conj(w))]``:
            the sum over the full state of a real system stored as one mode per pair.
        chunk: nodes per chunk (default: ``CHUNK_ELEMENTS // (H N)``, at least 1).

    Returns:
        (H, K, J) complex, differentiable in ``v`` and ``w``.
    """
    if conj:
        v = torch.cat([v, v.conj()], 1)
        w = torch.cat([w, w.conj()], 1)
    H, N, _ = v.shape
    K = z.shape[0]
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS // max(1, H * N))
    if chunk >= K:
        return _block(v, z, w)
    # checkpoint only when the whole Cauchy matrix would be large: recomputing costs a forward
    grad = torch.is_grad_enabled() and (v.requires_grad or w.requires_grad) \
        and H * K * N > CHECKPOINT_ELEMENTS
    out = []
    for s in range(0, K, chunk):
        zk = z[s:s + chunk]
        out.append(checkpoint(_block, v, zk, w, use_reentrant=False) if grad else
                   _block(v, zk, w))
    return torch.cat(out, 1)
