"""The generic diagonal state-space layer ``ssm`` = parameterization + discretizer + scan backend.

Recurrence (per token t, diagonal A, states flattened to D elements, see
:mod:`lrnnx_plugins.ssm.recurrence`)::

    (A_bar, B_bar) = disc(A, dt * timesteps_t)      h_t = A_bar h_{t-1} + B_bar x_t
    y_t = s * Re(C h_t) + D * x_t                   (s = 2 for conjugate-symmetric parameters)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import lrnnx
from typing import Literal

from lrnnx import Ref
from lrnnx.errors import BackendUnavailableError, ConfigError, InputError, InputTypeError
from lrnnx.param_graphs import ParamGraphs, eligible as graphs_eligible
from lrnnx_plugins.lti.conv import AUTO_CONV_MIN_LEN, AUTO_CONV_MIN_LEN_MIMO, LTISystem, \
    check_mode, fft_conv_skip, lti_conv, resolve_mode
from lrnnx_plugins.lti.precision import full_precision, state_dtype

from .components import build_discretizer, build_parameterization, check_params, check_scan, \
    traits
from .recurrence import decay_term, input_term, mimo_input, mimo_input_weight, mimo_output, \
    mimo_output_weight, readout, transition


def _add_skip(y: torch.Tensor, skip: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """``skip * x + y`` (``skip`` None: y).  Not ``torch.addcmul``: its autograd backward
    multiplies by ``value`` separately (one op more than mul + add, forward + backward).
    D x first: the output takes x's (contiguous) layout."""
    return y if skip is None else skip * x + y


class SSM(lrnnx.Layer):
    r"""Generic diagonal SSM layer: any registered parameterization x discretizer x scan backend.

    .. math::

        h_t = \bar A_t h_{t-1} + \bar B_t x_t, \quad (\bar A_t, \bar B_t) =
        \mathrm{disc}(A, \Delta \cdot \tau_t, B), \quad y_t = s\,\mathrm{Re}(C h_t) + D x_t

    Composition: the parameterization (``param``) returns ``A, B, C, dt`` (protocol:
    :mod:`lrnnx_plugins.parameterizations.base`), the discretizer (``disc``; skipped for
    discrete parameterizations such as ``lru_ring``) gives ``A_bar`` and ``B_bar = B_scale * B``,
    and :func:`lrnnx.ops.diag_scan` runs the recurrence on the scan backend ``scan``.  Selective
    (input-dependent) parameterizations run through :func:`lrnnx.ops.selective_scan` (fused,
    chunked) when the discretizer is one of the built-in formulas, and through ``diag_scan``
    otherwise (a third-party discretizer, packed varlen input, the reverse direction).
    Papers: S4D (Gu et al. 2022, https://arxiv.org/abs/2206.11893), S5 (Smith et al. 2023,
    https://arxiv.org/abs/2208.04933), LRU (Orvieto et al. 2023,
    https://arxiv.org/abs/2303.06349), Mamba (Gu & Dao 2023, https://arxiv.org/abs/2312.00752).

    Options:
        d_state: states per channel (SISO: state (H, d_state)) or shared states (MIMO: state
            (d_state,)); complex parameterizations count complex modes.  Default 64.
        param: a parameterization name (``"s4d_inv"``, default), a spec component with options
            (``lru_ring(r_min=0.9)``), a ``lrnnx.Parameterization`` subclass, or an instance.
        disc: a discretizer name (``zoh`` default, ``bilinear``, ``euler``, ``mamba``,
            ``dirac``) or a ``lrnnx.Discretizer``.
        scan: ``"auto"`` or a scan backend name (``lrnnx list scan_backends``), passed to the
            ops as ``backend=``; used by scan mode, ``step`` and conv mode's fallbacks.
        mode: ``"scan"`` (the recurrence), ``"conv"`` (FFT convolution with the materialized
            kernel ``K_l = s Re(C A_bar^l B_bar)``, :mod:`lrnnx_plugins.lti.conv`) or
            ``"auto"`` (default: SISO systems convolve from ``AUTO_CONV_MIN_LEN`` = 16 tokens
            on; MIMO systems always scan, as their state-space convolution measured slower than
            the scan at every length on CPU; see :mod:`lrnnx_plugins.lti.conv`).  Conv mode needs
            a time-invariant system: selective parameterizations reject ``mode="conv"``, and a
            forward with ``timesteps`` (irregular sampling: ``A_bar`` changes per token) runs
            the scan.  Conv mode carries state (zero-input response of ``h0`` added, final
            state by a Vandermonde contraction), runs packed varlen sequences one by one with a
            shared kernel and the reverse direction on time-reversed sequences.  Both modes
            agree within the float32 / float64 tolerance (tests/test_lti_conv.py).
        bidirectional: add an anti-causal scan (``reverse=True``) with its OWN parameterization
            (same family and options, independent init); outputs are summed, ``D`` is shared.
            A bidirectional layer cannot ``step`` or continue from a state (the backward
            direction needs the whole sequence); ``return_state=True`` returns the forward
            direction's final state, for inspection.

    The skip ``D`` (H,) is ``N(0, 1)``-initialized (S4D, S5 and LRU all do so).

    Precision: the layer computes in float32 (float64 stays float64) under ``torch.autocast``
    and with bfloat16 / float16 parameters or inputs (:mod:`lrnnx_plugins.lti.precision`:
    complex parameters, discretization, scan and FFT convolution have no safe half-precision
    form); the output has x's dtype, the state stays float32 / complex64.

    State: ``{"h": (B, H, d_state)}`` (SISO) or ``{"h": (B, d_state)}`` (MIMO), complex for
    complex parameterizations.  ``timesteps`` (B, L) scale the step (``dt_eff = dt * t``; for a
    discrete parameterization ``A_bar = A ** t``).  Packed varlen input (``cu_seqlens``, B = 1)
    restarts the recurrence per sequence; the state is then per sequence, (N_seq, ...).

    Shapes: x (B, L, d_model) -> y (B, L, d_model); step: x_t (B, d_model) -> y_t (B, d_model).

    Conformance: ``test_kwargs`` builds the default (causal) layer with a small state;
    the bidirectional form is checked as its own subject in ``tests/test_ssm.py`` (a subclass
    with ``test_kwargs = {"bidirectional": True}``, no ``step`` capability and ``causality``
    declared as an expected failure).

    Example::

        layer = lrnnx.build_layer("ssm(param=lru_ring(r_min=0.9), d_state=32)", d_model=64)
        y, st = layer(torch.randn(2, 100, 64), return_state=True)
        y_t, st = layer.step(torch.randn(2, 64), st)
    """

    name = "ssm"
    capabilities = frozenset({"step", "varlen", "timesteps", "bidirectional"})
    test_kwargs = {"d_state": 4}

    def __init__(self, d_model: int, d_state: int = 64,
                 param: Ref("parameterization") = "s4d_inv", disc: Ref("discretizer") = "zoh",
                 scan: str = "auto", bidirectional: bool = False,
                 mode: Literal["scan", "conv", "auto"] = "auto"):
        super().__init__()
        where = f"layer {self.name!r}"
        # CUDA graphs of the parameter-only computations (conv mode's kernel; see
        # lrnnx.param_graphs); not state: no parameters, not copied, not saved
        self._param_graphs = ParamGraphs(self.name)
        for opt, v in (("d_model", d_model), ("d_state", d_state)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{where}: {opt} must be a positive int, got {v!r}.")
        self.d_model, self.d_state, self.bidirectional = d_model, d_state, bool(bidirectional)
        self.scan = check_scan(scan, where)
        self.mode = check_mode(mode, where)
        self.disc = build_discretizer(disc, where)
        # D first: the input checks compare x's dtype with the first (real) parameter
        self.D = nn.Parameter(torch.randn(d_model))
        self.param = build_parameterization(param, d_model, d_state, where)
        self.structure, self.discrete, self.selective = traits(self.param)
        if self.selective and self.mode == "conv":
            raise ConfigError(f"{where}: mode='conv' needs a time-invariant system, but the "
                              f"parameterization {getattr(self.param, 'name', '')!r} is "
                              f"selective (input-dependent); use mode='scan' (or 'auto').")
        self.param_rev = None
        if self.bidirectional:
            rev = build_parameterization(param, d_model, d_state, where)
            self.param_rev = copy.deepcopy(rev) if rev is self.param else rev

    # ------------------------------------------------------------------ state
    def _state_shape(self) -> tuple[int, ...]:
        return (self.d_model, self.d_state) if self.structure == "siso" else (self.d_state,)

    def _state_is_complex(self) -> bool:
        flag = getattr(self.param, "complex", None)
        if flag is not None:
            return bool(flag)
        # a third-party parameterization without the attribute: look at what it returns
        with torch.no_grad():
            x = self.D.new_zeros(1, 1, self.d_model) if self.selective else None
            P = self.param(x) if self.selective else self.param()
        return P.A.is_complex() or P.B.is_complex()

    def init_state(self, batch_size: int, device=None, dtype=None):
        device = self.D.device if device is None else device
        # float32 for half precision too: the dynamics run in float32 (lti.precision)
        dtype = state_dtype(self.D.dtype if dtype is None else dtype, self._state_is_complex())
        return {"h": torch.zeros(batch_size, *self._state_shape(), device=device, dtype=dtype)}

    def _state_in(self, state, x: torch.Tensor, cu_seqlens) -> torch.Tensor | None:
        """The incoming state as the flat (n, D) initial state of the scan (or None)."""
        if state is None:
            return None
        where = f"layer {self.name!r}"
        if self.bidirectional:
            raise InputError(f"{where} is bidirectional: it cannot continue from a state (the "
                             f"backward direction needs the whole sequence); drop state=, or "
                             f"build the layer with bidirectional=False.")
        n = x.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
        want = (n, *self._state_shape())
        per = "one row per packed sequence" if cu_seqlens is not None else "one row per batch " \
              "element"
        if "h" not in state:
            raise InputError(f"{where}: state must have the key 'h' (a tensor of shape {want}), "
                             f"got keys {sorted(state)}; use init_state() or the state returned "
                             f"by forward(..., return_state=True).")
        h = state["h"]
        if not isinstance(h, torch.Tensor) or tuple(h.shape) != want:
            got = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise InputError(f"{where}: state['h'] must have shape {want} ({per}), got {got}; "
                             f"use init_state({n}) or the state of a previous call.")
        if h.device != x.device:
            raise InputError(f"{where}: state['h'] is on {h.device} but x is on {x.device}; "
                             f"move it with .to(x.device).")
        if not (h.is_floating_point() or h.is_complex()) or \
                (h.is_complex() and not self._state_is_complex()):
            raise InputTypeError(f"{where}: state['h'] has dtype {h.dtype} but this layer's "
                                 f"state is {'complex' if self._state_is_complex() else 'real'}; "
                                 f"use init_state() to build it.")
        return h.reshape(n, -1)

    # ------------------------------------------------------------------ compute
    def resolved_mode(self, L: int, timesteps: torch.Tensor | None = None) -> str:
        """``"scan"`` or ``"conv"``: how a forward over ``L`` tokens runs (``mode="auto"``
        convolves SISO systems from ``AUTO_CONV_MIN_LEN`` tokens on and MIMO systems from
        ``AUTO_CONV_MIN_LEN_MIMO``, never by default; selective systems always scan)."""
        if self.selective:
            return "scan"
        min_len = AUTO_CONV_MIN_LEN if self.structure == "siso" else AUTO_CONV_MIN_LEN_MIMO
        return resolve_mode(self.mode, L, timesteps, min_len)

    def _params(self, param, x: torch.Tensor):
        P = param(x) if self.selective else param()
        return check_params(param, P, self.d_model, self.d_state, x)

    def _direction(self, param, x, h0, timesteps, cu_seqlens, reverse: bool,
                   need_state: bool = True, skip=None):
        """Outputs (B, L, H), and the final flat state, of one direction; the outputs include
        ``skip * x`` when ``skip`` (the (H,) feed-through D) is given (fused into the last
        pass: conv mode's output, or the readout's ``addcmul``).

        ``need_state=False``: the caller discards the final state, which conv mode then
        skips (None); the scan returns it anyway (it costs nothing extra there)."""
        Bt, L, H = x.shape
        if self.resolved_mode(L, timesteps) == "conv":
            out = self._conv_graphed(param, x, h0, cu_seqlens, reverse, need_state, skip)
            if out is not None:
                return out
            return self._conv(self._params(param, x), x, h0, cu_seqlens, reverse, need_state,
                              skip)
        if not self.selective and timesteps is None and self.structure == "mimo":
            out = self._mimo_scan_graphed(param, x, h0, cu_seqlens, reverse, skip)
            if out is not None:
                return out
        P = self._params(param, x)
        method = getattr(self.disc, "method", None)
        if self.selective and method in lrnnx.ops.METHODS and cu_seqlens is None \
                and not reverse and P.gamma is None:
            try:
                y, h_last = lrnnx.ops.selective_scan(
                    x, P.dt, P.A, P.B, P.C, discretization=method, timesteps=timesteps,
                    h0=None if h0 is None else h0.reshape(Bt, H, -1), return_last_state=True,
                    backend=self.scan)
            except BackendUnavailableError:
                pass  # the backend has no fused selective scan: use its diag_scan below
            else:
                y = 2.0 * y if P.conj_sym else y
                return _add_skip(y, skip, x), h_last.reshape(Bt, -1)
        A_bar, scale = transition(P, self.disc, self.structure, self.discrete, self.selective,
                                  timesteps)
        a = decay_term(A_bar, Bt, L, per_token=self.selective or timesteps is not None)
        b = input_term(P, scale, x, self.structure, self.selective)
        h, h_last = lrnnx.ops.diag_scan(a, b, h0, reverse=reverse, cu_seqlens=cu_seqlens,
                                        backend=self.scan)
        return _add_skip(readout(P, h, H, self.structure, self.selective), skip, x), h_last

    def _system(self, P) -> LTISystem:
        """The discrete LTI system of time-invariant parameters ``P``."""
        A_bar, scale = transition(P, self.disc, self.structure, self.discrete, False, None)
        B = P.B
        if scale is not None:
            B = scale * B if self.structure == "siso" else scale[..., None] * B
        return LTISystem(A_bar, B, P.C, self.structure, 2.0 if P.conj_sym else 1.0)

    def _param_tensors(self, param) -> list[torch.Tensor]:
        """Every tensor the parameter-only computations read: the parameterization's and the
        discretizer's parameters and buffers."""
        mods = [param] + [m for m in (self.disc,) if isinstance(m, nn.Module)]
        return [t for m in mods for t in (*m.parameters(), *m.buffers())]

    def _conv_graphed(self, param, x, h0, cu_seqlens, reverse: bool, need_state: bool, skip):
        """Conv mode with the kernel K from CUDA graphs (:mod:`lrnnx.param_graphs`), or None
        when they do not apply (the caller then runs :meth:`_conv`).  Only the plain case: a
        real float32 SISO input on CUDA, no initial or final state, whole sequences."""
        if self.structure != "siso" or h0 is not None or cu_seqlens is not None or need_state:
            return None
        got = self._graphs_for(param, x)
        if got is None:
            return None
        graphs, tensors = got
        L = x.shape[1]
        (K,) = graphs.run(("conv", id(param), L),
                          lambda: self._system(self._params(param, None)).kernel(L), tensors)
        if K.dtype != torch.float32:  # a float64 / complex system: the generic path
            return None
        xs = x.flip(1) if reverse else x
        y = fft_conv_skip(xs, K, skip)
        return (y.flip(1) if reverse else y), None

    def _graphs_for(self, param, x) -> tuple[ParamGraphs, list[torch.Tensor]] | None:
        """The layer's graph cache and the tensors to graph, or None when graphs do not apply
        (the plain case only: a real float32 input on CUDA, no autocast; see
        :func:`lrnnx.param_graphs.eligible` for the rest)."""
        if x.dtype != torch.float32 or not x.is_cuda or torch.is_autocast_enabled("cuda"):
            return None
        tensors = self._param_tensors(param)
        if not graphs_eligible(tensors):
            return None
        graphs = self.__dict__.get("_param_graphs")
        if graphs is None:  # a layer unpickled from before this attribute existed
            graphs = self._param_graphs = ParamGraphs(self.name)
        return graphs, tensors

    def _mimo_mats(self, param):
        """``(A_bar (P,), W_in (H, 2P), W_out (H, 2P))`` of a time-invariant complex MIMO
        system: the parameter-only part of its scan (the weights of
        :func:`~lrnnx_plugins.ssm.recurrence.mimo_input` / ``mimo_output``)."""
        P = self._params(param, None)
        A_bar, scale = transition(P, self.disc, "mimo", self.discrete, False, None)
        BT = P.B.transpose(0, 1)
        if scale is not None:
            BT = BT * scale
        return A_bar, mimo_input_weight(BT), mimo_output_weight(P)

    def _mimo_scan_graphed(self, param, x, h0, cu_seqlens, reverse: bool, skip):
        """The scan of a time-invariant MIMO system with complex B and C (lru, s5) with its
        matrices from CUDA graphs (:mod:`lrnnx.param_graphs`); None when they do not apply
        (the caller runs the generic scan, whose ops this path repeats exactly)."""
        got = self._graphs_for(param, x)
        if got is None:
            return None
        graphs, tensors = got
        kinds = self.__dict__.setdefault("_graph_kinds", {})
        kind_key = (id(param), tuple((t.dtype, t.device) for t in tensors))
        if kind_key not in kinds:  # once per layer and dtypes: does the system qualify?
            with torch.no_grad():
                P = self._params(param, None)
                _, scale = transition(P, self.disc, "mimo", self.discrete, False, None)
            kinds[kind_key] = (P.B.is_complex() and P.C.is_complex()
                               and (scale is None or scale.dim() <= 1))
        if not kinds[kind_key]:
            return None
        Bt, L, H = x.shape
        A_bar, W_in, W_out = graphs.run(("mimo", id(param)), lambda: self._mimo_mats(param),
                                        tensors)
        a = decay_term(A_bar, Bt, L, per_token=False)
        h, h_last = lrnnx.ops.diag_scan(a, mimo_input(x, W_in), h0, reverse=reverse,
                                        cu_seqlens=cu_seqlens, backend=self.scan)
        return _add_skip(mimo_output(h, W_out), skip, x), h_last

    def _conv(self, P, x, h0, cu_seqlens, reverse: bool, need_state: bool = True, skip=None):
        """Conv mode of one direction (time-invariant parameters): same returns as the scan."""
        system = self._system(P)
        n = h0.shape[0] if h0 is not None else 0
        h0 = None if h0 is None else h0.reshape(n, *self._state_shape())
        y, h_last = lti_conv(system, x, h0, reverse=reverse, cu_seqlens=cu_seqlens,
                             need_state=need_state, skip=skip)
        return y, (None if h_last is None else h_last.reshape(h_last.shape[0], -1))

    @full_precision
    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        h0 = self._state_in(state, x, cu_seqlens)
        # the skip D x is fused into the forward direction's last pass (one op, and a
        # contiguous output: conv mode's y would otherwise be a transposed view)
        y, h_last = self._direction(self.param, x, h0, timesteps, cu_seqlens, reverse=False,
                                    need_state=return_state, skip=self.D)
        if self.param_rev is not None:
            y_rev, _ = self._direction(self.param_rev, x, None, timesteps, cu_seqlens,
                                       reverse=True, need_state=False)
            y = y + y_rev
        y = y.to(x.dtype)
        if not return_state:
            return y
        return y, {"h": h_last.reshape(h_last.shape[0], *self._state_shape())}

    @full_precision
    def step(self, x_t, state, timesteps=None):
        """One token: x_t (B, d_model), state {"h": ...} -> (y_t (B, d_model), new state).

        ``timesteps`` (B,) optionally gives the time since the previous token.
        """
        if self.bidirectional:
            raise InputError(f"layer {self.name!r} is bidirectional and cannot step: y_t "
                             f"depends on future tokens; call forward() on whole sequences, or "
                             f"build it with bidirectional=False.")
        x = x_t[:, None]
        Bt = x.shape[0]
        h = self._state_in(state, x, None)
        P = self._params(self.param, x)
        ts = None if timesteps is None else timesteps[:, None]
        A_bar, scale = transition(P, self.disc, self.structure, self.discrete, self.selective,
                                  ts)
        a = decay_term(A_bar, Bt, 1, per_token=self.selective or ts is not None)[:, 0]
        b = input_term(P, scale, x, self.structure, self.selective)[:, 0]
        try:
            h_new = lrnnx.ops.diag_step(a, b, h, backend=self.scan)
        except BackendUnavailableError:
            # a scan-only backend: the step is one elementwise formula, any backend runs it
            h_new = lrnnx.ops.diag_step(a, b, h, backend="auto")
        y = readout(P, h_new[:, None], self.d_model, self.structure, self.selective)[:, 0]
        y = (y + self.D * x_t).to(x_t.dtype)
        return y, {"h": h_new.reshape(Bt, *self._state_shape())}

    def extra_repr(self) -> str:
        disc = getattr(self.disc, "name", type(self.disc).__name__)
        return (f"d_model={self.d_model}, d_state={self.d_state}, disc={disc}, "
                f"scan={self.scan!r}, mode={self.mode!r}, bidirectional={self.bidirectional}")
