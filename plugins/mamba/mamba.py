r"""The ``mamba`` layer: Mamba's selective state-space block (S6).

Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
https://arxiv.org/abs/2312.00752.  Event/asynchronous time steps as in Schöne et al. 2024,
"Scalable Event-by-event Processing of Neuromorphic Sensory Signals With Deep State-Space
Models" (STREAM/Event-SSM), https://arxiv.org/abs/2404.18508: ``timesteps`` scale dt.

Also shared helpers of the Mamba family (state checking, dt initialization, the scan name).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

import lrnnx
from lrnnx.errors import ConfigError, InputError, InputTypeError, UnknownComponentError
from lrnnx.ops import selective_scan, selective_step
from lrnnx_plugins.common.causal_conv import CausalConv1d


# ----------------------------------------------------------------------------- shared helpers
def dt_bias_init(n: int, dt_min: float, dt_max: float, dt_init_floor: float) -> torch.Tensor:
    """Mamba's dt bias: ``softplus^-1(dt)`` with dt log-uniform in [dt_min, dt_max], >= floor.

    So that ``softplus(bias)`` starts in the range of time scales the model should see.
    """
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse of softplus, stable for small dt


def check_dt_options(where: str, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
    if not 0 < dt_min <= dt_max:
        raise ConfigError(f"{where}: options 'dt_min'/'dt_max' need 0 < dt_min <= dt_max, got "
                          f"dt_min={dt_min}, dt_max={dt_max}; the defaults are 0.001 and 0.1.")
    if not dt_init_floor > 0:
        raise ConfigError(f"{where}: option 'dt_init_floor' must be > 0, got {dt_init_floor}.")


def positive(where: str, **opts: int) -> None:
    for k, v in opts.items():
        if v < 1:
            raise ConfigError(f"{where}: option {k!r} must be >= 1, got {v}.")


def scan_name(value: Any, where: str) -> str:
    """Validate a ``scan`` option: ``"auto"`` or a registered scan backend name (a bare spec
    NAME arrives as a str or as a spec Component); returns the name passed to ``lrnnx.ops``."""
    from lrnnx.registry.core import REGISTRY
    from lrnnx.registry.spec import Component

    if isinstance(value, Component) and not value.kwargs:
        value = value.name
    if not isinstance(value, str):
        raise ConfigError(f"{where}: option 'scan' must be 'auto' or the name of a registered "
                          f"scan backend (str), got {type(value).__name__} {value!r}; see "
                          f"`lrnnx list scan_backends`.")
    names = REGISTRY.names("scan_backend")
    if value != "auto" and value not in names:
        raise UnknownComponentError("scan_backend", value, ["auto", *names],
                                    context=f"option 'scan' of {where}")
    return value


def check_state(layer, state: dict, rows: int, shapes: dict[str, tuple[int, ...]], x,
                complex_keys: tuple[str, ...] = ()) -> None:
    """Raise InputError/InputTypeError unless ``state`` holds ``shapes`` (batch ``rows`` first)."""
    where = f"layer {layer.name!r}"
    missing = set(shapes) - set(state)
    if missing:
        raise InputError(f"{where}: state is missing {sorted(missing)} (expected keys "
                         f"{sorted(shapes)}); pass the dict from init_state() or "
                         f"forward(..., return_state=True).")
    for key, tail in shapes.items():
        t = state[key]
        want = (rows, *tail)
        if not isinstance(t, torch.Tensor):
            raise InputTypeError(f"{where}: state[{key!r}] must be a Tensor of shape {want}, "
                                 f"got {type(t).__name__}.")
        if tuple(t.shape) != want:
            rows_of = "sequences in cu_seqlens" if x.dim() == 3 and x.shape[0] != rows else \
                "batch"
            raise InputError(f"{where}: state[{key!r}] must have shape {want} ({rows_of} "
                             f"first), got {tuple(t.shape)}; build it with "
                             f"init_state({rows}) or take it from forward(..., "
                             f"return_state=True) on matching inputs.")
        if t.device != x.device:
            raise InputError(f"{where}: state[{key!r}] is on {t.device} but x is on {x.device}; "
                             f"move it with .to(x.device).")
        if t.is_complex() and key not in complex_keys:
            raise InputTypeError(f"{where}: state[{key!r}] is complex ({t.dtype}) but this "
                                 f"layer's state is real; pass its .real or build the layer "
                                 f"with complex=True.")


def state_dtype(dtype: torch.dtype, is_complex: bool) -> torch.dtype:
    """The dtype the scans carry their state in: >= float32, complex when A/B are."""
    real = torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32
    if is_complex:
        return torch.complex128 if real == torch.float64 else torch.complex64
    return real


# ----------------------------------------------------------------------------- the layer
class Mamba(lrnnx.Layer):
    r"""Mamba (S6): gated selective SSM with a causal depthwise convolution.

    With :math:`d_{inner} = \text{expand} \cdot d_{model}` channels and state size :math:`N`:

    .. math::

        [u; z] = W_{in} x_t,\quad u \leftarrow \operatorname{silu}(\operatorname{conv}(u)),
        \quad [\delta_r; B_t; C_t] = W_x u_t,\quad
        \Delta_t = \operatorname{softplus}(W_{dt} \delta_r + b_{dt}) \cdot \tau_t

        h_t = \bar A_t h_{t-1} + \bar B_t u_t, \qquad
        y_t = \operatorname{Re}(C_t h_t) + D u_t, \qquad
        \text{out}_t = W_{out}\,(y_t \odot \operatorname{silu}(z_t))

    per channel d and state n, with :math:`(\bar A, \bar B) = \text{discretize}(A_{dn},
    \Delta_{t,d}) \cdot B_t` from ``lrnnx.ops.discretize`` ("mamba": :math:`\bar A =
    e^{\Delta A}`, :math:`\bar B = \Delta B`; "zoh": :math:`\bar B = (e^{\Delta A} - 1) / A
    \cdot B`; "bilinear": :math:`\bar A = (1 + \Delta A/2)/(1 - \Delta A/2)`, :math:`\bar B =
    \Delta/(1 - \Delta A/2) B`, which stays bounded as :math:`\Delta \to \infty`; "dirac":
    :math:`\bar B = B`).  :math:`\tau_t` are the optional ``timesteps`` (event streams, STREAM):
    :math:`\Delta_{eff} = \Delta \tau` scales the transition and the input alike; all ones is
    the same as none.  Forward, step and every scan backend use the same formulas.

    Parameters (paper defaults): ``A = -exp(A_log)`` with S4D-Real init ``A_log[d, n] =
    log(n + 1)``; ``D = 1``; ``dt_proj.weight ~ U(±dt_rank^-0.5 * dt_scale)``, ``dt_proj.bias
    = softplus^-1(dt)``, dt log-uniform in [dt_min, dt_max] clamped at dt_init_floor;
    ``dt_rank="auto"`` is ``ceil(d_model / 16)``.

    ``complex=True``: complex diagonal ``A = -exp(A_log) + i A_imag`` with S4D-Lin init
    (real part -1/2, ``A_imag[d, n] = pi n``), and complex ``B_t``, ``C_t``: ``x_proj`` emits
    2N numbers for each, read as interleaved (real, imag) pairs; the state is complex and the
    output takes the real part of :math:`C_t h_t` (no factor 2).

    ``scan``: scan backend running ``lrnnx.ops.selective_scan`` (``"auto"`` or a registered
    name such as ``torch``, ``cpu``, ``torch_ref``).

    State: ``{"conv": (B, d_inner, d_conv - 1), "ssm": (B, d_inner, N)}`` (the last conv inputs
    and the SSM state; ``ssm`` in >= float32, complex with ``complex=True``).  Prefill with
    ``forward(x, return_state=True)``, then ``step`` continues exactly.

    Varlen: ``cu_seqlens`` packs sequences along L (B = 1).  The convolution restarts natively;
    ``lrnnx.ops.selective_scan`` has no ``cu_seqlens``, so the scan runs once per sequence (a
    Python loop over the segments: exact, but one scan call per sequence).  A state passed with
    ``cu_seqlens`` has one row per sequence, and so has the returned state.

    Shapes: x (B, L, d_model) -> (B, L, d_model); step: x_t (B, d_model) -> (B, d_model);
    timesteps (B, L) (step: (B,)).

    Example::

        layer = lrnnx.build_layer("mamba(d_state=16)", d_model=64)
        y, st = layer(torch.randn(2, 100, 64), return_state=True)
        y_t, st = layer.step(torch.randn(2, 64), st)
    """

    name = "mamba"
    capabilities = frozenset({"step", "varlen", "timesteps"})
    test_kwargs: ClassVar[dict] = {"d_state": 4, "expand": 2}

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | Literal["auto"] = "auto", dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, dt_scale: float = 1.0,
                 bias: bool = False, conv_bias: bool = True,
                 discretization: Literal["mamba", "zoh", "bilinear", "dirac"] = "mamba",
                 complex: bool = False, scan: str = "auto"):
        super().__init__()
        where = "layer 'mamba'"
        positive(where, d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand)
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        positive(where, dt_rank=dt_rank)
        check_dt_options(where, dt_min, dt_max, dt_init_floor)
        if not dt_scale > 0:
            raise ConfigError(f"{where}: option 'dt_scale' must be > 0, got {dt_scale}.")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = d_inner = expand * d_model
        self.dt_rank, self.discretization, self.complex = dt_rank, discretization, complex
        self.scan = scan_name(scan, where)
        N = d_state
        n_bc = 2 * N if complex else N

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv1d = CausalConv1d(d_inner, d_conv, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * n_bc, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        std = dt_rank ** -0.5 * dt_scale
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(dt_bias_init(d_inner, dt_min, dt_max, dt_init_floor))
        n = torch.arange(N, dtype=torch.float32).expand(d_inner, N)
        if complex:  # S4D-Lin: A_n = -1/2 + i pi n
            self.A_log = nn.Parameter(torch.full((d_inner, N), math.log(0.5)))
            self.A_imag = nn.Parameter(math.pi * n.clone())
            self.A_imag._no_weight_decay = True
        else:        # S4D-Real: A_n = -(n + 1)
            self.A_log = nn.Parameter(torch.log(n + 1.0))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    # ------------------------------------------------------------------ pieces
    def A(self) -> torch.Tensor:
        """The continuous-time diagonal A, (d_inner, N), real or complex."""
        re = -torch.exp(self.A_log)
        if not self.complex:
            return re
        rdt = torch.promote_types(re.dtype, torch.float32)  # no complex type for bf16
        return torch.complex(re.to(rdt), self.A_imag.to(rdt))

    def _in_proj(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, z): the two halves of ``in_proj`` as two matmuls on the split weight, so both come
        out contiguous.  One matmul and ``chunk`` would give strided halves: the scan kernels then
        copy z (B, L, d_inner) and the backward concatenates du and dz into one (B, L, 2 d_inner)
        gradient; here the weight's gradient is the (tiny) concatenation instead."""
        wu, wz = self.in_proj.weight.split(self.d_inner)
        b = self.in_proj.bias
        bu, bz = (None, None) if b is None else b.split(self.d_inner)
        return F.linear(x, wu, bu), F.linear(x, wz, bz)

    def _ssm_inputs(self, u: torch.Tensor):
        """delta (before bias/softplus), B, C from the conv output u (..., d_inner)."""
        N = self.d_state
        n_bc = 2 * N if self.complex else N
        dt_in, B, C = self.x_proj(u).split([self.dt_rank, n_bc, n_bc], dim=-1)
        delta = F.linear(dt_in, self.dt_proj.weight)  # the bias goes to the scan (delta_bias)
        if self.complex:
            if B.dtype not in (torch.float32, torch.float64):
                B, C = B.float(), C.float()  # no complex type for bf16
            B = torch.complex(B[..., 0::2], B[..., 1::2])
            C = torch.complex(C[..., 0::2], C[..., 1::2])
        return delta, B, C

    def _scan_kwargs(self) -> dict:
        return dict(D=self.D, delta_bias=self.dt_proj.bias, delta_softplus=True,
                    discretization=self.discretization)

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device=None, dtype=None):
        device = self.A_log.device if device is None else device
        dtype = self.A_log.dtype if dtype is None else dtype
        return {
            "conv": torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device,
                                dtype=dtype),
            "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device,
                               dtype=state_dtype(dtype, self.complex)),
        }

    def _check_state(self, state, rows: int, x) -> None:
        check_state(self, state, rows, {"conv": (self.d_inner, self.d_conv - 1),
                                        "ssm": (self.d_inner, self.d_state)}, x,
                    complex_keys=("ssm",) if self.complex else ())

    # ------------------------------------------------------------------ compute
    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        rows = x.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
        if state is not None:
            self._check_state(state, rows, x)
        u, z = self._in_proj(x)
        u, conv_state = self.conv1d(u, None if state is None else state["conv"],
                                    cu_seqlens=cu_seqlens, activation="silu")
        delta, B, C = self._ssm_inputs(u)
        h0 = None if state is None else state["ssm"]
        args = (u, delta, self.A(), B, C)
        if cu_seqlens is None:
            out = selective_scan(*args, z=z, timesteps=timesteps, h0=h0,
                                 return_last_state=return_state, backend=self.scan,
                                 **self._scan_kwargs())
            y, h = out if return_state else (out, None)
        else:
            y, h = self._scan_varlen(args, z, timesteps, h0, cu_seqlens, x.dtype)
        y = self.out_proj(y)
        return (y, {"conv": conv_state, "ssm": h}) if return_state else y

    def _scan_varlen(self, args, z, timesteps, h0, cu_seqlens, dtype):
        """One selective scan per packed sequence (the op has no cu_seqlens)."""
        u = args[0]
        bounds = cu_seqlens.tolist()
        sdt = state_dtype(dtype, self.complex)
        ys, hs = [], []
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            h0_i = None if h0 is None else h0[i:i + 1]
            if a == b:  # empty sequence: its state passes through unchanged
                hs.append(h0_i.to(sdt) if h0_i is not None else
                          torch.zeros(1, self.d_inner, self.d_state, dtype=sdt,
                                      device=u.device))
                continue
            seg = [t[:, a:b] for t in args[:2]] + [args[2]] + [t[:, a:b] for t in args[3:]]
            y_i, h_i = selective_scan(
                *seg, z=z[:, a:b], timesteps=None if timesteps is None else timesteps[:, a:b],
                h0=h0_i, return_last_state=True, backend=self.scan, **self._scan_kwargs())
            ys.append(y_i)
            hs.append(h_i.to(sdt))
        y = torch.cat(ys, dim=1) if ys else u.new_zeros(1, 0, self.d_inner)
        return y, torch.cat(hs, dim=0)

    def step(self, x_t, state, timesteps=None):
        self._check_state(state, x_t.shape[0], x_t)
        u, z = self.in_proj(x_t).chunk(2, dim=-1)
        u, conv_state = self.conv1d.step(u, state["conv"], activation="silu")
        delta, B, C = self._ssm_inputs(u)
        y, h = selective_step(u, delta, self.A(), B, C, state["ssm"], z_t=z,
                              timesteps_t=timesteps, backend=self.scan, **self._scan_kwargs())
        return self.out_proj(y), {"conv": conv_state, "ssm": h}

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"d_conv={self.d_conv}, dt_rank={self.dt_rank}, "
                f"discretization={self.discretization!r}, complex={self.complex}, "
                f"scan={self.scan!r}")
