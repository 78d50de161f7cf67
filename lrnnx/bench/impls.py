"""Implementations the GPU benchmark times on a workload: lrnnx per scan backend, and the peers.

An :class:`Impl` turns the workload's inputs (lrnnx layout, :func:`..workloads.make_inputs`) into
its own arguments *outside* the timed region (layout transposes, ``g = log a``, leaves that
require grad), then runs::

    forward(args)  -> output in the impl's layout      (timed under torch.no_grad())
    fwd_bwd(args)  -> torch.autograd.grad(output, leaves, grad_output)   (no .grad accumulation)
    common(output) -> the output in lrnnx layout (the agreement check), or None

Rows: ``lrnnx (triton)``, ``lrnnx (torch)`` on every workload; diag: ``accelerated_scan.scalar``
(real) or ``accelerated_scan.complex``, ``fla.chunk_hgrn`` and ``fla.fused_recurrent_hgrn``
(real); selective: ``mamba_ssm.selective_scan_fn``; layer ``mamba``: ``mamba_ssm.Mamba``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import peers
from .workloads import REF_COMPLEX, REF_DIAG, REF_LAYER, REF_SELECTIVE, Workload

LRNNX_BACKENDS = ("triton", "torch")
Args = dict[str, Any]


def _leaf(t: torch.Tensor) -> torch.Tensor:
    """A contiguous leaf sharing ``t``'s storage, requiring grad (a differentiated input)."""
    return t.detach().contiguous().requires_grad_(True)


def _t(t: torch.Tensor) -> torch.Tensor:
    """(B, L, X) <-> (B, X, L), contiguous (outside the timed region)."""
    return t.transpose(1, 2).contiguous()


@dataclass
class Impl:
    """One row of a workload: ``prepare(inputs) -> args`` (untimed), ``forward(args)``,
    ``fwd_bwd(args)``, ``common(output)``; ``why`` non-empty when the row cannot run."""

    name: str
    prepare: Callable[[dict[str, torch.Tensor]], Args]
    forward: Callable[[Args], torch.Tensor]
    common: Callable[[torch.Tensor], torch.Tensor | None] = lambda out: out
    backend: str | None = None  # lrnnx scan backend of an lrnnx row
    peer: str | None = None
    why: str = ""  # non-empty: the row cannot run ("not installed", "n/a: ...")
    grad_keys: tuple[str, ...] = field(default=())

    def leaves(self, args: Args) -> list[torch.Tensor]:
        out = [args[k] for k in self.grad_keys]
        mod = args.get("module")
        if mod is not None:
            out += [p for p in mod.parameters() if p.requires_grad]
        return out

    def fwd_bwd(self, args: Args):
        out = self.forward(args)
        # allow_unused: a layer may hold parameters its forward does not touch at this setting
        return torch.autograd.grad(out, self.leaves(args), args["grad_out"], allow_unused=True)


def clone_args(args: Args) -> Args:
    """An independent copy of ``args`` (tensors cloned, same requires_grad; modules shared)."""
    return {k: (v.detach().clone().requires_grad_(v.requires_grad)
                if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


def args_bytes(args: Args) -> int:
    """Bytes of one copy's tensors (the rotation's working set)."""
    n = sum(v.numel() * v.element_size() for v in args.values() if isinstance(v, torch.Tensor))
    mod = args.get("module")
    if mod is not None:
        n += sum(p.numel() * p.element_size() for p in mod.parameters())
    return n


def _peer(device: torch.device, peer: str, module: str, attr: str | None):
    obj, why = peers.load(peer, module, attr)
    if obj is None:
        return None, why
    ok, why = peers.device_ok(peer, device.type)
    return (obj, "") if ok else (None, why)


# ------------------------------------------------------------------------------ diag scan

def _diag_impls(w: Workload, device: torch.device) -> list[Impl]:
    import lrnnx.ops as ops

    def lrnnx_impl(backend: str) -> Impl:
        return Impl(
            f"lrnnx ({backend})", backend=backend, grad_keys=("a", "b"),
            prepare=lambda x: {"a": _leaf(x["a"]), "b": _leaf(x["b"]), "grad_out": x["grad_h"]},
            forward=lambda a, bk=backend: ops.diag_scan(a["a"], a["b"], backend=bk)[0])

    out = [lrnnx_impl(b) for b in LRNNX_BACKENDS]
    cplx = w.torch_dtype.is_complex
    mod = "accelerated_scan.complex" if cplx else "accelerated_scan.scalar"
    scan, why = _peer(device, "accelerated_scan", mod, "scan")
    out.append(Impl(
        REF_COMPLEX if cplx else REF_DIAG, peer="accelerated_scan", why=why,
        grad_keys=("a", "b"),
        prepare=lambda x: {"a": _leaf(_t(x["a"])), "b": _leaf(_t(x["b"])),
                           "grad_out": _t(x["grad_h"])},
        forward=lambda a: scan(a["a"], a["b"]), common=_t))
    if cplx:
        return out  # fla's hgrn is real only
    for fn_name in ("chunk_hgrn", "fused_recurrent_hgrn"):
        fn, why = _peer(device, "fla", "fla.ops.hgrn", fn_name)
        out.append(Impl(
            f"fla.{fn_name}", peer="fla", why=why, grad_keys=("x", "g"),
            # h_t = exp(g_t) h_{t-1} + x_t: the same recurrence with g = log a (computed in fp32)
            prepare=lambda x: {"x": _leaf(x["b"]),
                               "g": _leaf(x["a"].float().log().to(x["a"].dtype)),
                               "grad_out": x["grad_h"]},
            forward=lambda a, f=fn: f(a["x"], a["g"])[0]))
    return out


# ------------------------------------------------------------------------- selective scan

_SEL_KEYS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _selective_impls(w: Workload, device: torch.device) -> list[Impl]:
    import lrnnx.ops as ops

    def lrnnx_impl(backend: str) -> Impl:
        return Impl(
            f"lrnnx ({backend})", backend=backend, grad_keys=_SEL_KEYS,
            prepare=lambda x: {**{k: _leaf(x[k]) for k in _SEL_KEYS}, "grad_out": x["grad_y"]},
            forward=lambda a, bk=backend: ops.selective_scan(
                a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"],
                delta_softplus=True, backend=bk))

    fn, why = _peer(device, "mamba_ssm", "mamba_ssm.ops.selective_scan_interface",
                    "selective_scan_fn")

    def mamba_prepare(x):
        # mamba_ssm layout: u, delta, z (B, D, L); B, C (B, N, L); A (D, N); D, delta_bias (D,)
        return {**{k: _leaf(_t(x[k])) for k in ("u", "delta", "z", "B", "C")},
                **{k: _leaf(x[k]) for k in ("A", "D", "delta_bias")}, "grad_out": _t(x["grad_y"])}

    peer = Impl(
        REF_SELECTIVE, peer="mamba_ssm", why=why, grad_keys=_SEL_KEYS, prepare=mamba_prepare,
        forward=lambda a: fn(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"],
                             a["delta_bias"], True),
        common=_t)
    return [lrnnx_impl(b) for b in LRNNX_BACKENDS] + [peer]


# ---------------------------------------------------------------------------------- layers

def _mode_note(layer, L: int) -> str:
    """Say so when an LTI layer's ``mode="auto"`` convolves (FFT) at this length: its scan
    backend then does not run, and the backend rows time the same code."""
    if getattr(layer, "mode", None) != "auto":
        return ""
    try:
        from lrnnx_plugins.lti.conv import resolve_mode
    except ImportError:
        return ""
    if resolve_mode("auto", L) == "conv":
        return f"mode='auto' convolves (FFT) at L={L}: the scan backend is not used"
    return ""


def _layer_impls(w: Workload, device: torch.device) -> list[Impl]:
    from lrnnx.build import build_layer
    from lrnnx.registry.core import REGISTRY

    registered = w.layer in REGISTRY.names("layer")

    def lrnnx_impl(backend: str) -> Impl:
        def prepare(x):
            torch.manual_seed(0)  # the same weights for every backend: outputs comparable
            layer = build_layer(w.spec, d_model=w.dim["d_model"], scan=backend).to(device)
            return {"module": layer, "x": _leaf(x["x"]), "grad_out": x["grad_y"],
                    "note": _mode_note(layer, w.dim["L"])}

        return Impl(f"lrnnx ({backend})", backend=backend, grad_keys=("x",), prepare=prepare,
                    forward=lambda a: a["module"](a["x"]),
                    why="" if registered else f"n/a: layer {w.layer!r} is not registered")

    out = [lrnnx_impl(b) for b in LRNNX_BACKENDS]
    if w.layer == "mamba":
        Mamba, why = _peer(device, "mamba_ssm", "mamba_ssm", "Mamba")

        def prepare(x):
            opts = dict(w.options)
            mod = Mamba(d_model=w.dim["d_model"], d_state=opts.get("d_state", 16), d_conv=4,
                        expand=2).to(device)
            return {"module": mod, "x": _leaf(x["x"]), "grad_out": x["grad_y"]}

        out.append(Impl("mamba_ssm.Mamba", peer="mamba_ssm", why=why, grad_keys=("x",),
                        prepare=prepare, forward=lambda a: a["module"](a["x"]),
                        common=lambda out: None))  # other weights: no agreement check
    out.append(Impl(REF_LAYER, peer="lrnnx", why=peers.NOT_INSTALLED, prepare=dict,
                    forward=lambda a: None))
    return out


def impls_for(w: Workload, device: torch.device) -> list[Impl]:
    """The rows of workload ``w`` on ``device`` (unusable peers carry ``why``)."""
    return {"diag": _diag_impls, "selective": _selective_impls,
            "layer": _layer_impls}[w.kind](w, device)
