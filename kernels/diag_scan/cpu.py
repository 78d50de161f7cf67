"""Diagonal scan as a C++/OpenMP CPU extension, compiled just in time.

The kernel (``csrc/diag_scan_cpu.cpp``) runs ``h_t = a_t h_{t-1} + b_t``
with OpenMP over (sequence, block of 64 channels) work items, a sequential
time loop inside each item and a vectorized loop over the contiguous
channels.  Forward and backward are native for real fp32/fp64 and
complex64/complex128, with ``h0``, ``reverse``, varlen (``cu_seqlens``) and
``a`` broadcast over the batch; bf16/fp16 are computed in fp32.

Backward (one fused reverse pass, PyTorch conjugate convention)::

    g_t = grad_h_t + conj(a_{t+1}) g_{t+1}   (seeded with grad of h_last)
    grad_b_t = g_t,  grad_a_t = g_t conj(h_{t-1}),  grad_h0 = conj(a_0) g_0

Outputs of 4 MiB and more are allocated 2 MiB-aligned with MADV_HUGEPAGE and,
when PyTorch frees them, kept in a small cache (``$LRNNX_CPU_POOL_MB``,
default 256 MiB, resident) for the next output of the same size: on small
machines page-faulting a fresh output costs as much as the scan itself.

Nothing is compiled at import.  The first call (or :func:`cpu_available`)
builds the extension with ``torch.utils.cpp_extension.load`` (ninja,
``-O3 -march=native -fopenmp``) into
``~/.cache/lrnnx/kernels/<torch version>-<hash>`` (``$LRNNX_KERNELS_CACHE``
overrides the root), keyed by the source, flags and CPU model so a cache
shared between machines never loads a binary built for another CPU.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import threading
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._buildlock import exclusive_build
from ._common import empty_result, prepare

_SOURCE = Path(__file__).resolve().parent / "csrc" / "diag_scan_cpu.cpp"
_FLAG_SETS = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-fopenmp"])
_LOCK = threading.Lock()
_STATE: dict = {}  # "module" or "error" once a build was attempted


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cache_root() -> Path:
    env = os.environ.get("LRNNX_KERNELS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lrnnx" / "kernels"


def _build_once(flags: list[str]):
    from torch.utils import cpp_extension

    # Key on every file of csrc/ (the .cpp and the headers it includes).
    src = b"".join(f.read_bytes() for f in sorted(_SOURCE.parent.iterdir()) if f.is_file())
    tag = f"{flags}|{platform.machine()}|{_cpu_model()}".encode()
    key = hashlib.sha256(src + tag).hexdigest()[:16]
    build_dir = _cache_root() / f"{torch.__version__}-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    # verbose=False: ninja's output is captured and only shown on failure.
    with exclusive_build(build_dir):  # survives a build killed mid-way (see _buildlock)
        return cpp_extension.load(
            name=f"lrnnx_diag_scan_cpu_{key}",
            sources=[str(_SOURCE)],
            extra_cflags=flags,
            extra_ldflags=["-lgomp"],
            build_directory=str(build_dir),
            verbose=False,
        )


def _load():
    with _LOCK:
        if "module" in _STATE or "error" in _STATE:
            return _STATE.get("module")
        from torch.utils import cpp_extension

        cxx = os.environ.get("CXX", "c++")
        if shutil.which(cxx) is None:
            _STATE["error"] = f"no C++ compiler found ({cxx!r} not on PATH)"
            return None
        if not cpp_extension.is_ninja_available():
            _STATE["error"] = "ninja is not available (pip install ninja)"
            return None
        errors = []
        for flags in _FLAG_SETS:  # retry without -march=native on odd toolchains
            try:
                _STATE["module"] = _build_once(flags)
                return _STATE["module"]
            except Exception as exc:  # noqa: BLE001 -- any build failure means "unavailable"
                errors.append(f"{' '.join(flags)}: {type(exc).__name__}: {str(exc)[-2000:]}")
        _STATE["error"] = "building the diag_scan C++ extension failed:\n" + "\n".join(errors)
        return None


def cpu_available() -> tuple[bool, str]:
    """Whether the C++ CPU scan can be used; builds it on the first call.

    Returns ``(True, "")`` or ``(False, reason)``.  Never raises.
    """
    try:
        mod = _load()
    except Exception as exc:  # noqa: BLE001
        return False, f"{type(exc).__name__}: {exc}"
    return (True, "") if mod is not None else (False, _STATE.get("error", "unknown error"))


def _module():
    mod = _load()
    if mod is None:
        raise RuntimeError(f"diag_scan_cpu is unavailable: {_STATE.get('error')}")
    return mod


def _opt(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


class _CpuScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, cu, reverse):
        mod = _module()
        h, h_last = mod.fwd(a, b, h0, cu, reverse)
        ctx.save_for_backward(a, h, h0, cu)
        ctx.reverse = reverse
        return h, h_last

    @staticmethod
    @once_differentiable
    def backward(ctx, gh, gh_last):
        a, h, h0, cu = ctx.saved_tensors
        gh = torch.zeros_like(h) if gh is None else gh.contiguous()
        ga, gb, gh0 = _module().bwd(a, h, h0, gh, _opt(gh_last), cu, ctx.reverse)
        if a.shape[0] != h.shape[0]:
            ga = ga.sum(0, keepdim=True)
        return ga, gb, (gh0 if h0 is not None else None), None, None


# torch.compile: the C++ module's functions (pybind) cannot be traced, so under compile the scan
# runs as torch.library custom ops with fake implementations (eager keeps the autograd.Function
# above: no custom-op dispatch cost per call).  The module is built before tracing by the
# backend's prepare().
@torch.library.custom_op("lrnnx::cpu_diag_scan", mutates_args=())
def _cpu_scan_op(a: Tensor, b: Tensor, h0: Optional[Tensor], cu_seqlens: Optional[Tensor],
                 reverse: bool) -> tuple[Tensor, Tensor]:
    h, h_last = _module().fwd(a, b, h0, cu_seqlens, reverse)
    return h, h_last


@_cpu_scan_op.register_fake
def _(a, b, h0, cu_seqlens, reverse):
    B, L, D = b.shape
    dt = torch.promote_types(a.dtype, b.dtype)
    nseq = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return b.new_empty((B, L, D), dtype=dt), b.new_empty((nseq, D), dtype=dt)


@torch.library.custom_op("lrnnx::cpu_diag_scan_bwd", mutates_args=())
def _cpu_scan_bwd_op(a: Tensor, h: Tensor, h0: Optional[Tensor], gh: Tensor,
                     gh_last: Optional[Tensor], cu_seqlens: Optional[Tensor],
                     reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    ga, gb, gh0 = _module().bwd(a, h, h0, gh.contiguous(), _opt(gh_last), cu_seqlens, reverse)
    if a.shape[0] != h.shape[0]:
        ga = ga.sum(0, keepdim=True)
    return ga, gb, (gh0 if h0 is not None else h.new_empty((0,)))


@_cpu_scan_bwd_op.register_fake
def _(a, h, h0, gh, gh_last, cu_seqlens, reverse):
    return (torch.empty_like(a), torch.empty_like(h),
            torch.empty_like(h0) if h0 is not None else h.new_empty((0,)))


def _cpu_setup(ctx, inputs, output):
    a, b, h0, cu, reverse = inputs
    ctx.save_for_backward(a, output[0], h0, cu)
    ctx.reverse = reverse


def _cpu_backward(ctx, gh, gh_last):
    a, h, h0, cu = ctx.saved_tensors
    gh = torch.zeros_like(h) if gh is None else gh
    ga, gb, gh0 = _cpu_scan_bwd_op(a, h, h0, gh, gh_last, cu, ctx.reverse)
    return ga, gb, (gh0 if h0 is not None else None), None, None


_cpu_scan_op.register_autograd(_cpu_backward, setup_context=_cpu_setup)


def diag_scan_cpu(
    a: Tensor,
    b: Tensor,
    h0: Tensor | None = None,
    reverse: bool = False,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Diagonal scan with the native CPU kernel; differentiable in a, b, h0.

    Same contract as :func:`diag_scan_ref` (see
    :mod:`kernels.diag_scan._common`).  CPU tensors only; raises
    ``RuntimeError`` if the extension cannot be built (check
    :func:`cpu_available` first to fall back).
    """
    args = prepare(a, b, h0, cu_seqlens)
    if args.b.device.type != "cpu":
        raise ValueError(f"diag_scan_cpu needs CPU tensors, got {args.b.device}")
    if args.b.shape[1] == 0:
        return empty_result(args)
    fn = _cpu_scan_op if torch.compiler.is_compiling() else _CpuScan.apply
    h, h_last = fn(
        args.a.contiguous(), args.b.contiguous(), _opt(args.h0), _opt(args.cu_seqlens), reverse
    )
    return h.to(args.out_dtype), h_last.to(args.out_dtype)
