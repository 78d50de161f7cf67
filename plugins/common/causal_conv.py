"""Causal depthwise 1-D convolution with a recurrent state (Mamba, Mamba2, Hawk/Griffin).

y_t[d] = bias[d] + sum_{j=0}^{K-1} w[d, j] * x_{t-K+1+j}[d]      (x_s = state for s < 0)

The state is the last K-1 inputs, (B, D, K-1), oldest first, so prefill by ``forward`` followed by
``step`` equals one ``forward`` over the whole sequence.  Packed varlen input (``cu_seqlens``)
restarts the window at every sequence start (taps reaching into the previous sequence read zero,
or that sequence's entry of ``state`` when a per-sequence state is given).

Context parallelism (``lrnnx.distributed.context_parallel``): inside such a block ``forward``
takes this rank's chunk of the sequence; the window's first K-1 inputs come from the previous
ranks (``lrnnx.distributed.exchange_halo``) and the returned state is the global final window.

``activation="silu"`` applies SiLU to the output (``forward`` and ``step``), fused into the
kernel on the Triton path.

Fast path: on CUDA tensors (no ``cu_seqlens``, no context parallelism, K <= 8) ``forward`` runs
the fused Triton kernels ``lrnnx_kernels.triton.causal_conv1d`` (forward and backward); the
PyTorch code below is their slow twin (CPU, varlen, context parallel).  ``TRITON_MODE`` (initial
value from the environment variable ``LRNNX_CONV_TRITON``) selects: ``"auto"`` (CUDA tensors when
triton is installed), ``"off"`` (always PyTorch), ``"force"`` (also CPU tensors when
``TRITON_INTERPRET=1``: the tests run the kernels through Triton's interpreter that way).
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lrnnx import distributed as _cp

#: "auto" | "off" | "force": when ``CausalConv1d.forward`` takes the fused Triton kernels.
TRITON_MODE = os.environ.get("LRNNX_CONV_TRITON", "auto")
_TRITON_MAX_K = 8
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_HAS_TRITON: bool | None = None
_TRITON_FAILED: str | None = None  # why the kernel failed to compile here (then PyTorch runs)


def _use_triton(x: torch.Tensor, kernel_size: int) -> bool:
    """Cheap (no triton import): may the fused kernel run ``x``?"""
    global _HAS_TRITON
    if TRITON_MODE == "off" or _TRITON_FAILED is not None:
        return False
    if x.dtype not in _TRITON_DTYPES or kernel_size > _TRITON_MAX_K:
        return False
    if os.environ.get("TRITON_INTERPRET", "0") == "1":  # the interpreter runs CPU tensors only
        ok = TRITON_MODE == "force" and x.device.type == "cpu"
    else:
        ok = x.is_cuda
    if ok and _HAS_TRITON is None:
        _HAS_TRITON = importlib.util.find_spec("triton") is not None
    return ok and bool(_HAS_TRITON)


def _triton_forward(x, weight, bias, state, activation):
    """The fused kernels, or None if they failed to compile here (remembered; PyTorch runs)."""
    global _TRITON_FAILED
    from lrnnx_kernels import triton as kt

    try:
        return kt.causal_conv1d(x, weight, bias, state, activation)
    except Exception as exc:  # only a compilation failure falls back
        from triton.compiler.errors import CompilationError

        if not isinstance(exc, CompilationError):
            raise
        _TRITON_FAILED = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"CausalConv1d: the Triton kernel failed to compile ({_TRITON_FAILED}); "
                      "using the PyTorch path", RuntimeWarning, stacklevel=3)
        return None


def _check_activation(activation: str | None) -> None:
    if activation not in (None, "silu"):
        raise ValueError(f"CausalConv1d: activation must be None or 'silu', got {activation!r}")


def _positions_in_sequence(cu_seqlens: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(offset of each token inside its sequence, sequence index of each token), both (L,)."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    seq_id = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device),
                                     lengths, output_size=L)
    offset = torch.arange(L, device=cu_seqlens.device) - cu_seqlens[:-1][seq_id]
    return offset, seq_id


class CausalConv1d(nn.Module):
    """Depthwise causal convolution over (B, L, D) with kernel size ``kernel_size``."""

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = True):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"CausalConv1d: kernel_size must be >= 1, got {kernel_size}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        # nn.Conv1d's default init (kaiming uniform with fan_in = kernel_size for depthwise)
        bound = 1.0 / math.sqrt(kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        dtype = dtype or self.weight.dtype
        device = device or self.weight.device
        return torch.zeros(batch_size, self.channels, self.kernel_size - 1, device=device,
                           dtype=dtype)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None,
                activation: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, L, D) -> (y (B, L, D), new state (B or N_seq, D, K-1)).

        ``activation``: None or ``"silu"`` (applied to y; fused on the Triton path)."""
        _check_activation(activation)
        K = self.kernel_size
        if (cu_seqlens is None and not _cp.active() and x.dim() == 3
                and _use_triton(x, K)):
            out = _triton_forward(x, self.weight, self.bias, state, activation)
            if out is not None:
                return out
        y, new_state = self._forward_torch(x, state, cu_seqlens)
        return (F.silu(y) if activation == "silu" else y), new_state

    def _forward_torch(self, x, state, cu_seqlens):
        B, L, D = x.shape
        K = self.kernel_size
        cp_final = None
        if _cp.active():  # context parallel: the halo (previous ranks' inputs) is the state
            state, cp_final = _cp.exchange_halo(x, state, K - 1, cu_seqlens=cu_seqlens)
        if cu_seqlens is not None:
            return self._forward_varlen(x, state, cu_seqlens)
        if state is None:
            state = x.new_zeros(B, D, K - 1)
        if L == 0:
            return x.new_zeros(B, 0, D), (state if cp_final is None else cp_final)
        # K shifted multiply-adds in (B, L, D) layout: ~2x faster than F.conv1d's depthwise
        # backward on CPU (measured on Hawk) and no transposes of x.
        full = torch.cat([state.to(x.dtype).transpose(1, 2), x], dim=1)  # (B, K-1+L, D)
        w = self.weight.to(x.dtype)
        y = full[:, 0:L] * w[:, 0]
        for j in range(1, K):
            y = y + full[:, j:j + L] * w[:, j]
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        new_state = full[:, full.shape[1] - (K - 1):].transpose(1, 2)
        return y, (new_state if cp_final is None else cp_final)

    def _forward_varlen(self, x, state, cu_seqlens):
        # x is (1, L, D); tap j of token t reads x[t - (K-1-j)] only inside the same sequence.
        _, L, D = x.shape
        K = self.kernel_size
        n_seq = cu_seqlens.numel() - 1
        if L == 0:  # every sequence is empty: nothing to convolve, states unchanged
            st = state if state is not None else x.new_zeros(n_seq, D, K - 1)
            return x.new_zeros(1, 0, D), st
        offset, seq_id = _positions_in_sequence(cu_seqlens.long(), L)
        xs = x[0]
        y = torch.zeros_like(xs) if self.bias is None else self.bias.to(xs.dtype).expand(L, D)
        for j in range(K):
            lag = K - 1 - j
            shifted = (torch.cat([xs.new_zeros(min(lag, L), D), xs[: max(L - lag, 0)]], 0)
                       if lag else xs)
            inside = (offset >= lag).unsqueeze(1)
            tap = torch.where(inside, shifted, torch.zeros_like(shifted))
            if state is not None and lag:
                # positions before the sequence start read the sequence's own state:
                # offset - lag in [-(K-1), -1] -> state column (K-1) + (offset - lag)
                col = (K - 1 + offset - lag).clamp(0, K - 2)
                from_state = state[seq_id, :, col].to(xs.dtype)  # (L, D)
                tap = torch.where(inside, tap, from_state)
            y = y + self.weight[:, j].to(xs.dtype) * tap
        # new per-sequence state: the last K-1 inputs of each sequence (with earlier state
        # columns for sequences shorter than K-1)
        ends = cu_seqlens[1:].long()
        lengths = ends - cu_seqlens[:-1].long()
        new_state = x.new_zeros(n_seq, D, K - 1)
        for c in range(K - 1):
            back = K - 1 - c  # column c holds input at position end - back
            pos = ends - back
            valid = (back <= lengths).view(-1, 1)
            val = xs[pos.clamp(min=0)]
            if state is not None:
                prev_col = (K - 1 - (back - lengths)).clamp(0, K - 2)
                prev = state[torch.arange(n_seq, device=x.device), :, prev_col].to(x.dtype)
            else:
                prev = torch.zeros_like(val)
            new_state[:, :, c] = torch.where(valid, val, prev)
        return y.unsqueeze(0), new_state

    def step(self, x_t: torch.Tensor, state: torch.Tensor,
             activation: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t (B, D), state (B, D, K-1) -> (y_t (B, D), new state)."""
        _check_activation(activation)
        window = torch.cat([state.to(x_t.dtype), x_t.unsqueeze(2)], dim=2)  # (B, D, K)
        y = (window * self.weight.to(x_t.dtype)).sum(-1)
        if self.bias is not None:
            y = y + self.bias.to(x_t.dtype)
        if activation == "silu":
            y = F.silu(y)
        return y, window[:, :, 1:]
