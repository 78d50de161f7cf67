"""Mamba's selective (S6) scan in lrnnx layout (B, L, D).

* :func:`selective_scan_ref` -- sequential loop, ground truth.
* :func:`selective_scan_chunked` -- exact chunked fast path (pure PyTorch).
* :func:`selective_step` -- one decoding step, same formulas.
"""
from .chunked import selective_scan_chunked
from .naive import selective_scan_ref
from .step import selective_step

__all__ = ["selective_scan_ref", "selective_scan_chunked", "selective_step"]
