"""An inter-process lock around the just-in-time builds of the C++ / CUDA kernels.

``torch.utils.cpp_extension.load`` serializes builds in one folder with a lock *file*
(``<build_dir>/lock``, its ``FileBaton``) that it deletes when the build ends.  A build killed
hard (SIGKILL, the OOM killer, a lost machine) leaves that file behind, and every later process
that loads the extension then waits for it forever, silently.  Seen in practice: one test run
killed mid-build hung the next one until its collective operations timed out.

:func:`exclusive_build` wraps a build in an ``fcntl.flock`` on ``<build_dir>/.lrnnx_build.lock``,
which the operating system releases when its holder dies.  Holding that lock, this process is
the only lrnnx build in the folder, so a ``lock`` file found there was left by a dead build: it
is removed (with a warning) before torch looks at it.  Without ``fcntl`` (Windows) the build
runs unguarded, as before.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

logger = logging.getLogger("lrnnx.kernels")

LOCK_NAME = ".lrnnx_build.lock"
BATON_NAME = "lock"  # torch.utils.cpp_extension's FileBaton in the build directory


@contextlib.contextmanager
def exclusive_build(build_dir: str | os.PathLike) -> Iterator[None]:
    """Run the body as the only lrnnx build in ``build_dir`` (waits for another one to end);
    removes a ``lock`` file left there by a build that died."""
    if fcntl is None:
        yield
        return
    folder = Path(build_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            baton = folder / BATON_NAME
            if baton.exists():
                logger.warning("lrnnx: removing %s, left by a kernel build that did not finish "
                               "(killed); torch would wait for it forever", baton)
                with contextlib.suppress(FileNotFoundError):
                    baton.unlink()
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
