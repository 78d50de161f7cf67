"""``lrnnx.ops``: the scan primitives every SSM layer calls, run by pluggable scan backends.

Public API (each op validates its inputs first, then dispatches to a registered
:class:`lrnnx.ScanBackend`; ``backend="auto"`` picks the highest-priority one that can run it):

* :func:`diag_scan` ``(a, b, h0=None, *, reverse=False, cu_seqlens=None, backend="auto")``
  -> ``(h, h_last)``: ``h_t = a_t * h_{t-1} + b_t``.
* :func:`diag_step` ``(a_t, b_t, h)`` -> ``h_new``: one step of it.
* :func:`selective_scan` (Mamba's S6 scan) and :func:`selective_step`.
* :func:`discretize` ``(method, A, dt) -> (A_bar, B_scale)`` and :func:`effective_dt`: the one
  implementation shared by every backend (from ``lrnnx_kernels.discretize``); :data:`METHODS`.
* :func:`select_backend`, :func:`explain`, :func:`backend_table`: which backend runs a problem
  and why (``lrnnx backends`` prints :func:`explain`); :func:`clear_backend_cache`.

Built-in backends (plugin ``lrnnx_plugins.backends``): ``cpu`` (priority 20, C++ kernel),
``torch`` (10, chunked PyTorch, any device), ``torch_ref`` (0, sequential float64-grade loop; by
name only).

Example::

    >>> import torch, lrnnx.ops as ops
    >>> h, h_last = ops.diag_scan(torch.full((1, 4, 2), 0.5), torch.ones(1, 4, 2))
    >>> ops.select_backend("diag_scan", device="cuda")[0]
    'torch'
"""

from __future__ import annotations

from lrnnx_kernels.discretize import METHODS, discretize, effective_dt

from .diag_scan import diag_scan, diag_step
from .dispatch import OPS, backend_table, clear_backend_cache, explain, select_backend
from .selective_scan import selective_scan, selective_step

__all__ = [
    "diag_scan", "diag_step", "selective_scan", "selective_step",
    "discretize", "effective_dt", "METHODS",
    "select_backend", "explain", "backend_table", "clear_backend_cache", "OPS",
]
