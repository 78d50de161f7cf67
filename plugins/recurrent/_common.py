"""Helpers shared by the gated linear recurrences of ``lrnnx_plugins.recurrent``.

* :func:`check_scan` validates a layer's ``scan`` option (a scan-backend name or ``"auto"``) at
  construction, so a typo fails where it is written rather than at the first forward.
* :func:`state_tensor` fetches one tensor of a recurrent state and checks its shape, dtype and
  device, with an error that names the layer, the key, what was expected and the remedy.
* :func:`batch_rows` is the number of state rows a call needs: B, or the number of packed
  sequences with ``cu_seqlens`` (the state of a varlen call holds one row per sequence).
"""

from __future__ import annotations

import torch

from lrnnx.errors import ConfigError, InputError, InputTypeError


def check_scan(layer_name: str, scan: str) -> str:
    """Return ``scan`` if it is ``"auto"`` or a registered scan backend, else raise."""
    from lrnnx.errors import UnknownComponentError
    from lrnnx.registry.core import REGISTRY

    if not isinstance(scan, str):
        raise ConfigError(f"layer {layer_name!r}: option 'scan' expects a scan-backend name "
                          f"(str) or 'auto', got {type(scan).__name__} {scan!r}.")
    if scan != "auto" and scan not in REGISTRY.names("scan_backend"):
        raise UnknownComponentError("scan_backend", scan, ["auto", *REGISTRY.names("scan_backend")],
                                    context=f"option 'scan' of layer {layer_name!r}")
    return scan


def batch_rows(x: torch.Tensor, cu_seqlens: torch.Tensor | None) -> int:
    """Rows of the recurrent state for this call: B, or N_seq for packed varlen input."""
    return x.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1


def state_tensor(layer, state: dict | None, key: str, shape: tuple[int, ...],
                 like: torch.Tensor, varlen: bool = False) -> torch.Tensor | None:
    """``state[key]`` checked to have ``shape`` and ``like``'s device (None if no state).

    The state is cast to ``like``'s dtype only when both are floating point of different
    precision under autocast; otherwise a dtype mismatch is an error (silent casts would hide
    a state carried over from a model in another precision).
    """
    if state is None:
        return None
    where = f"layer {layer.name!r}"
    if key not in state:
        raise InputError(f"{where}: state is missing key {key!r} (has {sorted(state)}); pass "
                         f"the dict from init_state() or forward(..., return_state=True).")
    t = state[key]
    rows = "N_seq (one row per packed sequence)" if varlen else "B"
    if not isinstance(t, torch.Tensor):
        raise InputTypeError(f"{where}: state[{key!r}] must be a torch.Tensor of shape {shape}, "
                             f"got {type(t).__name__}.")
    if tuple(t.shape) != tuple(shape):
        raise InputError(f"{where}: state[{key!r}] must have shape {tuple(shape)} (first dim = "
                         f"{rows}), got {tuple(t.shape)}; build it with "
                         f"init_state({shape[0]}) or take it from forward(..., "
                         f"return_state=True) on the same batch.")
    if t.device != like.device:
        raise InputError(f"{where}: state[{key!r}] is on {t.device} but x is on {like.device}; "
                         f"move it with .to(x.device).")
    if t.dtype != like.dtype:
        if t.is_floating_point() and like.is_floating_point() and \
                torch.is_autocast_enabled(like.device.type):
            return t.to(like.dtype)
        raise InputTypeError(f"{where}: state[{key!r}] has dtype {t.dtype} but the computation "
                             f"runs in {like.dtype}; build the state with "
                             f"init_state(B, dtype={like.dtype}).")
    return t


def param_dtype_device(module: torch.nn.Module, device=None, dtype=None):
    """``(device, dtype)`` defaulting to those of the module's first parameter."""
    p = next(module.parameters())
    return (p.device if device is None else device), (p.dtype if dtype is None else dtype)
