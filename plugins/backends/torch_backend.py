"""Pure-PyTorch scan backends: ``torch`` (chunked, any device) and ``torch_ref`` (sequential loop).

* ``torch`` (priority 10): the exact two-level chunked scan
  (``lrnnx_kernels.diag_scan.diag_scan_chunked``, ~2 sqrt(L) vectorized steps, custom backward) and
  the chunked selective scan (``lrnnx_kernels.selective_scan.selective_scan_chunked``, bounded
  memory through per-chunk checkpointing).  Runs on every device and dtype; the fallback of
  ``backend="auto"``.
* ``torch_ref`` (priority 0): the sequential loops ``diag_scan_ref`` / ``selective_scan_ref``, one
  Python iteration per token.  The float64 ground truth of the tests; its priority keeps it out of
  ``"auto"`` whenever another backend can run, so use it by name (``backend="torch_ref"``).

Both run the steps with the same formulas (``diag_step``, ``selective_step`` of lrnnx_kernels):
``h_new = a_t * h + b_t`` computed in at least fp32, returned in the promoted input dtype.

Example::

    h, h_last = lrnnx.ops.diag_scan(a, b, backend="torch_ref")
"""

from __future__ import annotations

import torch
from lrnnx_kernels.diag_scan import diag_scan_chunked, diag_scan_ref
from lrnnx_kernels.diag_scan import diag_step as _diag_step
from lrnnx_kernels.selective_scan import (
    selective_scan_chunked,
    selective_scan_ref,
    selective_step as _selective_step,
)

import lrnnx

#: half precisions are carried in fp32 (the same policy as the scans)
_UPCAST = {torch.float16: torch.float32, torch.bfloat16: torch.float32,
           torch.complex32: torch.complex64}


def diag_step_compute(a_t: torch.Tensor, b_t: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
    """``a_t * h + b_t`` in at least fp32, returned in the promoted dtype of ``a_t``, ``b_t``.

    ``h=None`` is the zero state (so the result is ``b_t``, broadcast to ``b_t``'s shape).
    """
    out = torch.promote_types(a_t.dtype, b_t.dtype)
    cdt = _UPCAST.get(out, out)
    if h is None:
        return b_t.to(out).clone()
    if h.is_complex() and not cdt.is_complex:  # validated away in lrnnx.ops; keep exactness
        cdt = torch.promote_types(cdt, h.dtype)
    return _diag_step(a_t.to(cdt), b_t.to(cdt), h.to(cdt)).to(out)


class TorchBackend(lrnnx.ScanBackend):
    """Chunked PyTorch scans: exact, differentiable, every device and dtype."""

    name = "torch"
    priority = 10

    def available(self) -> tuple[bool, str]:
        return True, ""

    def supports(self, op: str, **problem) -> tuple[bool, str]:
        return True, ""

    def diag_scan(self, a, b, h0=None, reverse=False, cu_seqlens=None):
        return diag_scan_chunked(a, b, h0, reverse, cu_seqlens)

    def selective_scan(self, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, discretization="mamba", timesteps=None, h0=None,
                       return_last_state=False):
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                      discretization, timesteps, h0, return_last_state)

    def diag_step(self, a_t, b_t, h):
        return diag_step_compute(a_t, b_t, h)

    def selective_step(self, u_t, delta_t, A, B_t, C_t, state, D=None, z_t=None,
                       delta_bias=None, delta_softplus=False, discretization="mamba",
                       timesteps_t=None):
        return _selective_step(u_t, delta_t, A, B_t, C_t, state, D, z_t, delta_bias,
                               delta_softplus, discretization, timesteps_t)


class TorchRefBackend(TorchBackend):
    """Sequential reference loops (ground truth); never picked by ``"auto"`` over ``torch``."""

    name = "torch_ref"
    priority = 0

    def supports(self, op: str, **problem) -> tuple[bool, str]:
        return True, "sequential reference loop (slow: one Python step per token)"

    def diag_scan(self, a, b, h0=None, reverse=False, cu_seqlens=None):
        return diag_scan_ref(a, b, h0, reverse, cu_seqlens)

    def selective_scan(self, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, discretization="mamba", timesteps=None, h0=None,
                       return_last_state=False):
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  discretization, timesteps, h0, return_last_state)
