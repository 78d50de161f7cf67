"""Scan-backend selection for the public ops (``backend="auto"`` or a registered name).

A scan backend is a registered :class:`lrnnx.ScanBackend` (class or instance) that implements the
ops as methods with the signatures of :mod:`lrnnx.ops` (minus ``backend``)::

    diag_scan(a, b, h0=None, reverse=False, cu_seqlens=None) -> (h, h_last)
    selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   discretization="mamba", timesteps=None, h0=None, return_last_state=False)
    diag_step(a_t, b_t, h) -> h_new
    selective_step(u_t, delta_t, A, B_t, C_t, state, D=None, z_t=None, delta_bias=None,
                   delta_softplus=False, discretization="mamba", timesteps_t=None) -> (y_t, state)

Inputs reach a backend already validated.  A backend that finds out only when it first runs that it
cannot (e.g. a JIT build fails) raises :class:`~lrnnx.errors.BackendUnavailableError` *before*
computing anything; under ``"auto"`` the dispatcher then logs the reason and falls back.

Selection (``"auto"``): backends are ranked by ``priority`` (higher first, ties by name); the first
whose ``available()`` and ``supports(op, **problem)`` both say yes runs the op.  The problem keys
are: ``device`` (``"cpu"``, ``"cuda"``, ...), ``dtype`` (promoted input dtype), ``complex``,
``varlen``, ``reverse``, ``requires_grad``, ``L`` and op-specific flags (``broadcast_a``,
``has_h0``; ``discretization``, ``d_state``, ``groups``, ``has_z``, ``has_D``, ``timesteps``,
``return_last_state``).  Each rejection of a higher-ranked backend is logged once per
``(backend, reason)`` on the ``lrnnx.ops`` logger.  Decisions are cached per problem, and backend
classes are instantiated once.

Example::

    >>> from lrnnx.ops import select_backend, explain
    >>> select_backend("diag_scan", device="cuda", dtype="float32")   # doctest: +SKIP
    ('torch', {'cpu': "does not support this problem: needs CPU tensors, got device 'cuda'"})
    >>> print(explain("diag_scan", device="cpu"))                     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

from ..errors import BackendUnavailableError, InputError, InputTypeError, UnknownComponentError
from ..registry.core import REGISTRY, Entry

logger = logging.getLogger("lrnnx.ops")

OPS = ("diag_scan", "selective_scan", "diag_step", "selective_step")
KIND = "scan_backend"

#: defaults of the problem keys when a query (``select_backend`` / ``explain``) leaves them out
DEFAULT_PROBLEM: dict[str, Any] = {
    "device": "cpu", "dtype": torch.float32, "varlen": False, "reverse": False,
    "requires_grad": False, "L": 1024,
}

_LOCK = threading.RLock()
_INSTANCES: dict[tuple[str, int], tuple[Any, str]] = {}  # (name, id(obj)) -> (instance|None, why)
_RANKED: list = []  # [(registry, its generation, entries)]: the last ranking
_DECISIONS: dict[tuple, tuple[str | None, dict[str, str]]] = {}
_RUNTIME_FAILED: dict[tuple, dict[str, str]] = {}  # decision key -> {backend: reason}
_LOGGED: set[tuple[str, str]] = set()


def clear_backend_cache() -> None:
    """Forget backend instances, the backend ranking, cached decisions, run-time failures and
    logged reasons."""
    with _LOCK:
        _INSTANCES.clear()
        _RANKED.clear()
        _DECISIONS.clear()
        _RUNTIME_FAILED.clear()
        _LOGGED.clear()


# --------------------------------------------------------------------------- problems
def _dtype(v: Any) -> torch.dtype:
    if isinstance(v, torch.dtype):
        return v
    if isinstance(v, str):
        t = getattr(torch, v.removeprefix("torch."), None)
        if isinstance(t, torch.dtype):
            return t
    raise InputTypeError(f"lrnnx.ops: problem key dtype must be a torch.dtype or its name "
                         f"(e.g. 'float32'), got {v!r}.")


def normalize_problem(op: str, problem: dict[str, Any]) -> dict[str, Any]:
    """Check ``op`` and fill the problem's missing keys with :data:`DEFAULT_PROBLEM`."""
    if op not in OPS:
        from ..errors import close_matches

        sugg = close_matches(str(op), OPS)
        raise InputError(f"lrnnx.ops: op must be one of {', '.join(OPS)}, got {op!r}"
                         + (f"; did you mean {sugg[0]!r}?" if sugg else "."))
    p = {**DEFAULT_PROBLEM, **problem}
    dev = p["device"]
    p["device"] = dev.type if isinstance(dev, torch.device) else str(dev).split(":")[0]
    p["dtype"] = _dtype(p["dtype"])
    p.setdefault("complex", p["dtype"].is_complex)
    return p


# --------------------------------------------------------------------------- backends
def _instance(entry: Entry) -> tuple[Any, str]:
    """The (cached) backend instance of ``entry``, or ``(None, why it could not be built)``."""
    obj = entry.obj
    if not isinstance(obj, type):
        return obj, ""
    key = (entry.name, id(obj))
    with _LOCK:
        got = _INSTANCES.get(key)
        if got is None:
            try:
                got = (obj(), "")
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break dispatch
                got = (None, f"constructing {obj.__name__}() raised {type(exc).__name__}: {exc}")
            _INSTANCES[key] = got
        return got


def _ranked() -> list[Entry]:
    """The scan backends, highest priority first (cached per registry generation: this runs on
    every op call)."""
    REGISTRY.ensure_loaded()
    gen = REGISTRY.generation
    if _RANKED and _RANKED[0][0] is REGISTRY and _RANKED[0][1] == gen:
        return _RANKED[0][2]
    ranked = sorted(REGISTRY.entries(KIND), key=lambda e: (-getattr(e.obj, "priority", 0), e.name))
    _RANKED[:] = [(REGISTRY, gen, ranked)]
    return ranked


def _judge(entry: Entry, op: str, problem: dict[str, Any]) -> tuple[bool, str]:
    """Can ``entry`` run ``op`` on ``problem``?  ``(ok, reason or note)``."""
    inst, why = _instance(entry)
    if inst is None:
        return False, why
    if not callable(getattr(inst, op, None)):
        return False, f"does not implement {op}()"
    for method, label in (("available", "unavailable"),
                          ("supports", "does not support this problem")):
        try:
            fn = getattr(inst, method)
            ok, why = fn(op, **problem) if method == "supports" else fn()
        except Exception as exc:  # noqa: BLE001
            return False, f"{method}() raised {type(exc).__name__}: {exc}"
        if not ok:
            return False, f"{label}: {why}"
    return True, why


def _prefers(entry: Entry, op: str, problem: dict[str, Any]) -> tuple[bool, str]:
    """The backend's optional ``prefer(op, **problem)`` (True when absent or broken)."""
    fn = getattr(_instance(entry)[0], "prefer", None)
    if not callable(fn):
        return True, ""
    try:
        ok, why = fn(op, **problem)
    except Exception:  # noqa: BLE001 -- a preference must never break dispatch
        return True, ""
    return bool(ok), why


def _log_once(name: str, reason: str, op: str, level: int = logging.INFO) -> None:
    key = (name, reason)
    with _LOCK:
        if key in _LOGGED:
            return
        _LOGGED.add(key)
    logger.log(level, "lrnnx.ops.%s: scan backend %r not used: %s", op, name, reason)


def _key(op: str, problem: dict[str, Any], entries: list[Entry]) -> tuple:
    """Decision-cache key: the op, the problem and the registered backends (a plugin registered
    or removed at run time changes it: ``entries`` is :func:`_ranked`'s list, which belongs to
    one registry generation)."""
    gen = _RANKED[0][1] if _RANKED and _RANKED[0][2] is entries else \
        tuple((e.name, id(e.obj)) for e in entries)
    return (op, tuple(sorted(problem.items(), key=_first)), id(REGISTRY), gen)


def _first(kv):
    return kv[0]


def _decide(op: str, problem: dict[str, Any]) -> tuple[str | None, dict[str, str]]:
    entries = _ranked()
    key = _key(op, problem, entries)
    with _LOCK:
        hit = _DECISIONS.get(key)
        if hit is not None:
            return hit
        failed = _RUNTIME_FAILED.get(key, {})
        chosen, reasons, fallback = None, {}, None
        for e in entries:
            ok, why = (False, failed[e.name]) if e.name in failed else _judge(e, op, problem)
            if ok and chosen is None:
                pref, pwhy = _prefers(e, op, problem)
                if pref:
                    chosen = e.name
                else:  # can run it, but another backend is measured faster here
                    fallback = fallback or e.name
                    reasons[e.name] = f"not preferred: {pwhy}"
            elif not ok:
                reasons[e.name] = why
                if chosen is None:  # only higher-ranked rejections explain the choice
                    _log_once(e.name, why, op)
        if chosen is None and fallback is not None:
            chosen = fallback
            reasons.pop(fallback, None)
        _DECISIONS[key] = (chosen, reasons)
        return chosen, reasons


def select_backend(op: str, **problem: Any) -> tuple[str | None, dict[str, str]]:
    """``(name, reasons)``: the backend ``"auto"`` picks for ``op`` on ``problem`` (None if no
    backend can run it) and ``{backend: why not}`` for every backend that cannot."""
    return _decide(op, normalize_problem(op, problem))


def backend_table(op: str | None = None, **problem: Any) -> list[dict[str, Any]]:
    """One row per registered backend, highest priority first: name, priority, package, plugin,
    ``ok`` and ``reason`` (availability when ``op`` is None, else whether it can run ``op`` on
    ``problem``) and ``selected``."""
    chosen = None
    if op is not None:
        problem = normalize_problem(op, problem)
        chosen, _ = _decide(op, problem)
    rows = []
    for e in _ranked():
        if op is None:
            inst, why = _instance(e)
            ok = inst is not None
            if ok:
                try:
                    ok, why = inst.available()
                except Exception as exc:  # noqa: BLE001
                    ok, why = False, f"available() raised {type(exc).__name__}: {exc}"
        else:
            ok, why = _judge(e, op, problem)
            if ok and e.name != chosen:
                pref, pwhy = _prefers(e, op, problem)
                if not pref:
                    why = f"not preferred: {pwhy}"
        rows.append({"name": e.name, "priority": getattr(e.obj, "priority", 0),
                     "package": e.package, "plugin": e.plugin, "ok": ok, "reason": why,
                     "selected": e.name == chosen})
    return rows


def _describe(problem: dict[str, Any]) -> str:
    return ", ".join(f"{k}={str(v).removeprefix('torch.')}" for k, v in problem.items())


def explain(op: str | None = None, **problem: Any) -> str:
    """Human-readable report of the scan backends (what ``lrnnx backends`` prints).

    Without ``op``: every backend with its priority, package and availability.  With ``op`` (and
    problem keys, defaults filled in): which backend ``"auto"`` picks and why the others are not.
    """
    rows = backend_table(op, **problem)
    if op is None:
        head = "scan backends (highest priority first):"
    else:
        head = f"scan backends for {op} ({_describe(normalize_problem(op, problem))}):"
    if not rows:
        return head + "\n  (none registered)"
    w = max(len(r["name"]) for r in rows)
    lines = [head]
    for r in rows:
        mark = "*" if r["selected"] else " "
        if op is None:
            state = "available" if r["ok"] else "unavailable"
        else:
            state = "selected" if r["selected"] else ("can run" if r["ok"] else "cannot run")
        why = f": {r['reason']}" if r["reason"] else ""
        lines.append(f"{mark} {r['name']:<{w}}  priority {r['priority']:>3}  {r['package']}  "
                     f"{state}{why}")
    if op is not None and not any(r["selected"] for r in rows):
        lines.append(f"  no backend can run {op} on this problem")
    return "\n".join(lines)


# --------------------------------------------------------------------------- running
def compiling() -> bool:
    """True while torch.compile (dynamo) traces: backends skip their first-use checks, which
    :meth:`ScanBackend.prepare` ran at trace time."""
    comp = getattr(torch, "compiler", None)
    return bool(comp is not None and hasattr(comp, "is_compiling") and comp.is_compiling())


def _assume_constant(fn):
    """``torch.compiler.assume_constant_result(fn)`` without importing torch._dynamo (which
    imports triton: seconds) when lrnnx.ops is imported; the decorator only sets this marker
    (tests/test_ops.py checks that it still does)."""
    fn._dynamo_marked_constant = True
    return fn


def _check_named(op: str, backend: str, problem: dict[str, Any]) -> Entry:
    """The entry of the backend named ``backend``; raises when it cannot run ``problem``."""
    entry = _entry(op, backend)
    ok, why = _judge(entry, op, problem)
    if not ok:
        auto, _ = _decide(op, problem)
        alt = f"backend='auto' (picks {auto!r} here)" if auto else "another device or dtype"
        raise BackendUnavailableError(
            f"lrnnx.ops.{op}: scan backend {backend!r} cannot run this problem "
            f"({_describe(problem)}): {why}; use {alt}, see `lrnnx backends`.")
    return entry


_COMPILE_INSTANCES: dict[str, Any] = {}  # name -> instance, filled by _backend_for


@_assume_constant
def _backend_for(op: str, backend: str, items: tuple) -> str:
    """The backend that runs ``op`` on the problem ``items`` (key / value pairs) for ``backend``
    (``"auto"`` or a name), prepared and its instance left in ``_COMPILE_INSTANCES``; raises like
    :func:`call`.  A constant for torch.compile (evaluated at trace time)."""
    problem = dict(items)
    if backend != "auto":
        name = _check_named(op, backend, problem).name
    else:
        name, reasons = _decide(op, problem)
        if name is None:
            detail = "; ".join(f"{n}: {r}" for n, r in reasons.items()) or "none registered"
            raise BackendUnavailableError(
                f"lrnnx.ops.{op}: no scan backend can run this problem ({_describe(problem)}); "
                f"{detail}. Install or enable a backend that supports it (`lrnnx backends`).")
    inst = _instance(REGISTRY.entry(KIND, name))[0]
    prepare = getattr(inst, "prepare", None)
    if callable(prepare):  # first-use work (a JIT build) happens here, outside the graph
        prepare(op)
    _COMPILE_INSTANCES[name] = inst
    return name


def _entry(op: str, name: str) -> Entry:
    try:
        return REGISTRY.entry(KIND, name)
    except UnknownComponentError:
        raise UnknownComponentError(KIND, name, REGISTRY.names(KIND),
                                    context=f"backend= of lrnnx.ops.{op}") from None


def call(op: str, backend: Any, problem: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``op`` with ``args``/``kwargs`` on the backend named ``backend`` (or ``"auto"``)."""
    if not isinstance(backend, str):
        raise InputTypeError(f"lrnnx.ops.{op}: backend must be 'auto' or the name of a "
                             f"registered scan backend (str), got {type(backend).__name__} "
                             f"{backend!r}; see `lrnnx backends`.")
    if compiling():
        # Under torch.compile the backend is chosen (and prepared) once at trace time, outside
        # the graph: the registry walk and first-use checks are plain Python with locks that
        # dynamo cannot trace.  The backend's op (a torch.library custom op) is traced as usual,
        # so fullgraph=True holds.
        name = _backend_for(op, backend, tuple(problem.items()))
        return getattr(_COMPILE_INSTANCES[name], op)(*args, **kwargs)
    if backend != "auto":
        entry = _check_named(op, backend, problem)
        try:
            return getattr(_instance(entry)[0], op)(*args, **kwargs)
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(f"lrnnx.ops.{op}: scan backend {backend!r} failed to "
                                          f"start: {exc}; use backend='auto' to fall back.") \
                from exc
    tried: dict[str, str] = {}
    while True:
        name, reasons = _decide(op, problem)
        if name is None:
            reasons = {**reasons, **tried}
            detail = "; ".join(f"{n}: {r}" for n, r in reasons.items()) or "none registered"
            raise BackendUnavailableError(
                f"lrnnx.ops.{op}: no scan backend can run this problem ({_describe(problem)}); "
                f"{detail}. Install or enable a backend that supports it (`lrnnx backends`).")
        inst = _instance(REGISTRY.entry(KIND, name))[0]
        try:
            return getattr(inst, op)(*args, **kwargs)
        except BackendUnavailableError as exc:
            # The backend found out at first use that it cannot run (e.g. its JIT build failed):
            # remember that for this problem, say so once, and fall back to the next one.
            why = f"failed at first use: {exc}"
            tried[name] = why
            _log_once(name, why, op, logging.WARNING)
            key = _key(op, problem, _ranked())
            with _LOCK:
                _RUNTIME_FAILED.setdefault(key, {})[name] = why
                _DECISIONS.pop(key, None)
