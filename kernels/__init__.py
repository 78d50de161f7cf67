"""Numerical kernels of lrnnx: plain functions on tensors.

Nothing here knows about layers or the registry.  Every fast path has a
sequential reference beside it (``naive.py``) that the tests treat as ground
truth.  Importing this package never compiles anything; the C++ CPU scan is
built on its first use (see :func:`cpu_available`).
"""
from .diag_scan import cpu_available, diag_scan_chunked, diag_scan_cpu, diag_scan_ref, diag_step
from .discretize import METHODS, discretize, effective_dt
from .selective_scan import selective_scan_chunked, selective_scan_ref, selective_step

__all__ = [
    "METHODS",
    "discretize",
    "effective_dt",
    "diag_scan_ref",
    "diag_scan_chunked",
    "diag_scan_cpu",
    "cpu_available",
    "diag_step",
    "selective_scan_ref",
    "selective_scan_chunked",
    "selective_step",
]
