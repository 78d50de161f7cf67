"""Triton kernels of lrnnx (GPU; CPU tensors through ``TRITON_INTERPRET=1``).

The functions mirror the reference kernels' signatures (plus keyword-only tile sizes):

* :func:`diag_scan` ``(a, b, h0=None, reverse=False, cu_seqlens=None) -> (h, h_last)``
  (real or complex, varlen, reverse, shared ``a``; ``diag_scan.py``)
* :func:`diag_step` ``(a_t, b_t, h) -> h_new`` (``step.py``)
* :func:`selective_scan` ``(u, delta, A, B, C, D=None, z=None, delta_bias=None,
  delta_softplus=False, discretization="mamba", timesteps=None, h0=None,
  return_last_state=False)``: fused S6, real or complex A, B, C (``selective_scan.py``)
* :func:`selective_step` ``(u_t, delta_t, A, B_t, C_t, state, ...) -> (y_t, state)``
* :func:`causal_conv1d` ``(x, weight, bias=None, state=None, activation=None) -> (y, new_state)``:
  fused causal depthwise conv1d, optional fused SiLU (``causal_conv.py``)
* :func:`rglru_gate` ``(ga, gx, x, coef, max_sqrt_grad=1000.0) -> (a, b)``: the RG-LRU gate math
  fused forward and backward (``rglru_gate.py``); :func:`rglru_gate_fused` takes both gates as
  the halves of one (..., 2W) projection
* :func:`available` / :func:`device_ok`: can they run here (cheap, see ``_host.py``).

Importing this package imports triton, compiles nothing, and registers the ``lrnnx::triton_*``
custom ops (``torch.library``, with fake kernels and autograd, so ``torch.compile(fullgraph=True)``
traces through them).  ``@triton.jit`` reads ``TRITON_INTERPRET`` at import: set it before the
first import to run on CPU tensors.  Example::

    from lrnnx_kernels import triton as kt
    h, h_last = kt.diag_scan(a.cuda(), b.cuda())
"""
from __future__ import annotations

# Submodules first, then the functions: binding ``diag_scan`` / ``selective_scan`` after the
# submodules of the same name are loaded keeps the package attributes the functions.
from . import causal_conv as _causal_conv_module  # noqa: F401
from . import diag_scan as _diag_scan_module  # noqa: F401
from . import rglru_gate as _rglru_gate_module  # noqa: F401
from . import selective_scan as _selective_scan_module  # noqa: F401
from . import step as _step_module  # noqa: F401
from ._host import available, device_ok, interpret_mode
from .causal_conv import causal_conv1d
from .diag_scan import diag_scan
from .rglru_gate import rglru_gate, rglru_gate_fused
from .selective_scan import selective_scan
from .step import diag_step, selective_step

__all__ = ["available", "device_ok", "interpret_mode", "causal_conv1d", "diag_scan",
           "diag_step", "rglru_gate", "rglru_gate_fused", "selective_scan", "selective_step"]
