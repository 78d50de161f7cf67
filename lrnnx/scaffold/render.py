"""Rendering the package templates of ``lrnnx_templates`` into a standalone plugin package.

Templates are plain files under ``lrnnx_templates/common/`` (every kind) and
``lrnnx_templates/<kind>/`` (a file there replaces the common one at the same path), filled in
with :class:`string.Template` (``$name`` / ``${name}``; a literal ``$`` is written ``$$``).
Paths are rewritten segment by segment:

* ``__module__`` -> the import name (``lrnnx_my_rnn``);
* a leading ``dot_`` -> ``.`` (``dot_github`` -> ``.github``: setuptools' ``**/*`` package-data
  glob skips dot files, so they are stored without the dot);
* a trailing ``.tmpl`` is dropped (``layer.py.tmpl`` -> ``layer.py``: the template is no Python
  module pytest or setuptools could pick up).

Everything is rendered in memory and checked first, so an error leaves no half-written package.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass, field
from pathlib import Path

from .._version import __version__
from ..errors import ConfigError, LrnnxError
from .names import KINDS, Names

TEMPLATE_PACKAGE = "lrnnx_templates"
PACKAGE_VERSION = "0.1.0"

DEFAULT_DESCRIPTION = {
    "layer": "A gated diagonal linear recurrence, as a lrnnx layer plugin.",
    "parameterization": "A diagonal state-space parameterization for lrnnx's ssm layer.",
}


class OutputExistsError(LrnnxError, FileExistsError):
    """The output directory already holds files (and ``force`` was not given)."""


@dataclass
class RenderResult:
    """What :func:`render` wrote: the package ``root``, ``files`` (relative paths, in writing
    order), which of them ``overwritten`` existed before, and ``untouched`` files that were in
    the directory already and are not part of the template (left as they were)."""

    names: Names
    kind: str
    root: Path
    files: list[Path] = field(default_factory=list)
    overwritten: list[Path] = field(default_factory=list)
    untouched: list[Path] = field(default_factory=list)

    def check_command(self) -> str:
        """The ``lrnnx check`` command line that runs the conformance suite on the result."""
        return check_command(self.names, self.kind)


def check_command(names: Names, kind: str) -> str:
    """``lrnnx check NAME`` for a layer; a parameterization is checked inside ``ssm``."""
    if kind == "layer":
        return f"lrnnx check {names.registry_name}"
    return f"lrnnx check 'ssm(param={names.registry_name})'"


def _one_line(option: str, value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"new-layer: {option} must be a single line of printable text, got "
                          f"{value!r}; drop the newlines / control characters.")
    return value.strip()


def _py_docstring_text(text: str) -> str:
    # backslashes and a closing triple quote would end or mangle the docstring it is put into
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def template_vars(names: Names, kind: str, author: str | None = None,
                  description: str | None = None) -> dict[str, str]:
    """The ``string.Template`` variables of one package (every template may use all of them)."""
    description = _one_line("--description", description or DEFAULT_DESCRIPTION[kind])
    author = _one_line("--author", author or "")
    major_minor = ".".join(__version__.split(".")[:2])
    # a whole line (or nothing), so pyproject.toml has no blank line without an author
    authors_toml = (f"authors = [{{ name = {json.dumps(author, ensure_ascii=False)} }}]\n"
                    if author else "")
    return {
        "name": names.registry_name,
        "module": names.module,
        "distribution": names.distribution,
        "class_name": names.class_name,
        "title": names.title,
        "kind": kind,
        "version": PACKAGE_VERSION,
        "lrnnx_requirement": f"lrnnx>={major_minor}",
        "description": description,
        "description_toml": json.dumps(description, ensure_ascii=False),
        "description_py": _py_docstring_text(description),
        "author": author,
        "authors_toml": authors_toml,
        "check_command": check_command(names, kind),
    }


def _templates_root():
    from importlib.resources import files

    try:
        return files(TEMPLATE_PACKAGE)
    except ModuleNotFoundError:
        raise LrnnxError(f"new-layer: the template package {TEMPLATE_PACKAGE!r} is not "
                         f"importable; install lrnnx (pip install -e <checkout>) or, in a "
                         f"source checkout, put plugins_shim/ on PYTHONPATH.") from None


def _walk(node, prefix: tuple[str, ...] = ()):
    """(relative path parts, Traversable) of every template file below ``node``."""
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.name == "__pycache__" or child.name.endswith((".pyc", ".pyo")):
            continue
        if child.is_dir():
            yield from _walk(child, (*prefix, child.name))
        elif child.is_file():
            yield (*prefix, child.name), child


def _target_path(parts: tuple[str, ...], names: Names) -> Path:
    out = []
    for i, part in enumerate(parts):
        if part == "__module__":
            part = names.module
        if part.startswith("dot_"):
            part = "." + part[len("dot_"):]
        if i == len(parts) - 1 and part.endswith(".tmpl"):
            part = part[: -len(".tmpl")]
        out.append(part)
    return Path(*out)


def render_files(names: Names, kind: str, variables: dict[str, str]) -> dict[Path, str]:
    """``{relative path: content}`` of the package, rendered in memory."""
    if kind not in KINDS:
        raise ConfigError(f"new-layer: --kind must be one of {', '.join(KINDS)}, got {kind!r}.")
    root = _templates_root()
    sources: dict[Path, tuple[str, object]] = {}
    for folder in ("common", kind):  # the kind's files replace common ones at the same path
        node = root / folder
        if not node.is_dir():
            raise LrnnxError(f"new-layer: the templates folder {folder!r} is missing from "
                             f"{TEMPLATE_PACKAGE}; the lrnnx installation is incomplete.")
        for parts, src in _walk(node):
            sources[_target_path(parts, names)] = (f"{folder}/{'/'.join(parts)}", src)
    rendered: dict[Path, str] = {}
    for path, (label, src) in sorted(sources.items()):
        text = src.read_text(encoding="utf-8")
        try:
            rendered[path] = string.Template(text).substitute(variables)
        except (KeyError, ValueError) as exc:  # a template bug, not a user error
            raise LrnnxError(f"new-layer: template {label} of {TEMPLATE_PACKAGE} uses an "
                             f"unknown or malformed placeholder ({exc}); known: "
                             f"{', '.join(sorted(variables))}.") from None
    return rendered


def _existing_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def prepare_output(root: Path, force: bool) -> list[Path]:
    """Check that ``root`` may be written; return the files already in it."""
    if root.exists() and not root.is_dir():
        raise OutputExistsError(f"new-layer: the output path {str(root)!r} exists and is not a "
                                f"directory; choose another --out.")
    existing = _existing_files(root) if root.is_dir() else []
    if existing and not force:
        shown = ", ".join(str(p) for p in existing[:5]) + (", ..." if len(existing) > 5 else "")
        raise OutputExistsError(f"new-layer: the output directory {str(root)!r} already exists "
                                f"and is not empty ({len(existing)} file(s): {shown}). Choose "
                                f"another --out, or pass --force to overwrite the generated "
                                f"files (other files are left alone).")
    return existing


def write_package(root: Path, files: dict[Path, str], names: Names, kind: str,
                  force: bool) -> RenderResult:
    """Write the rendered ``files`` under ``root`` (see :func:`prepare_output`)."""
    existing = set(prepare_output(root, force))
    result = RenderResult(names=names, kind=kind, root=root)
    for rel, text in files.items():
        target = root / rel
        if target.is_dir():
            raise OutputExistsError(f"new-layer: {str(target)!r} is a directory where the "
                                    f"template writes the file {str(rel)!r}; remove it or "
                                    f"choose another --out.")
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel in existing:
            result.overwritten.append(rel)
        # newline="\n": the same bytes on every platform (CI, git diffs)
        with open(target, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        result.files.append(rel)
    result.untouched = sorted(existing - set(files))
    return result


def default_out(names: Names) -> Path:
    """``./lrnnx-<name>`` in the current directory."""
    return Path(os.getcwd()) / names.distribution
