"""Helpers shared by the kernel tests (imported as ``lrnnx_kernels_testutils``)."""
import os

import pytest
import torch

# Max error relative to the max |reference|, per dtype of the fast path.
TOL = {
    torch.float64: 1e-12,
    torch.complex128: 1e-12,
    torch.float32: 1e-5,
    torch.complex64: 1e-5,
    torch.bfloat16: 1e-2,
    torch.float16: 1e-2,
}

REAL_OF = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref| computed in float64 / complex128."""
    ref = ref.detach().to(torch.complex128 if ref.is_complex() else torch.float64)
    x = x.detach().to(ref.dtype)
    scale = ref.abs().max().clamp_min(1e-300)
    return ((x - ref).abs().max() / scale).item()


def assert_close(x, ref, dtype, what=""):
    err = rel_err(x, ref)
    assert err <= TOL[dtype], f"{what}: rel err {err:.3e} > {TOL[dtype]:.0e} ({dtype})"


def rand_a(shape, dtype, gen=None, mag=0.99):
    """Decays with |a| < 1, both signs (real) or any phase (complex)."""
    r = torch.rand(shape, dtype=torch.float64, generator=gen) * mag
    if dtype.is_complex:
        phase = torch.rand(shape, dtype=torch.float64, generator=gen) * 6.283185307179586
        return torch.polar(r, phase).to(dtype)
    sign = torch.randint(0, 2, shape, generator=gen).to(torch.float64) * 2 - 1
    # Mostly positive (long memory) with some negative entries.
    return torch.where(torch.rand(shape, generator=gen) < 0.8, r, r * sign).to(dtype)


def randn(shape, dtype, gen=None):
    if dtype.is_complex:
        return torch.randn(shape, dtype=torch.complex128, generator=gen).to(dtype)
    return torch.randn(shape, dtype=torch.float64, generator=gen).to(dtype)


def up(t):
    """Upcast to the float64 / complex128 reference precision."""
    if t is None:
        return None
    return t.detach().to(torch.complex128 if t.is_complex() else torch.float64)


def require_cpu_ext():
    """Skip if the C++ extension cannot be built -- but FAIL under CI."""
    from lrnnx_kernels import cpu_available

    ok, why = cpu_available()
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"C++ diag_scan extension failed to build in CI: {why}")
        pytest.skip(f"C++ diag_scan extension unavailable: {why}")
