"""The GPU benchmark run (``benchmarks/gpu_scan.py``): lrnnx vs peers, one process, one GPU.

For each workload of :func:`.workloads.suite` (filtered by ``only``) and each :class:`.impls.Impl`:
prepare its inputs (outside the timed region), run it once and compare its output with the
first row's (``check``: max |x - ref| / max |ref|, in fp32), then :func:`.timing.measure` the
forward (under ``no_grad``) and forward+backward (``autograd.grad``), rotating among input copies
that together exceed twice the L2.  Then per row: ratio to the workload's reference peer, % of
the device-to-device copy bandwidth (byte model in :mod:`.workloads`), and pass/fail against the
issue's target -- judged on the lrnnx row of the backend ``backend="auto"`` picks there (triton
on CUDA); the other lrnnx rows are for information.

A row that cannot run says why: ``not installed`` (peer absent), ``n/a`` (device, backend or
layer unavailable), ``error`` / ``oom`` (message kept), ``skipped`` (a call over the per-call limit,
or the run's time budget used up).  results.json and RESULTS-gpu.md are rewritten after every
workload, so a run stopped early still leaves its results.  With ``rounds`` > 1 every usable
implementation of a workload is measured that many times, interleaved, and its row carries the
median of the rounds (:func:`merge_rounds`).
"""
from __future__ import annotations

import datetime
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import BackendUnavailableError, LrnnxError
from . import peers, timing
from .cli import short_reason
from .impls import Impl, args_bytes, clone_args, impls_for
from .workloads import Workload, make_inputs, select, suite, tiny

SCHEMA = "lrnnx.gpu_bench/1"


@dataclass
class SuiteOptions:
    """Run settings.  ``smoke`` shrinks every workload (CPU tests of the harness)."""

    device: str = "cuda"
    quick: bool = False
    only: str | None = None
    out: Path | None = Path("benchmarks/out")
    budget_s: float = 330.0  # whole run: the lead's GPU slot is ~6 minutes
    limit_s: float = 20.0  # one call slower than this is not repeated
    smoke: bool = False
    copy_bytes: int | None = None
    rounds: int = 1  # each workload's implementations measured this many times, interleaved

    @property
    def repeats(self) -> int:
        return 1 if self.smoke else (5 if self.quick else 20)

    @property
    def warmup(self) -> int:
        return 1 if (self.smoke or self.quick) else 3

    @property
    def warmup_ms(self) -> float:
        return 0.0 if (self.smoke or self.quick) else timing.WARMUP_MS

    @property
    def measure_budget_s(self) -> float:
        return 2.0 if (self.smoke or self.quick) else 6.0


def environment(device: torch.device) -> dict[str, Any]:
    import importlib.metadata as md
    import os

    try:
        triton_version = md.version("triton")
    except md.PackageNotFoundError:
        triton_version = None
    cuda = device.type == "cuda"
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "python": platform.python_version(), "torch": torch.__version__, "triton": triton_version,
        "cuda": torch.version.cuda, "lrnnx": __version__,
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "l2_bytes": timing.l2_bytes(device),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
        "peers": peers.all_status(),
    }


def _auto_backend(w: Workload, device: torch.device) -> str | None:
    """The backend ``backend="auto"`` picks for the workload's op (the row judged on target)."""
    import lrnnx.ops as ops

    op = "selective_scan" if (w.kind == "selective" or w.layer == "mamba") else "diag_scan"
    dtype = w.torch_dtype if w.kind != "layer" else torch.float32
    try:
        return ops.select_backend(op, device=device.type, dtype=dtype, L=w.dim["L"])[0]
    except LrnnxError:
        return None


def _rel_diff(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach(), ref.detach()
    if not x.is_complex():
        x, ref = x.float(), ref.float()
    scale = ref.abs().max().item() or 1.0
    return (x - ref).abs().max().item() / scale


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _row(impl: Impl) -> dict[str, Any]:
    return {"impl": impl.name, "backend": impl.backend, "peer": impl.peer, "status": "ok",
            "note": "", "fwd": None, "fwd_bwd": None, "fwd_ms": None, "fwd_bwd_ms": None,
            "check_rel_diff": None, "check_vs": None, "target_row": False}


def _status_of(why: str) -> str:
    return peers.NOT_INSTALLED if why.startswith(peers.NOT_INSTALLED) else \
        ("n/a" if why.startswith("n/a") else "error")


def run_impl(w: Workload, impl: Impl, inputs: dict, device: torch.device, opts: SuiteOptions,
             deadline: float, check: dict) -> dict[str, Any]:
    """Measure one row (see the module docstring); never raises for a failing implementation."""
    row = _row(impl)
    if impl.why:
        row["status"], row["note"] = _status_of(impl.why), impl.why
        return row
    if impl.external is not None:  # measured in another process (the published lrnnx)
        return impl.external(w, row, device, opts, deadline, check)
    if time.monotonic() > deadline:
        row["status"] = "skipped"
        row["note"] = f"the run's time budget ({opts.budget_s:g} s, --budget) was used up"
        return row
    copies: list = []
    try:
        args = impl.prepare(inputs)
        with torch.no_grad():
            out = impl.forward(args)
        common = impl.common(out)
        del out
        if common is not None:
            if "ref" not in check:
                check["ref"], check["name"] = common.detach(), impl.name
            row["check_rel_diff"] = _rel_diff(common, check["ref"])
            row["check_vs"] = check["name"]
        del common
        n = timing.n_copies(args_bytes(args), timing.l2_bytes(device))
        copies = [args] + [clone_args(args) for _ in range(n - 1)]
        row["copies"] = n
        notes = []
        kw = dict(warmup=opts.warmup, repeats=opts.repeats, limit_s=opts.limit_s,
                  budget_s=opts.measure_budget_s, warmup_ms=opts.warmup_ms)
        todo = [("fwd", lambda a: _no_grad(impl.forward, a))] if w.measure_fwd else []
        todo.append(("fwd_bwd", impl.fwd_bwd))
        for key, fn in todo:
            if time.monotonic() > deadline:
                notes.append(f"{key}: skipped, the run's time budget was used up")
                continue
            m = timing.measure(fn, copies, device, **kw)
            row[key], row[f"{key}_ms"] = m.to_dict(), m.ms
            if m.note:
                notes.append(f"{key}: {m.note}")
        if args.get("note"):
            notes.insert(0, args["note"])
        row["note"] = "; ".join(notes)
    except BackendUnavailableError as exc:
        row["status"], row["note"] = "n/a", short_reason(exc)
    except torch.cuda.OutOfMemoryError as exc:
        row["status"], row["note"] = "oom", _first_line(exc)
    except Exception as exc:  # noqa: BLE001 - report it in the row, go on with the others
        row["status"], row["note"] = "error", f"{type(exc).__name__}: {_first_line(exc)}"
    finally:
        copies.clear()
        _empty_cache(device)
    return row


def _no_grad(fn, args):
    with torch.no_grad():
        return fn(args)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


def evaluate(wd: dict[str, Any], copy_gbps: float | None, auto: str | None) -> None:
    """Fill ratios, % of copy bandwidth and the target verdict of a workload's rows in place."""
    rows = wd["rows"]
    ref = next((r for r in rows if r["impl"] == wd["reference"]), None)
    for r in rows:
        for key in ("fwd", "fwd_bwd"):
            ms = r.get(f"{key}_ms")
            ref_ms = ref.get(f"{key}_ms") if ref else None
            r[f"ratio_{key}"] = ms / ref_ms if ms and ref_ms else None
            nbytes = wd["ideal_bytes"][key]
            r[f"pct_bw_{key}"] = (100.0 * nbytes / (ms * 1e-3) / (copy_gbps * 1e9)
                                  if nbytes and ms and copy_gbps else None)
        r["result"], r["result_note"], r["target_row"] = "", "", False
    wd["auto_backend"] = auto
    target_row = next((r for r in rows if auto and r["impl"] == f"lrnnx ({auto})"), None)
    if target_row is None:
        return
    target_row["target_row"] = True
    targets = [(k, t) for k, t in wd["target"].items() if t is not None]
    if ref is None or ref["status"] != "ok":
        why = ref["note"] if ref else "not benchmarked"
        target_row["result"] = "n/a"
        target_row["result_note"] = f"reference {wd['reference']}: {why}"
    elif any(target_row[f"ratio_{k}"] is None for k, _ in targets):
        missing = [k for k, _ in targets if target_row[f"ratio_{k}"] is None]
        who = "the reference" if any(ref.get(f"{k}_ms") is None for k in missing) else "this row"
        target_row["result"] = "n/a"
        target_row["result_note"] = (f"no {' / '.join(m.replace('_', '+') for m in missing)} "
                                     f"ratio: {who} was not measured")
    else:
        ok = all(target_row[f"ratio_{k}"] <= t for k, t in targets)
        target_row["result"] = "pass" if ok else "FAIL"


def merge_rounds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the rounds of one implementation: each time is the median of the rounds'
    medians (``{key}_rounds_ms`` keeps them, None where a round was not measured) and the note
    gives their spread.  The base row (status, check, notes) is the first round that measured.

    Interleaved rounds (A, B, A, B, ...) make a CPU-bound row's ratio robust to the host's load
    drifting between A and B (benchmarks/NOTES.md, session 5: +-25% between runs)."""
    if len(rows) == 1:
        return rows[0]
    base = dict(next((r for r in rows if r["status"] == "ok"), rows[0]))
    notes = [base.get("note", "")] if base.get("note") else []
    for key in ("fwd", "fwd_bwd"):
        vals = [r.get(f"{key}_ms") if r["status"] == "ok" else None for r in rows]
        ok = [v for v in vals if v is not None]
        if not ok:
            continue
        med = statistics.median(ok)
        base[f"{key}_ms"] = med
        base[f"{key}_rounds_ms"] = vals
        if isinstance(base.get(key), dict):
            base[key] = dict(base[key], ms=med, rounds_ms=vals)
        spread = f"{min(ok):.3g}-{max(ok):.3g} ms"
        notes.append(f"{key.replace('_', '+')}: median of {len(ok)} of {len(rows)} rounds "
                     f"({spread})")
    base["rounds"] = len(rows)
    base["note"] = "; ".join(notes)
    return base


def run_workload(w: Workload, device: torch.device, opts: SuiteOptions, copy_gbps: float | None,
                 deadline: float, log=None) -> dict[str, Any]:
    wd = w.to_dict()
    wd["rows"] = []
    inputs = None
    rounds = max(1, int(opts.rounds))
    try:
        impls = impls_for(w, device)
        if time.monotonic() <= deadline:
            inputs = make_inputs(w, device)
        check: dict = {}
        per_impl: list[list[dict[str, Any]]] = [[] for _ in impls]
        for rnd in range(rounds):
            for i, impl in enumerate(impls):
                if rnd and (impl.why or per_impl[i][0]["status"] not in ("ok", "skipped")):
                    continue  # unusable or failing: measured (and reported) once
                if inputs is None and not impl.why:
                    row = _row(impl)
                    row["status"] = "skipped"
                    row["note"] = (f"the run's time budget ({opts.budget_s:g} s, --budget) was "
                                   f"used up")
                else:
                    row = run_impl(w, impl, inputs, device, opts, deadline, check)
                per_impl[i].append(row)
                if log and rounds == 1:
                    log(w, row)
        wd["rows"] = [merge_rounds(rows) for rows in per_impl]
        if log and rounds > 1:
            for row in wd["rows"]:
                log(w, row)
        check.clear()
    except torch.cuda.OutOfMemoryError as exc:
        wd["error"] = f"out of memory making the inputs: {_first_line(exc)}"
    finally:
        del inputs
        _empty_cache(device)
    evaluate(wd, copy_gbps, _auto_backend(w, device))
    return wd


def run_suite(opts: SuiteOptions, log=None) -> dict[str, Any]:
    """Run the selected workloads; returns (and, with ``opts.out``, writes) the results."""
    from .report import write_suite

    start = time.monotonic()
    deadline = start + opts.budget_s
    device = timing.device_of(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LrnnxError("the GPU benchmark needs a CUDA device (torch.cuda.is_available() is "
                         "False); for a CPU smoke run of the harness use --device cpu --smoke")
    workloads = select(suite(), opts.only)
    if not workloads:
        names = ", ".join(w.name for w in suite())
        raise LrnnxError(f"--only {opts.only!r} matches no workload; workloads: {names}")
    if opts.smoke:
        workloads = [tiny(w) for w in workloads]
    copy_bytes = opts.copy_bytes or (8 * 2**20 if opts.smoke or device.type != "cuda"
                                     else 2 * 2**30)
    copy = timing.copy_bandwidth(device, copy_bytes, repeats=3 if opts.smoke else 10)
    results: dict[str, Any] = {
        "schema": SCHEMA, "complete": False, "environment": environment(device),
        "options": {"quick": opts.quick, "only": opts.only, "smoke": opts.smoke,
                    "repeats": opts.repeats, "warmup": opts.warmup,
                    "warmup_ms": opts.warmup_ms, "budget_s": opts.budget_s,
                    "limit_s": opts.limit_s, "rounds": opts.rounds, "device": str(device)},
        "copy_bandwidth": copy, "workloads": [],
    }
    for w in workloads:
        results["workloads"].append(run_workload(w, device, opts, copy["GBps"], deadline, log))
        results["elapsed_s"] = round(time.monotonic() - start, 1)
        if opts.out is not None:
            write_suite(results, opts.out)
    results["complete"] = True
    if opts.out is not None:
        write_suite(results, opts.out)
    return results
