"""Just-in-time build of the lrnnx CUDA kernels (``csrc/``) with ``torch.utils.cpp_extension``.

Nothing is compiled at install or import.  The first op that needs the kernels (or
``lrnnx build-kernels``) compiles ``csrc/*.cu`` + ``csrc/ops.cpp`` with nvcc and ninja into a
shared library that registers the ``torch.ops.lrnnx_cuda_impl`` operators (``TORCH_LIBRARY``: no
Python C-API, so one build serves every Python version of the same torch) and loads it.

Cache: ``<root>/cuda/<torch>-cu<cuda>-<sm_XY>-<hash>/`` where root is ``$LRNNX_KERNELS_CACHE``
or ``~/.cache/lrnnx/kernels`` and the hash covers the sources, flags and nvcc version, so
upgrading torch, CUDA or the GPU builds afresh and a cache shared between machines never loads
a binary built for another GPU.  The compiler's output goes to ``build.log`` in that folder, not
to the terminal; while compiling, a rich status line (stderr) says so.

``$LRNNX_CUDA_LIB=/path/lib.so`` loads a prebuilt library instead (built by ``lrnnx
build-kernels`` for the same torch and GPU).  Build problems never raise out of
:func:`status`: they become the reason ``lrnnx backends`` shows.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

from .._buildlock import exclusive_build

CSRC = Path(__file__).resolve().parent / "csrc"
NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo",
              "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
CXX_FLAGS = ["-O3", "-std=c++17"]
_LOG = logging.getLogger("lrnnx.kernels.cuda")
_LOCK = threading.Lock()
_STATE: dict = {}  # "path" (loaded library) or "error" once a build was attempted


def cache_root() -> Path:
    env = os.environ.get("LRNNX_KERNELS_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "lrnnx" / "kernels") / "cuda"


def sources() -> list[Path]:
    return sorted(p for p in CSRC.iterdir() if p.suffix in (".cu", ".cpp"))


def _nvcc() -> str | None:
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _nvcc_version(nvcc: str) -> str:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def cheap_check() -> tuple[bool, str]:
    """Can a build be attempted here?  (No compilation; no CUDA context.)"""
    if torch.version.cuda is None:
        return False, (f"this PyTorch ({torch.__version__}) is a CPU-only build; the CUDA kernels "
                       f"need a CUDA build of PyTorch")
    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    if os.environ.get("LRNNX_CUDA_LIB"):
        return True, ""
    if _nvcc() is None:
        return False, ("nvcc not found (set CUDA_HOME or put the CUDA toolkit's bin/ on PATH, or "
                       "point $LRNNX_CUDA_LIB at a library built by `lrnnx build-kernels`)")
    if importlib.util.find_spec("ninja") is None and shutil.which("ninja") is None:
        return False, "ninja is not installed (pip install ninja)"
    return True, ""


def arch_of(device: int | None = None) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}{minor}"


def build_dir(arch: str, nvcc_version: str) -> Path:
    h = hashlib.sha256()
    for p in sorted(CSRC.iterdir()):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    h.update(repr((NVCC_FLAGS, CXX_FLAGS, nvcc_version)).encode())
    tag = f"{torch.__version__}-cu{torch.version.cuda}-sm_{arch}-{h.hexdigest()[:12]}"
    return cache_root() / tag.replace("+", "_")


def _status_line(msg: str):
    """A rich status spinner on an interactive stderr, else one log line."""
    import contextlib

    if sys.stderr.isatty():
        try:
            from rich.console import Console

            return Console(stderr=True).status(msg)
        except Exception:  # noqa: BLE001 -- cosmetics only
            pass
    _LOG.warning(msg)
    return contextlib.nullcontext()


def build(archs: list[str] | None = None, *, verbose: bool = False) -> Path:
    """Compile (or find in the cache) the library for ``archs`` (default: this process's GPU)
    and load it; returns the library path.  Raises RuntimeError with the compiler's output."""
    from torch.utils import cpp_extension

    nvcc = _nvcc()
    if nvcc is None:
        raise RuntimeError(cheap_check()[1])
    archs = archs or [arch_of()]
    ver = _nvcc_version(nvcc)
    out_dir = build_dir("-".join(archs), ver)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "lrnnx_cuda_" + out_dir.name.rsplit("-", 1)[-1]
    lib = out_dir / f"{name}.so"
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    log = out_dir / "build.log"
    t0 = time.perf_counter()
    cached = lib.exists()
    ctx = (_status_line(f"Compiling the lrnnx CUDA kernels for sm_{'/'.join(archs)} "
                        f"(first use; about a minute; log: {log})") if not cached
           else _null())
    old = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a[:-1]}.{a[-1]}" for a in archs)
    try:
        # exclusive_build: a build killed mid-way does not leave the next ones waiting forever
        with exclusive_build(out_dir), ctx, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                cpp_extension.load(
                    name=name, sources=[str(p) for p in sources()],
                    extra_cflags=CXX_FLAGS, extra_cuda_cflags=NVCC_FLAGS + gencode,
                    extra_include_paths=[str(CSRC)], build_directory=str(out_dir),
                    is_python_module=False, verbose=verbose)
            except Exception as exc:
                log.write_text(f"{type(exc).__name__}: {exc}\n")
                raise RuntimeError(f"building the lrnnx CUDA kernels failed (log: {log}):\n"
                                   f"{str(exc)[-3000:]}") from exc
        if not cached:
            text = "".join(f"warning: {w.message}\n" for w in caught)
            log.write_text(f"built in {time.perf_counter() - t0:.1f} s with {ver}\n{text}")
    finally:
        if old is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = old
    _STATE["seconds"] = time.perf_counter() - t0
    _STATE["cached"] = cached
    return lib


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def load() -> Path | None:
    """Load the library once per process (building it if needed); None if impossible (the
    reason is in :func:`status`)."""
    with _LOCK:
        if "path" in _STATE or "error" in _STATE:
            return _STATE.get("path")
        ok, why = cheap_check()
        if not ok:
            _STATE["error"] = why
            return None
        prebuilt = os.environ.get("LRNNX_CUDA_LIB")
        try:
            if prebuilt:
                t0 = time.perf_counter()
                torch.ops.load_library(prebuilt)
                _STATE["seconds"] = time.perf_counter() - t0
                _STATE["cached"] = True
                _STATE["path"] = Path(prebuilt)
            else:
                _STATE["path"] = build()
        except Exception as exc:  # noqa: BLE001 -- any failure means "unavailable, because"
            _STATE["error"] = f"{type(exc).__name__}: {exc}"
            return None
        return _STATE["path"]


def status() -> tuple[bool, str]:
    """``(ok, reason)`` after trying :func:`load`.  Never raises."""
    try:
        path = load()
    except Exception as exc:  # noqa: BLE001
        return False, f"{type(exc).__name__}: {exc}"
    return (True, "") if path is not None else (False, _STATE.get("error", "unknown error"))


def attempted() -> tuple[bool, str] | None:
    """``(ok, reason)`` once a load was attempted in this process, else None (no build)."""
    if "path" in _STATE:
        return True, ""
    if "error" in _STATE:
        return False, _STATE["error"]
    return None


def load_seconds() -> tuple[float, bool] | None:
    """(seconds the load took, whether it came from the cache) once loaded."""
    if "seconds" not in _STATE:
        return None
    return _STATE["seconds"], _STATE["cached"]
