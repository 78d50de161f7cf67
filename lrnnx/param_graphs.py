"""CUDA-graph replay of a layer's parameter-only computations (forward and backward).

An LTI layer's convolution kernel (S4D: ``K = Re(sum_n C B_bar A_bar^l)``) or its discrete
matrices (S5, LRU: ``A_bar``, ``B_bar``, ``C``) depend on the parameters only, never on the
input.  In a training step they are dozens of small kernels forward and backward whose cost at
the benchmark sizes is the host's, not the GPU's (each eager op costs 10-40 us of CPU on the
H200 host; the whole kernel generation of s4d runs in a few us of GPU time).  On CUDA this module
records that computation once per (layer, shape) as two CUDA graphs, one for the forward and one
for its backward, and replays them: one launch each way instead of ~40 ops.

What is replayed is exactly the eager computation (same kernels, same order), so results are
bit-identical to eager; ``tests/gpu/test_param_graphs_gpu.py`` checks that, forward and
gradients, for every layer that uses it.

Used only when all of these hold, else the eager computation runs (the slow twin):

- every tensor involved is a plain CUDA tensor or ``nn.Parameter`` (no subclasses: DTensor,
  functorch wrappers), at least one requires grad, and grad mode is on;
- not under ``torch.compile`` (inductor fuses these ops itself), not inside a CUDA graph the
  caller is capturing, not in inference mode, not with anomaly detection on;
- ``LRNNX_PARAM_GRAPHS`` is not ``0`` / ``off`` (read at each call; for A/B measurements).

Safety:

- outputs and gradients are copies, never the graphs' static buffers, so a second forward
  (gradient accumulation, two losses) cannot overwrite a tensor autograd or the caller holds;
- the backward graph reuses the memory of the forward's intermediates once it has consumed them
  (one private pool, as in eager), so a backward that is not the first since the last forward
  replay (two forwards, then one backward through both) replays the forward again first;
- the parameters are saved for backward, so an in-place change between forward and backward
  (an optimizer step) raises autograd's usual "modified by an inplace operation" error, as eager
  does; with unchanged parameters every replay computes the same intermediates, so the backward
  of an earlier forward is still correct;
- double backward (``create_graph=True``) recomputes the eager graph and differentiates it;
- parameters replaced rather than updated in place (``.to()``, ``load_state_dict(assign=True)``,
  ``torch.func.functional_call``) change the key (data pointers), so a new pair is captured;
  after :data:`MAX_CAPTURES` captures per layer the layer stops graphing (logged once), so a
  workload that changes them every step does not pay a capture per step;
- a failed capture (an op that cannot be captured) disables graphing for that layer, logged
  once with the reason, and the step runs eagerly;
- nothing is captured inside a backward pass (the recomputation of activation checkpointing):
  a recomputation replays an existing pair (non-reentrant checkpointing needs the same saved
  tensors as the original forward) or runs eagerly;
- the warm-up and capture run under identity saved-tensor hooks, so an enclosing hook
  (non-reentrant checkpointing, ``torch.autograd.graph.save_on_cpu``) sees only the replay's
  saved tensors, never the capture's (checkpointing counted those, and its recomputation,
  which replays, then saved fewer tensors than the forward: "A different number of tensors
  was saved"), and never runs inside a capture;
- the cache is not copied by ``copy.deepcopy`` and not pickled (``torch.save(model)``);
- captures run with Python's garbage collector paused and in ``thread_local`` capture mode:
  a graph destroyed mid-capture (a collected layer's) or a CUDA call from another thread (a
  DataLoader's pin-memory thread) would otherwise invalidate the capture, and a failed capture
  leaves torch's CUDA generator marked as capturing (``torch.manual_seed`` then raises "Offset
  increment outside graph capture");
- graphs of dropped entries (evicted, disabled, or of a collected layer) are destroyed later, at
  the next call that is not inside a capture: destroying a graph while any stream captures
  invalidates that capture (possibly the caller's own).
"""

from __future__ import annotations

import gc
import logging
import os
from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import Tensor

logger = logging.getLogger("lrnnx.param_graphs")

#: captures per layer (all shapes together) after which the layer stops graphing
MAX_CAPTURES = 8
#: graph pairs kept per layer (least recently used dropped first)
MAX_ENTRIES = 4
#: eager runs (on a side stream) before a capture: cuFFT plans, Triton compilation, allocator
WARMUP = 2


#: dropped entries whose graphs are destroyed at the next call outside a capture
_GRAVEYARD: list = []


def _bury(entries) -> None:
    _GRAVEYARD.extend(entries)


def _flush_graveyard() -> None:
    if _GRAVEYARD and not (torch.cuda.is_available()
                           and torch.cuda.is_current_stream_capturing()):
        _GRAVEYARD.clear()


def _same(t):
    return t


def _in_backward() -> bool:
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


def enabled() -> bool:
    """Whether graphing is allowed at all (``LRNNX_PARAM_GRAPHS`` not 0 / off / false)."""
    return os.environ.get("LRNNX_PARAM_GRAPHS", "1").lower() not in ("0", "off", "false", "no")


def _plain_cuda(t: Tensor) -> bool:
    if type(t) not in (Tensor, torch.nn.Parameter) or not t.is_cuda:
        return False
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return not (is_wrapped is not None and is_wrapped(t))


def eligible(tensors: Sequence[Tensor]) -> bool:
    """Whether a computation reading ``tensors`` (and nothing else) may be graphed now."""
    if not tensors or not enabled() or not torch.is_grad_enabled():
        return False
    if torch.compiler.is_compiling() or torch.is_inference_mode_enabled() \
            or torch.is_anomaly_enabled():
        return False
    if not all(_plain_cuda(t) for t in tensors) or not any(t.requires_grad for t in tensors):
        return False
    dev = torch.cuda.current_device()  # graphs are captured and replayed on the current device
    if any(t.device.index != dev for t in tensors):
        return False
    return not torch.cuda.is_current_stream_capturing()


class _Entry:
    """One captured (forward, backward) pair and its static buffers."""

    def __init__(self, fn: Callable[[], Sequence[Tensor]], tensors: Sequence[Tensor]):
        self.fn = fn
        self.grad_inputs = [t for t in tensors if t.requires_grad]
        self.grad_index = [i for i, t in enumerate(tensors) if t.requires_grad]
        self.n_inputs = len(tensors)
        self.pool = torch.cuda.graph_pool_handle()
        self.fwd = torch.cuda.CUDAGraph()
        self.bwd = torch.cuda.CUDAGraph()
        # The warm-up and capture run under identity saved-tensor hooks: an enclosing
        # hook (non-reentrant activation checkpointing, torch.autograd.graph.save_on_cpu) must
        # see only what the replay saves, the same in the forward and in checkpointing's
        # recomputation (which replays this pair), and must not act inside the capture.
        with torch.autograd.graph.saved_tensors_hooks(_same, _same):
            self._warm_up_and_capture()
        self.fresh = False  # the capture ran the backward: the intermediates are spent

    def _warm_up_and_capture(self) -> None:
        # eager warm-up on a side stream, as torch.cuda.make_graphed_callables does
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                outs = self._call()
                diff = [o for o in outs if o.requires_grad]
                torch.autograd.grad(diff, self.grad_inputs,
                                    [torch.ones_like(o) for o in diff], allow_unused=True)
                del outs, diff
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        gc_was_enabled = gc.isenabled()
        gc.disable()  # no graph destroyed by a collection mid-capture
        try:
            with torch.cuda.graph(self.fwd, pool=self.pool, capture_error_mode="thread_local"):
                outs = self._call()
            self.outs = outs
            self.diff = [i for i, o in enumerate(outs) if o.requires_grad]
            with torch.cuda.graph(self.bwd, pool=self.pool, capture_error_mode="thread_local"):
                self.gouts = [torch.empty_like(outs[i]) for i in self.diff]
                self.grads = torch.autograd.grad([outs[i] for i in self.diff],
                                                 self.grad_inputs, self.gouts,
                                                 allow_unused=True)
        finally:
            if gc_was_enabled:
                gc.enable()
        torch.cuda.synchronize()

    def _call(self) -> tuple[Tensor, ...]:
        outs = self.fn()
        outs = (outs,) if isinstance(outs, Tensor) else tuple(outs)
        if not all(isinstance(o, Tensor) for o in outs):
            raise TypeError("a graphed parameter function must return tensors")
        return outs


class _Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, entry: _Entry, *tensors: Tensor):
        entry.fwd.replay()
        entry.fresh = True
        ctx.entry = entry
        ctx.save_for_backward(*tensors)  # in-place changes before backward raise, as in eager
        outs = tuple(o.clone() for o in entry.outs)
        ctx.mark_non_differentiable(*(o for i, o in enumerate(outs) if i not in entry.diff))
        return outs

    @staticmethod
    def backward(ctx, *gouts: Tensor | None):
        entry: _Entry = ctx.entry
        ctx.saved_tensors  # unpacking raises if a parameter was changed in place since forward
        if torch.is_grad_enabled():
            # create_graph: differentiate the eager computation (the graphs have no history)
            with torch.enable_grad():
                outs = entry._call()
            pairs = [(outs[i], gouts[i]) for i in entry.diff if gouts[i] is not None]
            grads = torch.autograd.grad([o for o, _ in pairs], entry.grad_inputs,
                                        [g for _, g in pairs], create_graph=True,
                                        allow_unused=True) if pairs else \
                [None] * len(entry.grad_inputs)
        else:
            if not entry.fresh:
                # an earlier backward replay reused the intermediates' memory: recompute them
                # (the saved-tensor check above guarantees the same parameter values).  Before
                # filling the gradient buffers: they may share memory with the forward's
                # temporaries (one pool), which this replay overwrites
                entry.fwd.replay()
            for buf, i in zip(entry.gouts, entry.diff):
                if gouts[i] is None:
                    buf.zero_()
                else:
                    buf.copy_(gouts[i])
            entry.bwd.replay()
            entry.fresh = False
            grads = [None if g is None else g.clone() for g in entry.grads]
        full: list[Tensor | None] = [None] * entry.n_inputs
        for i, g in zip(entry.grad_index, grads):
            full[i] = g
        return (None, *full)


class ParamGraphs:
    """Per-layer cache of graphed parameter computations (an attribute of the layer).

    ``run(key, fn, tensors)`` returns ``fn()``'s outputs (a tuple of tensors).  ``fn`` must
    read no tensor other than ``tensors`` (the layer's parameters and buffers it uses) and
    nothing that changes between calls with the same ``key`` (shapes, options); the key is
    extended with the tensors' data pointers, shapes, dtypes and requires_grad flags.
    """

    def __init__(self, owner: str):
        self.owner = owner
        self.entries: OrderedDict = OrderedDict()
        self.captures = 0
        self.disabled: str | None = None

    def __del__(self):
        try:
            if self.entries:  # destroyed later, outside any capture (see _flush_graveyard)
                _bury(self.entries.values())
        except Exception:  # noqa: BLE001 - interpreter shutdown: module globals already gone
            pass

    # not copied (copy.deepcopy of a layer, EMA models) and not pickled (torch.save(model))
    def __deepcopy__(self, memo):
        return ParamGraphs(self.owner)

    def __reduce__(self):
        return (ParamGraphs, (self.owner,))

    def run(self, key, fn: Callable[[], Sequence[Tensor]],
            tensors: Sequence[Tensor]) -> tuple[Tensor, ...]:
        tensors = list(tensors)
        _flush_graveyard()
        if self.disabled is not None or not eligible(tensors):
            outs = fn()
            return (outs,) if isinstance(outs, Tensor) else tuple(outs)
        full_key = (key, torch.cuda.current_device(), torch.is_autocast_enabled("cuda"),
                    tuple((t.data_ptr(), tuple(t.shape), t.dtype, t.requires_grad)
                          for t in tensors))
        entry = self.entries.get(full_key)
        if entry is None and _in_backward():
            # a recomputation inside a backward pass (activation checkpointing) with nothing
            # captured yet: no capture while the autograd engine runs, eager ops instead
            outs = fn()
            return (outs,) if isinstance(outs, Tensor) else tuple(outs)
        if entry is None:
            entry = self._capture(fn, tensors)
            if entry is None:
                outs = fn()
                return (outs,) if isinstance(outs, Tensor) else tuple(outs)
            self.entries[full_key] = entry
            while len(self.entries) > MAX_ENTRIES:
                _bury([self.entries.popitem(last=False)[1]])
        else:
            self.entries.move_to_end(full_key)
        return _Replay.apply(entry, *tensors)

    def _capture(self, fn, tensors) -> _Entry | None:
        if self.captures >= MAX_CAPTURES:
            self._disable(f"{self.captures} captures (its parameters or shapes keep changing)")
            return None
        self.captures += 1
        try:
            return _Entry(fn, tensors)
        except Exception as exc:  # noqa: BLE001 - any capture failure falls back to eager
            self._disable(f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            return None

    def _disable(self, why: str) -> None:
        self.disabled = why
        _bury(self.entries.values())
        self.entries.clear()
        logger.info("lrnnx: layer %s runs its parameter computations eagerly from now on: %s",
                    self.owner, why)
