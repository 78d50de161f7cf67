"""Timing primitives of :mod:`lrnnx.bench`: medians of repeated calls after warm-up.

* :func:`measure` times ``fn(copy)`` -- CUDA events around each call on a GPU (one host sync at
  the end, so launches queue as in training), ``time.perf_counter`` on a CPU -- and returns the
  median of the repeats after warm-up (a few calls, then ~25 ms of queued calls: ``warmup_ms``).  The calls rotate among several input copies
  (:func:`n_copies`) so that a small workload cannot be served from the L2 cache: every copy has
  been evicted by the others before it comes round again.
* A call slower than ``limit_s`` (default 20 s, measured after the first call, which may include
  kernel compilation) is not repeated: the measurement is reported as ``skipped`` with a note.
  ``budget_s`` caps the repeats of a slow workload (at least one timed call).
* :func:`copy_bandwidth` measures device-to-device copy bandwidth, ``dst.copy_(src)`` of a few GB
  (bytes read + bytes written per second): the roofline a memory-bound scan is held against.

Example::

    >>> import torch
    >>> m = measure(lambda x: x * 2, [torch.ones(10)], "cpu", warmup=1, repeats=3)
    >>> m.status, m.repeats
    ('ok', 3)
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

#: default minimum warm-up time of :func:`measure` (triton's ``do_bench`` warms up for 25 ms too)
WARMUP_MS = 25.0

#: H200 L2 size, used when the device does not report its own
DEFAULT_L2_BYTES = 60 * 2**20


@dataclass
class Measurement:
    """One timed quantity.  ``ms`` is the median of ``times_ms`` (None unless status is ok)."""

    status: str = "ok"  # ok | skipped
    ms: float | None = None
    min_ms: float | None = None
    repeats: int = 0
    times_ms: list[float] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_of(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def l2_bytes(device: str | torch.device) -> int:
    """L2 cache size of a CUDA device (``DEFAULT_L2_BYTES`` if unknown); 0 on a CPU."""
    dev = device_of(device)
    if dev.type != "cuda":
        return 0
    size = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 0)
    return int(size) or DEFAULT_L2_BYTES


def n_copies(working_set_bytes: int, l2: int, factor: float = 2.0, cap: int = 64) -> int:
    """Input copies to rotate among so that ``copies * working_set >= factor * l2`` (1 when the
    working set alone is that large, or when there is no L2 to defeat, i.e. ``l2 == 0``)."""
    if l2 <= 0 or working_set_bytes <= 0:
        return 1
    return max(1, min(cap, math.ceil(factor * l2 / working_set_bytes)))


def _wall(fn: Callable[[Any], Any], arg: Any, device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn(arg)
    synchronize(device)
    return time.perf_counter() - t0


def measure(fn: Callable[[Any], Any], copies: Sequence[Any], device: str | torch.device, *,
            warmup: int = 2, repeats: int = 10, limit_s: float = 20.0,
            budget_s: float = 30.0, warmup_ms: float = WARMUP_MS) -> Measurement:
    """Median time of ``fn(copies[i % len(copies)])`` over ``repeats`` calls after ``warmup``.

    Args:
        fn: the work; called with one element of ``copies``.  Exceptions propagate.
        copies: the rotated inputs (at least one).
        device: where ``fn`` runs: CUDA events on ``cuda``, ``perf_counter`` otherwise.
        warmup: untimed calls first (>= 1: the first compiles kernels, fills caches).
        repeats: timed calls, fewer when ``budget_s`` does not allow them (noted).
        limit_s: a single call slower than this is not repeated: ``status="skipped"``.
        budget_s: time allowed for the timed calls (at least one is made).
        warmup_ms: after the warm-up calls, more untimed calls (queued as in the timed loop) until
            about this much time has passed: on the H200 host the first 2-5 calls after an idle
            spell measured 1.3-6x slower than the steady state for every implementation
            (benchmarks/NOTES.md, session 10), more than ``warmup`` calls cover.  At most
            ``warmup_ms / (one call's time)`` calls and a tenth of ``budget_s``; 0 turns it off.
    """
    if not copies:
        raise ValueError("measure: copies must hold at least one input")
    dev = device_of(device)
    n = len(copies)
    est = _wall(fn, copies[0], dev)  # may include compilation / autotuning
    if est > limit_s:
        if est <= 4 * limit_s:  # compilation / autotuning, or a slow call? one more says
            est = _wall(fn, copies[1 % n], dev)
        if est > limit_s:
            return Measurement(status="skipped", note=f"one call took {est:.1f} s (> {limit_s:g} s "
                               f"limit); not repeated")
    for i in range(1, max(1, warmup)):
        if est * (max(1, warmup) - i) > budget_s:
            break  # a slow workload: the first call warmed it up enough
        est = _wall(fn, copies[i % n], dev)
    if warmup_ms > 0:
        # est >= the call's device time, so k calls queue at most ~warmup_ms of device work
        k = min(1000, int(min(warmup_ms * 1e-3, 0.1 * budget_s) / max(est, 1e-9)))
        t0 = time.perf_counter()
        for i in range(k):
            fn(copies[i % n])
            if time.perf_counter() - t0 > warmup_ms * 1e-3:
                break
        synchronize(dev)
    reps = max(1, min(repeats, int(budget_s / max(est, 1e-9))))
    note = "" if reps == repeats else f"repeats capped at {reps} by the {budget_s:g} s budget"
    times: list[float] = []
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(reps)]
            for i, (start, end) in enumerate(events):
                start.record()
                fn(copies[i % n])
                end.record()
            torch.cuda.synchronize(dev)
            times = [s.elapsed_time(e) for s, e in events]
    else:
        for i in range(reps):
            t0 = time.perf_counter()
            fn(copies[i % n])
            times.append((time.perf_counter() - t0) * 1e3)
    return Measurement(ms=statistics.median(times), min_ms=min(times), repeats=reps,
                       times_ms=times, note=note)


def copy_bandwidth(device: str | torch.device, nbytes: int = 2 * 2**30, repeats: int = 10,
                   warmup: int = 2) -> dict[str, Any]:
    """Device-to-device copy bandwidth: ``dst.copy_(src)`` of ``nbytes`` (fp32 buffers).

    Returns ``{"bytes": nbytes, "ms": median, "GBps": 2 * nbytes / time / 1e9}`` (read + write).
    """
    dev = device_of(device)
    numel = max(1, nbytes // 4)
    bufs = [torch.ones(numel, dtype=torch.float32, device=dev),
            torch.empty(numel, dtype=torch.float32, device=dev)]
    m = measure(lambda b: b[1].copy_(b[0]), [bufs], dev, warmup=warmup, repeats=repeats,
                limit_s=60.0, budget_s=60.0)
    bufs.clear()  # free the buffers before the benchmark proper
    nbytes = numel * 4
    return {"bytes": nbytes, "ms": m.ms, "min_ms": m.min_ms, "repeats": m.repeats,
            "GBps": 2 * nbytes / (m.ms * 1e-3) / 1e9 if m.ms else None}
