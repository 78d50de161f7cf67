"""Host-side helpers of the Triton kernels: availability, dtypes, launch context, block sizes.

Nothing here imports triton at module level, so ``available()`` can answer cheaply.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

#: discretization method -> kernel code (``_tl.MAMBA`` ...); euler shares mamba's formula.
DISC_CODES = {"mamba": 0, "euler": 0, "zoh": 1, "bilinear": 2, "dirac": 3}

REAL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
COMPLEX_DTYPES = (torch.complex64, torch.complex128)


def interpret_mode() -> bool:
    """True when ``TRITON_INTERPRET=1``: kernels run on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available() -> tuple[bool, str]:
    """``(ok, reason)``: triton importable and (a CUDA device or the CPU interpreter)."""
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install 'lrnnx[triton]')"
    if interpret_mode():
        return True, "TRITON_INTERPRET=1: kernels run on CPU tensors through the interpreter (slow)"
    if not torch.cuda.is_available():
        return False, ("no CUDA device (torch.cuda.is_available() is False); set "
                       "TRITON_INTERPRET=1 to run the kernels on CPU through the interpreter")
    return True, ""


def device_ok(device: torch.device | str) -> tuple[bool, str]:
    """Can the kernels run on tensors of ``device`` in this process?"""
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    if interpret_mode():
        if kind == "cpu":
            return True, ""
        return False, f"TRITON_INTERPRET=1 runs CPU tensors only, got device {kind!r}"
    if kind == "cuda":
        return True, ""
    return False, (f"needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got device "
                   f"{kind!r}")


def on_device(t: torch.Tensor):
    """Launch on the tensor's GPU (Triton launches on the *current* CUDA device)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def plain_eager(*tensors) -> bool:
    """True for eager calls on plain tensors / Parameters (None allowed): such calls may skip
    the ``torch.library`` custom op and run the kernels through an autograd.Function twin --
    the custom op's Python dispatch costs ~50-60 us per call on the H200 host.  Under
    torch.compile / export or with tensor subclasses (fake, functional) the custom op runs."""
    if torch.compiler.is_compiling():
        return False
    return all(t is None or type(t) in _PLAIN for t in tensors)


def real_of(dtype: torch.dtype) -> torch.dtype:
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)


def complex_of(dtype: torch.dtype) -> torch.dtype:
    """complex64 for fp32, complex128 for fp64 (the complex state of a real compute dtype)."""
    return torch.complex128 if real_of(dtype) == torch.float64 else torch.complex64


def acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """State / accumulation precision: fp64 if any input is double, else fp32."""
    return torch.float64 if any(real_of(d) == torch.float64 for d in dtypes) else torch.float32


def tl_dtype(dtype: torch.dtype):
    import triton.language as tl

    return {torch.float32: tl.float32, torch.float64: tl.float64}[dtype]


def rview(t: torch.Tensor) -> torch.Tensor:
    """Real view of a complex tensor ((..., 2) interleaved pairs); real tensors unchanged."""
    return torch.view_as_real(t) if t.is_complex() else t


def pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def pow2_ceil(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def pow2_divisor(n: int, cap: int) -> int:
    """Largest power of two <= cap that divides n."""
    p = 1
    while p * 2 <= cap and n % (p * 2) == 0:
        p *= 2
    return p


def dummy(ref: torch.Tensor) -> torch.Tensor:
    """A placeholder pointer argument for an absent optional input (never read)."""
    return torch.empty(1, dtype=torch.float32, device=ref.device)
