r"""The cross-rank combine of context parallelism: collectives and the prefix over ranks.

A linear recurrence ``h_t = a_t h_{t-1} + b_t`` split along time over R ranks (rank order = scan
order; position ``p`` of a rank is its rank, or ``R-1-rank`` for a reverse scan).  Each position
scans its chunk from a zero state and reports the pair

.. math::  P_p = \prod_{t \in \text{chunk } p} a_t, \qquad S_p = h^{(0)}_{\text{last}}

(transition of the chunk, final state from zero).  Chunk maps compose affinely, so after one
all-gather of the pairs every rank runs the prefix

.. math::  H_0 = 0, \qquad H_{p+1} = P_p H_p + S_p, \qquad H_{\text{out}} = H_R

where ``H_p`` is the state carried into position ``p`` (the first rank folds ``h0`` into its own
``S``) and ``H_out`` the global final state (the same on every rank).  Backward runs the adjoint
in reverse order: with ``g_p`` the gradient a rank's own outputs put on ``H_p`` and ``g_out`` the
gradients of ``H_out`` (a replicated output: summed over ranks),

.. math::  G_R = \sum_{\text{ranks}} g_{\text{out}}, \qquad G_p = g_p + \overline{P_p}\, G_{p+1}

(one all-gather of the pairs ``(g_p, g_out)``), and position ``p`` receives ``dL/dS_p = G_{p+1}``
and ``dL/dP_p = G_{p+1} \overline{H_p}`` (PyTorch's conjugate convention for complex tensors).

Communication per call: one all-gather of ``2 x state`` per rank forward and one backward, with
``state`` = (B, D) for ``diag_scan`` and (B, D, N) for ``selective_scan``: independent of L.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..errors import InputError, InputTypeError

__all__ = ["resolve_group", "position", "all_gather", "carry_prefix", "grad_suffix", "CarryIn",
           "grad_anchor"]


def resolve_group(group, where: str):
    """The process group to use (``None`` -> the default group); raise if there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        raise InputError(f"{where}: context parallelism needs an initialized torch.distributed "
                         f"process group, got none; call torch.distributed.init_process_group("
                         f"'nccl' or 'gloo', ...) on every rank first (torchrun sets the "
                         f"environment).")
    if group is None:
        return dist.group.WORLD
    if not isinstance(group, dist.ProcessGroup):
        raise InputTypeError(f"{where}: group must be a torch.distributed.ProcessGroup or None "
                             f"(the default group), got {type(group).__name__}; build one with "
                             f"torch.distributed.new_group(ranks).")
    return group


def position(group, reverse: bool = False) -> tuple[int, int]:
    """``(position of this rank in scan order, world size)`` of ``group``."""
    R = dist.get_world_size(group)
    r = dist.get_rank(group)
    return (R - 1 - r if reverse else r), R


def all_gather(t: Tensor, group, reverse: bool = False) -> Tensor:
    """Stack ``t`` of every rank of ``group``: (R, *t.shape), indexed by scan position.

    Complex tensors travel as their real view (not every backend reduces complex types).
    Not differentiable by itself: the autograd Functions here route gradients explicitly.
    """
    R = dist.get_world_size(group)
    src = torch.view_as_real(t.detach()) if t.is_complex() else t.detach()
    src = src.contiguous()
    out = [torch.empty_like(src) for _ in range(R)]
    dist.all_gather(out, src, group=group)
    if reverse:
        out.reverse()
    stacked = torch.stack(out)
    return torch.view_as_complex(stacked) if t.is_complex() else stacked


def carry_prefix(P: Tensor, S: Tensor, pos: int) -> tuple[Tensor, Tensor]:
    """``(H_pos, H_out)`` from the gathered pairs ``P, S`` (R, ...) in scan order."""
    H = torch.zeros_like(S[0])
    H_pos = H
    for j in range(S.shape[0]):
        if j == pos:
            H_pos = H
        H = P[j] * H + S[j]
    return H_pos, H


def grad_suffix(P: Tensor, g_in: Tensor, g_out: Tensor, pos: int) -> tuple[Tensor, Tensor]:
    """``(G_pos, G_{pos+1})``: total gradients of the states carried into positions ``pos`` and
    ``pos + 1`` from the gathered ``P``, ``g_in``, ``g_out`` (R, ...) in scan order."""
    G = g_out.sum(0)
    G_next = G
    for j in range(g_in.shape[0] - 1, pos - 1, -1):
        if j == pos:
            G_next = G
        G = g_in[j] + P[j].conj() * G
    return G, G_next


def grad_anchor() -> Tensor | None:
    """A scalar leaf that requires grad while grad mode is on (else None), passed as an extra
    input to the collective autograd Functions.

    Their backward is a collective, so it must run on every rank or on none.  Autograd records a
    Function only if an input requires grad, which may differ between ranks (an empty chunk, a
    rank whose inputs happen to be constants); the anchor makes the recording depend on the grad
    mode alone, which all ranks share.
    """
    return torch.zeros((), requires_grad=True) if torch.is_grad_enabled() else None


class CarryIn(torch.autograd.Function):
    """``(H_pos, H_out) = CarryIn.apply(P, S, group, reverse, grad_anchor())``: the
    differentiable cross-rank prefix (module docstring).  ``P`` broadcastable to ``S``; both in
    the state dtype."""

    @staticmethod
    def forward(ctx, P: Tensor, S: Tensor, group, reverse: bool, anchor=None):
        pos, _ = position(group, reverse)
        g = all_gather(torch.stack([P.expand_as(S), S]), group, reverse)
        H_pos, H_out = carry_prefix(g[:, 0], g[:, 1], pos)
        ctx.save_for_backward(g[:, 0], H_pos)
        ctx.group, ctx.reverse, ctx.pos, ctx.p_shape = group, reverse, pos, P.shape
        return H_pos, H_out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_pos: Tensor, g_out: Tensor):
        Ps, H_pos = ctx.saved_tensors
        g = all_gather(torch.stack([g_pos, g_out]), ctx.group, ctx.reverse)
        _, G_next = grad_suffix(Ps, g[:, 0], g[:, 1], ctx.pos)
        gP = sum_to(G_next * H_pos.conj(), ctx.p_shape)
        return gP, G_next, None, None, None


def sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to ``shape`` (leading dims of size 1)."""
    dims = [i for i, (n, m) in enumerate(zip(shape, t.shape)) if n == 1 and m != 1]
    return t.sum(dims, keepdim=True) if dims else t
