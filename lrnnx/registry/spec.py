"""The spec-string language: ``"mamba(d_state=16)*4 + attn"``.

Grammar (parsed with :mod:`ast`; nothing is ever evaluated or imported)::

    spec  := term ('+' term)*                       "+" stacks layers in order
    term  := atom ('*' INT)? | INT '*' atom         repeat, INT > 0
    atom  := NAME | NAME '(' key=value, ... ')' | '(' spec ')'
    value := number | string | True | False | None | NAME | NAME '(' key=value, ... ')'
           | [value, ...] | (value, ...) | -number

A bare NAME value parses to ``Component(name, ())``; the caller decides whether it names a
registered component (see :func:`resolve_names`) or is a plain string.  Keep this module light:
standard library only.
"""

from __future__ import annotations

import ast
import io
import math
import tokenize
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from lrnnx.errors import SpecError, UnknownComponentError

__all__ = ["Component", "Repeat", "Spec", "Item", "MAX_SPEC_CHARS", "MAX_LAYERS", "parse_spec",
           "format_spec", "resolve_names", "spec_to_config", "spec_from_config"]

MAX_SPEC_CHARS = 10_000
MAX_LAYERS = 100_000


@dataclass(frozen=True)
class Component:
    """``name`` or ``name(k=v, ...)``: a layer, or a component used as an argument value.

    ``kwargs`` keeps the user's order; values are int/float/str/bool/None, Component or tuples of
    values.  ``span`` is the (start, end) of the name in the spec text and ``arg_spans`` the span
    of each ``key=value``; neither takes part in equality or hashing.
    """

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    span: tuple[int, int] | None = field(default=None, compare=False)
    arg_spans: tuple[tuple[int, int], ...] = field(default=(), compare=False, repr=False)

    @property
    def kwargs_dict(self) -> dict[str, Any]:
        return dict(self.kwargs)

    def arg_span(self, key: str) -> tuple[int, int] | None:
        """Span of ``key=value`` in the spec text (None when unknown)."""
        for (k, _), sp in zip(self.kwargs, self.arg_spans):
            if k == key:
                return sp
        return None


@dataclass(frozen=True)
class Repeat:
    """``spec`` repeated ``times`` times (``(a + b)*2``); kept for formatting."""

    spec: Spec
    times: int
    span: tuple[int, int] | None = field(default=None, compare=False)

    def expand(self) -> list[Component]:
        return self.spec.expand() * self.times

    def num_layers(self) -> int:
        return self.spec.num_layers() * self.times


Item = Union[Component, Repeat]


@dataclass(frozen=True)
class Spec:
    """A parsed spec: items stacked in order."""

    items: tuple[Item, ...]

    def expand(self) -> list[Component]:
        """The flat list of layers, in order, repeats unrolled."""
        n = self.num_layers()
        if n > MAX_LAYERS:
            raise SpecError(f"spec expands to {n} layers; at most {MAX_LAYERS} are allowed")
        out: list[Component] = []
        for it in self.items:
            out.extend([it] if isinstance(it, Component) else it.expand())
        return out

    def num_layers(self) -> int:
        return sum(1 if isinstance(it, Component) else it.num_layers() for it in self.items)

    def __str__(self) -> str:
        return format_spec(self)


# ----------------------------------------------------------------------------------- parsing

_DESCRIBE = {
    "Attribute": "attribute access", "Subscript": "subscript", "Lambda": "lambda",
    "Compare": "comparison", "JoinedStr": "f-string", "BoolOp": "boolean operator",
    "IfExp": "conditional expression", "Dict": "dict", "Set": "set", "List": "list",
    "NamedExpr": "assignment expression", "Starred": "starred expression", "Tuple": "tuple",
    "ListComp": "comprehension", "SetComp": "comprehension", "DictComp": "comprehension",
    "GeneratorExp": "comprehension",
}
_OPS = {"Add": "+", "Mult": "*", "Sub": "-", "Div": "/", "FloorDiv": "//", "Mod": "%",
        "Pow": "**", "MatMult": "@", "LShift": "<<", "RShift": ">>", "BitOr": "|",
        "BitXor": "^", "BitAnd": "&", "Not": "not", "Invert": "~", "USub": "-", "UAdd": "+"}


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Constant):
        return f"the literal {node.value!r}"
    if isinstance(node, (ast.BinOp, ast.UnaryOp)):
        return f"operator {_OPS.get(type(node.op).__name__, '?')!r}"
    return _DESCRIBE.get(type(node).__name__, type(node).__name__)


class _Parser:
    def __init__(self, text: str, source: str, shift: int):
        self.text, self.shift = text, shift
        self.ascii = text.isascii()
        self.encoded = source.encode("utf-8")

    def _col(self, byte_col: int) -> int:
        if self.ascii:
            return byte_col + self.shift
        return len(self.encoded[:byte_col].decode("utf-8", "ignore")) + self.shift

    def span(self, node: ast.AST) -> tuple[int, int]:
        start = self._col(node.col_offset)
        end_col = getattr(node, "end_col_offset", None)
        if getattr(node, "end_lineno", 1) != 1 or end_col is None:
            return start, len(self.text)
        return start, max(self._col(end_col), start + 1)

    def error(self, message: str, node: ast.AST) -> SpecError:
        start, end = self.span(node)
        return SpecError(message, self.text, start, end)

    # -- layer positions
    def spec(self, node: ast.AST) -> Spec:
        terms: list[ast.AST] = []
        stack = [node]
        while stack:                       # flatten a + b + c iteratively (no deep recursion)
            n = stack.pop()
            if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add):
                stack += [n.right, n.left]
            else:
                terms.append(n)
        items: list[Item] = []
        for t in terms:
            items.extend(self.term(t))
        return Spec(tuple(items))

    def term(self, node: ast.AST) -> list[Item]:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            left_is_int = isinstance(node.left, ast.Constant) and type(node.left.value) is int
            count, body = (node.left, node.right) if left_is_int else (node.right, node.left)
            times = self.count(count)
            inner = self.spec(body)
            n = inner.num_layers() * times
            if n > MAX_LAYERS:
                raise self.error(f"spec expands to {n} layers; at most {MAX_LAYERS} are "
                                 f"allowed", count)
            return [Repeat(inner, times, self.span(node))]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return list(self.spec(node).items)
        if isinstance(node, (ast.Name, ast.Call)):
            return [self.component(node, "layer")]
        if isinstance(node, ast.BinOp):
            raise self.error(f"{_describe(node)} is not allowed in a spec; use '+' to stack "
                             f"layers and '*' to repeat them", node)
        if isinstance(node, ast.Tuple) and not node.elts:
            raise self.error("empty parentheses: expected a layer inside", node)
        raise self.error(f"expected a layer name, got {_describe(node)}", node)

    def count(self, node: ast.AST) -> int:
        msg = "repetition count must be a positive integer literal"
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value > 0:
            return node.value
        if isinstance(node, ast.Constant) or (isinstance(node, ast.UnaryOp) and
                                              isinstance(node.operand, ast.Constant)):
            start, end = self.span(node)
            msg += f", got {self.text[start:end]}"
        raise self.error(msg, node)

    def component(self, node: ast.AST, what: str) -> Component:
        if isinstance(node, ast.Name):
            return Component(node.id, (), self.span(node), ())
        assert isinstance(node, ast.Call)
        if not isinstance(node.func, ast.Name):
            raise self.error(f"a {what} must be named by a plain name, got "
                             f"{_describe(node.func)}", node.func)
        if node.args:
            raise self.error("positional arguments are not allowed in a spec; write key=value",
                             node.args[0])
        kwargs, spans, seen = [], [], set()
        for kw in node.keywords:
            if kw.arg is None:
                raise self.error("'**' unpacking is not allowed in a spec; write key=value", kw)
            if kw.arg in seen:
                raise self.error(f"argument {kw.arg!r} is given twice", kw)
            seen.add(kw.arg)
            kwargs.append((kw.arg, self.value(kw.value)))
            spans.append(self.span(kw))
        return Component(node.func.id, tuple(kwargs), self.span(node.func), tuple(spans))

    # -- value positions
    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            if node.value is None or isinstance(node.value, (bool, int, float, str)):
                return node.value
            raise self.error(f"{_describe(node)} is not allowed as a value in a spec", node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = node.operand
            if (isinstance(inner, ast.Constant) and type(inner.value) in (int, float)):
                return -inner.value if isinstance(node.op, ast.USub) else inner.value
            raise self.error(f"unary {_OPS[type(node.op).__name__]!r} is only allowed before "
                             f"a number", node)
        if isinstance(node, (ast.Name, ast.Call)):
            return self.component(node, "value")
        if isinstance(node, (ast.List, ast.Tuple)):
            return tuple(self.value(e) for e in node.elts)
        raise self.error(f"{_describe(node)} is not allowed as a value in a spec", node)


def parse_spec(text: str) -> Spec:
    """Parse a spec string; raise :class:`SpecError` with a caret on any problem."""
    if not isinstance(text, str):
        raise SpecError(f"a spec must be a string, got {type(text).__name__}")
    if len(text) > MAX_SPEC_CHARS:
        raise SpecError(f"spec is {len(text)} characters long; at most {MAX_SPEC_CHARS} "
                        f"are allowed")
    text = text.translate({ord(c): " " for c in "\r\n\f\v"})
    source = text.lstrip(" \t")
    shift = len(text) - len(source)
    if not source.strip():
        raise SpecError("empty spec: expected at least one layer, e.g. 'mamba*4 + attn'")
    if "\0" in text:
        raise SpecError("a spec must not contain NUL characters", text, text.index("\0"))
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as e:
        start = max((e.offset or 1) - 1, 0) + shift
        start = min(start, max(len(text) - 1, 0))
        end = (e.end_offset - 1 + shift) if (e.end_offset or 0) > (e.offset or 1) else start + 1
        msg = f"invalid spec syntax: {e.msg}"
        if "positional argument follows keyword" in e.msg:
            msg = "positional arguments are not allowed in a spec; write key=value"
        raise SpecError(msg, text, start, end) from None
    except (RecursionError, MemoryError, ValueError):
        raise SpecError("spec is nested too deeply") from None
    if "#" in source:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                c = tok.start[1] + shift
                raise SpecError("comments are not allowed in a spec", text, c, len(text))
    try:
        return _Parser(text, source, shift).spec(tree.body)
    except RecursionError:
        raise SpecError("spec is nested too deeply") from None


# -------------------------------------------------------------------------------- formatting

def _format_value(v: Any) -> str:
    if v is None or isinstance(v, (bool, str)):
        return repr(v)
    if isinstance(v, int):
        return repr(int(v))
    if isinstance(v, float):
        if math.isnan(v):
            raise SpecError("nan cannot be written in a spec")
        return ("-1e999" if v < 0 else "1e999") if math.isinf(v) else repr(float(v))
    if isinstance(v, Component):
        return _format_component(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_format_value(x) for x in v) + "]"
    raise SpecError(f"value of type {type(v).__name__} cannot be written in a spec: {v!r}")


def _format_component(c: Component) -> str:
    if not c.name.isidentifier():
        raise SpecError(f"{c.name!r} is not a valid component name (must be an identifier)")
    if not c.kwargs:
        return c.name
    for k, _ in c.kwargs:
        if not isinstance(k, str) or not k.isidentifier():
            raise SpecError(f"{k!r} is not a valid argument name of {c.name!r}")
    return f"{c.name}(" + ", ".join(f"{k}={_format_value(v)}" for k, v in c.kwargs) + ")"


def _format_item(it: Item) -> str:
    if isinstance(it, Component):
        return _format_component(it)
    body = it.spec.items
    if len(body) == 1 and isinstance(body[0], Component):
        return f"{_format_component(body[0])}*{it.times}"
    return f"({_format_items(body)})*{it.times}"


def _format_items(items: Sequence[Item]) -> str:
    if not items:
        raise SpecError("empty spec: expected at least one layer")
    return " + ".join(_format_item(it) for it in items)


def format_spec(spec: Spec | str) -> str:
    """Canonical text of a spec; ``parse_spec(format_spec(s)) == s``."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    return _format_items(spec.items)


# ---------------------------------------------------------------------------- name resolution

def resolve_names(spec: Spec, text: str | None, lookup: Callable[[str], list[str]],
                  field_kinds: Callable[[str, str], str | None] | None = None) -> None:
    """Check that every layer name, and every component value of a typed field, is registered.

    ``lookup(kind)`` lists the registered names of a kind.  ``field_kinds(owner, field)`` gives
    the kind a field declares (or None: the value is left alone, a bare NAME then is a string);
    it is asked about layer fields and, recursively, about fields of component values (with the
    component's name as owner), so it should return None for owners it does not know.
    Raises :class:`UnknownComponentError` with a caret under the offending name.
    """
    cache: dict[str, list[str]] = {}

    def names(kind: str) -> list[str]:
        if kind not in cache:
            cache[kind] = list(lookup(kind))
        return cache[kind]

    def check(c: Component, kind: str, context: str | None) -> None:
        if c.name not in names(kind):
            start, end = c.span if c.span is not None else (None, None)
            raise UnknownComponentError(kind, c.name, names(kind),
                                        spec=text if start is not None else None,
                                        start=start, end=end, context=context)
        if field_kinds is None:
            return
        for key, value in c.kwargs:
            fkind = field_kinds(c.name, key)
            if fkind is not None:
                values(value, fkind, f"value of {c.name}.{key}")

    def values(v: Any, kind: str, context: str) -> None:
        if isinstance(v, Component):
            check(v, kind, context)
        elif isinstance(v, tuple):
            for x in v:
                values(x, kind, context)

    def items(its: Sequence[Item]) -> None:
        for it in its:
            if isinstance(it, Component):
                check(it, "layer", None)
            else:
                items(it.spec.items)

    items(spec.items)


# -------------------------------------------------------------------------------- plain data

def _value_to_config(v: Any) -> Any:
    if isinstance(v, Component):
        return {"name": v.name, "kwargs": {k: _value_to_config(x) for k, x in v.kwargs}}
    if isinstance(v, tuple):
        return [_value_to_config(x) for x in v]
    return v


def spec_to_config(spec: Spec | str) -> list[dict]:
    """Plain-data form: one ``{"name": ..., "kwargs": {...}}`` per layer, repeats unrolled."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    return [_value_to_config(c) for c in spec.expand()]


def _component_from_config(d: Any, where: str) -> Component:
    if not isinstance(d, Mapping) or "name" not in d or not set(d) <= {"name", "kwargs"}:
        raise SpecError(f"{where}: expected a mapping with keys 'name' and optionally "
                        f"'kwargs', got {d!r}")
    name, kwargs = d["name"], d.get("kwargs") or {}
    if not isinstance(name, str) or not name.isidentifier():
        raise SpecError(f"{where}: component name must be an identifier, got {name!r}")
    if not isinstance(kwargs, Mapping):
        raise SpecError(f"{where}: 'kwargs' of {name!r} must be a mapping, got {kwargs!r}")
    out = []
    for k, v in kwargs.items():
        if not isinstance(k, str) or not k.isidentifier():
            raise SpecError(f"{where}: argument name of {name!r} must be an identifier, "
                            f"got {k!r}")
        out.append((k, _value_from_config(v, f"{where}: {name}.{k}")))
    return Component(name, tuple(out))


def _value_from_config(v: Any, where: str) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, Mapping):
        return _component_from_config(v, where)
    if isinstance(v, Sequence):
        return tuple(_value_from_config(x, where) for x in v)
    raise SpecError(f"{where}: value of type {type(v).__name__} is not allowed in a spec")


def spec_from_config(config: Sequence[Any] | str) -> Spec:
    """Inverse of :func:`spec_to_config`; also accepts a spec string, and string entries."""
    if isinstance(config, str):
        return parse_spec(config)
    if not isinstance(config, Sequence) or isinstance(config, (bytes, Mapping)):
        raise SpecError(f"a spec config must be a list of layers or a string, "
                        f"got {type(config).__name__}")
    items: list[Item] = []
    for i, entry in enumerate(config):
        if isinstance(entry, str):
            items.extend(parse_spec(entry).items)
        else:
            items.append(_component_from_config(entry, f"layer {i}"))
    if not items:
        raise SpecError("empty spec config: expected at least one layer")
    return Spec(tuple(items))
