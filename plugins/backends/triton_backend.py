"""The ``triton`` scan backend: fused Triton kernels for CUDA tensors (priority 30).

Runs ``lrnnx_kernels.triton``:

* ``diag_scan``: chunked-carry associative scan, real fp16/bf16/fp32/fp64 or complex64/128,
  h0 / h_last, reverse, packed varlen, ``a`` shared across the batch; fused backward.
* ``selective_scan``: fused S6 with real or complex A / B / C (discretization
  mamba/euler/zoh/bilinear/dirac in the kernel, softplus + delta_bias, timesteps, D skip, z gate,
  grouped B/C, h0 / last state) with a fused backward that recomputes states from per-tile
  checkpoints; complex gradients in PyTorch's conjugate convention.
* ``diag_step`` / ``selective_step``: one kernel launch per decoding step (real or complex).

``available()`` is cheap (no triton import): triton must be importable and a CUDA device present,
or ``TRITON_INTERPRET=1`` set (then the kernels run CPU tensors through Triton's interpreter:
slow, for tests).  If a kernel fails to *compile* on first use (e.g. a Triton too old for it),
the op raises :class:`~lrnnx.errors.BackendUnavailableError` before computing anything, so
``backend="auto"`` falls back to the next backend and ``available()`` reports the reason.

Example::

    y = lrnnx.ops.selective_scan(u, delta, A, B, C, D, z, delta_bias, True, backend="triton")
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading

import torch

import lrnnx
from lrnnx.errors import BackendUnavailableError

_SELECTIVE = ("selective_scan", "selective_step")
_REAL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_COMPLEX = (torch.complex64, torch.complex128)
_METHODS = ("mamba", "euler", "zoh", "bilinear", "dirac")
_LOCK = threading.Lock()
_FAILED: dict[str, str] = {}  # "reason" once a kernel failed to compile here


def _kernels():
    # Imported at first use: importing it imports triton and decorates the kernels.
    from lrnnx_kernels import triton as kt

    return kt


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _available() -> tuple[bool, str]:
    """triton importable and (a CUDA device, or TRITON_INTERPRET=1); no triton import."""
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install 'lrnnx[triton]')"
    if _interpret():
        return True, "TRITON_INTERPRET=1: kernels run on CPU tensors through the interpreter (slow)"
    if not torch.cuda.is_available():
        return False, ("no CUDA device (torch.cuda.is_available() is False); set "
                       "TRITON_INTERPRET=1 to run the kernels on CPU through the interpreter")
    return True, ""


def _device_ok(device) -> tuple[bool, str]:
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    if _interpret():
        if kind == "cpu":
            return True, ""
        return False, f"TRITON_INTERPRET=1 runs CPU tensors only, got device {kind!r}"
    if kind == "cuda":
        return True, ""
    return False, (f"needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got device "
                   f"{kind!r}")


def _guard(fn):
    """Turn a Triton *compilation* failure (raised before any launch) into
    BackendUnavailableError, remembered for ``available()``."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            from triton.compiler.errors import CompilationError

            if not isinstance(exc, CompilationError):
                raise
            why = f"a Triton kernel failed to compile: {type(exc).__name__}: {exc}"
            with _LOCK:
                _FAILED.setdefault("reason", why)
            raise BackendUnavailableError(why) from exc

    return wrapped


class TritonBackend(lrnnx.ScanBackend):
    """Fused Triton kernels (CUDA; CPU through ``TRITON_INTERPRET=1``)."""

    name = "triton"
    priority = 30

    def available(self) -> tuple[bool, str]:
        if "reason" in _FAILED:
            return False, _FAILED["reason"]
        return _available()

    def supports(self, op: str, **problem) -> tuple[bool, str]:
        ok, why = _device_ok(problem.get("device", "cpu"))
        if not ok:
            return False, why
        dtype = problem.get("dtype", torch.float32)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
        if op in ("diag_scan", "diag_step"):
            if dtype not in _REAL + _COMPLEX:
                return False, (f"the Triton diag scan takes fp16/bf16/fp32/fp64/complex64/"
                               f"complex128, got {dtype}")
            return True, ""
        if op in _SELECTIVE:  # real or complex A / B / C; u (the problem's dtype) is real
            if dtype not in _REAL:
                return False, f"the Triton selective scan takes fp16/bf16/fp32/fp64 u, got {dtype}"
            method = problem.get("discretization", "mamba")
            if method not in _METHODS:
                return False, (f"discretization {method!r} is not in the Triton kernels "
                               f"({', '.join(_METHODS)})")
            if problem.get("varlen") or problem.get("reverse"):
                return False, "the Triton selective scan has no varlen / reverse mode"
            return True, ""
        return False, f"unknown op {op!r}"

    @_guard
    def diag_scan(self, a, b, h0=None, reverse=False, cu_seqlens=None):
        return _kernels().diag_scan(a, b, h0, reverse, cu_seqlens)

    @_guard
    def diag_step(self, a_t, b_t, h):
        return _kernels().diag_step(a_t, b_t, h)

    @_guard
    def selective_scan(self, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, discretization="mamba", timesteps=None, h0=None,
                       return_last_state=False):
        return _kernels().selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                         discretization, timesteps, h0, return_last_state)

    @_guard
    def selective_step(self, u_t, delta_t, A, B_t, C_t, state, D=None, z_t=None,
                       delta_bias=None, delta_softplus=False, discretization="mamba",
                       timesteps_t=None):
        return _kernels().selective_step(u_t, delta_t, A, B_t, C_t, state, D, z_t, delta_bias,
                                         delta_softplus, discretization, timesteps_t)
