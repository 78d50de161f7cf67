"""Packaging: built-in entry points, cheap import, and a real third-party plugin pip install."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import lrnnx
from lrnnx.registry.core import BUILTIN_PLUGINS

ROOT = Path(__file__).resolve().parents[1]


def test_builtin_entry_points_match_the_fallback_table():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["lrnnx"] == BUILTIN_PLUGINS


def test_import_is_cheap():
    """`import lrnnx` must cost well under 0.5 s beyond `import torch` (it imports neither)."""
    code = ("import time; t = time.perf_counter(); import lrnnx; "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 0.5


def _write_pkg(root: Path, dist: str, module: str, body: str) -> Path:
    pkg = root / dist
    (pkg / module).mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.3.1"
        dependencies = ["lrnnx"]

        [project.entry-points.lrnnx]
        {module} = "{module}"

        [tool.setuptools]
        packages = ["{module}"]
    """))
    (pkg / module / "__init__.py").write_text(textwrap.dedent(body))
    return pkg


DECAY = '''
    import torch
    import lrnnx


    class PkgDecay(lrnnx.Layer):
        """y_t = decay * y_{t-1} + x_t per channel (a test plugin)."""

        name = "pkg_decay"
        capabilities = frozenset({"step"})

        def __init__(self, d_model: int, decay: float = 0.9):
            super().__init__()
            self.d_model = d_model
            self.decay = decay
            self.proj = torch.nn.Linear(d_model, d_model)

        def init_state(self, batch_size, device=None, dtype=None):
            return {"h": torch.zeros(batch_size, self.d_model, device=device, dtype=dtype)}

        def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
            h = state["h"] if state else x.new_zeros(x.shape[0], x.shape[2])
            ys = []
            for t in range(x.shape[1]):
                h = self.decay * h + x[:, t]
                ys.append(h)
            y = self.proj(torch.stack(ys, 1))
            return (y, {"h": h}) if return_state else y

        def step(self, x_t, state):
            h = self.decay * state["h"] + x_t
            return self.proj(h), {"h": h}


    @lrnnx.hookimpl
    def register_layers(register):
        register(PkgDecay)
'''

BROKEN = '''
    raise RuntimeError("this plugin is broken on purpose")
'''


def _pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)


def _run(code: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRNNX_DISABLE")}
    env["COLUMNS"] = "250"  # rich wraps table cells at the default 80 columns off a tty
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_third_party_plugin_package_end_to_end(tmp_path):
    good = _write_pkg(tmp_path, "lrnnx-pkg-decay", "lrnnx_pkg_decay", DECAY)
    bad = _write_pkg(tmp_path, "lrnnx-pkg-broken", "lrnnx_pkg_broken", BROKEN)
    try:
        for pkg in (good, bad):
            r = _pip("install", "--no-deps", "--no-build-isolation", "-q", str(pkg))
            assert r.returncode == 0, r.stderr
        listing = _run("from lrnnx.cli import main; main(['list', 'layers'])")
        assert listing.returncode == 0, listing.stderr
        assert "pkg_decay" in listing.stdout
        assert "lrnnx-pkg-decay@0.3.1" in listing.stdout

        build = _run(textwrap.dedent("""
            import torch, lrnnx
            m = lrnnx.build_model("pkg_decay*2 + attn", d_model=32)
            y = m(torch.randn(2, 7, 32))
            assert y.shape == (2, 7, 32)
            assert [type(b.mixer).name for b in m.blocks] == ["pkg_decay", "pkg_decay", "attn"]
            from lrnnx.testing import check_layer
            check_layer("pkg_decay")
            print("built")
        """))
        assert build.returncode == 0, build.stderr
        assert "built" in build.stdout

        plugins = _run("from lrnnx.cli import main; main(['plugins'])")
        assert plugins.returncode == 0, plugins.stderr
        assert "lrnnx_pkg_broken" in plugins.stdout
        assert "broken on purpose" in plugins.stdout
        assert "failed" in plugins.stdout
    finally:
        _pip("uninstall", "-y", "-q", "lrnnx-pkg-decay", "lrnnx-pkg-broken")
    after = _run("import lrnnx; print(lrnnx.list_layers())")
    assert "pkg_decay" not in after.stdout
