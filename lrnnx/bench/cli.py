"""``lrnnx bench``: time ops or a layer/model spec, per scan backend, over sequence lengths.

    lrnnx bench ops|diag_scan|selective_scan|SPEC [--d-model 128] [--batch 8]
                [--lengths 256,1024,4096] [--dtype float32|bfloat16] [--device cpu|cuda]
                [--backend NAME ...] [--backward] [--repeats 10] [--json FILE] [--plot FILE.png]

* ``ops`` times ``lrnnx.ops.diag_scan`` (a, b: (batch, L, d_model)) and ``selective_scan``
  (u, delta, z: (batch, L, d_model), B, C: (batch, L, d_state), softplus + delta_bias, D skip,
  z gate); a SPEC (``"mamba*2"``, ``"lru(d_state=64)"``) builds a model with
  :func:`lrnnx.build_model` (``scan=BACKEND`` given to every layer that takes it) and times
  ``model(x)``; ``bfloat16`` runs a spec under ``torch.autocast`` (weights stay fp32).
* Forward under ``torch.no_grad()``; ``--backward`` adds forward+backward (``autograd.grad``
  w.r.t. every input and parameter).  Median of ``--repeats`` calls after warm-up:
  ``time.perf_counter`` on a CPU, CUDA events on a GPU (:func:`lrnnx.bench.timing.measure`).
* ``--backend`` (repeatable, default ``auto``): ``auto`` or a registered scan backend
  (``lrnnx backends``); a backend that cannot run a problem gives an ``unavailable`` row.

Exit code 0, 1 if a measurement raised an error (shown in its row), 2 on bad arguments.
Example::

    lrnnx bench ops --device cpu --lengths 256,1024 --backend torch --backend cpu --backward
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from ..errors import BackendUnavailableError, ConfigError, LrnnxError, UnknownComponentError

SCHEMA = "lrnnx.bench/1"
OPS = ("diag_scan", "selective_scan")


def add_commands(subparsers) -> None:
    """Add ``lrnnx bench`` (called by :func:`lrnnx.cli.build_parser`)."""
    s = subparsers.add_parser(
        "bench", help="time ops or a layer/model spec per scan backend and sequence length",
        description=__doc__.split("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("target", help="'ops' (diag_scan and selective_scan), one op name, or a "
                   "layer/model spec such as 'mamba*2' or 'lru(d_state=64)'")
    s.add_argument("--d-model", type=int, default=128, help="channels / model width (128)")
    s.add_argument("--batch", type=int, default=8, help="batch size (8)")
    s.add_argument("--lengths", default="256,1024,4096",
                   help="comma-separated sequence lengths (256,1024,4096)")
    s.add_argument("--d-state", type=int, default=16, help="state size N of selective_scan (16)")
    s.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    s.add_argument("--backend", dest="backends", action="append", metavar="NAME",
                   help="'auto' or a scan backend (triton, cpu, torch, torch_ref, ...); "
                        "repeatable (default: auto)")
    s.add_argument("--backward", action="store_true", help="also time forward+backward")
    s.add_argument("--repeats", type=int, default=10, help="timed calls per point (10)")
    s.add_argument("--warmup", type=int, default=2, help="untimed calls first (2)")
    s.add_argument("--warmup-ms", type=float, default=25.0,
                   help="then untimed calls for about this long, so the host CPU is at its "
                        "steady clock (25; 0 = off)")
    s.add_argument("--json", metavar="FILE", help="write the results as JSON")
    s.add_argument("--plot", metavar="FILE.png", help="plot time vs length (needs matplotlib)")
    s.set_defaults(func=cmd_bench)


# ----------------------------------------------------------------------------- validation

def parse_lengths(text: str) -> list[int]:
    try:
        out = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or any(n <= 0 for n in out):
        raise ConfigError(f"--lengths takes comma-separated positive integers (e.g. "
                          f"256,1024,4096), got {text!r}")
    return out


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value}")


def _device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device takes cpu or cuda (cuda:N), got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device here (torch.cuda.is_available() is "
                          "False); use --device cpu")
    return dev


def _backends(names: list[str] | None) -> list[str]:
    from ..registry.core import REGISTRY

    known = REGISTRY.names("scan_backend")
    out = list(dict.fromkeys(names or ["auto"]))
    for n in out:
        if n != "auto" and n not in known:
            raise UnknownComponentError("scan_backend", n, ["auto", *known],
                                        context="--backend of lrnnx bench")
    return out


def _spec_takes_scan(spec: str) -> bool:
    import inspect

    from ..registry.core import REGISTRY
    from ..registry.spec import parse_spec

    for comp in parse_spec(spec).expand():
        cls = REGISTRY.get("layer", comp.name)
        cls = cls if isinstance(cls, type) else type(cls)
        if "scan" in inspect.signature(cls.__init__).parameters:
            return True
    return False


# ------------------------------------------------------------------------------ problems

def _op_problem(op: str, batch: int, L: int, d: int, n: int, dtype, device, seed: int = 0):
    """(leaves, grad_out, forward(leaves, backend)) of one op problem (inputs as in the suite)."""
    import torch

    import lrnnx.ops as ops

    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, generator=g, device=device).to(dt)

    if op == "diag_scan":
        a = (0.5 + 0.5 * torch.rand(batch, L, d, generator=g, device=device)).to(dtype)
        leaves = [a, randn(batch, L, d)]
        return leaves, randn(batch, L, d), \
            lambda xs, bk: ops.diag_scan(xs[0], xs[1], backend=bk)[0]
    A = -torch.arange(1, n + 1, device=device, dtype=torch.float32).repeat(d, 1)
    leaves = [randn(batch, L, d), 0.5 * randn(batch, L, d), A, randn(batch, L, n),
              randn(batch, L, n), randn(d, dt=torch.float32), randn(batch, L, d),
              torch.full((d,), -3.0, device=device)]
    return leaves, randn(batch, L, d), \
        lambda xs, bk: ops.selective_scan(*xs[:7], delta_bias=xs[7], delta_softplus=True,
                                          backend=bk)


def _resolved(op: str, backend: str, L: int, dtype, device) -> str | None:
    if backend != "auto":
        return backend
    import lrnnx.ops as ops

    return ops.select_backend(op, device=device.type, dtype=dtype, L=L)[0]


# ---------------------------------------------------------------------------------- run

def _row(name: str, backend: str, L: int) -> dict[str, Any]:
    return {"name": name, "backend": backend, "resolved_backend": None, "length": L,
            "fwd_ms": None, "fwd_bwd_ms": None, "fwd": None, "fwd_bwd": None,
            "status": "ok", "note": ""}


def _measure_row(row, fwd, fwd_bwd, copies, device, backward, repeats, warmup, limit_s,
                 warmup_ms=25.0):
    from .timing import measure

    notes = []
    todo = [("fwd", fwd)] + ([("fwd_bwd", fwd_bwd)] if backward else [])
    try:
        for key, fn in todo:
            m = measure(fn, copies, device, warmup=warmup, repeats=repeats, limit_s=limit_s,
                        warmup_ms=warmup_ms,
                        budget_s=max(10.0, limit_s))
            row[key], row[f"{key}_ms"] = m.to_dict(), m.ms
            if m.status != "ok":
                row["status"] = m.status
            if m.note:
                notes.append(f"{key}: {m.note}")
    except BackendUnavailableError as exc:
        row["status"], notes = "unavailable", [short_reason(exc)]
    except Exception as exc:  # noqa: BLE001 - one failing point must not hide the others
        row["status"], notes = "error", [f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                                         if str(exc) else type(exc).__name__]
    row["note"] = "; ".join(notes)
    return row


def short_reason(exc: BaseException) -> str:
    """First line of an error, without the "(device=..., dtype=..., ...)" problem dump."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return re.sub(r" \((?:device|op)=[^()]*\)", "", text)[:300]


def _copies(leaves: list, device, grad: bool = False) -> list[list]:
    """``leaves`` and independent clones of it, enough to defeat the L2 (one on a CPU); every
    tensor a leaf, requiring grad when ``grad``."""
    from .timing import l2_bytes, n_copies

    n = n_copies(sum(t.numel() * t.element_size() for t in leaves), l2_bytes(device))
    copies = [[t.detach() for t in leaves]]
    copies += [[t.detach().clone() for t in leaves] for _ in range(n - 1)]
    return [[t.requires_grad_(grad) for t in c] for c in copies]


def run_bench(target: str, *, d_model: int = 128, batch: int = 8,
              lengths: list[int] | tuple[int, ...] = (256, 1024, 4096), dtype: str = "float32",
              device: str | None = None, backends: list[str] | None = None,
              backward: bool = False, repeats: int = 10, warmup: int = 2, d_state: int = 16,
              warmup_ms: float = 25.0,
              limit_s: float = 20.0, log=None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready dict (``schema``, ``target``, ``config``,
    ``environment``, ``results``: one row per (name, backend, length))."""
    import torch

    from .. import __version__

    for name, v in (("--d-model", d_model), ("--batch", batch), ("--repeats", repeats),
                    ("--d-state", d_state)):
        _positive(name, v)
    lengths = parse_lengths(",".join(map(str, lengths)))
    dev = _device(device)
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"--dtype takes float32 or bfloat16, got {dtype!r}")
    tdt = getattr(torch, dtype)
    bks = _backends(backends)
    data: dict[str, Any] = {
        "schema": SCHEMA, "target": target, "kind": "ops" if target in ("ops", *OPS) else "spec",
        "config": {"d_model": d_model, "batch": batch, "lengths": lengths, "dtype": dtype,
                   "device": str(dev), "backends": bks, "backward": backward,
                   "repeats": repeats, "warmup": warmup, "warmup_ms": warmup_ms,
                   "d_state": d_state},
        "environment": {"lrnnx": __version__, "torch": torch.__version__,
                        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda"
                        else "cpu", "python": sys.version.split()[0]},
        "notes": [], "results": [],
    }
    if warmup_ms < 0:
        raise ConfigError(f"--warmup-ms must be >= 0, got {warmup_ms}")
    kw = dict(backward=backward, repeats=repeats, warmup=warmup, limit_s=limit_s,
              warmup_ms=warmup_ms)
    if data["kind"] == "ops":
        _bench_ops([target] if target in OPS else list(OPS), data, bks, lengths, batch,
                   d_model, d_state, tdt, dev, log, kw)
    else:
        _bench_spec(target, data, bks, lengths, batch, d_model, tdt, dev, log, kw)
    return data


def _bench_ops(ops_, data, bks, lengths, batch, d, n, tdt, dev, log, kw):
    import torch

    for op in ops_:
        for L in lengths:
            leaves, gout, fwd = _op_problem(op, batch, L, d, n, tdt, dev)
            copies = _copies(leaves, dev, grad=True)
            for bk in bks:
                row = _row(op, bk, L)
                try:
                    row["resolved_backend"] = _resolved(op, bk, L, tdt, dev)
                except LrnnxError:
                    pass
                if log:
                    log(row)

                def f(xs, bk=bk):
                    with torch.no_grad():
                        return fwd(xs, bk)

                def fb(xs, bk=bk):
                    return torch.autograd.grad(fwd(xs, bk), xs, gout)

                data["results"].append(_measure_row(row, f, fb, copies, dev, **kw))
            del leaves
            copies.clear()  # free this length's inputs before the next
            if dev.type == "cuda":
                torch.cuda.empty_cache()


def _bench_spec(spec, data, bks, lengths, batch, d_model, tdt, dev, log, kw):
    import contextlib

    import torch

    from ..build import build_model

    build_model(spec, d_model=d_model)  # bad specs fail here, before any timing (exit 2)
    if not _spec_takes_scan(spec):
        data["notes"].append("no layer of this spec takes a scan backend: timed once")
        bks = ["-"]

    def cast():
        return torch.autocast(dev.type, dtype=tdt) if tdt != torch.float32 else \
            contextlib.nullcontext()

    for bk in bks:
        torch.manual_seed(0)  # the same weights for every backend
        model = build_model(spec, d_model=d_model, **({} if bk == "-" else {"scan": bk})).to(dev)
        for L in lengths:
            g = torch.Generator(device=dev).manual_seed(L)
            x = torch.randn(batch, L, d_model, generator=g, device=dev)
            gout = torch.randn(batch, L, d_model, generator=g, device=dev)
            row = _row(spec, bk, L)
            if log:
                log(row)
            data["results"].append(_measure_row(
                row, *_model_fns(model, gout, cast), _copies([x], dev, grad=True), dev, **kw))
        if dev.type == "cuda":
            model = None
            torch.cuda.empty_cache()


def _model_fns(model, gout, cast):
    """(forward, forward+backward) of ``model`` on a copy ``[x]`` (x requires grad)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]

    def fwd(xs):
        with torch.no_grad(), cast():
            return model(xs[0])

    def fwd_bwd(xs):
        with cast():
            y = model(xs[0])
        return torch.autograd.grad(y, [xs[0], *params], gout.to(y.dtype), allow_unused=True)

    return fwd, fwd_bwd


def cmd_bench(args, out) -> int:
    from . import report

    if args.plot:
        report.require_matplotlib()  # fail before the (long) run, not after it
    from rich.console import Console

    err = Console(file=sys.stderr, highlight=False)
    with err.status("benchmarking ...") as status:
        data = run_bench(args.target, d_model=args.d_model, batch=args.batch,
                         lengths=parse_lengths(args.lengths), dtype=args.dtype,
                         device=args.device, backends=args.backends, backward=args.backward,
                         repeats=args.repeats, warmup=args.warmup, d_state=args.d_state,
                         warmup_ms=args.warmup_ms,
                         log=lambda r: status.update(f"benchmarking {r['name']} [{r['backend']}]"
                                                     f" L={r['length']} ..."))
    out.print(report.bench_table(data))
    for note in data["notes"]:
        out.print(f"note: {note}", style="dim", markup=False)
    if args.json:
        out.print(f"wrote {report.write_json(args.json, data)}", markup=False)
    if args.plot:
        out.print(f"wrote {report.plot(data, args.plot)}", markup=False)
    return 1 if any(r["status"] == "error" for r in data["results"]) else 0
