"""The ``lrnnx`` command line.

    lrnnx list [KIND] [PATTERN]     registered components (KIND: layers, blocks, parameterizations,
                                    discretizers, scan_backends; singular or plural)
    lrnnx plugins [--traceback]     every plugin, its package, status and what it registered
    lrnnx backends                  scan backends: priority, available or why not
    lrnnx info SPEC [--d-model N]   build a model and show each layer's options, parameters, state
    lrnnx check LAYER [--dtype ..]  run the conformance suite (lrnnx.testing) on a layer
    lrnnx --version

Exit codes: 0 ok, 1 a conformance check failed, 2 usage error or an lrnnx error (printed in
red, without a traceback).  torch is imported only by the subcommands that need it (``info``,
``check``) -- and by plugins as the registry loads them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from ._version import __version__
from .errors import LrnnxError, close_matches

#: words accepted for a registry kind on the command line
KIND_WORDS = {
    "layer": "layer", "layers": "layer",
    "block": "block", "blocks": "block",
    "parameterization": "parameterization", "parameterizations": "parameterization",
    "discretizer": "discretizer", "discretizers": "discretizer",
    "scan_backend": "scan_backend", "scan_backends": "scan_backend",
    "scan-backend": "scan_backend", "scan-backends": "scan_backend",
    "backend": "scan_backend", "backends": "scan_backend",
}
STATUS_STYLE = {
    "loaded": "green", "failed": "bold red", "disabled": "yellow",
    "passed": "green", "xfailed": "cyan", "skipped": "dim", "error": "bold red",
    "xpassed": "bold red",
}


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # piped output (grep, files, tests) gets wide tables instead of rich's 80-column default
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 200
    return Console(file=stream, width=width, highlight=False)


def _text(value: Any, style: str | None = None):
    from rich.text import Text

    return Text(str(value), style=style or "")  # Text: '[...]' in messages is not markup


def _table(title: str | None, *columns: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    return table


def _registry():
    from .registry.core import REGISTRY

    return REGISTRY


def _instance(obj: Any) -> Any:
    return obj() if isinstance(obj, type) else obj


# ---------------------------------------------------------------------------------- list

def cmd_list(args, out) -> int:
    from .registry.hookspecs import KINDS

    reg = _registry()
    pattern = args.pattern
    if args.kind is None:
        kinds = KINDS
    elif args.kind.lower() in KIND_WORDS:
        kinds = (KIND_WORDS[args.kind.lower()],)
    elif pattern is None:  # `lrnnx list mamba`: one word that is no kind is a pattern
        kinds, pattern = KINDS, args.kind
    else:
        sugg = close_matches(args.kind, KIND_WORDS)
        did = f" Did you mean {sugg[0]!r}?" if sugg else ""
        raise LrnnxError(f"unknown kind {args.kind!r}.{did} Kinds: layers, blocks, "
                         f"parameterizations, discretizers, scan_backends.")
    table = _table(None, "name", "kind", "plugin", "package", "capabilities")
    n = 0
    for kind in kinds:
        for name in reg.names(kind, pattern):
            e = reg.entry(kind, name)
            caps = ", ".join(sorted(getattr(e.obj, "capabilities", ()))) if kind == "layer" \
                else ""
            table.add_row(_text(name, "bold"), _text(kind), _text(e.plugin), _text(e.package),
                          _text(caps))
            n += 1
    if n:
        out.print(table)
    else:
        what = " or ".join(kinds) if len(kinds) < len(KINDS) else "component"
        out.print(_text(f"no {what} matches {pattern!r}" if pattern else f"no {what} is "
                        f"registered", "yellow"))
    for (kind, name), entries in sorted(reg.conflicts().items()):
        if kind in kinds:
            who = ", ".join(f"{e.plugin} ({e.package})" for e in entries)
            out.print(_text(f"name clash: {kind} {name!r} is registered by {who}; it is not "
                            f"usable until one is removed (LRNNX_DISABLE_PLUGINS=<plugin>)",
                            "bold red"))
    return 0


# ------------------------------------------------------------------------------- plugins

def cmd_plugins(args, out) -> int:
    reg = _registry()
    reg.ensure_loaded()
    table = _table(None, "plugin", "package", "status", "registered / error")
    records = sorted(reg.plugins.values(), key=lambda r: (not r.builtin, r.name))
    # what each plugin provides now (a record also lists names unregistered since, or twice)
    live = {(e.kind, e.name, e.plugin) for e in reg.entries()}
    for rec in records:
        if rec.status == "loaded":
            by_kind: dict[str, list[str]] = {}
            for kind, name in dict.fromkeys(rec.registered):
                if (kind, name, rec.name) in live:
                    by_kind.setdefault(kind, []).append(name)
            detail = "; ".join(f"{k}: {', '.join(v)}" for k, v in by_kind.items()) or \
                "(nothing registered)"
        else:
            detail = rec.error or ""
        table.add_row(_text(rec.name, "bold"), _text(f"{rec.dist}@{rec.version}"),
                      _text(rec.status, STATUS_STYLE.get(rec.status)), _text(detail))
    if records:
        out.print(table)
    else:
        out.print(_text("no plugins found", "yellow"))
    if args.traceback:
        for rec in records:
            if rec.traceback:
                out.print(_text(f"\ntraceback of plugin {rec.name!r}:", "bold red"))
                out.print(_text(rec.traceback.rstrip()))
    elif any(r.traceback for r in records):
        out.print(_text("(run `lrnnx plugins --traceback` for the tracebacks)", "dim"))
    return 0


# ------------------------------------------------------------------------------ backends

def cmd_backends(args, out) -> int:
    reg = _registry()
    rows = []
    for name in reg.names("scan_backend"):
        obj = reg.get("scan_backend", name)
        try:
            inst = _instance(obj)
            ok, why = inst.available()
        except Exception as exc:  # noqa: BLE001 - report a broken backend, do not crash
            inst, ok, why = obj, False, f"available() raised {type(exc).__name__}: {exc}"
        rows.append((getattr(inst, "priority", 0), name, bool(ok), why or ""))
    if not rows:
        out.print(_text("no scan backend is registered (see `lrnnx plugins`)", "yellow"))
        return 0
    table = _table(None, "backend", "priority", "available", "reason")
    for prio, name, ok, why in sorted(rows, key=lambda r: (-r[0], r[1])):
        table.add_row(_text(name, "bold"), _text(prio), _text("yes" if ok else "no",
                                                               "green" if ok else "red"),
                      _text(why))
    out.print(table)
    return 0


# ---------------------------------------------------------------------------------- info

def _mixer_of(block: Any, layer_cls: type) -> Any:
    mixer = getattr(block, "mixer", None)
    if isinstance(mixer, layer_cls):
        return mixer
    if isinstance(block, layer_cls):
        return block
    return next((m for m in block.modules() if isinstance(m, layer_cls)), None)


def cmd_info(args, out) -> int:
    from .build import build_model
    from .registry.interfaces import Layer

    model = build_model(args.spec, d_model=args.d_model, vocab_size=args.vocab_size,
                        block=args.block)
    backbone = getattr(model, "backbone", model)
    specs = list(getattr(backbone, "layers", None) or [])
    table = _table(None, "#", "layer", "options", "params", "state")
    layer_params = state_total = 0
    for i, block in enumerate(getattr(backbone, "blocks", [])):
        layer = _mixer_of(block, Layer)
        if layer is None:
            continue
        name = getattr(layer, "name", "") or type(layer).__name__
        text = specs[i] if i < len(specs) else name
        options = text[len(name) + 1:-1] if text.startswith(name + "(") else ""
        n_params = sum(p.numel() for p in layer.parameters())
        n_state = layer.state_numel()
        layer_params += n_params
        state_total += n_state
        table.add_row(_text(i), _text(name, "bold"), _text(options), _text(f"{n_params:,}"),
                      _text(f"{n_state:,}"))
    total = sum(p.numel() for p in model.parameters())
    spec = getattr(backbone, "spec", None) or args.spec
    head = f"model {spec!r}: d_model={args.d_model}, block={args.block!r}"
    if args.vocab_size:
        head += f", vocab_size={args.vocab_size}"
    out.print(_text(head, "bold"))
    out.print(table)
    out.print(_text(f"layers: {len(table.rows)}   layer parameters: {layer_params:,}   "
                    f"model parameters: {total:,}   state per sequence: {state_total:,} "
                    f"elements"))
    out.print(_text("state: Layer.state_numel(), the size of init_state(1) (a KV cache grows "
                    "with the sequence from there)", "dim"))
    return 0


# --------------------------------------------------------------------------------- check

def _layer_and_options(text: str) -> tuple[str, dict]:
    """``"name"`` or ``"name(k=v, ...)"`` -> (name, options), with build_layer's value rules."""
    from .errors import SpecError
    from .registry.options import option_kinds
    from .registry.spec import Component, parse_spec

    comps = parse_spec(text).expand()
    if len(comps) != 1:
        raise SpecError(f"lrnnx check takes one layer (optionally with options, e.g. "
                        f"'attn(n_heads=2)'), got {len(comps)} in {text!r}")
    comp = comps[0]
    cls = _registry().get("layer", comp.name)
    refs = option_kinds(cls if isinstance(cls, type) else type(cls))

    def plain(v):  # a bare NAME for an option that names no component is a string
        if isinstance(v, Component) and not v.kwargs:
            return v.name
        if isinstance(v, tuple):
            return tuple(plain(x) for x in v)
        return v

    return comp.name, {k: (v if k in refs else plain(v)) for k, v in comp.kwargs}


def cmd_check(args, out) -> int:
    import torch

    from .testing.checks import CHECKS, ConformanceError, check_layer

    name, options = _layer_and_options(args.layer)
    for c in args.checks or []:
        if c not in CHECKS:
            sugg = close_matches(c, CHECKS)
            did = f" Did you mean {sugg[0]!r}?" if sugg else ""
            raise LrnnxError(f"unknown check {c!r}.{did} Checks: {', '.join(CHECKS)}.")
    try:
        report = check_layer(name, device=args.device, dtype=getattr(torch, args.dtype),
                             checks=args.checks, **options)
        failed = False
    except ConformanceError as exc:
        report, failed = exc.report, True
    table = _table(f"conformance of layer {name!r} ({args.dtype}, {args.device})",
                   "check", "status", "message")
    counts: dict[str, int] = {}
    for r in report:
        counts[r.status] = counts.get(r.status, 0) + 1
        msg = r.message if args.verbose or r.status in ("failed", "error", "xpassed") else \
            (r.message.splitlines() or [""])[0]
        table.add_row(_text(r.check), _text(r.status, STATUS_STYLE.get(r.status)), _text(msg))
    out.print(table)
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    out.print(_text(f"{'FAILED' if failed else 'OK'}: {summary}",
                    "bold red" if failed else "bold green"))
    return 1 if failed else 0


# -------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lrnnx", description="Linear RNNs and state-space models "
                                "behind one interface: inspect the registry, build models, "
                                "check layers.")
    p.add_argument("--version", action="version", version=f"lrnnx {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("list", help="list registered components")
    s.add_argument("kind", nargs="?", help="layers, blocks, parameterizations, discretizers or "
                   "scan_backends (default: all); a single word that is no kind is a pattern")
    s.add_argument("pattern", nargs="?", help="shell wildcard ('s4*') or substring of the name")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("plugins", help="show every plugin and whether it loaded")
    s.add_argument("--traceback", action="store_true", help="show tracebacks of failed plugins")
    s.set_defaults(func=cmd_plugins)

    s = sub.add_parser("backends", help="show scan backends and their availability")
    s.set_defaults(func=cmd_backends)

    s = sub.add_parser("info", help="build a model from a spec and describe its layers")
    s.add_argument("spec", help="model spec, e.g. 'mamba(d_state=16)*4 + attn'")
    s.add_argument("--d-model", type=int, default=64, help="model width (default 64)")
    s.add_argument("--vocab-size", type=int, default=None, help="build an LM with this vocab")
    s.add_argument("--block", default="prenorm", help="residual block (default prenorm)")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("check", help="run the conformance suite on a layer")
    s.add_argument("layer", help="registered layer name, optionally with options: "
                   "'attn(n_heads=2)'")
    s.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    s.add_argument("--device", default="cpu")
    s.add_argument("--check", dest="checks", action="append", metavar="CHECK",
                   help="run only this check (repeatable)")
    s.add_argument("-v", "--verbose", action="store_true", help="full messages")
    s.set_defaults(func=cmd_check)

    for module in COMMAND_MODULES:  # train / evaluate / generate / new-layer / bench ...
        importlib.import_module(module).add_commands(sub)
    return p


#: modules with ``add_commands(subparsers)`` adding more subcommands; each command's
#: ``func(args, console) -> int`` imports what it needs when it runs, so ``lrnnx --help`` is fast.
COMMAND_MODULES: list[str] = ["lrnnx.scaffold", "lrnnx.train.cli", "lrnnx.bench", "lrnnx.kernels_cli"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lrnnx`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return args.func(args, _console())
    except LrnnxError as exc:
        _console(stderr=True).print(_text(f"error: {exc}", "bold red"))
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
