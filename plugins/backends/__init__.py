"""Built-in plugin ``lrnnx_backends``: the scan backends ``cuda``, ``triton``, ``cpu``, ``torch``,
``torch_ref``.

They implement the ops of :mod:`lrnnx.ops` (``diag_scan``, ``selective_scan``, ``diag_step``,
``selective_step``) on top of the plain kernels of ``lrnnx_kernels``:

=========  ========  ==========================================================================
name       priority  runs
=========  ========  ==========================================================================
cuda       35        JIT-compiled CUDA kernels on CUDA tensors (real and complex S6; diag scan);
                     steps aside for triton where triton was measured faster (``prefer``)
triton     30        fused Triton kernels on CUDA tensors (real and complex S6; diag scan), or on
                     CPU tensors through the interpreter when TRITON_INTERPRET=1 (tests)
cpu        20        C++/OpenMP diag scan (JIT-built at first use), CPU tensors only
torch      10        exact chunked PyTorch scans, any device and dtype (the fallback)
torch_ref  0         sequential reference loops (float64 ground truth), by name only
=========  ========  ==========================================================================

``lrnnx backends`` (or ``lrnnx.ops.explain()``) shows which one runs a given problem and why.
"""

from __future__ import annotations

import lrnnx

from .cpu_backend import CpuBackend
from .cuda_backend import CudaBackend
from .torch_backend import TorchBackend, TorchRefBackend
from .triton_backend import TritonBackend

__all__ = ["CpuBackend", "CudaBackend", "TorchBackend", "TorchRefBackend", "TritonBackend",
           "register_scan_backends"]


@lrnnx.hookimpl
def register_scan_backends(register):
    register(CudaBackend)
    register(TritonBackend)
    register(CpuBackend)
    register(TorchBackend)
    register(TorchRefBackend)
