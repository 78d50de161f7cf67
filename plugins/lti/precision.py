r"""Precision policy of the state-space layers (``ssm``, ``s4d``, ``lru``, ``s4``, ``s5``,
``centaurus``, ``linoss``): their dynamics always run in float32 (float64 stays float64).

Why: the state-space math is not safe in half precision.  Complex parameters have no bfloat16
dtype (``torch.complex`` / ``view_as_complex`` reject bf16 tensors, the crash of issue #7), the
discretization ``exp(dt A)`` of a mode with ``|A_bar|`` close to 1 loses its decay in 8 mantissa
bits, powers ``A_bar^l`` of conv mode drift by ``l * eps``, and FFTs exist in half precision only
for power-of-two lengths on GPU.  So, like mamba_ssm's selective scan, the layers compute in
float32 whatever precision the model runs in:

* under ``torch.autocast`` (any device type): autocast is disabled for the layer's whole
  forward / step, half-precision inputs are cast to float32, and every matmul of the layer (the
  complex ``B x`` / ``C h`` projections of S5 / LRU / LinOSS / Centaurus, the Vandermonde
  contractions of conv mode) runs in float32 -- the measured alternative, bf16 projections
  feeding an fp32 scan, left 35% relative error in the gradient of Centaurus' ``log_dt``;
* with half-precision *parameters* (``model.to(torch.bfloat16)``): the layer runs on float32
  copies of them (:func:`torch.func.functional_call`; the casts are differentiable, so the
  gradients land on the bf16 parameters in bf16).

The output has the dtype of ``x`` (the layer contract; it is also what autocast gives for the
layer's last op, the elementwise skip ``y + D x``); recurrent states stay float32 / complex64
(rounding a state to bf16 between chunks would add an error per chunk).  Without autocast and
with float32 / float64 tensors the wrapped method is called as is.

Usage (inside the ``Layer`` validation wrapper, which wraps whatever the class body defines)::

    class MySSM(lrnnx.Layer):
        @full_precision
        def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
            ...
"""

from __future__ import annotations

import functools

import torch
from torch import nn

__all__ = ["LOW_PRECISION", "full_precision", "compute_dtype", "state_dtype"]

#: dtypes the state-space math is never run in
LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype the dynamics run in for tensors of ``dtype``: float32 for half precision
    (and float32 itself), float64 for float64; complex dtypes map to their real part's."""
    if dtype.is_complex:
        dtype = dtype.to_real()
    return torch.float32 if dtype in LOW_PRECISION else dtype


def state_dtype(dtype: torch.dtype, is_complex: bool) -> torch.dtype:
    """The dtype of a recurrent state computed for tensors of ``dtype``."""
    real = compute_dtype(dtype)
    if not is_complex:
        return real
    return torch.complex128 if real == torch.float64 else torch.complex64


def _up(t):
    """Half-precision tensors (and containers of them) cast to float32 / complex64."""
    if isinstance(t, torch.Tensor):
        if t.dtype in LOW_PRECISION:
            return t.float()
        if t.dtype == torch.complex32:
            return t.to(torch.complex64)
        return t
    if isinstance(t, dict):
        return {k: _up(v) for k, v in t.items()}
    if type(t) in (list, tuple):
        return type(t)(_up(v) for v in t)
    return t


def _low_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Float32 copies of the module's half-precision parameters and buffers, by name."""
    low = {}
    for name, t in module.named_parameters(remove_duplicate=False):
        if t.dtype in LOW_PRECISION:
            low[name] = t.float()
    for name, t in module.named_buffers(remove_duplicate=False):
        if t.dtype in LOW_PRECISION:
            low[name] = t.float()
    return low


class _Bound(nn.Module):
    """``method(layer, ...)`` as a module forward, so functional_call can reparametrize the
    layer around any method (``step`` as well as ``forward``) without calling the layer's
    ``__call__`` again (its hooks would fire twice)."""

    def __init__(self, layer: nn.Module, method):
        super().__init__()
        self.layer = layer
        self._method = method

    def forward(self, *args, **kwargs):
        return self._method(self.layer, *args, **kwargs)


def _cast_output(out, dtype: torch.dtype):
    """The output y (first element of a (y, state) tuple) in ``dtype``; states unchanged."""
    if isinstance(out, tuple):
        return (_cast_output(out[0], dtype), *out[1:])
    if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != dtype:
        return out.to(dtype)
    return out


def full_precision(method):
    """Run ``method(self, x, ...)`` (a layer's ``forward`` or ``step``) in float32: see the
    module docstring.  Idempotent: a wrapped method calling another (``S5.step`` ->
    ``SSM.step``) finds autocast off and float32 tensors and passes straight through."""

    @functools.wraps(method)
    def wrapper(self, x, *args, **kwargs):
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        low = _low_tensors(self)   # ~10 us per call (1% of an s4d step at B=1)
        if not autocast and not low and x.dtype not in LOW_PRECISION:
            return method(self, x, *args, **kwargs)
        out_dtype = x.dtype
        x, args, kwargs = _up((x, args, kwargs))
        with torch.autocast(device_type, enabled=False):
            if low:
                out = torch.func.functional_call(
                    _Bound(self, method), {f"layer.{k}": v for k, v in low.items()},
                    (x, *args), kwargs, tie_weights=True, strict=False)
            else:
                out = method(self, x, *args, **kwargs)
        return _cast_output(out, out_dtype)

    return wrapper
