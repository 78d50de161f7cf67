r"""The ``mamba2`` layer: Mamba-2, multi-head SSM with scalar-times-identity A (SSD).

Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality", https://arxiv.org/abs/2405.21060.  The scan is the chunked SSD
algorithm of :mod:`.ssd` (plain PyTorch matmuls).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

import lrnnx
from lrnnx.errors import ConfigError
from lrnnx_plugins.common.causal_conv import CausalConv1d

from .mamba import (check_dt_options, check_state, dt_bias_init, positive,
                    state_dtype)
from .ssd import compute_dtype, ssd_chunked, ssd_step


class GatedRMSNorm(nn.Module):
    """``rmsnorm(y * silu(z)) * weight`` over groups of ``group_size`` channels.

    Mamba-2's ``RMSNormGated`` with ``norm_before_gate=False`` (the gate is applied first);
    computed in >= float32 and returned in ``y``'s dtype.
    """

    def __init__(self, d: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        rdt = compute_dtype(y, z, self.weight)
        g = y.to(rdt) * F.silu(z.to(rdt))
        shape = g.shape
        g = g.reshape(*shape[:-1], shape[-1] // self.group_size, self.group_size)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return (g.reshape(shape) * self.weight.to(rdt)).to(y.dtype)


class Mamba2(lrnnx.Layer):
    r"""Mamba-2: multi-head selective SSM with a scalar decay per head (SSD).

    With :math:`d_{inner} = \text{expand} \cdot d_{model}`, H = d_inner / headdim heads of width
    P = headdim, G = ngroups groups of B/C (state size N), one matmul gives
    :math:`[z, x, B, C, \delta] = W_{in} u_t`; a causal depthwise conv + SiLU runs over
    (x, B, C); then per head h (group g(h)):

    .. math::

        \Delta_t = \operatorname{softplus}(\delta_t + b_{dt})\,\tau_t,\qquad
        H_t = e^{\Delta_t A_h} H_{t-1} + \Delta_t\, x_t B_t^\top,\qquad
        y_t = H_t C_t + D_h x_t

        \text{out}_t = W_{out}\,\operatorname{RMSNorm}_G(y_t \odot \operatorname{silu}(z_t))

    with :math:`H_t \in \mathbb{R}^{P \times N}`, :math:`A_h = -e^{A\_log_h} < 0` (the "mamba"
    discretization: :math:`\bar A = e^{\Delta A}`, :math:`\bar B = \Delta B`) and the gated
    RMSNorm normalizing each group of d_inner / G channels (``norm_before_gate=False``).
    :math:`\tau_t` are optional ``timesteps`` (event streams): they scale :math:`\Delta_t`;
    all ones is the same as none.  The forward pass uses the chunked SSD algorithm
    (:func:`lrnnx_plugins.mamba.ssd.ssd_chunked`, chunks of ``chunk_size`` tokens: quadratic
    within a chunk, a linear recurrence across chunks); ``step`` the recurrence above.

    Init (paper / reference defaults): ``A ~ U(A_init_range = [1, 16])``, ``A_log = log A``;
    ``dt_bias = softplus^-1(dt)``, dt log-uniform in [dt_min, dt_max] clamped at
    dt_init_floor; ``D = 1``; norm weight 1.

    State: ``{"conv": (B, d_inner + 2 G N, d_conv - 1), "ssm": (B, H, P, N)}`` (``ssm`` in >=
    float32).  Prefill with ``forward(x, return_state=True)``, then ``step`` continues exactly.

    Varlen: ``cu_seqlens`` packs sequences along L (B = 1).  Without a state in or out, SSD runs
    once over the packed input with the decay set to zero (log decay -inf) at each sequence
    start; with ``state`` / ``return_state`` it runs once per sequence (per-sequence states,
    one row each).

    Shapes: x (B, L, d_model) -> (B, L, d_model); step: x_t (B, d_model) -> (B, d_model);
    timesteps (B, L) (step: (B,)).

    Example::

        layer = lrnnx.build_layer("mamba2(headdim=32, d_state=64)", d_model=128)
        y, st = layer(torch.randn(2, 100, 128), return_state=True)
        y_t, st = layer.step(torch.randn(2, 128), st)
    """

    name = "mamba2"
    capabilities = frozenset({"step", "varlen", "timesteps"})
    test_kwargs: ClassVar[dict] = {"d_state": 4, "headdim": 4, "chunk_size": 8}

    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, expand: int = 2,
                 headdim: int = 64, ngroups: int = 1, chunk_size: int = 64,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 A_init_range: tuple[float, float] = (1.0, 16.0), norm_eps: float = 1e-5,
                 bias: bool = False, conv_bias: bool = True):
        super().__init__()
        where = "layer 'mamba2'"
        positive(where, d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand,
                 headdim=headdim, ngroups=ngroups, chunk_size=chunk_size)
        d_inner = expand * d_model
        if d_inner % headdim:
            raise ConfigError(
                f"{where}: d_inner = expand * d_model = {expand} * {d_model} = {d_inner} is not "
                f"divisible by headdim={headdim}; choose headdim dividing {d_inner} (e.g. "
                f"{_divisor_hint(d_inner, headdim)}) or change d_model/expand.")
        nheads = d_inner // headdim
        if nheads % ngroups:
            raise ConfigError(f"{where}: the {nheads} heads (d_inner / headdim = {d_inner} / "
                              f"{headdim}) are not divisible by ngroups={ngroups}; choose "
                              f"ngroups dividing {nheads}.")
        check_dt_options(where, dt_min, dt_max, dt_init_floor)
        lo, hi = A_init_range
        if not 0 < lo <= hi:
            raise ConfigError(f"{where}: option 'A_init_range' must be (low, high) with "
                              f"0 < low <= high, got {A_init_range}; the default is (1, 16).")
        if not norm_eps > 0:
            raise ConfigError(f"{where}: option 'norm_eps' must be > 0, got {norm_eps}.")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner, self.headdim, self.nheads, self.ngroups = d_inner, headdim, nheads, ngroups
        self.chunk_size = chunk_size
        gn = ngroups * d_state
        self.conv_dim = d_inner + 2 * gn

        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * gn + nheads, bias=bias)
        self.conv1d = CausalConv1d(self.conv_dim, d_conv, bias=conv_bias)
        self.dt_bias = nn.Parameter(dt_bias_init(nheads, dt_min, dt_max, dt_init_floor))
        self.dt_bias._no_weight_decay = True
        self.A_log = nn.Parameter(torch.log(torch.empty(nheads).uniform_(lo, hi)))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(nheads))
        self.D._no_weight_decay = True
        self.norm = GatedRMSNorm(d_inner, d_inner // ngroups, eps=norm_eps)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device=None, dtype=None):
        device = self.A_log.device if device is None else device
        dtype = self.A_log.dtype if dtype is None else dtype
        return {
            "conv": torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device,
                                dtype=dtype),
            "ssm": torch.zeros(batch_size, self.nheads, self.headdim, self.d_state,
                               device=device, dtype=state_dtype(dtype, False)),
        }

    def _check_state(self, state, rows: int, x) -> None:
        check_state(self, state, rows, {"conv": (self.conv_dim, self.d_conv - 1),
                                        "ssm": (self.nheads, self.headdim, self.d_state)}, x)

    # ------------------------------------------------------------------ pieces
    def _split_in(self, x):
        """in_proj -> z (.., d_inner), xBC (.., conv_dim), dt (.., H)."""
        return self.in_proj(x).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _heads(self, xBC):
        """Conv output -> x (.., H, P), B, C (.., G, N)."""
        gn = self.ngroups * self.d_state
        xs, B, C = xBC.split([self.d_inner, gn, gn], dim=-1)
        lead = xs.shape[:-1]
        return (xs.reshape(*lead, self.nheads, self.headdim),
                B.reshape(*lead, self.ngroups, self.d_state),
                C.reshape(*lead, self.ngroups, self.d_state))

    def _dt(self, dt, timesteps):
        rdt = compute_dtype(dt, self.dt_bias)
        dt = F.softplus(dt.to(rdt) + self.dt_bias.to(rdt))
        if timesteps is not None:
            dt = dt * timesteps.to(rdt).unsqueeze(-1)
        return dt

    def _out(self, y, z):
        y = self.norm(y.reshape(*y.shape[:-2], self.d_inner), z)
        return self.out_proj(y.to(z.dtype))

    # ------------------------------------------------------------------ compute
    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        rows = x.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
        if state is not None:
            self._check_state(state, rows, x)
        z, xBC, dt = self._split_in(x)
        xBC, conv_state = self.conv1d(xBC, None if state is None else state["conv"],
                                      cu_seqlens=cu_seqlens, activation="silu")
        xs, B, C = self._heads(xBC)
        dt = self._dt(dt, timesteps)
        A = -torch.exp(self.A_log)
        h0 = None if state is None else state["ssm"]
        kw = dict(chunk_size=self.chunk_size, D=self.D)
        h = None
        if cu_seqlens is None:
            out = ssd_chunked(xs, dt, A, B, C, initial_state=h0,
                              return_final_state=return_state, **kw)
            y, h = out if return_state else (out, None)
        elif h0 is None and not return_state:
            # one pass: a log decay of -inf at every sequence start resets the state there
            start = torch.zeros(1, x.shape[1], dtype=torch.bool, device=x.device)
            first = cu_seqlens[:-1].long()
            start[0, first[first < x.shape[1]]] = True
            y = ssd_chunked(xs, dt, A, B, C, seq_start=start, **kw)
        else:
            y, h = self._ssd_per_sequence(xs, dt, A, B, C, h0, cu_seqlens, kw)
        y = self._out(y, z)
        return (y, {"conv": conv_state, "ssm": h}) if return_state else y

    def _ssd_per_sequence(self, xs, dt, A, B, C, h0, cu_seqlens, kw):
        """One SSD call per packed sequence, each from its own row of ``h0``."""
        sdt = state_dtype(xs.dtype, False)
        ys, hs = [], []
        bounds = cu_seqlens.tolist()
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            h0_i = None if h0 is None else h0[i:i + 1]
            if a == b:  # empty sequence: its state passes through unchanged
                hs.append(h0_i.to(sdt) if h0_i is not None else xs.new_zeros(
                    1, self.nheads, self.headdim, self.d_state, dtype=sdt))
                continue
            y_i, h_i = ssd_chunked(xs[:, a:b], dt[:, a:b], A, B[:, a:b], C[:, a:b],
                                   initial_state=h0_i, return_final_state=True, **kw)
            ys.append(y_i)
            hs.append(h_i.to(sdt))
        y = torch.cat(ys, dim=1) if ys else xs.new_zeros(1, 0, self.nheads, self.headdim)
        return y, torch.cat(hs, dim=0)

    def step(self, x_t, state, timesteps=None):
        self._check_state(state, x_t.shape[0], x_t)
        z, xBC, dt = self._split_in(x_t)
        xBC, conv_state = self.conv1d.step(xBC, state["conv"], activation="silu")
        xs, B, C = self._heads(xBC)
        y, h = ssd_step(xs, self._dt(dt, timesteps), -torch.exp(self.A_log), B, C,
                        state["ssm"], D=self.D)
        return self._out(y, z), {"conv": conv_state, "ssm": h}

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, nheads={self.nheads}, "
                f"headdim={self.headdim}, d_state={self.d_state}, ngroups={self.ngroups}, "
                f"chunk_size={self.chunk_size}")


def _divisor_hint(n: int, near: int) -> int:
    """The divisor of ``n`` closest to ``near`` (for the error message)."""
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - near), d))
