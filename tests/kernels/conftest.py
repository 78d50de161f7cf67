"""Test setup for the kernels.

* Makes ``lrnnx_kernels`` importable from a plain checkout: once packaging
  maps ``kernels/`` to ``lrnnx_kernels`` the installed package wins; until
  then it is registered from the repo's ``kernels/`` folder.
* Registers the shared helpers (``kernel_utils.py`` beside this file) as the
  module ``lrnnx_kernels_testutils`` so test files import them by a name that
  cannot clash with other test folders' helpers.
"""
import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _register(name: str, path: Path, package: bool = False) -> None:
    kw = {"submodule_search_locations": [str(path.parent)]} if package else {}
    spec = importlib.util.spec_from_file_location(name, path, **kw)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)


try:
    import lrnnx_kernels  # noqa: F401
except ImportError:
    _register("lrnnx_kernels", _HERE.parents[1] / "kernels" / "__init__.py", package=True)

if "lrnnx_kernels_testutils" not in sys.modules:
    _register("lrnnx_kernels_testutils", _HERE / "kernel_utils.py")
