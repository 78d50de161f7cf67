r"""Context-parallel scans: ``cp_diag_scan`` and ``cp_selective_scan`` over a process group.

Context parallelism (CP) splits one long sequence along time over the R ranks of a process group:
rank r holds tokens ``[t_r, t_{r+1})`` (its *chunk*; lengths may differ between ranks).  Every
rank scans its chunk from a zero state, the ranks exchange one state-sized pair each
(:mod:`lrnnx.distributed.combine`: chunk transition ``P = prod a`` and final state ``S``,
all-gather, prefix over ranks) and each rank corrects its chunk with the state ``H_in`` carried
in from the ranks before it:

.. math::  h_t = h^{(0)}_t + \Big(\prod_{s \le t} a_s\Big) H_{in}   \qquad
           \text{(diag)}

.. math::  y_t \mathrel{+}= \operatorname{Re}\Big(C_t \cdot \big(\textstyle\prod_{s\le t}
           \bar A_s\big) H_{in}\Big) \cdot \operatorname{silu}(z_t)   \qquad \text{(selective)}

Backward mirrors it: each rank's gradient w.r.t. ``H_in`` travels to the earlier ranks through
one all-gather of ``(P, dL/dH_in)`` and a suffix over ranks in reverse order.  Per rank and call:
one local scan plus an elementwise correction (diag) or two local scans (selective), forward and
backward alike, over its own chunk only; communication is one all-gather of 2 x state per rank
forward and one backward, independent of L.  Linear recurrences are exactly
associative, so the result equals the single-process scan up to rounding (Martin & Cundy 2018,
https://arxiv.org/abs/1709.04057, on scanning linear recurrences in parallel).

Conventions (also for the layers run under :func:`lrnnx.distributed.context_parallel`):

* ``h0`` is the state before the global first token; it is read on the first rank in scan
  order (rank 0; the last rank for ``reverse=True``) and ignored elsewhere.
* the returned final state is the *global* one (after the last token of the last rank), the
  same on every rank; its gradient is the sum of what every rank puts on it.
* gradients of tensors every rank passes in full (``A``, ``D``, ``delta_bias``, layer weights)
  are per-rank partial sums: all-reduce (SUM) them over the group, e.g. with
  :meth:`lrnnx.distributed.ContextParallel.sync_gradients`; sharded tensors get full gradients.
* every rank must call the same ops in the same order, and must run backward through them
  (collectives); a rank whose loss ignores its outputs would leave the others waiting.

Example (each of R processes)::

    torch.distributed.init_process_group("gloo")          # or "nccl"
    a_r, b_r = a.tensor_split(R, dim=1)[rank], b.tensor_split(R, dim=1)[rank]
    h_r, h_last = lrnnx.distributed.cp_diag_scan(a_r, b_r)   # h_r = h[:, chunk of rank]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from ..ops import dispatch
from ..ops.validation import check_diag, check_selective
from .combine import CarryIn, all_gather, carry_prefix, grad_anchor, grad_suffix, position, \
    resolve_group, sum_to

__all__ = ["cp_diag_scan", "cp_selective_scan", "diag_scan_cp", "selective_scan_cp",
           "chunk_transition", "SUB_CHUNK"]

#: tokens per sub-chunk when a per-token product is formed (bounds the transient memory of the
#: state correction to (B, SUB_CHUNK, D) and of the bilinear transition to (B, SUB_CHUNK, D, N))
SUB_CHUNK = 256


# --------------------------------------------------------------------------- local ops
def local_call(op: str, backend: str, problem: dict, *args, **kwargs):
    """Run ``op`` on this rank only, through the ops dispatcher (never the CP interceptor)."""
    call = getattr(dispatch.call, "cp_original", dispatch.call)
    return call(op, backend, problem, *args, **kwargs)


def _local_diag(a, b, h0, reverse, backend):
    problem = check_diag("diag_scan", a, b, h0, step=False, reverse=reverse)
    return local_call("diag_scan", backend, problem, a, b, h0, reverse=reverse, cu_seqlens=None)


def _local_selective(backend, u, delta, A, B, C, **kw):
    from lrnnx_kernels.discretize import METHODS

    problem = check_selective("selective_scan", step=False, u=u, delta=delta, A=A, B=B, C=C,
                              D=kw["D"], z=kw["z"], delta_bias=kw["delta_bias"],
                              delta_softplus=kw["delta_softplus"],
                              discretization_=kw["discretization"], timesteps=kw["timesteps"],
                              h0=kw["h0"], methods=METHODS,
                              return_last_state=kw["return_last_state"])
    return local_call("selective_scan", backend, problem, u, delta, A, B, C, **kw)


def add_carry(h: Tensor, a: Tensor, H: Tensor, reverse: bool = False) -> None:
    """In place: ``h_t += (prod_{s<=t} a_s) H`` (``reverse``: ``prod_{s>=t}``), sub-chunked.

    h (B, L, D); a (B or 1, L, D); H (B, D).  The running product is carried between sub-chunks,
    so no (B, L, D) temporary is formed beyond ``SUB_CHUNK`` tokens.
    """
    L = h.shape[1]
    run = H
    starts = range(0, L, SUB_CHUNK)
    for t0 in (reversed(starts) if reverse else starts):
        seg = a[:, t0:t0 + SUB_CHUNK]
        if reverse:
            c = seg.flip(1).cumprod(1).flip(1) * run[:, None]
            run = c[:, 0]
        else:
            c = seg.cumprod(1) * run[:, None]
            run = c[:, -1]
        h[:, t0:t0 + SUB_CHUNK] += c


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The state dtype of ``diag_scan``: at least fp32 (complex64)."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if dtype == torch.complex32:
        return torch.complex64
    return dtype


# --------------------------------------------------------------------------- diag_scan
class _DiagScanCP(torch.autograd.Function):
    """Forward-direction CP scan on compute-dtype inputs; ``rev_ranks`` orders ranks backwards
    (a reverse scan is run as a forward scan of the time-flipped chunks)."""

    @staticmethod
    def forward(ctx, a, b, h0, group, rev_ranks: bool, backend: str, anchor=None):
        pos, _ = position(group, rev_ranks)
        first = pos == 0
        h, S = _local_diag(a, b, h0 if first else None, False, backend)
        P = a.prod(1)  # chunk transition (1 or B, D); 1 for an empty chunk
        g = all_gather(torch.stack([P.expand_as(S), S]), group, rev_ranks)
        H_in, H_out = carry_prefix(g[:, 0], g[:, 1], pos)
        if not first:
            add_carry(h, a, H_in)
        start = h0 if (first and h0 is not None) else H_in  # the state before token 0
        ctx.save_for_backward(a, h, start, g[:, 0])
        ctx.group, ctx.rev_ranks, ctx.backend, ctx.pos = group, rev_ranks, backend, pos
        ctx.grad_h0 = first and h0 is not None
        return h, H_out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_h, g_out):
        a, h, start, Ps = ctx.saved_tensors
        B, L, D = h.shape
        ac = a.conj()
        if L:
            # adjoint d_t = g_t + conj(a_{t+1}) d_{t+1}: a reverse scan of g with a shifted by one
            # (the 1 appended at the end lets the carried-in gradient enter d_{L-1} unscaled)
            a_sh = torch.cat([ac[:, 1:], torch.ones_like(ac[:, :1])], 1)
            d, _ = _local_diag(a_sh, g_h, None, True, ctx.backend)
            g_loc = (ac[:, 0] * d[:, 0]).expand(B, D)
        else:
            g_loc = g_h.new_zeros(B, D)
        gg = all_gather(torch.stack([g_loc, g_out]), ctx.group, ctx.rev_ranks)
        G_pos, G_next = grad_suffix(Ps, gg[:, 0], gg[:, 1], ctx.pos)
        if L:
            add_carry(d, a_sh, G_next, reverse=True)
            h_prev = torch.cat([start[:, None].expand(B, 1, D), h[:, :-1]], 1)
            g_a = sum_to(d * h_prev.conj(), a.shape)
            g_b = d
        else:
            g_a, g_b = torch.zeros_like(a), torch.zeros_like(h)
        return g_a, g_b, (G_pos if ctx.grad_h0 else None), None, None, None, None


def diag_scan_cp(a: Tensor, b: Tensor, h0: Tensor | None, group, reverse: bool = False,
                 backend: str = "auto") -> tuple[Tensor, Tensor]:
    """:func:`cp_diag_scan` on validated inputs and a resolved group (used by the interceptor)."""
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    cdt = _compute_dtype(out_dtype)
    a_c, b_c = a.to(cdt), b.to(cdt)
    h0_c = None if h0 is None else h0.to(cdt)
    if reverse:
        a_c, b_c = a_c.flip(1), b_c.flip(1)
    h, h_last = _DiagScanCP.apply(a_c, b_c, h0_c, group, reverse, backend, grad_anchor())
    if reverse:
        h = h.flip(1)
    return h.to(out_dtype), h_last.to(out_dtype)


def cp_diag_scan(a: Tensor, b: Tensor, h0: Tensor | None = None, group=None, *,
                 reverse: bool = False, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Context-parallel ``h_t = a_t * h_{t-1} + b_t`` over the ranks of ``group``.

    Args:
        a: this rank's decays (B, L_r, D) or (1, L_r, D); real or complex.
        b: this rank's inputs (B, L_r, D).  Chunks are contiguous in rank order; L_r may differ
            between ranks (0 included); B and D may not.
        h0: (B, D) state before the global first token, read on the first rank (rank 0, or the
            last rank with ``reverse``); None means zeros.
        group: a torch.distributed process group (None: the default group).
        reverse: anti-causal scan ``h_t = a_t h_{t+1} + b_t`` (the carry flows from the last rank
            to the first).
        backend: scan backend of the local scans (as in :func:`lrnnx.ops.diag_scan`).

    Returns:
        ``(h_local, h_last_global)``: the states of this rank's tokens (B, L_r, D), and the state
        after the global last token in scan order (B, D), the same on every rank.  Dtypes as
        :func:`lrnnx.ops.diag_scan`.  Differentiable in ``a``, ``b``, ``h0`` (module docstring
        for the gradient conventions).

    Example::

        h_r, h_last = cp_diag_scan(a_r, b_r, group=torch.distributed.group.WORLD)
    """
    check_diag("diag_scan (context parallel)", a, b, h0, step=False, reverse=reverse)
    group = resolve_group(group, "lrnnx.distributed.cp_diag_scan")
    return diag_scan_cp(a, b, h0, group, reverse, backend)


# --------------------------------------------------------------------------- selective_scan
def _real_dtype(*tensors: Tensor | None) -> torch.dtype:
    """fp64 if any input is double precision, else fp32 (the selective scan's compute dtype)."""
    wide = (torch.float64, torch.complex128)
    return torch.float64 if any(t is not None and t.dtype in wide for t in tensors) \
        else torch.float32


def _bilinear_prod(dt: Tensor, A: Tensor) -> Tensor:
    from lrnnx_kernels.discretize import discretize

    return discretize("bilinear", A, dt.unsqueeze(-1))[0].prod(1)


def chunk_transition(A: Tensor, delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool,
                     timesteps: Tensor | None, method: str, rdt: torch.dtype) -> Tensor:
    """``prod_t A_bar_t`` over this rank's chunk, (Bt, Dm, N), differentiable.

    For the exponential methods (zoh, mamba, euler, dirac: ``A_bar = exp(dt A)``) the product is
    ``exp(A * sum_t dt_t)``: no (Bt, L, Dm, N) tensor at all.  Bilinear has no closed form: the
    product runs over sub-chunks of ``SUB_CHUNK`` tokens, each recomputed in backward
    (checkpoint), so at most (Bt, SUB_CHUNK, Dm, N) is alive at once.
    """
    from lrnnx_kernels.discretize import effective_dt

    dt = delta.to(rdt)
    if delta_bias is not None:
        dt = dt + delta_bias.to(rdt)
    if delta_softplus:
        dt = F.softplus(dt)  # the formula of the scan kernels (lrnnx_kernels.selective_scan)
    dt = effective_dt(dt, None if timesteps is None else timesteps.to(rdt))
    A = A.to(torch.complex128 if rdt == torch.float64 else torch.complex64) if A.is_complex() \
        else A.to(rdt)
    if method != "bilinear":
        return torch.exp(dt.sum(1).unsqueeze(-1) * A)
    P = None
    grad = torch.is_grad_enabled() and (dt.requires_grad or A.requires_grad)
    for t0 in range(0, dt.shape[1], SUB_CHUNK):
        seg = dt[:, t0:t0 + SUB_CHUNK]
        p = checkpoint(_bilinear_prod, seg, A, use_reentrant=False) if grad \
            else _bilinear_prod(seg, A)
        P = p if P is None else P * p
    if P is None:  # empty chunk
        P = torch.ones(dt.shape[0], *A.shape, dtype=A.dtype, device=A.device)
    return P


def selective_scan_cp(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      discretization="mamba", timesteps=None, h0=None, return_last_state=False,
                      *, group, backend="auto"):
    """:func:`cp_selective_scan` on validated inputs and a resolved group."""
    pos, _ = position(group)
    first = pos == 0
    common = dict(delta_bias=delta_bias, delta_softplus=delta_softplus,
                  discretization=discretization, timesteps=timesteps)
    # 1. local scan from zero (the first rank from h0), with D and the gate z
    y_loc, S = _local_selective(backend, u, delta, A, B, C, D=D, z=z, h0=h0 if first else None,
                                return_last_state=True, **common)
    # 2. chunk transitions + final states of all ranks -> the carried-in state
    rdt = _real_dtype(u, delta, A, B, C, h0)
    P = chunk_transition(A, delta, delta_bias, delta_softplus, timesteps, discretization, rdt)
    H_in, H_out = CarryIn.apply(P.to(S.dtype), S, group, False, grad_anchor())
    # 3. correction Re(C_t . (prod_{s<=t} A_bar_s) H_in): the same scan with zero input started
    # from H_in (the backend runs it chunked, never holding (Bt, L, Dm, N)).  Computed on the
    # first rank too (H_in = 0 there) so that every rank's backward reaches the collective.
    zero_u = torch.zeros(u.shape, dtype=rdt, device=u.device)
    y_c = _local_selective(backend, zero_u, delta, A, B.detach(), C, D=None, z=None, h0=H_in,
                           return_last_state=False, **common)
    if z is not None:  # y = (y_pre + D u) silu(z): the correction is gated like the rest
        y_c = y_c * F.silu(z.to(rdt))
    y = (y_loc.to(rdt) + y_c).to(u.dtype)
    return (y, H_out) if return_last_state else y


def cp_selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                      D: Tensor | None = None, z: Tensor | None = None,
                      delta_bias: Tensor | None = None, delta_softplus: bool = False,
                      discretization: str = "mamba", timesteps: Tensor | None = None,
                      group=None, *, h0: Tensor | None = None, return_last_state: bool = False,
                      backend: str = "auto"):
    """Context-parallel :func:`lrnnx.ops.selective_scan` (Mamba's S6) over ``group``.

    Args:
        u, delta, z: this rank's chunk (Bt, L_r, Dm); B, C: (Bt, L_r, [G,] N); timesteps
            (Bt, L_r).  A (Dm, N), D, delta_bias (Dm,): the same on every rank.  L_r may differ
            between ranks.  Other arguments as :func:`lrnnx.ops.selective_scan`.
        group: process group (None: the default group).
        h0: (Bt, Dm, N) state before the global first token, read on rank 0.
        return_last_state: also return the global final state (Bt, Dm, N), same on every rank.
        backend: scan backend of the local scans.

    Returns:
        ``y`` (Bt, L_r, Dm) for this rank's tokens, or ``(y, h_last_global)``.  Differentiable in
        every tensor (gradients of A, D, delta_bias are per-rank partial sums).

    Cost per rank: two local selective scans (the chunk from zero, and the carry correction
    with zero input) plus the chunk transition; communication two all-gathers of
    2 x (Bt, Dm, N).

    Example::

        y_r = cp_selective_scan(u_r, dt_r, A, B_r, C_r, D=D, z=z_r, delta_softplus=True)
    """
    from lrnnx_kernels.discretize import METHODS

    check_selective("selective_scan (context parallel)", step=False, u=u, delta=delta, A=A, B=B,
                    C=C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                    discretization_=discretization, timesteps=timesteps, h0=h0, methods=METHODS,
                    return_last_state=return_last_state)
    group = resolve_group(group, "lrnnx.distributed.cp_selective_scan")
    return selective_scan_cp(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                             discretization, timesteps, h0, return_last_state, group=group,
                             backend=backend)
