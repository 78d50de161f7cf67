"""The lock around the kernels' just-in-time builds (``lrnnx_kernels._buildlock``): a build
killed mid-way (its process gone, torch's ``lock`` file left behind) must not leave the next
build waiting forever, and two live builds in one folder must still run one after the other."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from lrnnx_kernels import _buildlock
from lrnnx_kernels._buildlock import BATON_NAME, LOCK_NAME, exclusive_build

fcntl = pytest.importorskip("fcntl")

HOLDER = """
import sys, time
from pathlib import Path
from lrnnx_kernels._buildlock import exclusive_build
d = Path(sys.argv[1])
with exclusive_build(d):
    (d / "lock").touch()          # what torch's FileBaton does at the start of a build
    print("holding", flush=True)
    time.sleep(600)               # "building" until killed
"""


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def _try_lock(folder) -> bool:
    with open(folder / LOCK_NAME, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return True


def test_stale_baton_removed_with_a_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=_buildlock.logger.name)
    (tmp_path / BATON_NAME).touch()
    with exclusive_build(tmp_path):
        assert not (tmp_path / BATON_NAME).exists()
        assert not _try_lock(tmp_path)  # held while the body runs
    assert _try_lock(tmp_path)          # and released after it
    assert "left by a kernel build that did not finish" in caplog.text


def test_live_build_excludes_then_killed_build_releases(tmp_path):
    proc = _holder(tmp_path)
    try:
        assert not _try_lock(tmp_path)  # a live build holds it: the next one waits
        assert (tmp_path / BATON_NAME).exists()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    # the killed build left torch's lock file; the lock itself died with the process
    assert (tmp_path / BATON_NAME).exists()
    t0 = time.monotonic()
    with exclusive_build(tmp_path):
        assert not (tmp_path / BATON_NAME).exists()
    assert time.monotonic() - t0 < 10


def test_builds_use_the_lock():
    # both just-in-time builds go through exclusive_build (a source check: running them needs a
    # compiler / nvcc, and the CPU one is already loaded in this process)
    import inspect

    from lrnnx_kernels.cuda import _build
    from lrnnx_kernels.diag_scan import cpu

    assert "exclusive_build(build_dir)" in inspect.getsource(cpu._build_once)
    assert "exclusive_build(out_dir)" in inspect.getsource(_build.build)
