"""Every script in examples/ runs and does what it says.

The training examples take ``--tiny`` (a few seconds each) and are called in-process through
their ``main(argv)``; any other example is run as a script, as a reader would."""

from __future__ import annotations

import glob
import os
import runpy
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))
TINY = {
    "train_mqar.py": ["--tiny", "--steps", "3"],
    "custom_task.py": ["--tiny", "--steps", "3"],
    "event_stream.py": ["--tiny", "--steps", "2"],
    "char_lm_generate.py": ["--tiny", "--steps", "2"],
    "resume.py": ["--tiny", "--steps", "4"],
}


def test_the_training_examples_exist():
    assert set(TINY) <= {os.path.basename(p) for p in EXAMPLES}


@pytest.mark.parametrize("path", [p for p in EXAMPLES if os.path.basename(p) in TINY],
                         ids=os.path.basename)
def test_training_example_runs(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)        # examples write runs/ under the working directory
    monkeypatch.setenv("COLUMNS", "200")
    name = os.path.basename(path)
    ns = runpy.run_path(path, run_name="example")
    result = ns["main"](TINY[name])
    out = capsys.readouterr().out
    assert out.strip()
    if name == "resume.py":
        assert result is True and "identical: True" in out
    elif name == "train_mqar.py":
        assert 0 <= result["accuracy"] <= 1 and "query 1 -> model says" in out
    elif name == "custom_task.py":
        from lrnnx.train import TASKS

        TASKS.pop("running_parity", None)
        assert 0 <= result <= 1
    elif name == "event_stream.py":
        assert set(result) == {"timesteps", "dt as feature"}
    elif name == "char_lm_generate.py":
        assert result.startswith("def ")


@pytest.mark.parametrize("path", [p for p in EXAMPLES if os.path.basename(p) not in TINY],
                         ids=os.path.basename)
def test_other_example_runs_as_a_script(path, tmp_path):
    env = dict(os.environ)
    shim = os.path.join(ROOT, "plugins_shim")
    paths = [ROOT] + ([shim] if os.path.isdir(shim) else []) + \
        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    proc = subprocess.run([sys.executable, path], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
