"""``lrnnx new-layer`` (lrnnx.scaffold): name derivation, errors, --force, rendering, the
generated code in-process, and (slow) the generated packages pip-installed end to end."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import torch

import lrnnx
from lrnnx.cli import main
from lrnnx.errors import ConfigError, DuplicateRegistrationError, LrnnxError
from lrnnx.registry.core import REGISTRY, PluginRecord
from lrnnx.scaffold import OutputExistsError, check_available, derive_names, new_package
from lrnnx.scaffold.command import next_commands

LAYER_FILES = {".github/workflows/ci.yml", ".gitignore", "README.md", "pyproject.toml",
               "src/{m}/__init__.py", "src/{m}/layer.py", "tests/test_conformance.py",
               "tests/test_layer.py"}
PARAM_FILES = (LAYER_FILES - {"src/{m}/layer.py", "tests/test_layer.py"}) | \
    {"src/{m}/parameterization.py", "tests/test_parameterization.py"}


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps table cells at 80 columns off a tty


def files_of(result) -> set[str]:
    return {p.as_posix() for p in result.files}


def expected(kind: str, module: str) -> set[str]:
    return {f.format(m=module) for f in (LAYER_FILES if kind == "layer" else PARAM_FILES)}


# --------------------------------------------------------------------------------- names

@pytest.mark.parametrize("text", ["my-rnn", "my_rnn", "MyRnn", "my rnn", "  my-rnn ", "MY_RNN",
                                  "my--rnn", "lrnnx-my-rnn", "lrnnx_my_rnn", "myRnn"])
def test_names_are_derived_once_from_any_spelling(text):
    n = derive_names(text)
    assert (n.distribution, n.module, n.class_name, n.registry_name) == \
        ("lrnnx-my-rnn", "lrnnx_my_rnn", "MyRnn", "my_rnn")
    assert n.words == ("my", "rnn") and n.title == "My Rnn"


@pytest.mark.parametrize("text, registry, cls, dist", [
    ("MyRNN", "my_rnn", "MyRNN", "lrnnx-my-rnn"),            # CamelCase kept as typed
    ("S4DPlus", "s4d_plus", "S4DPlus", "lrnnx-s4d-plus"),     # digit stays in its word
    ("GatedRNNCell", "gated_rnn_cell", "GatedRNNCell", "lrnnx-gated-rnn-cell"),
    ("rnn2", "rnn2", "Rnn2", "lrnnx-rnn2"),
    ("hawk", "hawk", "Hawk", "lrnnx-hawk"),
    ("LrnnxHawk", "hawk", "Hawk", "lrnnx-hawk"),
])
def test_camel_case_and_digits(text, registry, cls, dist):
    n = derive_names(text)
    assert (n.registry_name, n.class_name, n.distribution, n.module) == \
        (registry, cls, dist, f"lrnnx_{registry}")


@pytest.mark.parametrize("text, match", [
    ("", "NAME is empty"),
    ("   ", "NAME is empty"),
    ("-_-", "only separators"),
    ("my.rnn", r"'\.'.*Did you mean 'my_rnn'"),
    ("my/rnn!", r"'!' '/'.*Did you mean 'my_rnn'"),
    ("räsnet", r"'ä'"),
    ("2rnn", r"starts with a digit.*Did you mean 'my_2rnn'"),
    ("class", r"Python keyword.*'class_rnn' or 'my_class'"),
    ("Import", r"registry name .import., a Python keyword"),
])
def test_invalid_names_are_config_errors_with_a_suggestion(text, match):
    with pytest.raises(ConfigError, match=match):
        derive_names(text)


def test_taken_names_are_refused_per_kind():
    with pytest.raises(DuplicateRegistrationError, match=r"layer named 'ssm'.*lrnnx_ssm.*"
                                                         r"'my_ssm'"):
        check_available(derive_names("ssm"), "layer")
    with pytest.raises(DuplicateRegistrationError, match=r"parameterization named 's4d_lin'"):
        check_available(derive_names("s4d-lin"), "parameterization")
    check_available(derive_names("ssm"), "parameterization")  # another kind: free
    check_available(derive_names("s4d_lin"), "layer")
    with pytest.raises(ConfigError, match="one of lrnnx's own packages"):
        check_available(derive_names("plugins"), "layer")
    with pytest.raises(ConfigError, match="--kind"):
        check_available(derive_names("my_rnn"), "block")


def test_runtime_registration_is_taken_but_the_same_distribution_is_not():
    class Probe(lrnnx.Layer):
        name = "scaffold_taken_probe"

        def __init__(self, d_model: int):
            super().__init__()
            self.d_model = d_model

    REGISTRY.register("layer", Probe)
    try:
        with pytest.raises(DuplicateRegistrationError, match="scaffold_taken_probe"):
            check_available(derive_names("scaffold-taken-probe"), "layer")
    finally:
        REGISTRY.unregister("layer", "scaffold_taken_probe")
    # registered by the distribution being generated (re-rendering an installed package)
    REGISTRY.plugins["lrnnx_scaffold_taken_probe"] = PluginRecord(
        "lrnnx_scaffold_taken_probe", "lrnnx_scaffold_taken_probe",
        "lrnnx_scaffold_taken_probe", "0.1.0", False)
    REGISTRY.register("layer", Probe, plugin="lrnnx_scaffold_taken_probe")
    try:
        check_available(derive_names("scaffold-taken-probe"), "layer")
    finally:
        REGISTRY.unregister("layer", "scaffold_taken_probe")
        del REGISTRY.plugins["lrnnx_scaffold_taken_probe"]


def test_an_existing_module_of_another_package_is_refused(tmp_path, monkeypatch):
    (tmp_path / "lrnnx_scaffold_shadow").mkdir()
    (tmp_path / "lrnnx_scaffold_shadow" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.raises(ConfigError, match="module 'lrnnx_scaffold_shadow' already exists"):
        check_available(derive_names("scaffold-shadow"), "layer")


# ------------------------------------------------------------------------------ rendering

@pytest.mark.parametrize("kind", ["layer", "parameterization"])
def test_render_without_install(tmp_path, kind):
    out = tmp_path / "pkg"
    res = new_package("my-thing", kind=kind, out=out, author='Ada "A." L\\ovelace',
                      description='Sums """quoted""" \\ things $HOME ${x}',
                      check_registry=False)
    mod = "lrnnx_my_thing"
    assert files_of(res) == expected(kind, mod)
    assert res.root == out.resolve() and not res.overwritten and not res.untouched
    for rel in res.files:
        text = (out / rel).read_text()
        if rel.suffix == ".py":
            tree = ast.parse(text)  # valid Python
            assert "$" not in text.replace("$HOME ${x}", ""), rel
            assert ast.get_docstring(tree), f"{rel} has no docstring"
        assert "__module__" not in text and "${name}" not in text
    py = tomllib.loads((out / "pyproject.toml").read_text())
    proj = py["project"]
    assert proj["name"] == "lrnnx-my-thing" and proj["version"] == "0.1.0"
    assert proj["authors"] == [{"name": 'Ada "A." L\\ovelace'}]
    assert proj["description"] == 'Sums """quoted""" \\ things $HOME ${x}'
    assert proj["entry-points"]["lrnnx"] == {mod: mod}
    assert any(d.startswith("lrnnx>=") for d in proj["dependencies"])
    assert proj["optional-dependencies"]["test"] == ["pytest>=8"]
    assert py["tool"]["setuptools"]["packages"]["find"]["where"] == ["src"]
    src = (out / "src" / mod / ("layer.py" if kind == "layer" else "parameterization.py"))
    code = src.read_text()
    assert "TODO(author)" in code and "class MyThing(" in code
    assert 'name = "my_thing"' in code
    doc = ast.get_docstring(ast.parse(code))
    assert 'Sums """quoted""" \\ things $HOME ${x}' in doc  # escaped into the docstring intact
    init = (out / "src" / mod / "__init__.py").read_text()
    hook = "register_layers" if kind == "layer" else "register_parameterizations"
    assert f"@lrnnx.hookimpl\ndef {hook}(register):" in init
    tests = (out / "tests" / "test_conformance.py").read_text()
    assert "parametrize_with_checks" in tests
    readme = (out / "README.md").read_text()
    assert 'pip install -e ".[test]"' in readme and "\npytest\n" in readme
    ci = (out / ".github" / "workflows" / "ci.yml").read_text()
    assert "${{ matrix.python-version }}" in ci and "pip install -e \".[test]\"" in ci
    assert res.check_command() in ci
    if kind == "layer":
        assert "lrnnx.ops.diag_scan(a, b, h0, cu_seqlens=cu_seqlens" in code
        assert "lrnnx.ops.diag_step" in code


def test_errors_leave_nothing_behind(tmp_path):
    out = tmp_path / "pkg"
    with pytest.raises(ConfigError):
        new_package("my.rnn", out=out, check_registry=False)
    with pytest.raises(ConfigError, match="--description must be a single line"):
        new_package("my-rnn", out=out, description="two\nlines", check_registry=False)
    with pytest.raises(ConfigError, match="--kind must be one of layer, parameterization"):
        new_package("my-rnn", kind="block", out=out, check_registry=False)
    with pytest.raises(DuplicateRegistrationError):
        new_package("ssm", out=out)
    assert not out.exists()


def test_existing_output_directory_needs_force(tmp_path):
    out = tmp_path / "pkg"
    out.mkdir()  # an existing EMPTY directory is fine
    first = new_package("my-rnn", out=out, check_registry=False)
    layer_py = out / "src" / "lrnnx_my_rnn" / "layer.py"
    layer_py.write_text("# the author's work\n")
    (out / "NOTES.md").write_text("mine")
    with pytest.raises(OutputExistsError, match="--force") as err:
        new_package("my-rnn", out=out, check_registry=False)
    assert isinstance(err.value, LrnnxError)
    assert layer_py.read_text() == "# the author's work\n"  # nothing was touched
    again = new_package("my-rnn", out=out, force=True, check_registry=False)
    assert again.files == first.files and again.overwritten == first.files
    assert [p.as_posix() for p in again.untouched] == ["NOTES.md"]
    assert (out / "NOTES.md").read_text() == "mine"
    assert "class MyRnn(" in layer_py.read_text()
    afile = tmp_path / "a_file"
    afile.write_text("x")
    with pytest.raises(OutputExistsError, match="not a directory"):
        new_package("my-rnn", out=afile, force=True, check_registry=False)


def test_default_out_is_the_distribution_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = new_package("MyRnn", check_registry=False)
    assert res.root == tmp_path.resolve() / "lrnnx-my-rnn"
    assert next_commands(res) == ["pip install -e './lrnnx-my-rnn[test]'",
                                  "python -m pytest ./lrnnx-my-rnn/tests",
                                  "lrnnx check my_rnn"]


# ------------------------------------------------------------------------------------ CLI

def test_cli_new_layer_summary_and_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "pkg"
    assert main(["new-layer", "scaffold-cli-rnn", "--out", "pkg"]) == 0
    text = capsys.readouterr().out
    assert "Created layer package lrnnx-scaffold-cli-rnn in ./pkg" in text
    for f in expected("layer", "lrnnx_scaffold_cli_rnn"):
        assert f in text, f
    assert "1. pip install -e './pkg[test]'" in text
    assert "2. python -m pytest ./pkg/tests" in text
    assert "3. lrnnx check scaffold_cli_rnn" in text

    assert main(["new-layer", "scaffold-cli-rnn", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists and is not empty" in err and "--force" in err
    assert "Traceback" not in err

    assert main(["new-layer", "scaffold-cli-rnn", "--out", str(out), "--force"]) == 0
    assert "overwritten" in capsys.readouterr().out

    assert main(["new-layer", "attn", "--out", str(tmp_path / "a")]) == 2
    assert "layer named 'attn' is already registered" in capsys.readouterr().err
    assert main(["new-layer", "lru_ring", "--kind", "parameterization",
                 "--out", str(tmp_path / "p")]) == 2
    assert "e.g. 'my_lru_ring'" in capsys.readouterr().err.replace("\n", "")
    assert main(["new-layer", "my.rnn", "--out", str(tmp_path / "q")]) == 2
    assert "Did you mean 'my_rnn'" in capsys.readouterr().err
    assert main(["new-layer", "x", "--kind", "block"]) == 2  # argparse choices

    assert main(["new-layer", "scaffold-cli-decay", "--kind", "parameterization",
                 "--out", str(tmp_path / "d")]) == 0
    text = capsys.readouterr().out
    assert "Created parameterization package" in text
    assert "3. lrnnx check 'ssm(param=scaffold_cli_decay)'" in text


def test_help_is_cheap():
    """`lrnnx new-layer --help` (and building the parser) imports neither torch nor plugins."""
    code = ("import sys; from lrnnx.cli import main; assert main(['new-layer', '--help']) == 0; "
            "assert 'torch' not in sys.modules and 'lrnnx.registry.core' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    assert "--kind {layer,parameterization}" in r.stdout and "--force" in r.stdout


def test_templates_are_plain_files_of_the_template_package():
    """Python templates end in .tmpl (never imported or collected as code); no dot files (the
    wheel's package-data glob would drop them)."""
    from importlib.resources import files

    root = files("lrnnx_templates")
    seen = []

    def walk(node, rel=""):
        for child in node.iterdir():
            if child.name == "__pycache__":
                continue
            path = f"{rel}{child.name}"
            if child.is_dir():
                walk(child, path + "/")
            else:
                seen.append(path)

    walk(root)
    assert "__init__.py" in seen
    assert not [p for p in seen if p.endswith(".py") and p != "__init__.py"]
    assert not [p for p in seen if any(part.startswith(".") for part in p.split("/"))]
    for kind in ("layer", "parameterization"):
        assert f"{kind}/tests/test_conformance.py.tmpl" in seen


# ------------------------------------------------------- the generated code, in-process

def _import_generated(root: Path, module: str, monkeypatch):
    monkeypatch.syspath_prepend(str(root / "src"))
    importlib.invalidate_caches()
    for key in [k for k in sys.modules if k == module or k.startswith(module + ".")]:
        del sys.modules[key]
    return importlib.import_module(module)


def test_generated_layer_works_in_process(tmp_path, monkeypatch, register):
    from lrnnx.testing import check_layer

    res = new_package("scaffold-inproc-rnn", out=tmp_path / "l", check_registry=False)
    mod = _import_generated(res.root, "lrnnx_scaffold_inproc_rnn", monkeypatch)
    got = []
    mod.register_layers(register=got.append)
    assert got == [mod.ScaffoldInprocRnn]
    register("layer", mod.ScaffoldInprocRnn)
    report = check_layer("scaffold_inproc_rnn", checks=[
        "declarations", "forward_shapes", "causality", "step_matches_forward", "varlen",
        "backend_parity", "bad_inputs", "empty_and_single", "spec_round_trip"])
    assert report.ok and {r.status for r in report} == {"passed"}
    model = lrnnx.build_model("scaffold_inproc_rnn*2 + attn", d_model=16)
    assert model(torch.randn(2, 5, 16)).shape == (2, 5, 16)


def test_generated_parameterization_works_in_process(tmp_path, monkeypatch, register):
    from lrnnx.testing import check_layer

    res = new_package("scaffold-inproc-decay", kind="parameterization", out=tmp_path / "p",
                      check_registry=False)
    mod = _import_generated(res.root, "lrnnx_scaffold_inproc_decay", monkeypatch)
    got = []
    mod.register_parameterizations(register=got.append)
    assert got == [mod.ScaffoldInprocDecay]
    register("parameterization", mod.ScaffoldInprocDecay)
    for disc in lrnnx.list_discretizers():
        for options in ("", "(complex=False)"):
            layer = lrnnx.build_layer(f"ssm(param=scaffold_inproc_decay{options}, disc={disc}, "
                                      f"d_state=3)", d_model=4)
            y, st = layer(torch.randn(2, 6, 4), return_state=True)
            assert y.shape == (2, 6, 4) and bool(torch.isfinite(y).all())
    report = check_layer("ssm", param="scaffold_inproc_decay", disc="bilinear", checks=[
        "forward_shapes", "step_matches_forward", "varlen", "backend_parity"])
    assert report.ok


# ------------------------------------------------------------- end to end (pip install)

def _pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRNNX_DISABLE")}
    env["COLUMNS"] = "250"
    # the subprocesses run in other directories: make a relative PYTHONPATH (a source checkout's
    # ".:plugins_shim") absolute
    parts = [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if parts:
        env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _run(args: list[str], cwd: Path | None = None, timeout: int = 600):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_env(),
                          cwd=cwd, timeout=timeout)


@pytest.mark.slow
def test_generated_packages_install_and_pass_their_own_tests(tmp_path):
    layer = new_package("scaffold-probe-rnn", out=tmp_path / "lrnnx-scaffold-probe-rnn")
    param = new_package("scaffold-probe-decay", kind="parameterization",
                        out=tmp_path / "lrnnx-scaffold-probe-decay")
    try:
        for res in (layer, param):
            r = _pip("install", "--no-deps", "--no-build-isolation", "-q", str(res.root))
            assert r.returncode == 0, r.stderr

        listing = _run(["-m", "lrnnx", "list"])
        assert listing.returncode == 0, listing.stderr
        rows = {name: [line for line in listing.stdout.splitlines() if f" {name} " in line]
                for name in ("scaffold_probe_rnn", "scaffold_probe_decay")}
        assert len(rows["scaffold_probe_rnn"]) == 1, listing.stdout
        assert "lrnnx-scaffold-probe-rnn@0.1.0" in rows["scaffold_probe_rnn"][0]
        assert " layer " in rows["scaffold_probe_rnn"][0]
        assert len(rows["scaffold_probe_decay"]) == 1, listing.stdout
        assert "lrnnx-scaffold-probe-decay@0.1.0" in rows["scaffold_probe_decay"][0]
        assert " parameterization " in rows["scaffold_probe_decay"][0]

        build = _run(["-c", textwrap.dedent("""
            import torch, lrnnx
            m = lrnnx.build_model("scaffold_probe_rnn*2 + attn", d_model=32)
            assert m(torch.randn(2, 7, 32)).shape == (2, 7, 32)
            assert [type(b.mixer).name for b in m.blocks] == \\
                ["scaffold_probe_rnn", "scaffold_probe_rnn", "attn"]
            m = lrnnx.build_model("ssm(param=scaffold_probe_decay)*2", d_model=32)
            assert m(torch.randn(2, 7, 32)).shape == (2, 7, 32)
            assert [type(b.mixer.param).name for b in m.blocks] == ["scaffold_probe_decay"] * 2
            print("built")
        """)])
        assert build.returncode == 0, build.stderr
        assert "built" in build.stdout

        for res in (layer, param):  # the generated package's own tests, from its directory
            tests = _run(["-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"], cwd=res.root)
            assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
            assert " passed" in tests.stdout and "failed" not in tests.stdout

        check = _run(["-m", "lrnnx", "check", "scaffold_probe_rnn"])
        assert check.returncode == 0, check.stdout + check.stderr
        assert "OK:" in check.stdout
        check = _run(["-m", "lrnnx", "check", "ssm(param=scaffold_probe_decay)"])
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        _pip("uninstall", "-y", "-q", "lrnnx-scaffold-probe-rnn", "lrnnx-scaffold-probe-decay")
    after = _run(["-m", "lrnnx", "list"])
    assert "scaffold_probe" not in after.stdout
