"""``lrnnx.distributed``: context parallelism (sequence split across ranks) for linear RNNs.

A sequence too long for one device is split along time over the ranks of a torch.distributed
process group (NCCL on GPUs, gloo on CPU); each rank runs its chunk and the ranks exchange one
state per scan (see :mod:`.combine` for the math, ``docs/distributed.md`` for a guide).

Public API:

* :func:`cp_diag_scan` ``(a, b, h0=None, group=None, *, reverse=False, backend="auto")`` ->
  ``(h_local, h_last_global)`` and :func:`cp_selective_scan` ``(u, delta, A, B, C, D=None,
  z=None, delta_bias=None, delta_softplus=False, discretization="mamba", timesteps=None,
  group=None, *, h0=None, return_last_state=False, backend="auto")``: differentiable.
* :func:`context_parallel` ``(group=None)``: context manager under which ``lrnnx.ops.diag_scan`` /
  ``selective_scan`` and ``CausalConv1d`` run context parallel, so layers work unchanged;
  :func:`active`, :func:`current_group`.
* :class:`ContextParallel` ``(module, group=None)``: module wrapper (checks the chunks, refuses
  layers that cannot run CP, ``sync_gradients()``).
* :func:`shard_sequence`, :func:`gather_sequence`: split / reassemble along the sequence dim.
* :func:`exchange_halo`: the causal convolution's halo exchange.

Example (one process per rank, e.g. ``torchrun --nproc_per_node 4 train.py``)::

    import torch, lrnnx
    from lrnnx.distributed import ContextParallel, shard_sequence
    torch.distributed.init_process_group("nccl")
    model = ContextParallel(lrnnx.build_model("mamba*4", d_model=256).cuda())
    y_r = model(shard_sequence(x))            # this rank's chunk of the output
"""

from .combine import CarryIn
from .context import (
    NOT_CONTEXT_PARALLEL,
    ContextParallel,
    active,
    context_parallel,
    current_group,
    gather_sequence,
    shard_sequence,
)
from .context_parallel import cp_diag_scan, cp_selective_scan
from .halo import exchange_halo

__all__ = [
    "cp_diag_scan", "cp_selective_scan", "context_parallel", "active", "current_group",
    "ContextParallel", "shard_sequence", "gather_sequence", "exchange_halo", "CarryIn",
    "NOT_CONTEXT_PARALLEL",
]
