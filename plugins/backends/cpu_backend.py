"""The ``cpu`` scan backend: the JIT-compiled C++/OpenMP diagonal scan for CPU tensors.

``diag_scan`` runs ``lrnnx_kernels.diag_scan.diag_scan_cpu`` (native forward and fused backward for
fp32/fp64/complex64/complex128; fp16/bf16 computed in fp32; h0, reverse, varlen and a shared across
the batch are all native).  ``selective_scan`` has no dedicated C++ kernel: it delegates to the
chunked PyTorch selective scan with this C++ diag scan running each chunk
(``selective_scan_chunked(..., scan="cpu")``; measured 2-10x faster than the all-PyTorch chunks on
CPU).  The single steps use the same PyTorch formulas as the ``torch`` backend.

Availability is lazy, because the first build takes tens of seconds:

* ``available()`` before the first run only checks cheaply that a C++ compiler (``$CXX`` or
  ``c++``) is on PATH and ninja is installed, so ``backend="auto"`` may pick this backend;
* the first op that needs the kernel calls ``cpu_available()``, which builds (or loads the cached
  build of) the extension.  A failed build raises ``BackendUnavailableError`` with the compiler's
  reason before anything is computed: ``"auto"`` logs it once and falls back to ``torch``, and from
  then on ``available()`` reports that reason.

Example::

    h, h_last = lrnnx.ops.diag_scan(a, b, backend="cpu")   # builds the kernel on first use
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading

import torch
from lrnnx_kernels.diag_scan import cpu_available, diag_scan_cpu
from lrnnx_kernels.selective_scan import selective_scan_chunked

from lrnnx.errors import BackendUnavailableError
from lrnnx.ops.dispatch import compiling

from .torch_backend import TorchBackend

#: dtypes the C++ kernel accepts (half precisions are computed in fp32 by the kernel wrapper)
DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64,
                    torch.complex64, torch.complex128})

_LOCK = threading.Lock()
_BUILD: dict[str, tuple[bool, str]] = {}  # "result": cpu_available() once a run asked for it


def cheap_check() -> tuple[bool, str]:
    """A C++ compiler on PATH and ninja installed; no compilation."""
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return False, (f"no C++ compiler: {cxx!r} is not on PATH (install g++/clang++ or set "
                       f"$CXX)")
    if importlib.util.find_spec("ninja") is None and shutil.which("ninja") is None:
        return False, "ninja is not installed (pip install ninja)"
    return True, "C++ kernel not built yet: compiled at first use"


def build_result() -> tuple[bool, str] | None:
    """``(ok, reason)`` of the build once a run has triggered it, else None."""
    return _BUILD.get("result")


def ensure_built() -> None:
    """Build (or load) the extension; raise BackendUnavailableError if that fails."""
    with _LOCK:
        if "result" not in _BUILD:
            ok, why = cheap_check()
            _BUILD["result"] = cpu_available() if ok else (False, why)
        ok, why = _BUILD["result"]
    if not ok:
        raise BackendUnavailableError(f"the C++ diag_scan kernel could not be built: {why}")


class CpuBackend(TorchBackend):
    """C++/OpenMP diagonal scan for CPU tensors (steps reuse the ``torch`` formulas)."""

    name = "cpu"
    priority = 20

    def prepare(self, op: str) -> None:
        """Build the extension before torch.compile traces an op (see ``dispatch.compiling``)."""
        ensure_built()

    def available(self) -> tuple[bool, str]:
        res = build_result()
        if res is None:
            return cheap_check()
        ok, why = res
        return (True, "") if ok else (False, f"the C++ kernel failed to build: {why}")

    def supports(self, op: str, **problem) -> tuple[bool, str]:
        device = problem.get("device", "cpu")
        if device != "cpu":
            return False, f"runs on CPU tensors only, got device {device!r}"
        dtype = problem.get("dtype", torch.float32)
        if dtype not in DTYPES:
            names = ", ".join(sorted(str(d).removeprefix("torch.") for d in DTYPES))
            return False, (f"the C++ kernel supports {names}, got "
                           f"{str(dtype).removeprefix('torch.')}")
        if op == "selective_scan":
            return True, ("delegates to the chunked PyTorch selective scan with the C++ diag scan "
                          "running each chunk")
        if op in ("diag_step", "selective_step"):
            return True, "single step: the PyTorch formula of the torch backend"
        if op == "diag_scan":
            return True, ""
        return False, f"unknown op {op!r}"

    def diag_scan(self, a, b, h0=None, reverse=False, cu_seqlens=None):
        if not compiling():
            ensure_built()
        return diag_scan_cpu(a, b, h0, reverse, cu_seqlens)

    def selective_scan(self, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, discretization="mamba", timesteps=None, h0=None,
                       return_last_state=False):
        if not compiling():
            ensure_built()
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                      discretization, timesteps, h0, return_last_state,
                                      scan="cpu")
