"""Implementations the GPU benchmark times on a workload: lrnnx per scan backend, and the peers.

An :class:`Impl` turns the workload's inputs (lrnnx layout, :func:`..workloads.make_inputs`) into
its own arguments *outside* the timed region (layout transposes, ``g = log a``, leaves that
require grad), then runs::

    forward(args)  -> output in the impl's layout      (timed under torch.no_grad())
    fwd_bwd(args)  -> torch.autograd.grad(output, leaves, grad_output)   (no .grad accumulation)
    common(output) -> the output in lrnnx layout (the agreement check), or None

Rows: ``lrnnx (triton)``, ``lrnnx (torch)`` on every workload; diag: ``accelerated_scan.scalar``
(real) or ``accelerated_scan.complex``, ``fla.chunk_hgrn`` and ``fla.fused_recurrent_hgrn``
(real); selective: ``mamba_ssm.selective_scan_fn`` and ``published lrnnx.selective_scan_fn``;
layer ``mamba``: ``mamba_ssm.Mamba``; every layer: ``published lrnnx`` (the reference), and for
``s5`` also ``published lrnnx (ltv.S5, scan)``.

The published lrnnx rows are measured in a child process (:class:`.peers.PublishedWorker`: the
published package shares this checkout's import name): such an :class:`Impl` has ``external``,
which ``suite.run_impl`` calls with the row instead of timing ``forward`` here; it fills the row
from the child's JSON answer (same inputs, same :func:`.timing.measure` settings) and checks the
selective scan's output against the workload's first row.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import peers
from .workloads import REF_COMPLEX, REF_DIAG, REF_LAYER, REF_SELECTIVE, Workload

LRNNX_BACKENDS = ("cuda", "triton", "torch")
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
    #: measured elsewhere: ``external(w, row, device, opts, deadline, check) -> row`` fills the
    #: row (status, note, fwd/fwd_bwd, ms, check) itself; ``suite.run_impl`` hands it over
    external: Callable[..., dict[str, Any]] | None = None

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
    return [lrnnx_impl(b) for b in LRNNX_BACKENDS] + [peer,
                                                      _published_impl(w, device, PUBLISHED_SCAN)]


# ---------------------------------------------------------------------------------- layers

def _mode_note(layer, L: int) -> str:
    """Say so when an LTI layer convolves (FFT) at this length: its scan backend then does not
    run, and the backend rows time the same code.  Asks the layer (``resolved_mode``: SISO and
    MIMO systems have different ``mode="auto"`` crossovers) where it can."""
    if getattr(layer, "mode", None) != "auto":
        return ""
    resolved = getattr(layer, "resolved_mode", None)
    if callable(resolved):
        mode = resolved(L)
    else:
        try:
            from lrnnx_plugins.lti.conv import resolve_mode
        except ImportError:
            return ""
        mode = resolve_mode("auto", L)
    if mode == "conv":
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
    out.append(_published_impl(w, device, REF_LAYER))
    if f"{w.layer}:scan" in peers.PUBLISHED_LAYERS:
        out.append(_published_impl(w, device, PUBLISHED_S5_SCAN, variant="scan"))
    return out


# ------------------------------------------------------------------------ published lrnnx

PUBLISHED_SCAN = f"{peers.PUBLISHED_LRNNX}.selective_scan_fn"
PUBLISHED_S5_SCAN = f"{peers.PUBLISHED_LRNNX} (ltv.S5, scan)"
def _external_only(inputs):
    raise RuntimeError("internal: a published lrnnx row is measured by Impl.external in its child "
                       "process (lrnnx.bench.suite.run_impl), never in this process")


def _published_impl(w: Workload, device: torch.device, name: str, variant: str = "") -> Impl:
    """A published lrnnx row: ``why`` if it cannot run (no ``LRNNX_PUBLISHED_PATH``, no CUDA,
    the child failed to import it), else ``external`` runs the workload in the child process."""
    path, why = peers.published_path()
    if path is not None:
        ok, why = peers.published_device_ok(device.type)
        if ok and w.kind == "selective" and w.dtype != "float32":
            why = f"n/a: the published lrnnx's selective scan is float32 only (got {w.dtype})"
        elif ok:
            _, why = peers.published_worker()  # starts the child on first use
    return Impl(name, peer="lrnnx", why=why, prepare=_external_only, forward=lambda a: None,
                common=lambda out: None,
                external=lambda w_, row, dev, opts, deadline, check:
                    run_published(w_, row, dev, opts, deadline, check, variant))


def _rel_diff(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().to(ref.device), ref.detach()
    if not x.is_complex():
        x, ref = x.float(), ref.float()
    scale = ref.abs().max().item() or 1.0
    return (x - ref).abs().max().item() / scale


def _job_timeout(opts: Any) -> float:
    """Seconds to wait for one job: two over-limit first calls per measurement, warm-up and the
    measurement budgets, building the layer and the inputs."""
    return 4 * float(opts.limit_s) + 4 * float(opts.measure_budget_s) + 90.0


def run_published(w: Workload, row: dict[str, Any], device: torch.device, opts: Any,
                  deadline: float, check: dict, variant: str = "") -> dict[str, Any]:
    """Fill ``row`` from the child process's measurement of ``w`` (never raises)."""
    if time.monotonic() > deadline:
        row["status"] = "skipped"
        row["note"] = f"the run's time budget ({opts.budget_s:g} s, --budget) was used up"
        return row
    worker, why = peers.published_worker()
    if worker is None:
        row["status"] = peers.NOT_INSTALLED if why.startswith(peers.NOT_INSTALLED) else "error"
        row["note"] = why
        return row
    fd, check_path = tempfile.mkstemp(prefix="lrnnx-published-", suffix=".pt")
    os.close(fd)
    try:
        job = peers.published_job(
            w, str(device), variant, warmup=opts.warmup, warmup_ms=opts.warmup_ms,
            repeats=opts.repeats,
            limit_s=opts.limit_s, budget_s=opts.measure_budget_s,
            time_left_s=deadline - time.monotonic(),
            check_path=check_path if w.kind != "layer" else None)
        try:
            res = worker.run(job, _job_timeout(opts))
        except peers.PublishedWorkerError as exc:
            row["status"], row["note"] = "error", f"child process: {exc}"
            return row
        row["status"] = res.get("status", "error")
        for key in ("fwd", "fwd_bwd", "fwd_ms", "fwd_bwd_ms"):
            row[key] = res.get(key)
        if res.get("copies") is not None:
            row["copies"] = res["copies"]
        notes = [n for n in (res.get("impl", ""), res.get("note", "")) if n]
        row["note"] = "; ".join(notes)
        if res.get("check_path"):
            out = torch.load(res["check_path"], map_location="cpu")
            if "ref" not in check:
                check["ref"], check["name"] = out.to(device), row["impl"]
            row["check_rel_diff"] = _rel_diff(out, check["ref"])
            row["check_vs"] = check["name"]
    except Exception as exc:  # noqa: BLE001 - report it in the row
        row["status"], row["note"] = "error", f"{type(exc).__name__}: {exc}"
    finally:
        try:
            os.unlink(check_path)
        except OSError:
            pass
    return row


def impls_for(w: Workload, device: torch.device) -> list[Impl]:
    """The rows of workload ``w`` on ``device`` (unusable peers carry ``why``)."""
    return {"diag": _diag_impls, "selective": _selective_impls,
            "layer": _layer_impls}[w.kind](w, device)
