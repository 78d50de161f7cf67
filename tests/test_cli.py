"""The command-line entry points: the ``lrnnx`` command (lrnnx.cli.main) and the pytest
plugin's ``--lrnnx-layer`` option, with small layers registered for the test."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import lrnnx
from lrnnx.cli import main
from lrnnx.registry.core import REGISTRY, PluginRecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich tables would wrap cell text at 80 columns


class CliTanh(lrnnx.Layer):
    """y = tanh(W x): position-wise, so it passes every check (step is trivial)."""

    name = "_cli_tanh"
    capabilities = frozenset({"step", "varlen"})

    def __init__(self, d_model: int, width: int = 1):
        super().__init__()
        self.d_model = d_model
        self.proj = nn.Linear(d_model, d_model * width, bias=False)
        self.out = nn.Linear(d_model * width, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        return {"count": torch.zeros(batch_size, 3, device=device, dtype=dtype)}

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        y = self.out(torch.tanh(self.proj(x)))
        if not return_state:
            return y
        st = state if state is not None else self.init_state(x.shape[0], x.device, x.dtype)
        return y, st

    def step(self, x_t, state):
        return self.out(torch.tanh(self.proj(x_t))), state


class CliPeek(CliTanh):
    """Adds the sequence mean: fails the causality check."""

    name = "_cli_peek"

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        out = super().forward(x, state, return_state, timesteps, cu_seqlens)
        peek = x.mean(dim=1, keepdim=True)
        return (out[0] + peek, out[1]) if return_state else out + peek


class CliFast(lrnnx.ScanBackend):
    name = "_cli_fast"
    priority = 7


class CliGpu(lrnnx.ScanBackend):
    name = "_cli_gpu"
    priority = 3

    def available(self):
        return False, "no CUDA device"


class CliBroken(lrnnx.ScanBackend):
    name = "_cli_broken"

    def available(self):
        raise RuntimeError("driver exploded")


@pytest.fixture
def toys(register):
    register("layer", CliTanh)
    register("layer", CliPeek)
    for b in (CliFast, CliGpu, CliBroken):
        register("scan_backend", b)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"lrnnx {lrnnx.__version__}"


def test_python_dash_m_version():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "plugins_shim")])}
    r = subprocess.run([sys.executable, "-m", "lrnnx", "--version"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"lrnnx {lrnnx.__version__}", r.stderr


def test_version_and_help_do_not_import_torch():
    code = ("import sys; from lrnnx.cli import main; assert main(['--version']) == 0; "
            "assert main(['list', '--help']) == 0; assert 'torch' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert r.returncode == 0, r.stderr


def test_no_command_prints_help(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "usage: lrnnx" in out


def test_list_layers_singular_and_plural(capsys, toys):
    code, out, _ = run(capsys, "list", "layers")
    assert code == 0
    line = next(ln for ln in out.splitlines() if "_cli_tanh" in ln)
    assert "layer" in line and "__main__" in line and "(runtime)@-" in line
    assert "step, varlen" in line
    assert "_cli_fast" not in out  # another kind
    code, out2, _ = run(capsys, "list", "layer")
    assert code == 0 and out2 == out


def test_list_pattern_and_all_kinds(capsys, toys):
    code, out, _ = run(capsys, "list", "layers", "_cli_t*")
    assert code == 0 and "_cli_tanh" in out and "_cli_peek" not in out
    code, out, _ = run(capsys, "list")
    assert "_cli_tanh" in out and "_cli_fast" in out and "scan_backend" in out
    code, out, _ = run(capsys, "list", "_cli_")  # one word that is no kind: a pattern
    assert code == 0 and "_cli_peek" in out and "_cli_gpu" in out
    code, out, _ = run(capsys, "list", "scan-backends", "_cli_f")
    assert "_cli_fast" in out and "_cli_gpu" not in out
    code, out, _ = run(capsys, "list", "blocks", "_nothing_like_this")
    assert code == 0 and "no block matches '_nothing_like_this'" in out


def test_list_unknown_kind_is_an_error(capsys):
    code, out, err = run(capsys, "list", "layres", "x")
    assert code == 2 and "unknown kind 'layres'" in err and "Did you mean 'layers'" in err
    assert "Traceback" not in err


def test_plugins_shows_status_registrations_and_errors(capsys, toys, monkeypatch):
    rec = PluginRecord("_cli_bad", "bad_module", "badpkg", "1.2", False, status="failed",
                       error="import failed: ImportError: no bad_module",
                       traceback="Traceback (most recent call last):\nImportError: boom\n")
    monkeypatch.setitem(REGISTRY.plugins, "_cli_bad", rec)
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    line = next(ln for ln in out.splitlines() if "_cli_bad" in ln)
    assert "badpkg@1.2" in line and "failed" in line and "no bad_module" in line
    main_line = next(ln for ln in out.splitlines() if "__main__" in ln)
    assert "loaded" in main_line and "_cli_tanh" in main_line
    assert "--traceback" in out and "ImportError: boom" not in out
    code, out, _ = run(capsys, "plugins", "--traceback")
    assert "traceback of plugin '_cli_bad'" in out and "ImportError: boom" in out


def test_backends_priority_and_availability(capsys, toys):
    code, out, _ = run(capsys, "backends")
    assert code == 0
    lines = {n: ln for ln in out.splitlines() for n in ("_cli_fast", "_cli_gpu", "_cli_broken")
             if n in ln}
    assert "7" in lines["_cli_fast"] and "yes" in lines["_cli_fast"]
    assert "no" in lines["_cli_gpu"] and "no CUDA device" in lines["_cli_gpu"]
    assert "available() raised RuntimeError: driver exploded" in lines["_cli_broken"]
    assert out.index("_cli_fast") < out.index("_cli_gpu") < out.index("_cli_broken")


def test_info_per_layer_and_totals(capsys, toys):
    code, out, _ = run(capsys, "info", "_cli_tanh(width=2)*2 + _cli_tanh", "--d-model", "4")
    assert code == 0, out
    rows = [ln for ln in out.splitlines() if "_cli_tanh" in ln and "│" in ln]
    assert len(rows) == 3
    assert "width=2" in rows[0] and "64" in rows[0] and "3" in rows[0]  # 2 * 4 * 8 params
    assert "32" in rows[2]  # width 1: 2 * 4 * 4
    assert "layer parameters: 160" in out and "state per sequence: 9 elements" in out
    code, out, _ = run(capsys, "info", "_cli_tanh", "--d-model", "4", "--vocab-size", "10")
    assert code == 0 and "vocab_size=10" in out
    model = lrnnx.build_model("_cli_tanh", d_model=4, vocab_size=10)
    assert f"model parameters: {sum(p.numel() for p in model.parameters()):,}" in out


def test_info_spec_error_is_red_message_exit_2(capsys, toys):
    code, out, err = run(capsys, "info", "_cli_tanh(width=")
    assert code == 2 and "error:" in err and "Traceback" not in err
    code, out, err = run(capsys, "info", "_cli_tahn")
    assert code == 2 and "unknown layer '_cli_tahn'" in err and "_cli_tanh" in err


def test_check_passing_layer(capsys, toys):
    code, out, _ = run(capsys, "check", "_cli_tanh(width=2)")
    assert code == 0, out
    assert "causality" in out and "passed" in out and "OK:" in out
    assert "spec '_cli_tanh(width=2)'" in out


def test_check_failing_layer_exit_1(capsys, toys):
    code, out, _ = run(capsys, "check", "_cli_peek", "--dtype", "float64", "--check",
                       "causality", "--check", "forward_shapes")
    assert code == 1
    line = next(ln for ln in out.splitlines() if "causality" in ln)
    assert "failed" in line
    assert "FAILED: 1 passed, 1 failed" in out


def test_check_errors_exit_2(capsys, toys):
    code, _, err = run(capsys, "check", "_cli_tanhh")
    assert code == 2 and "did you mean: _cli_tanh" in err
    code, _, err = run(capsys, "check", "_cli_tanh", "--check", "causalty")
    assert code == 2 and "Did you mean 'causality'" in err
    code, _, err = run(capsys, "check", "_cli_tanh + _cli_tanh")
    assert code == 2 and "takes one layer" in err
    code, _, err = run(capsys, "check", "_cli_tanh", "--dtype", "float16")
    assert code == 2 and "invalid choice" in err


# ---------------------------------------------------------------------------- pytest plugin

def _run(args, cwd):
    # autoload off: an installed lrnnx would register the plugin a second time next to -p
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "plugins_shim")]),
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_pytest_plugin_does_not_import_torch(tmp_path):
    (tmp_path / "test_a.py").write_text(textwrap.dedent("""
        import sys

        def test_no_torch():
            assert "torch" not in sys.modules

        def test_fixture_without_option(lrnnx_layer):
            pass
    """))
    r = _run(["-m", "pytest", "-p", "lrnnx.testing.pytest_plugin", "-p", "no:cacheprovider",
              "-rs", "-q"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 1 skipped" in r.stdout and "pass --lrnnx-layer NAME" in r.stdout


def test_pytest_plugin_runs_suite_on_named_layers(tmp_path):
    (tmp_path / "conftest.py").write_text(textwrap.dedent("""
        import lrnnx, torch
        from torch import nn

        class PlugMean(lrnnx.Layer):
            name = "_plug_mean"
            expected_failures = {"causality": "mixes the sequence"}

            def __init__(self, d_model: int):
                super().__init__()
                self.d_model = d_model
                self.proj = nn.Linear(d_model, d_model)

            def forward(self, x, state=None, return_state=False, timesteps=None,
                        cu_seqlens=None):
                y = self.proj(x) + x.mean(dim=1, keepdim=True)
                return (y, {}) if return_state else y

        class PlugCausal(PlugMean):
            name = "_plug_causal"

            def forward(self, x, state=None, return_state=False, timesteps=None,
                        cu_seqlens=None):
                y = self.proj(x)
                return (y, {}) if return_state else y

        lrnnx.register("layer", PlugMean)
        lrnnx.register("layer", PlugCausal)
    """))
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""
        def test_mine(lrnnx_layer):
            assert lrnnx_layer.startswith("_plug_")
    """))
    r = _run(["-m", "pytest", "-p", "lrnnx.testing.pytest_plugin", "-p", "no:cacheprovider",
              "-q", "-rfxX", "--lrnnx-layer", "_plug_mean", "--lrnnx-layer", "_plug_causal",
              "--lrnnx-dtype", "float64", "-k", "not gradcheck"], tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out  # _plug_causal's declared failure passes: strict xfail
    assert "XFAIL lrnnx::_plug_mean-causality" in out
    assert "FAILED lrnnx::_plug_causal-causality" in out and "XPASS(strict)" in out
    # 7 checks apply to each layer besides gradcheck (deselected by -k), + test_mine twice
    for count in ("1 failed", "14 passed", "2 deselected", "1 xfailed"):
        assert count in out, out
    r = _run(["-m", "pytest", "-p", "lrnnx.testing.pytest_plugin", "-p", "no:cacheprovider",
              "-q", "--lrnnx-layer", "_plug_maen"], tmp_path)
    assert r.returncode == 4 and "did you mean: _plug_mean" in r.stderr, r.stdout + r.stderr
