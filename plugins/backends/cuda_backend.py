"""The ``cuda`` scan backend: hand-written CUDA kernels compiled just in time (priority 35).

Runs ``lrnnx_kernels.cuda`` (sources in ``kernels/cuda/csrc``):

* ``diag_scan``: real fp16/bf16/fp32/fp64 or complex64/complex128, h0 / h_last, reverse, packed
  varlen, ``a`` shared across the batch; fused backward.
* ``selective_scan``: fused S6 with real **or complex** A / B / C (N <= 128), every
  discretization, softplus + delta_bias, timesteps, D, z gate, grouped B/C, h0 / last state;
  fused backward.  No varlen / reverse (the torch backend runs those).
* ``diag_step`` / ``selective_step``: one launch per decoding step.

Nothing is compiled at install or import.  ``available()`` is cheap (CUDA build of PyTorch, a GPU,
nvcc and ninja); the first op compiles the kernels for the current GPU into the kernel cache
(about a minute; ``lrnnx build-kernels`` does it ahead of time) and a failed build raises
:class:`~lrnnx.errors.BackendUnavailableError` with the compiler's reason before anything runs,
so ``backend="auto"`` falls back (to ``triton``) and ``lrnnx backends`` shows the reason.

Choice between ``cuda`` and ``triton`` under ``"auto"`` (:meth:`CudaBackend.prefer`):
:data:`PREFER_TRITON` lists where Triton was measured faster (``benchmarks/RESULTS.md``, H200:
real selective scans and steps); everywhere else ``cuda`` is taken.  ``backend="cuda"`` always
runs here.

Example::

    y = lrnnx.ops.selective_scan(u, delta, A, B, C, D, z, delta_bias, True, backend="cuda")
"""

from __future__ import annotations

import threading

import torch

import lrnnx
from lrnnx.errors import BackendUnavailableError
from lrnnx.ops.dispatch import compiling

_REAL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_COMPLEX = (torch.complex64, torch.complex128)
_METHODS = ("mamba", "euler", "zoh", "bilinear", "dirac")
MAX_STATE = 128  # kernels/cuda/csrc/selective.cuh kSelMaxN
_LOCK = threading.Lock()

#: Where ``"auto"`` should take Triton instead: ``(op, predicate(problem), reason)``, from H200
#: runs of B8 L2048 D1536 N16 (benchmarks/RESULTS.md; the tiled rows: session 3, 2026-11-29,
#: cuda and triton in the same run):
#:
#: =====================================  ===================  ===================
#: selective scan (fwd / fwd+bwd, ms)     cuda                 triton
#: =====================================  ===================  ===================
#: fp32, tiled kernels (real, N <= 32)    0.625 / 2.64         0.869 / 8.53
#: bf16, tiled kernels                    0.620 / 2.58         1.45 / 15.4
#: fp32, per-channel kernels (N > 32 ..)  2.77 / 9.63          (as above)
#: bf16, per-channel kernels              3.30 / 10.8          (as above)
#: =====================================  ===================  ===================
#:
#: so real S6 stays here whenever the token-tiled kernels take it
#: (:func:`lrnnx_kernels.cuda.tiled_selective`: real, fp32 state, N <= 32, blocks of 32 channels
#: inside one group of B / C); otherwise it goes to Triton except in training with half-precision
#: inputs.  Complex S6 (Triton runs it too, but its complex kernels are not in these measurements)
#: and the diagonal scan (cuda fp32 fwd+bwd 0.67 vs 1.10 ms, complex64 0.71-0.78 vs 3.8-4.5 ms)
#: stay here.
_HALF = (torch.float16, torch.bfloat16)


def _tiled(problem) -> bool:
    from lrnnx_kernels.cuda.ops import tiled_selective

    dtype = _dtype(problem)
    return tiled_selective(dtype, bool(problem.get("complex", False)),
                           int(problem.get("d_state", 16)), int(problem.get("channels", 0)),
                           int(problem.get("groups", 1)))


def _s6_to_triton(problem) -> bool:
    if problem.get("complex", False) or _tiled(problem):
        return False
    return not (problem.get("requires_grad", False) and _dtype(problem) in _HALF)


PREFER_TRITON: list[tuple[str, object, str]] = [
    ("selective_scan", _s6_to_triton,
     "real selective scan outside the tiled CUDA kernels (N > 32, fp64 or groups that split a "
     "block of 32 channels): the Triton kernel was measured faster (fp32, or no gradient)"),
    ("selective_step", lambda p: not p.get("complex", False),
     "real selective step: Triton, like the scan it continues"),
]


def _kernels():
    from lrnnx_kernels import cuda

    return cuda


def _dtype(problem) -> torch.dtype:
    dtype = problem.get("dtype", torch.float32)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    return dtype


class CudaBackend(lrnnx.ScanBackend):
    """JIT-compiled CUDA kernels (CUDA tensors only)."""

    name = "cuda"
    priority = 35

    def available(self) -> tuple[bool, str]:
        k = _kernels()
        done = k.attempted()
        if done is not None:
            return done
        ok, why = k.cheap_check()
        return (True, "kernels not built yet: compiled at first use (or `lrnnx build-kernels`)") \
            if ok else (False, why)

    def supports(self, op: str, **problem) -> tuple[bool, str]:
        dev = problem.get("device", "cpu")
        kind = dev.type if isinstance(dev, torch.device) else str(dev).split(":")[0]
        if kind != "cuda":
            return False, f"needs CUDA tensors, got device {kind!r}"
        dtype = _dtype(problem)
        if op in ("diag_scan", "diag_step"):
            if dtype not in _REAL + _COMPLEX:
                return False, (f"the CUDA diag scan takes fp16/bf16/fp32/fp64/complex64/"
                               f"complex128, got {dtype}")
            return True, ""
        if op in ("selective_scan", "selective_step"):
            if dtype not in _REAL:
                return False, f"the CUDA selective scan takes fp16/bf16/fp32/fp64 u, got {dtype}"
            method = problem.get("discretization", "mamba")
            if method not in _METHODS:
                return False, f"discretization {method!r} is not in the CUDA kernels"
            n = problem.get("d_state", 16)
            if n > MAX_STATE:
                return False, f"d_state {n} > {MAX_STATE} (the CUDA kernels keep N in registers)"
            if problem.get("varlen") or problem.get("reverse"):
                return False, "the CUDA selective scan has no varlen / reverse mode"
            return True, ""
        return False, f"unknown op {op!r}"

    def prefer(self, op: str, **problem) -> tuple[bool, str]:
        for name, pred, why in PREFER_TRITON:
            if name == op and pred(problem):
                return False, why
        return True, ""

    def prepare(self, op: str) -> None:
        """Build / load the kernels before torch.compile traces an op."""
        ok, why = _kernels().status()
        if not ok:
            raise BackendUnavailableError(why)

    @staticmethod
    def _run(fn, *args, **kwargs):
        if not compiling():  # under torch.compile, prepare() ran at trace time
            ok, why = _kernels().status()  # builds on first use
            if not ok:
                raise BackendUnavailableError(why)
        return fn(*args, **kwargs)

    def diag_scan(self, a, b, h0=None, reverse=False, cu_seqlens=None):
        return self._run(_kernels().diag_scan, a, b, h0, reverse, cu_seqlens)

    def diag_step(self, a_t, b_t, h):
        return self._run(_kernels().diag_step, a_t, b_t, h)

    def selective_scan(self, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, discretization="mamba", timesteps=None, h0=None,
                       return_last_state=False):
        return self._run(_kernels().selective_scan, u, delta, A, B, C, D, z, delta_bias,
                         delta_softplus, discretization, timesteps, h0, return_last_state)

    def selective_step(self, u_t, delta_t, A, B_t, C_t, state, D=None, z_t=None,
                       delta_bias=None, delta_softplus=False, discretization="mamba",
                       timesteps_t=None):
        return self._run(_kernels().selective_step, u_t, delta_t, A, B_t, C_t, state, D, z_t,
                         delta_bias, delta_softplus, discretization, timesteps_t)
