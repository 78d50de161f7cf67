"""Diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t``.

Implementations (same signature ``f(a, b, h0=None, reverse=False,
cu_seqlens=None) -> (h, h_last)``):

* :func:`diag_scan_ref` -- sequential Python loop, the ground truth.
* :func:`diag_scan_chunked` -- exact two-level chunked scan, pure PyTorch.
* :func:`diag_scan_cpu` -- C++/OpenMP extension, compiled lazily on first use;
  :func:`cpu_available` reports whether it can be built.
* :func:`diag_step` -- one recurrent step.
"""
from .chunked import diag_scan_chunked
from .cpu import cpu_available, diag_scan_cpu
from .naive import diag_scan_ref
from .step import diag_step

__all__ = ["diag_scan_ref", "diag_scan_chunked", "diag_scan_cpu", "cpu_available", "diag_step"]
