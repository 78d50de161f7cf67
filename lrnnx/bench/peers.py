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
* the published ``lrnnx`` wheel: it would be imported under this checkout's own name, so it can
  only be timed by running this benchmark in an environment where it is the installed lrnnx.

Example::

    >>> fn, why = load("mamba_ssm", "mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")
    >>> fn is None and why == "not installed"   # on a machine without mamba_ssm
    True
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
from typing import Any

#: peer -> (top-level module, distribution names to read the version from, needs CUDA kernels)
PEERS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "accelerated_scan": ("accelerated_scan", ("accelerated-scan",), "triton"),
    "fla": ("fla", ("fla-core", "flash-linear-attention"), "triton"),
    "mamba_ssm": ("mamba_ssm", ("mamba-ssm", "mamba_ssm"), "cuda"),
}
NOT_INSTALLED = "not installed"
PUBLISHED_LRNNX = "published lrnnx"
PUBLISHED_LRNNX_WHY = (f"{NOT_INSTALLED} (the published wheel shares this checkout's import name: "
                       f"run this script where it is the installed lrnnx to time it)")

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
    out[PUBLISHED_LRNNX] = PUBLISHED_LRNNX_WHY  # rows say only "not installed"
    return out
