"""Public diagonal linear recurrence: ``lrnnx.ops.diag_scan`` and ``lrnnx.ops.diag_step``.

The recurrence behind S4D, S5, LRU and every diagonal SSM once discretized (parallel scans of
linear recurrences: Martin & Cundy 2018, https://arxiv.org/abs/1709.04057)::

    forward:  h_t = a_t * h_{t-1} + b_t    t = 0 .. L-1,  h_{-1} = h0 (zeros if None)
    reverse:  h_t = a_t * h_{t+1} + b_t    t = L-1 .. 0,  h_{L}  = h0

elementwise over (batch, channel).  Inputs are validated here (see :mod:`.validation`), then a
scan backend runs the op (see :mod:`.dispatch`).
"""

from __future__ import annotations

import torch

from . import dispatch
from .validation import check_diag


def diag_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, *,
              reverse: bool = False, cu_seqlens: torch.Tensor | None = None,
              backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """All states of ``h_t = a_t * h_{t-1} + b_t``; differentiable in ``a``, ``b`` and ``h0``.

    Args:
        a: decays (B, L, D), or (1, L, D) shared across the batch; real or complex.
        b: inputs (B, L, D); real or complex (fp16/bf16/fp32/fp64, complex64/complex128).
        h0: initial state (B, D), or (N_seq, D) with ``cu_seqlens``; None means zeros.
        reverse: run from t = L-1 down to 0 (anti-causal direction of a bidirectional layer).
        cu_seqlens: packed variable-length batch: int32/int64 offsets ``[0, l1, l1+l2, ..., L]``
            with B == 1; the recurrence restarts from ``h0[i]`` at every sequence start.
        backend: ``"auto"`` (highest-priority backend that can run it) or a registered name
            (``lrnnx.list_scan_backends()``).

    Returns:
        ``(h, h_last)``: h (B, L, D) in the promoted dtype of ``a`` and ``b`` (the state is carried
        in at least fp32); h_last (B, D), or (N_seq, D) with ``cu_seqlens`` (the state after each
        sequence's last token in scan order, ``h0[i]`` or zeros for an empty sequence).

    Raises:
        InputError / InputTypeError: bad shapes, dtypes, devices or ``cu_seqlens``.
        UnknownComponentError: ``backend`` is not a registered name.
        BackendUnavailableError: the named backend cannot run this problem.

    Example::

        >>> a = torch.full((2, 5, 3), 0.5); b = torch.ones(2, 5, 3)
        >>> h, h_last = lrnnx.ops.diag_scan(a, b)
        >>> h[0, :, 0]
        tensor([1.0000, 1.5000, 1.7500, 1.8750, 1.9375])
    """
    problem = check_diag("diag_scan", a, b, h0, step=False, reverse=reverse, cu=cu_seqlens)
    return dispatch.call("diag_scan", backend, problem, a, b, h0, reverse=reverse,
                         cu_seqlens=cu_seqlens)


def diag_step(a_t: torch.Tensor, b_t: torch.Tensor, h: torch.Tensor | None = None, *,
              backend: str = "auto") -> torch.Tensor:
    """One step ``h_new = a_t * h + b_t`` (recurrent decoding), the formula of :func:`diag_scan`.

    Args:
        a_t: (B, D) or (1, D).  b_t: (B, D).  h: (B, D) previous state, None means zeros.
        backend: as in :func:`diag_scan`.

    Returns:
        h_new (B, D) in the promoted dtype of ``a_t`` and ``b_t`` (computed in at least fp32).
        ``diag_step`` fed the tokens of a sequence one by one reproduces ``diag_scan``'s states.

    Example::

        >>> h = lrnnx.ops.diag_step(torch.full((2, 3), 0.5), torch.ones(2, 3), torch.ones(2, 3))
        >>> h[0]
        tensor([1.5000, 1.5000, 1.5000])
    """
    problem = check_diag("diag_step", a_t, b_t, h, step=True)
    return dispatch.call("diag_step", backend, problem, a_t, b_t, h)
