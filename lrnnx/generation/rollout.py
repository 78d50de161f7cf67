"""Closed-loop rollout of a layer on a continuous signal: each output is the next input.

For a layer (or Backbone) ``f`` with state ``s`` (d_model in, d_model out), starting from an input
``x_0`` (or a context ``x_{-L+1..0}`` run in parallel first)::

    y_1, s_1 = f.step(x_0, s_0);   y_{t+1}, s_{t+1} = f.step(y_t, s_t)

and ``rollout`` returns ``y_1 .. y_steps`` as (B, steps, d).  This is autoregressive forecasting
/ free-running simulation of a learned dynamical system (the continuous-signal counterpart of
:func:`lrnnx.generation.generate`).  Gradients flow through the loop (wrap the call in
``torch.no_grad()`` for inference).

Example::

    layer = lrnnx.build_layer("s4d(d_state=16)", d_model=8).eval()
    ys = rollout(layer, torch.randn(2, 8), steps=100)                  # (2, 100, 8)
    ys, st = rollout(layer, context, steps=50, return_state=True)      # context: (2, L, 8)
    more = rollout(layer, ys[:, -1], steps=50, state=st)               # continues seamlessly
"""

from __future__ import annotations

import numbers

import torch

from lrnnx.errors import InputError, InputTypeError

__all__ = ["rollout"]


def _name(layer) -> str:
    return repr(getattr(layer, "name", None) or getattr(layer, "spec", None) or
                type(layer).__name__)


def rollout(layer, x0: torch.Tensor, steps: int, state=None, return_state: bool = False):
    """Feed ``layer``'s output back as its next input for ``steps`` steps.

    ``x0``: (B, d) a first input, or (B, L, d) a context (run with ``forward(...,
    return_state=True)``; its last output is the first returned value).  ``state``: the state to
    start from (default: ``layer.init_state(B)``).  Returns ``y`` (B, steps, d) and, with
    ``return_state``, the state after consuming every input so far (the context and
    ``y[:, :-1]``): ``rollout(layer, y[:, -1], n, state=that_state)`` continues the trajectory.
    """
    where = f"rollout: layer {_name(layer)}"
    if not hasattr(layer, "step") or "step" not in getattr(layer, "capabilities", ()):
        raise InputError(f"{where} cannot step (it lacks the 'step' capability); choose a "
                         f"recurrent layer (see `lrnnx list layers`).")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise InputTypeError(f"{where}: steps must be an int >= 0, got "
                             f"{type(steps).__name__} {steps!r}.")
    if steps < 0:
        raise InputError(f"{where}: steps must be >= 0, got {steps}.")
    if not isinstance(x0, torch.Tensor) or x0.dim() not in (2, 3):
        got = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise InputError(f"{where}: x0 must be a tensor of shape (B, d) (a first input) or "
                         f"(B, L, d) (a context), got {got}.")
    d = getattr(layer, "d_model", x0.shape[-1])
    if x0.shape[-1] != d:
        raise InputError(f"{where}: x0 last dim must be d_model={d}, got {x0.shape[-1]}.")
    B = x0.shape[0]
    if x0.dim() == 3:
        if x0.shape[1] == 0:
            raise InputError(f"{where}: the context x0 has length 0; pass at least one step, "
                             f"or a (B, d) first input.")
        if steps == 0:
            ys = x0.new_zeros(B, 0, d)
            return (ys, state) if return_state else ys
        y_ctx, state = layer(x0, state=state, return_state=True)
        y = y_ctx[:, -1]
    else:
        if state is None:
            state = layer.init_state(B, device=x0.device, dtype=x0.dtype)
        if steps == 0:
            ys = x0.new_zeros(B, 0, d)
            return (ys, state) if return_state else ys
        y, state = layer.step(x0, state)
    outs = [y]
    for _ in range(steps - 1):
        y, state = layer.step(y, state)
        outs.append(y)
    ys = torch.stack(outs, dim=1)
    return (ys, state) if return_state else ys
