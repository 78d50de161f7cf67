"""Input validation for layers, run before any compute.

Each error names the layer, the argument, what was expected, what was given and the remedy.
Checks that need tensor values (cu_seqlens monotone, timesteps >= 0) are skipped while
torch.compile traces or a CUDA graph is captured (they would force a device sync).
"""

from __future__ import annotations

import torch

from ..errors import InputError, InputTypeError

CAPABILITIES = frozenset({"step", "varlen", "timesteps", "bidirectional", "complex"})


def _values_checkable(t: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():
        return False
    if t.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    return True


def _where(layer) -> str:
    name = getattr(layer, "name", "") or type(layer).__name__
    return f"layer {name!r}"


def check_x(layer, x, arg: str = "x", step: bool = False) -> None:
    where = _where(layer)
    want = "(B, d_model)" if step else "(B, L, d_model)"
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{where}: {arg} must be a torch.Tensor of shape {want}, "
                             f"got {type(x).__name__}.")
    rank = 2 if step else 3
    if x.dim() != rank:
        remedy = ("call forward() for whole sequences" if step and x.dim() == 3 else
                  "use step() for single tokens, or add the missing dims with x[None] / "
                  "x.unsqueeze(1)")
        raise InputError(f"{where}: {arg} must have rank {rank} {want}, got shape "
                         f"{tuple(x.shape)}; {remedy}.")
    d_model = getattr(layer, "d_model", None)
    if d_model is not None and x.shape[-1] != d_model:
        raise InputError(f"{where}: {arg} last dim must be d_model={d_model}, got "
                         f"{x.shape[-1]} (shape {tuple(x.shape)}); build the layer with "
                         f"d_model={x.shape[-1]} or project the input.")
    want_complex = "complex" in getattr(layer, "capabilities", ())
    if not (x.is_floating_point() or (want_complex and x.is_complex())):
        raise InputTypeError(f"{where}: {arg} must be a floating-point tensor, got dtype "
                             f"{x.dtype}; convert it with x.float().")
    # compare against the first real floating-point parameter (complex ones say nothing about x)
    p = next((q for q in layer.parameters() if q.is_floating_point()), None) \
        if isinstance(layer, torch.nn.Module) else None
    if p is not None:
        if p.device != x.device:
            raise InputError(f"{where}: {arg} is on {x.device} but the layer's parameters are "
                             f"on {p.device}; move one of them (layer.to({str(x.device)!r})).")
        if p.is_floating_point() and x.is_floating_point() and p.dtype != x.dtype and \
                not torch.is_autocast_enabled(x.device.type):
            raise InputTypeError(f"{where}: {arg} has dtype {x.dtype} but the layer's parameters "
                                 f"are {p.dtype}; convert one (layer.to({x.dtype}) or "
                                 f"x.to({p.dtype})), or use torch.autocast.")


def _require(layer, cap: str, arg: str) -> None:
    if cap not in layer.capabilities:
        raise InputError(f"{_where(layer)} does not support {arg} (it lacks the {cap!r} "
                         f"capability; it has {sorted(layer.capabilities) or 'none'}); drop "
                         f"{arg} or choose a layer that lists {cap!r} in `lrnnx list layers`.")


def check_cu_seqlens(layer, cu_seqlens, x) -> None:
    if cu_seqlens is None:
        return
    _require(layer, "varlen", "cu_seqlens")
    where = _where(layer)
    if not isinstance(cu_seqlens, torch.Tensor):
        raise InputTypeError(f"{where}: cu_seqlens must be an int32/int64 torch.Tensor, got "
                             f"{type(cu_seqlens).__name__}; use torch.tensor([0, l1, l1+l2, ...]).")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise InputTypeError(f"{where}: cu_seqlens must have an integer dtype (int32/int64), got "
                             f"{cu_seqlens.dtype}; use cu_seqlens.long().")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise InputError(f"{where}: cu_seqlens must be 1-D with at least 2 entries "
                         f"[0, ..., L], got shape {tuple(cu_seqlens.shape)}.")
    if x.shape[0] != 1:
        raise InputError(f"{where}: packed varlen input (cu_seqlens) needs batch size 1 "
                         f"(sequences concatenated along L), got B={x.shape[0]}; pack with "
                         f"torch.cat(seqs, dim=1).")
    if cu_seqlens.device != x.device:
        raise InputError(f"{where}: cu_seqlens is on {cu_seqlens.device} but x is on "
                         f"{x.device}; move it with cu_seqlens.to(x.device).")
    if _values_checkable(cu_seqlens):
        vals = cu_seqlens.tolist()
        L = x.shape[1]
        if vals[0] != 0 or vals[-1] != L:
            raise InputError(f"{where}: cu_seqlens must start at 0 and end at L={L}, got "
                             f"{vals[0]} ... {vals[-1]}.")
        if any(b < a for a, b in zip(vals, vals[1:])):
            raise InputError(f"{where}: cu_seqlens must be non-decreasing, got {vals}.")


def check_timesteps(layer, timesteps, x, step: bool = False) -> None:
    if timesteps is None:
        return
    _require(layer, "timesteps", "timesteps")
    where = _where(layer)
    want = tuple(x.shape[:1]) if step else tuple(x.shape[:2])
    if not isinstance(timesteps, torch.Tensor):
        raise InputTypeError(f"{where}: timesteps must be a torch.Tensor of shape {want}, got "
                             f"{type(timesteps).__name__}.")
    if tuple(timesteps.shape) != want:
        raise InputError(f"{where}: timesteps must have shape {want} "
                         f"({'(B,)' if step else '(B, L)'}), got {tuple(timesteps.shape)}.")
    if not timesteps.is_floating_point():
        raise InputTypeError(f"{where}: timesteps must be floating point, got "
                             f"{timesteps.dtype}; use timesteps.float().")
    if timesteps.device != x.device:
        raise InputError(f"{where}: timesteps is on {timesteps.device} but x is on {x.device}.")
    if _values_checkable(timesteps) and timesteps.numel() and bool((timesteps < 0).any()):
        raise InputError(f"{where}: timesteps must be >= 0 (time elapsed since the previous "
                         f"event), got min {timesteps.min().item():g}.")


def check_state(layer, state) -> None:
    if state is None:
        return
    if not isinstance(state, dict):
        raise InputTypeError(f"{_where(layer)}: state must be the dict returned by init_state() "
                             f"or forward(..., return_state=True), got {type(state).__name__}.")
