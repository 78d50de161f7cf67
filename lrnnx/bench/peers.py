"""Other libraries' scans that the GPU benchmark times lrnnx against ("peers"), import-guarded.

Every peer is optional: :func:`load` returns ``(object, "")`` or ``(None, why)`` with ``why``
``"not installed"`` (no such module) or ``"import failed: ..."`` (installed but broken), and the
benchmark reports that instead of stopping.  Peers and the layouts their functions take (checked in
the wheels' sources):

* ``accelerated_scan`` 0.3.1 (``accelerated_scan.scalar.scan`` / ``accelerated_scan.complex.scan``,
  Triton): ``scan(gates, tokens)`` with (B, D, L) contiguous tensors, ``h_t = a_t h_{t-1} + x_t``;
  ``complex.scan`` takes a complex ``gates``.
* ``fla`` (fla-core / flash-linear-attention 0.6.0, ``fla.ops.hgrn``):
  ``chunk_hgrn(x, g)`` / ``fused_recurrent_hgrn(x, g)`` -> ``(o, final_state)`` with (B, T, D)
  tensors and ``h_t = exp(g_t) h_{t-1} + x_t`` (so ``g = log a``).
* ``mamba_ssm`` (``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``, CUDA):
  ``selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)`` with u, delta, z
  (B, D, L), A (D, N), B and C (B, N, L); ``mamba_ssm.Mamba(d_model, d_state, d_conv, expand)``.
* the published ``lrnnx`` (1.0.0.post1, PyPI sdist with its CUDA extensions
  ``selective_scan_cuda`` and ``simplified_scan_cuda``): it has this checkout's import name, and
  its ``selective_scan_cuda`` has mamba_ssm's, so it is never imported here.  With
  ``LRNNX_PUBLISHED_PATH`` naming a directory that holds its ``lrnnx/`` package and extensions,
  :class:`PublishedWorker` runs it in a child process (this file run as a script, ``python -P``,
  ``PYTHONPATH`` = that directory alone) which builds the workload's inputs with the same
  :func:`.workloads.make_inputs`, times them with the same :func:`.timing.measure` and answers
  in JSON lines (protocol: :func:`_worker_main`).  API used: ``lrnnx.ops.selective_scan.
  selective_scan_fn(u, delta, A, B, C, D, z=, delta_bias=, delta_softplus=)`` (mamba_ssm's
  layouts; fp32 only) and the layers ``lrnnx.models.lti.LRU(d_model, d_state)``,
  ``lti.S5(d_model, d_state, discretization="zoh")`` (FFT convolution), ``lti.S4D(d_model,
  transposed=False)``, ``ltv.Mamba(d_model, d_state)``, ``ltv.RGLRU(d_model)``,
  ``ltv.S7(d_model, d_state)`` and, as an extra row, ``ltv.S5`` (its parallel scan).

Example::

    >>> fn, why = load("mamba_ssm", "mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")
    >>> fn is None and why == "not installed"   # on a machine without mamba_ssm
    True
"""
from __future__ import annotations

import atexit
import importlib
import importlib.metadata
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

#: peer -> (top-level module, distribution names to read the version from, needs CUDA kernels)
PEERS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "accelerated_scan": ("accelerated_scan", ("accelerated-scan",), "triton"),
    "fla": ("fla", ("fla-core", "flash-linear-attention"), "triton"),
    "mamba_ssm": ("mamba_ssm", ("mamba-ssm", "mamba_ssm"), "cuda"),
}
NOT_INSTALLED = "not installed"
PUBLISHED_LRNNX = "published lrnnx"
#: directory holding the published lrnnx (``lrnnx/`` + its ``*_cuda*.so``), run in a child process
PUBLISHED_ENV = "LRNNX_PUBLISHED_PATH"
PUBLISHED_LRNNX_WHY = (f"{NOT_INSTALLED} (set {PUBLISHED_ENV} to a directory holding the published "
                       f"lrnnx package and its CUDA extensions: it shares this checkout's import "
                       f"name, so it runs in a child process)")

_CACHE: dict[tuple[str, str], tuple[Any, str]] = {}


def _import(module: str):
    """``importlib.import_module`` (a seam the tests replace to simulate absent peers)."""
    return importlib.import_module(module)


def version(peer: str) -> str | None:
    """Installed version of ``peer`` (None when not installed)."""
    _, dists, _ = PEERS[peer]
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def load(peer: str, module: str, attr: str | None = None) -> tuple[Any, str]:
    """``(module or module.attr, "")``, or ``(None, reason)`` if it cannot be imported."""
    key = (module, attr or "")
    if key in _CACHE:
        return _CACHE[key]
    top = PEERS[peer][0]
    try:
        obj = _import(module)
        got: tuple[Any, str] = (getattr(obj, attr) if attr else obj, "")
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        got = (None, NOT_INSTALLED if missing.split(".")[0] == top else
               f"import failed: {type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a broken peer must not stop the benchmark
        got = (None, f"import failed: {type(exc).__name__}: {exc}")
    _CACHE[key] = got
    return got


def clear_cache() -> None:
    _CACHE.clear()
    close_published_worker()


def device_ok(peer: str, device_type: str) -> tuple[bool, str]:
    """Can ``peer`` run on tensors of ``device_type``?  Triton peers also run on CPU tensors under
    ``TRITON_INTERPRET=1``; mamba_ssm needs CUDA."""
    kind = PEERS[peer][2]
    if device_type == "cuda":
        return True, ""
    if kind == "triton" and os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True, ""
    return False, f"n/a: {peer} needs a CUDA device (got {device_type})"


def status(peer: str) -> str:
    """``"<version>"`` or why the peer is unusable, for the report's environment section."""
    _, why = load(peer, PEERS[peer][0])
    if why:
        return why
    return version(peer) or "installed (version unknown)"


def all_status() -> dict[str, str]:
    out = {p: status(p) for p in PEERS}
    out[PUBLISHED_LRNNX] = published_status()
    return out


# ------------------------------------------------------ the published lrnnx, in a child process

#: published lrnnx layer per workload layer name (``name:variant`` for extra rows):
#: (module, class, keyword arguments from the workload's options) -- ``d_model`` goes first
PUBLISHED_LAYERS: dict[str, tuple[str, str, Any]] = {
    "lru": ("lrnnx.models.lti", "LRU", lambda o: {"d_state": o.get("d_state", 64)}),
    "s5": ("lrnnx.models.lti", "S5",
           lambda o: {"d_state": o.get("d_state", 64), "discretization": "zoh"}),
    "s5:scan": ("lrnnx.models.ltv", "S5",
                lambda o: {"d_state": o.get("d_state", 64), "discretization": "zoh"}),
    "s4d": ("lrnnx.models.lti", "S4D",
            lambda o: {"transposed": False, **({"d_state": o["d_state"]} if "d_state" in o
                                               else {})}),
    "mamba": ("lrnnx.models.ltv", "Mamba", lambda o: {"d_state": o.get("d_state", 16)}),
    "rglru": ("lrnnx.models.ltv", "RGLRU", lambda o: {}),
    "s7": ("lrnnx.models.ltv", "S7", lambda o: {"d_state": o.get("d_state", 64)}),
}
PUBLISHED_SELECTIVE = ("lrnnx.ops.selective_scan", "selective_scan_fn")
WORKER_FLAG = "--published-worker"


class PublishedWorkerError(RuntimeError):
    """The published lrnnx's child process could not start, died or did not answer in time."""


def published_path() -> tuple[str | None, str]:
    """``(directory, "")`` from ``$LRNNX_PUBLISHED_PATH``, or ``(None, why)``."""
    raw = os.environ.get(PUBLISHED_ENV, "").strip()
    if not raw:
        return None, PUBLISHED_LRNNX_WHY
    path = Path(raw).expanduser().resolve()
    if not (path / "lrnnx" / "__init__.py").is_file():
        return None, f"{NOT_INSTALLED} ({PUBLISHED_ENV}={raw} holds no lrnnx/__init__.py)"
    return str(path), ""


def published_version(path: str) -> str | None:
    """The version in ``path``'s ``lrnnx-*.dist-info`` / ``lrnnx*.egg-info`` (no import)."""
    metas = sorted(Path(path).glob("lrnnx-*.dist-info/METADATA")) + \
        sorted(Path(path).glob("lrnnx*.egg-info/PKG-INFO"))
    for meta in metas:
        for line in meta.read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return None


def published_device_ok(device_type: str) -> tuple[bool, str]:
    """The published lrnnx's kernels are CUDA only (the tests replace this to run a fake)."""
    if device_type == "cuda":
        return True, ""
    return False, f"n/a: {PUBLISHED_LRNNX} needs a CUDA device (got {device_type})"


class PublishedWorker:
    """The child process that imports the published lrnnx and times it (one per run, reused).

    ``start()`` -> the child's hello (versions, files); ``run(job, timeout_s)`` -> its result
    dict (see :func:`_worker_job`); ``close()``.  The child gets ``PYTHONPATH`` = ``path`` alone
    (so neither this checkout nor mamba_ssm's ``selective_scan_cuda`` can answer its imports),
    ``python -P`` (no script folder on its path), a temporary working directory, and its stderr
    goes to a file whose tail is quoted when it fails.
    """

    def __init__(self, path: str, python: str | None = None, start_timeout_s: float = 180.0):
        self.path = path
        self.python = python or sys.executable
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.hello: dict[str, Any] = {}
        self._lines: queue.Queue = queue.Queue()
        self._stderr = None
        self._cwd: tempfile.TemporaryDirectory | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> dict[str, Any]:
        env = dict(os.environ)
        env["PYTHONPATH"] = self.path
        env["PYTHONUNBUFFERED"] = "1"
        self._stderr = tempfile.TemporaryFile()
        self._cwd = tempfile.TemporaryDirectory(prefix="lrnnx-published-")
        cmd = [self.python, *(["-P"] if sys.version_info >= (3, 11) else []),
               str(Path(__file__).resolve()), WORKER_FLAG]
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr, cwd=self._cwd.name, env=env,
                                         text=True, bufsize=1)
        except OSError as exc:
            raise PublishedWorkerError(f"cannot start {self.python}: {exc}") from exc
        threading.Thread(target=self._pump, args=(self.proc, self._lines), daemon=True).start()
        msg = self._read(self.start_timeout_s, "start-up")
        hello = msg.get("hello")
        if not isinstance(hello, dict):
            self.close()
            raise PublishedWorkerError(f"unexpected first message {msg!r}")
        if not hello.get("ok"):
            self.close()
            raise PublishedWorkerError(str(hello.get("why", "unknown failure")))
        self.hello = hello
        return hello

    @staticmethod
    def _pump(proc: subprocess.Popen, lines: queue.Queue) -> None:
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                lines.put(line)
        finally:
            lines.put(None)

    def stderr_tail(self, n: int = 3) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - 4000))
            text = self._stderr.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return " | ".join(lines[-n:])

    def _read(self, timeout_s: float, what: str) -> dict[str, Any]:
        end = time.monotonic() + timeout_s
        while True:
            left = end - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0.0))
            except queue.Empty:
                tail = self.stderr_tail()
                self.close()
                raise PublishedWorkerError(f"no answer within {timeout_s:g} s ({what})"
                                           + (f"; stderr: {tail}" if tail else "")) from None
            if line is None:
                code = self.proc.wait() if self.proc is not None else None
                tail = self.stderr_tail()
                self.close()
                raise PublishedWorkerError(f"the child process exited (code {code}) during "
                                           f"{what}" + (f"; stderr: {tail}" if tail else ""))
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # not a protocol line
            if isinstance(msg, dict):
                return msg

    def run(self, job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one job, wait for its result (``PublishedWorkerError`` if none comes)."""
        if not self.alive():
            raise PublishedWorkerError("the child process is not running")
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (OSError, ValueError) as exc:
            tail = self.stderr_tail()
            self.close()
            raise PublishedWorkerError(f"cannot send the job: {exc}"
                                       + (f"; stderr: {tail}" if tail else "")) from exc
        msg = self._read(timeout_s, f"{job.get('kind')} job")
        result = msg.get("result")
        if not isinstance(result, dict):
            raise PublishedWorkerError(f"unexpected answer {msg!r}")
        return result

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                if proc.poll() is None:
                    try:
                        proc.stdin.close()  # type: ignore[union-attr]  # EOF: the child exits
                    except OSError:
                        pass
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=10)
            finally:
                for stream in (proc.stdin, proc.stdout):
                    try:
                        if stream is not None:
                            stream.close()
                    except OSError:
                        pass
        if self._cwd is not None:
            self._cwd.cleanup()
            self._cwd = None


_WORKER: PublishedWorker | None = None
_WORKER_FAILED = ""  # why the child could not start (kept: not retried within a run)


def published_worker() -> tuple[PublishedWorker | None, str]:
    """The running child process (started on first use), or ``(None, why)``."""
    global _WORKER, _WORKER_FAILED
    path, why = published_path()
    if path is None:
        return None, why
    if _WORKER is not None and _WORKER.alive() and _WORKER.path == path:
        return _WORKER, ""
    if _WORKER_FAILED:
        return None, _WORKER_FAILED
    close_published_worker()
    worker = PublishedWorker(path)
    try:
        worker.start()
    except PublishedWorkerError as exc:
        _WORKER_FAILED = f"import failed: {exc}"
        return None, _WORKER_FAILED
    _WORKER = worker
    return worker, ""


def close_published_worker() -> None:
    global _WORKER, _WORKER_FAILED
    worker, _WORKER, _WORKER_FAILED = _WORKER, None, ""
    if worker is not None:
        worker.close()


atexit.register(close_published_worker)


def published_status() -> str:
    """For the report's environment: version and path, or why the published lrnnx is unusable."""
    path, why = published_path()
    if path is None:
        return why
    if _WORKER is not None and _WORKER.hello:
        version = _WORKER.hello.get("version")
    else:
        version = published_version(path)
    if _WORKER_FAILED:
        return _WORKER_FAILED
    return f"{version or 'version unknown'} (child process, {PUBLISHED_ENV}={path})"


def published_job(w: Any, device: str, variant: str = "", *, warmup: int = 3,
                  warmup_ms: float = 0.0, repeats: int = 20, limit_s: float = 20.0, budget_s: float = 6.0, time_left_s: float = 1e9,
                  check_path: str | None = None, seed: int = 0) -> dict[str, Any]:
    """The JSON request for workload ``w`` (a :class:`.workloads.Workload`)."""
    return {"kind": w.kind, "dtype": w.dtype, "dims": [list(d) for d in w.dims],
            "layer": w.layer, "options": [list(o) for o in w.options], "variant": variant,
            "reference": w.reference, "device": device, "seed": seed,
            "measure_fwd": w.measure_fwd,
            "measure": {"warmup": warmup, "warmup_ms": warmup_ms, "repeats": repeats,
                        "limit_s": limit_s, "budget_s": budget_s},
            "time_left_s": time_left_s, "check_path": check_path}


# ----------------------------------------------------------- the child's side (run as a script)

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


def _load_by_path(name: str, path: Path):
    """A stdlib+torch module of this folder (timing.py, workloads.py) without importing lrnnx."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _holds_other_lrnnx(entry: str, published: Path) -> bool:
    folder = Path(entry or ".").resolve()
    return (folder / "lrnnx").is_dir() and folder != published


def _worker_hello(published: Path) -> dict[str, Any]:
    import platform

    import torch

    import lrnnx

    where = Path(lrnnx.__file__).resolve()
    if published not in where.parents:
        return {"ok": False, "why": f"`import lrnnx` found {where}, not the published package "
                                    f"in {published}"}
    importlib.import_module(PUBLISHED_SELECTIVE[0])  # loads selective_scan_cuda
    for module in sorted({m for m, _, _ in PUBLISHED_LAYERS.values()}):
        importlib.import_module(module)  # ltv imports simplified_scan_cuda
    exts = {name: getattr(sys.modules[name], "__file__", None)
            for name in ("selective_scan_cuda", "simplified_scan_cuda") if name in sys.modules}
    return {"ok": True, "version": getattr(lrnnx, "__version__", None) or
            published_version(str(published)), "lrnnx_file": str(where), "extensions": exts,
            "torch": torch.__version__, "python": platform.python_version(),
            "pid": os.getpid()}


class _Case:
    """One published implementation on one workload: prepare (untimed), forward, common."""

    def __init__(self, desc, prepare, forward, common, grad_keys):
        self.desc, self.prepare, self.forward, self.common = desc, prepare, forward, common
        self.grad_keys = grad_keys

    def leaves(self, args):
        out = [args[k] for k in self.grad_keys]
        mod = args.get("module")
        if mod is not None:
            out += [p for p in mod.parameters() if p.requires_grad]
        return out

    def fwd_bwd(self, args):
        import torch

        out = self.forward(args)
        return torch.autograd.grad(out, self.leaves(args), args["grad_out"], allow_unused=True)


def _published_case(w, variant: str, device) -> _Case:
    import torch

    def leaf(t):
        return t.detach().contiguous().requires_grad_(True)

    def tr(t):
        return t.transpose(1, 2).contiguous()

    if w.kind == "selective":
        fn = getattr(importlib.import_module(PUBLISHED_SELECTIVE[0]), PUBLISHED_SELECTIVE[1])
        keys = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

        def prepare(x):  # mamba_ssm's layouts: u, delta, z (B, D, L); B, C (B, N, L)
            a = {k: leaf(tr(x[k])) for k in ("u", "delta", "z", "B", "C")}
            a.update({k: leaf(x[k]) for k in ("A", "D", "delta_bias")})
            a["grad_out"] = tr(x["grad_y"])
            return a

        return _Case(".".join(PUBLISHED_SELECTIVE), prepare,
                     lambda a: fn(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], z=a["z"],
                                  delta_bias=a["delta_bias"], delta_softplus=True),
                     lambda out: out.transpose(1, 2), keys)
    if w.kind != "layer":
        raise ValueError(f"the published lrnnx has no {w.kind!r} workload here")
    key = f"{w.layer}:{variant}" if variant else w.layer
    if key not in PUBLISHED_LAYERS:
        raise ValueError(f"no published lrnnx layer for {key!r}")
    module, cls_name, kwargs_of = PUBLISHED_LAYERS[key]
    kwargs = kwargs_of(dict(w.options))
    cls = getattr(importlib.import_module(module), cls_name)
    torch.manual_seed(0)
    layer = cls(w.dim["d_model"], **kwargs).to(device)
    desc = f"{module.removeprefix('lrnnx.models.')}.{cls_name}(" + ", ".join(
        [str(w.dim["d_model"])] + [f"{k}={v!r}" for k, v in kwargs.items()]) + ")"

    def forward(a):
        out = a["module"](a["x"])
        return out[0] if isinstance(out, (tuple, list)) else out

    return _Case(desc, lambda x: {"module": layer, "x": leaf(x["x"]), "grad_out": x["grad_y"]},
                 forward, lambda out: None, ("x",))


def _args_bytes(args) -> int:
    import torch

    n = sum(v.numel() * v.element_size() for v in args.values() if isinstance(v, torch.Tensor))
    mod = args.get("module")
    if mod is not None:
        n += sum(p.numel() * p.element_size() for p in mod.parameters())
    return n


def _clone_args(args):
    import torch

    return {k: (v.detach().clone().requires_grad_(v.requires_grad)
                if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


def _worker_job(job: dict[str, Any], timing, workloads) -> dict[str, Any]:
    """Run one job: the workload's inputs (same ``make_inputs`` and seed as the parent), the
    published implementation, an output for the agreement check (saved to ``check_path``), then
    ``timing.measure`` of fwd (unless layers) and fwd+bwd -- as ``suite.run_impl`` does."""
    import gc

    import torch

    res: dict[str, Any] = {"status": "ok", "note": "", "impl": "", "fwd": None, "fwd_ms": None,
                           "fwd_bwd": None, "fwd_bwd_ms": None, "copies": None,
                           "check_path": None}
    deadline = time.monotonic() + float(job.get("time_left_s", 1e9))
    copies: list = []
    args = inputs = None
    try:
        w = workloads.Workload(job["kind"], job["dtype"], tuple(tuple(d) for d in job["dims"]),
                               job.get("reference", ""), None, None, layer=job.get("layer"),
                               options=tuple(tuple(o) for o in job.get("options", ())))
        device = timing.device_of(job.get("device", "cuda"))
        inputs = workloads.make_inputs(w, device, seed=int(job.get("seed", 0)))
        case = _published_case(w, job.get("variant") or "", device)
        res["impl"] = case.desc
        args = case.prepare(inputs)
        inputs = None
        with torch.no_grad():
            out = case.forward(args)
        common = case.common(out)
        del out
        if common is not None and job.get("check_path"):
            torch.save(common.detach().cpu(), job["check_path"])
            res["check_path"] = job["check_path"]
        del common
        n = timing.n_copies(_args_bytes(args), timing.l2_bytes(device))
        copies = [args] + [_clone_args(args) for _ in range(n - 1)]
        res["copies"] = n
        m = job.get("measure", {})
        kw = dict(warmup=int(m.get("warmup", 3)), repeats=int(m.get("repeats", 20)),
                  limit_s=float(m.get("limit_s", 20.0)), budget_s=float(m.get("budget_s", 6.0)),
                  warmup_ms=float(m.get("warmup_ms", 0.0)))

        def fwd(a):
            with torch.no_grad():
                return case.forward(a)

        todo = [("fwd", fwd)] if job.get("measure_fwd", True) else []
        todo.append(("fwd_bwd", case.fwd_bwd))
        notes = []
        for key, fn in todo:
            if time.monotonic() > deadline:
                notes.append(f"{key}: skipped, the run's time budget was used up")
                continue
            meas = timing.measure(fn, copies, device, **kw)
            res[key], res[f"{key}_ms"] = meas.to_dict(), meas.ms
            if meas.note:
                notes.append(f"{key}: {meas.note}")
        res["note"] = "; ".join(notes)
    except torch.cuda.OutOfMemoryError as exc:
        res["status"], res["note"] = "oom", _first_line(exc)
    except Exception as exc:  # noqa: BLE001 - reported in the row
        res["status"], res["note"] = "error", f"{type(exc).__name__}: {_first_line(exc)}"
    finally:
        copies.clear()
        args = inputs = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return res


def _worker_main() -> int:
    """The child: one JSON line ``{"hello": {...}}``, then for each request line (a
    :func:`published_job` dict) one ``{"result": {...}}`` line; exits at end of input.  Only
    protocol lines go to the real stdout: everything printed (the package's prints, C++ output)
    goes to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    here = Path(__file__).resolve().parent
    entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    published = Path(entries[0]).resolve() if entries else Path(".").resolve()
    # nothing but the published package may answer `import lrnnx`
    sys.path[:] = [p for p in sys.path
                   if Path(p or ".").resolve() != here and not _holds_other_lrnnx(p, published)]
    try:
        hello = _worker_hello(published)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        hello = {"ok": False, "why": f"{type(exc).__name__}: {_first_line(exc)}"}
    send({"hello": hello})
    if not hello.get("ok"):
        return 1
    timing = _load_by_path("_lrnnx_bench_timing", here / "timing.py")
    workloads = _load_by_path("_lrnnx_bench_workloads", here / "workloads.py")
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            job = json.loads(line)
        except ValueError as exc:
            send({"result": {"status": "error", "note": f"bad request: {exc}"}})
            continue
        send({"result": _worker_job(job, timing, workloads)})
    return 0


if __name__ == "__main__" and sys.argv[1:2] == [WORKER_FLAG]:
    sys.exit(_worker_main())
