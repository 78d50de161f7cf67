"""``lrnnx new-layer``: generate a standalone plugin package for a new layer or parameterization.

    lrnnx new-layer my-rnn                          # ./lrnnx-my-rnn, a working lrnnx.Layer
    lrnnx new-layer my-decay --kind parameterization --out ../lrnnx-my-decay
    lrnnx new-layer my-rnn --author "Ada" --description "..." --force

The package (``pyproject.toml`` with the ``lrnnx`` entry point, ``src/lrnnx_<name>/``, tests
that run the conformance suite, a README and a GitHub Actions workflow) works as generated:
``pip install -e ./lrnnx-my-rnn[test]``, ``pytest lrnnx-my-rnn/tests`` and
``lrnnx check my_rnn`` pass before the author changes a line.  ``TODO(author)`` comments mark
where the author's own math and initialization go.

From Python::

    from lrnnx.scaffold import new_package
    result = new_package("my-rnn", kind="layer", out="/tmp/lrnnx-my-rnn")
    result.files      # [PosixPath('.github/workflows/ci.yml'), PosixPath('.gitignore'), ...]

Importing this package is cheap (no torch): the registry (which loads torch and the plugins) is
consulted only by :func:`new_package` with ``check_registry=True``, to refuse a taken name.
"""

from __future__ import annotations

from pathlib import Path

from .names import KINDS, Names, check_available, derive_names
from .render import OutputExistsError, RenderResult, default_out, prepare_output, \
    render_files, template_vars, write_package

__all__ = ["KINDS", "Names", "OutputExistsError", "RenderResult", "add_commands",
           "check_available", "derive_names", "new_package", "render_files", "template_vars"]


def new_package(name: str, kind: str = "layer", out: str | Path | None = None,
                author: str | None = None, description: str | None = None,
                force: bool = False, check_registry: bool = True) -> RenderResult:
    """Render the ``kind`` template for NAME into ``out`` (default ``./lrnnx-<name>``).

    Args:
        name: NAME as on the command line (``"my-rnn"``, ``"my_rnn"``, ``"MyRnn"``).
        kind: ``"layer"`` or ``"parameterization"``.
        out: the package's root directory; it must not exist or be empty unless ``force``.
        author, description: single-line texts for pyproject.toml, README and docstrings.
        force: write into a non-empty directory, overwriting the generated files (others stay).
        check_registry: refuse a NAME already registered for ``kind`` (loads the plugins).

    Raises:
        ConfigError: invalid NAME / kind / texts.  DuplicateRegistrationError: NAME is taken.
        OutputExistsError: ``out`` is not empty and ``force`` is False.
    """
    from ..errors import ConfigError

    if kind not in KINDS:
        raise ConfigError(f"new-layer: --kind must be one of {', '.join(KINDS)}, got {kind!r}.")
    names = derive_names(name)
    root = Path(out).expanduser().resolve() if out is not None else default_out(names)
    files = render_files(names, kind, template_vars(names, kind, author, description))
    prepare_output(root, force)  # before the (slow) registry check: fail fast on the cheap one
    if check_registry:
        check_available(names, kind)
    return write_package(root, files, names, kind, force)


def add_commands(subparsers) -> None:
    """Add ``new-layer`` to the ``lrnnx`` command line (see :mod:`lrnnx.cli`)."""
    from .command import add_new_layer

    add_new_layer(subparsers)
