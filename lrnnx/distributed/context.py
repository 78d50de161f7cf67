"""Make existing layers context parallel: ``context_parallel(group)`` and ``ContextParallel``.

Inside ``with lrnnx.distributed.context_parallel(group):`` every call of
:func:`lrnnx.ops.diag_scan` and :func:`lrnnx.ops.selective_scan` (whatever its ``backend=``) runs
as :func:`~lrnnx.distributed.cp_diag_scan` / :func:`~lrnnx.distributed.cp_selective_scan` over
``group``, and :class:`CausalConv1d <lrnnx_plugins.common.causal_conv.CausalConv1d>` takes its
first K-1 inputs from the previous ranks (:mod:`lrnnx.distributed.halo`).  So every layer built on
the ops (``ssm``, ``s4d``, ``lru``, ``mamba``, ``hawk``, ``rglru``, ``s7``, ``mingru``, ...)
runs on a sequence chunk per rank unchanged.  Single steps (``diag_step`` / ``selective_step``,
decoding) stay local.

Mechanism: while at least one block is open the ops dispatcher's entry point
``lrnnx.ops.dispatch.call`` is wrapped (installed on entering the outermost block, restored on
leaving it); the wrapper keeps the original as ``.cp_original`` and the CP code calls that for
its local scans.  The state is process-wide (all threads), which is what a training process
needs; blocks nest (the innermost group wins).

Not context parallel (they do not run through the ops): softmax attention (``attn``), ``mamba2``
(its SSD kernel).  :class:`ContextParallel` refuses models containing them; a third-party layer
class can opt out the same way with the class attribute ``context_parallel = False``.  Packed
variable-length input (``cu_seqlens``) is rejected under CP.

Activation checkpointing recomputes the forward during backward, outside the ``with`` block:
give the recomputation the same context, e.g. ``torch.utils.checkpoint.checkpoint(fn, x,
use_reentrant=False, context_fn=lambda: (context_parallel(g), context_parallel(g)))``.
"""

from __future__ import annotations

import contextlib
import inspect
import threading

import torch
import torch.distributed as dist
from torch import nn

from ..errors import InputError
from ..ops import dispatch
from .combine import grad_anchor, resolve_group
from .context_parallel import diag_scan_cp, selective_scan_cp

__all__ = ["context_parallel", "active", "current_group", "ContextParallel", "shard_sequence",
           "gather_sequence", "NOT_CONTEXT_PARALLEL"]

#: registered layer name -> why it cannot run context parallel (checked by ContextParallel)
NOT_CONTEXT_PARALLEL = {
    "attn": "softmax attention mixes all positions (it needs ring attention, not a carried "
            "state) and does not run through lrnnx.ops",
    "mamba2": "its SSD kernel (lrnnx_plugins.mamba.ssd) does not run through lrnnx.ops",
}

_LOCK = threading.RLock()
_STACK: list = []  # process groups of the open context_parallel blocks, innermost last


def active() -> bool:
    """Whether a :func:`context_parallel` block is open (process-wide)."""
    return bool(_STACK)


def current_group():
    """The process group of the innermost open block, or None."""
    return _STACK[-1] if _STACK else None


# --------------------------------------------------------------------------- interception
def _diag_args(a, b, h0=None, reverse=False, cu_seqlens=None):
    return a, b, h0, reverse, cu_seqlens


def _cp_call(op, backend, problem, *args, **kwargs):
    """``lrnnx.ops.dispatch.call`` while a block is open: scans become context parallel."""
    group = current_group()
    if group is None or op not in ("diag_scan", "selective_scan"):
        return _cp_call.cp_original(op, backend, problem, *args, **kwargs)
    if op == "diag_scan":
        a, b, h0, reverse, cu = _diag_args(*args, **kwargs)
        if cu is not None:
            raise InputError("lrnnx.ops.diag_scan: cu_seqlens must be None under context "
                             "parallelism (packed variable-length batches cannot be split along "
                             "time), got a tensor; run packed batches without "
                             "lrnnx.distributed.context_parallel, or pad them to a batch.")
        return diag_scan_cp(a, b, h0, group, reverse, backend)
    bound = inspect.signature(selective_scan_cp).bind(*args, group=group, backend=backend,
                                                       **kwargs)
    return selective_scan_cp(*bound.args, **bound.kwargs)


_cp_call.cp_original = None


def _install() -> None:
    if dispatch.call is not _cp_call:
        _cp_call.cp_original = dispatch.call
        dispatch.call = _cp_call


def _uninstall() -> None:
    if dispatch.call is _cp_call:
        dispatch.call = _cp_call.cp_original


@contextlib.contextmanager
def context_parallel(group=None):
    """Run ``lrnnx.ops`` scans and causal convolutions context parallel over ``group``.

    Args:
        group: torch.distributed process group whose ranks hold consecutive chunks of the
            sequence (rank order = time order); None: the default group.

    Yields:
        the resolved group.

    Example::

        with lrnnx.distributed.context_parallel():
            y_r = layer(x_r)          # x_r: this rank's chunk (B, L_r, d_model)
        y_r.pow(2).mean().backward()  # backward needs no context (it keeps its group)
    """
    g = resolve_group(group, "lrnnx.distributed.context_parallel")
    with _LOCK:
        _install()
        _STACK.append(g)
    try:
        yield g
    finally:
        with _LOCK:
            _STACK.pop()
            if not _STACK:
                _uninstall()


# --------------------------------------------------------------------------- sharding helpers
def shard_sequence(x: torch.Tensor, group=None, dim: int = 1) -> torch.Tensor:
    """This rank's contiguous chunk of ``x`` along ``dim``: ``x.tensor_split(R, dim)[rank]``.

    Chunks differ by at most one token when R does not divide the length (the first ones are
    longer).  Every rank must pass the same full tensor.
    """
    g = resolve_group(group, "lrnnx.distributed.shard_sequence")
    return x.tensor_split(dist.get_world_size(g), dim=dim)[dist.get_rank(g)]


class _GatherSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim, anchor=None):
        R = dist.get_world_size(group)
        n = torch.tensor([x.shape[dim]], device=x.device)
        lens = [torch.empty_like(n) for _ in range(R)]
        dist.all_gather(lens, n, group=group)
        lens = [int(t) for t in lens]
        pad = max(lens) - x.shape[dim]
        xp = x.detach().movedim(dim, 0)
        xp = torch.cat([xp, xp.new_zeros(pad, *xp.shape[1:])]).contiguous()
        parts = [torch.empty_like(xp) for _ in range(R)]
        dist.all_gather(parts, xp, group=group)
        ctx.group, ctx.dim, ctx.lens = group, dim, lens
        ctx.rank = dist.get_rank(group)
        return torch.cat([p[:m] for p, m in zip(parts, lens)]).movedim(0, dim)

    @staticmethod
    def backward(ctx, g):
        # the full sequence is replicated on every rank: its gradient is the sum over ranks
        g = g.contiguous()
        dist.all_reduce(g, group=ctx.group)
        start = sum(ctx.lens[:ctx.rank])
        return g.narrow(ctx.dim, start, ctx.lens[ctx.rank]), None, None, None


def gather_sequence(x: torch.Tensor, group=None, dim: int = 1) -> torch.Tensor:
    """Concatenate every rank's chunk along ``dim`` (chunks may differ in length); the result is
    the same on every rank.  Differentiable (the gradient of the replicated result is summed
    over ranks)."""
    g = resolve_group(group, "lrnnx.distributed.gather_sequence")
    return _GatherSeq.apply(x, g, dim, grad_anchor())


# --------------------------------------------------------------------------- wrapper
def _unsupported(module: nn.Module) -> list[str]:
    from ..registry.interfaces import Layer

    out = []
    for path, m in module.named_modules():
        cls = type(m)
        name = getattr(cls, "name", None)
        why = NOT_CONTEXT_PARALLEL.get(name) if isinstance(m, Layer) else None
        if why is None and getattr(cls, "context_parallel", None) is False:
            why = f"{cls.__name__}.context_parallel is False"
        if why is not None:
            out.append(f"{path or '<root>'} ({name or cls.__name__}): {why}")
    return out


class ContextParallel(nn.Module):
    """Run ``module`` context parallel over ``group``: ``forward`` takes this rank's chunk.

    ``ContextParallel(model, group)(x_r, ...)`` checks that every rank holds a non-empty chunk of
    the same batch (sequence along dim 1 of ``x_r``: (B, L_r, ...) or token ids (B, L_r)), then
    runs ``model(x_r, ...)`` inside :func:`context_parallel`.  Outputs are this rank's chunk;
    returned recurrent states are the global final ones.  Chunks may differ in length.

    Parameters stay replicated: after ``backward`` each rank holds its partial gradients; call
    :meth:`sync_gradients` (all-reduce SUM over ``group``) before the optimizer step, or let
    DDP over the same ranks average them and scale the loss by the group size.

    Raises:
        InputError: at construction, if ``module`` contains a layer that cannot run context
            parallel (``NOT_CONTEXT_PARALLEL``, or a class with ``context_parallel = False``);
            at call, on every rank alike, if a chunk is empty or the batch sizes differ.

    Example::

        cp = ContextParallel(lrnnx.build_model("mamba*4", d_model=256), group)
        logits_r = cp(shard_sequence(ids, group))
        loss_r.backward(); cp.sync_gradients(); opt.step()
    """

    def __init__(self, module: nn.Module, group=None):
        super().__init__()
        bad = _unsupported(module)
        if bad:
            raise InputError("lrnnx.distributed.ContextParallel: the module must contain only "
                             "layers whose sequence mixing runs through lrnnx.ops or "
                             "CausalConv1d, got " + "; ".join(bad) + "; use data parallelism "
                             "for such models, or replace those layers.")
        self.module = module
        self.group = resolve_group(group, "lrnnx.distributed.ContextParallel")

    def _check_chunks(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise InputError(f"lrnnx.distributed.ContextParallel: the first input must be a "
                             f"tensor (B, L_r, ...) with the sequence along dim 1, got "
                             f"{getattr(x, 'shape', type(x).__name__)}; pass this rank's chunk.")
        R = dist.get_world_size(self.group)
        mine = torch.tensor([x.shape[0], x.shape[1]], device=x.device)
        all_ = [torch.empty_like(mine) for _ in range(R)]
        dist.all_gather(all_, mine, group=self.group)
        shapes = [tuple(int(v) for v in t) for t in all_]
        if len({s[0] for s in shapes}) != 1 or any(s[1] == 0 for s in shapes):
            raise InputError(f"lrnnx.distributed.ContextParallel: every rank must hold a "
                             f"non-empty chunk of the same batch (B, L_r >= 1), got (B, L_r) "
                             f"per rank {shapes}; split the sequence with shard_sequence(x, "
                             f"group) and use at most L ranks.")

    def forward(self, x, *args, **kwargs):
        if kwargs.get("cu_seqlens") is not None:
            raise InputError("lrnnx.distributed.ContextParallel: cu_seqlens must be None "
                             "(packed variable-length batches cannot be split along time), got "
                             "a tensor; pad the sequences to a batch, or run without context "
                             "parallelism.")
        self._check_chunks(x)
        with context_parallel(self.group):
            return self.module(x, *args, **kwargs)

    @torch.no_grad()
    def sync_gradients(self) -> None:
        """All-reduce (SUM) the partial gradients of the replicated parameters over the group."""
        for p in self.module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, group=self.group)
