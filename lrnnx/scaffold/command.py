"""The ``lrnnx new-layer`` subcommand: argument parsing and the rich summary it prints.

Exit codes follow :mod:`lrnnx.cli`: 0 written, 2 for a usage error or an lrnnx error (invalid
or taken NAME, non-empty output directory without ``--force``), printed without a traceback.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from .names import KINDS
from .render import RenderResult

WHAT = {
    "pyproject.toml": "package metadata, the lrnnx entry point, the test extra",
    "README.md": "install and test commands",
    ".gitignore": "build and cache files",
    ".github/workflows/ci.yml": "GitHub Actions: install, pytest, lrnnx check",
}


def add_new_layer(subparsers) -> None:
    s = subparsers.add_parser(
        "new-layer", help="generate a plugin package for a new layer or parameterization",
        description="Render a standalone, installable plugin package: a working layer (or SSM "
                    "parameterization) with tests, README and CI, ready for your math.")
    s.add_argument("name", metavar="NAME", help="e.g. my-rnn, my_rnn or MyRnn (-> package "
                   "lrnnx-my-rnn, module lrnnx_my_rnn, class MyRnn, registry name my_rnn)")
    s.add_argument("--kind", choices=KINDS, default="layer",
                   help="layer: a lrnnx.Layer (default); parameterization: a parameterization "
                        "of the ssm layer, used as ssm(param=NAME)")
    s.add_argument("--out", metavar="DIR", default=None,
                   help="package directory to create (default ./lrnnx-<name>)")
    s.add_argument("--author", default=None, help="author name for pyproject.toml")
    s.add_argument("--description", default=None, help="one-line description")
    s.add_argument("--force", action="store_true",
                   help="write into an existing non-empty DIR, overwriting the generated files")
    s.set_defaults(func=cmd_new_layer)


def cmd_new_layer(args, out) -> int:
    from . import new_package

    result = new_package(args.name, kind=args.kind, out=args.out, author=args.author,
                         description=args.description, force=args.force)
    print_summary(result, out)
    return 0


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    try:
        rel = Path(os.path.relpath(path))
    except ValueError:  # another drive (Windows)
        return str(path)
    if rel.parts and rel.parts[0] == "..":
        return str(path)
    return "." if str(rel) == "." else f"./{rel}"


def next_commands(result: RenderResult) -> list[str]:
    """The three commands to run next: install, test, conformance check."""
    where = display_path(result.root)
    return [
        f"pip install -e {shlex.quote(where + '[test]')}",
        f"python -m pytest {shlex.quote(where + '/tests')}",
        result.check_command(),
    ]


def _describe(result: RenderResult, rel: Path) -> str:
    key = rel.as_posix()
    if key in WHAT:
        return WHAT[key]
    n = result.names
    if key == f"src/{n.module}/__init__.py":
        return f"registers {n.class_name} as {result.kind} {n.registry_name!r} (lrnnx.hookimpl)"
    if key.startswith(f"src/{n.module}/"):
        return f"{n.class_name}: your {result.kind} (look for TODO(author))"
    if key == "tests/test_conformance.py":
        return ("lrnnx's conformance suite (parametrize_with_checks)" if result.kind == "layer"
                else "lrnnx's conformance suite on ssm(param=...) x every discretizer")
    if key.startswith("tests/"):
        return ("float64 reference, options, registry, build_model" if result.kind == "layer"
                else "protocol, init formulas, options, registry, build_model")
    return ""


def print_summary(result: RenderResult, console) -> None:
    """Files written, then the next three commands."""
    from rich.table import Table
    from rich.text import Text

    n = result.names
    head = Text()
    head.append(f"Created {result.kind} package ", style="bold green")
    head.append(n.distribution, style="bold")
    head.append(f" in {display_path(result.root)}", style="bold green")
    console.print(head)
    console.print(Text(f"  {result.kind} {n.registry_name!r}, class {n.class_name}, module "
                       f"{n.module}, distribution {n.distribution}", style="dim"))
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("file", overflow="fold")
    table.add_column("", overflow="fold")
    table.add_column("what", overflow="fold", style="dim")
    overwritten = set(result.overwritten)
    for rel in result.files:
        table.add_row(Text(rel.as_posix()), Text("overwritten" if rel in overwritten else "new",
                                                 style="yellow" if rel in overwritten else "green"),
                      Text(_describe(result, rel)))
    console.print(table)
    if result.untouched:
        console.print(Text(f"  {len(result.untouched)} other file(s) in the directory were left "
                           f"as they were.", style="dim"))
    console.print(Text("Next steps:", style="bold"))
    for i, cmd in enumerate(next_commands(result), 1):
        line = Text(f"  {i}. ")
        line.append(cmd, style="bold cyan")
        console.print(line)
    console.print(Text("Then edit the TODO(author) markers in "
                       f"src/{n.module}/ and run the tests again.", style="dim"))
