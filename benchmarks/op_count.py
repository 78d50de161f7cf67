"""Aten ops dispatched by one training step of a layer: a proxy for GPU kernel launches.

    python benchmarks/op_count.py [SPEC ...] [--batch 2] [--length 64] [--d-model 32]
                                  [--wall] [--wall-batch 8] [--wall-length 1024]
                                  [--wall-d-model 256] [--repeats 5] [--verbose]

On a GPU these layers' training steps are bound by the CPU cost of launching kernels (~15-20 us
per PyTorch op at B=32, L=1024, d_model=256 on an H200), so the number of ops a step dispatches
is what to cut.  One step is ``y = layer(x); y.square().mean().backward()`` with the
parameters' and x's gradients set to None first (as after ``zero_grad(set_to_none=True)``: no
accumulation ``add_``).  Every aten op that reaches the dispatcher below autograd is counted
(:class:`torch.utils._python_dispatch.TorchDispatchMode`), except pure view / metadata ops and
unfilled allocations (:data:`VIEW_OPS`: ``view``, ``transpose``, ``empty``, ...), which launch
no kernel.  The count does not depend on the shape (checked by
``tests/test_op_count.py`` at two shapes), so a small CPU shape measures it.

``--wall`` also times the step on this CPU at a moderate size (median of ``--repeats``).

Default specs: ``s4d``, ``s5(d_state=256)``, ``rglru``, ``lru(d_state=256)``.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: aten ops that only make views or read metadata (no kernel on any device)
VIEW_OPS = frozenset({
    "view", "t", "transpose", "expand", "_unsafe_view", "as_strided", "detach", "alias",
    "squeeze", "unsqueeze", "permute", "select", "slice", "view_as_real", "view_as_complex",
    "_reshape_alias", "unflatten", "flatten", "reshape", "split", "chunk", "unbind", "_conj",
    "conj", "real", "imag", "lift_fresh", "resolve_conj", "resolve_neg", "expand_as", "narrow",
    "diagonal", "split_with_sizes", "unsafe_split", "unsafe_split_with_sizes", "movedim",
    "view_as", "numpy_T", "mT", "mH", "adjoint", "_neg_view", "_conj_physical_view",
    "promote_types", "result_type", "is_nonzero", "sym_size", "sym_stride", "sym_numel",
    "sym_storage_offset", "size", "stride", "dim", "is_same_size",
    "_has_compatible_shallow_copy_type",
    # allocations without a fill: no kernel either
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
})

DEFAULT_SPECS = ("s4d", "s5(d_state=256)", "rglru", "lru(d_state=256)")


class OpCounter(TorchDispatchMode):
    """Counts the aten ops (by overload packet name) dispatched inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in VIEW_OPS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def build(spec: str, d_model: int, seed: int = 0) -> torch.nn.Module:
    from lrnnx.build import build_layer

    torch.manual_seed(seed)
    return build_layer(spec, d_model=d_model)


def _zero(layer: torch.nn.Module, x: torch.Tensor) -> None:
    for p in layer.parameters():
        p.grad = None
    x.grad = None


def train_step(layer: torch.nn.Module, x: torch.Tensor) -> None:
    """One training step of the layer (gradients of x and parameters start from None)."""
    _zero(layer, x)
    y = layer(x)
    y.square().mean().backward()


def count_train_step(layer: torch.nn.Module, batch: int = 2, length: int = 64,
                     seed: int = 0) -> collections.Counter:
    """Per-op counts of one training step (after one uncounted warm-up step)."""
    d_model = layer.d_model
    g = torch.Generator().manual_seed(seed)
    p = next(layer.parameters())
    x = torch.randn(batch, length, d_model, generator=g, dtype=p.dtype).requires_grad_()
    train_step(layer, x)       # warm-up: first-use builds, lazy init, caches
    _zero(layer, x)
    with OpCounter() as counter:
        y = layer(x)
        y.square().mean().backward()
    return counter.counts


def count_spec(spec: str, batch: int = 2, length: int = 64, d_model: int = 32) -> collections.Counter:
    return count_train_step(build(spec, d_model), batch, length)


def wall_ms(spec: str, batch: int, length: int, d_model: int, repeats: int) -> float:
    layer = build(spec, d_model)
    x = torch.randn(batch, length, d_model).requires_grad_()
    train_step(layer, x)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        train_step(layer, x)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="*", default=list(DEFAULT_SPECS))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--verbose", action="store_true", help="print the counts per op")
    ap.add_argument("--wall", action="store_true", help="also time the step on this CPU")
    ap.add_argument("--wall-batch", type=int, default=8)
    ap.add_argument("--wall-length", type=int, default=1024)
    ap.add_argument("--wall-d-model", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    for spec in a.specs:
        c = count_spec(spec, a.batch, a.length, a.d_model)
        line = f"{spec:24s} ops/train step: {sum(c.values()):4d}"
        if a.wall:
            ms = wall_ms(spec, a.wall_batch, a.wall_length, a.wall_d_model, a.repeats)
            line += (f"   CPU wall (B={a.wall_batch}, L={a.wall_length}, "
                     f"d_model={a.wall_d_model}): {ms:8.1f} ms")
        print(line, flush=True)
        if a.verbose:
            print("    " + ", ".join(f"{k} {v}" for k, v in
                                    sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))))


if __name__ == "__main__":
    main()
