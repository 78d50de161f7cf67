"""CUDA kernels of lrnnx, compiled just in time (no build at install or import).

* :func:`diag_scan` / :func:`diag_step`: the diagonal recurrence, real fp16/bf16/fp32/fp64 or
  complex64/complex128, h0 / h_last, reverse, packed varlen, ``a`` shared over the batch; fused
  backward.
* :func:`selective_scan` / :func:`selective_step`: the fused S6 scan (real or complex A / B / C,
  N <= 128, mamba/euler/zoh/bilinear/dirac, timesteps, grouped B/C, z gate, D, h0); fused
  backward from per-chunk state checkpoints.

The first call compiles ``csrc/`` for the current GPU (``_build``); :func:`build` does it ahead of
time (``lrnnx build-kernels``) and :func:`status` says whether the kernels can be used and why not.

Example::

    from lrnnx_kernels import cuda
    ok, why = cuda.status()
    h, h_last = cuda.diag_scan(a, b)
"""
from __future__ import annotations

from ._build import attempted, build, cache_root, cheap_check, load, load_seconds, status

__all__ = ["attempted", "build", "cache_root", "cheap_check", "diag_scan", "diag_step", "load",
           "load_seconds", "selective_scan", "selective_step", "status"]


def __getattr__(name):
    # The op wrappers import torch.library machinery; only pay for it when used.
    if name in ("diag_scan", "diag_step", "selective_scan", "selective_step", "ops"):
        import importlib

        ops = importlib.import_module(__name__ + ".ops")
        return ops if name == "ops" else getattr(ops, name)
    raise AttributeError(name)
