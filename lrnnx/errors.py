"""Exception types of lrnnx.

Every error says what went wrong, where (layer / argument / plugin), what was expected, what was
got, and how to fix it.  Keep this module free of heavy imports: it is imported by ``import lrnnx``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "LrnnxError",
    "SpecError",
    "UnknownComponentError",
    "DuplicateRegistrationError",
    "ConfigError",
    "InputError",
    "BackendUnavailableError",
    "InputTypeError",
    "close_matches",
    "caret_line",
]


class LrnnxError(Exception):
    """Base class of all lrnnx errors."""


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Names in ``candidates`` that look like ``name`` (typo suggestions), best first."""
    candidates = list(candidates)
    out = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    # prefix matches ("mamba" for "mamb") are good suggestions even when the ratio is low
    for c in sorted(candidates):
        if len(out) >= n:
            break
        if c not in out and name and (c.startswith(name) or name.startswith(c)):
            out.append(c)
    return out


def caret_line(text: str, start: int, end: int, indent: str = "    ") -> str:
    """Two lines: ``text`` and carets under ``text[start:end]`` (single-line text)."""
    end = max(end, start + 1)
    return f"{indent}{text}\n{indent}{' ' * start}{'^' * (end - start)}"


class SpecError(LrnnxError, ValueError):
    """A spec string or config is malformed (syntax, bad value)."""

    def __init__(self, message: str, spec: str | None = None, start: int | None = None,
                 end: int | None = None):
        self.message = message
        self.spec = spec
        self.start = start
        self.end = end
        text = message
        if spec is not None and start is not None and "\n" not in spec:
            text = f"{message}\n{caret_line(spec, start, end if end is not None else start + 1)}"
        super().__init__(text)


class UnknownComponentError(LrnnxError, LookupError):
    """A registry lookup found no component of that name.

    The message names the kind and the missing name, shows the spec with a caret under it (when
    the name came from a spec), close matches, the available names and the command listing them.
    """

    def __init__(self, kind: str, name: str, available: Iterable[str], spec: str | None = None,
                 start: int | None = None, end: int | None = None, context: str | None = None):
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        self.suggestions = close_matches(name, self.available)
        where = " in spec" if spec is not None else ""
        if context:
            where += f" ({context})"
        lines = [f"unknown {kind} {name!r}{where}"]
        if spec is not None and start is not None and "\n" not in spec:
            lines.append(caret_line(spec, start, end if end is not None else start + len(name)))
        hint = []
        if self.suggestions:
            hint.append(f"did you mean: {', '.join(self.suggestions)}?")
        shown = ", ".join(self.available[:30]) + (", ..." if len(self.available) > 30 else "")
        hint.append(f"available {kind}s: {shown or '(none registered)'}")
        hint.append(f"see: lrnnx list {kind}s")
        lines.append("  " + "   ".join(hint))
        # KeyError-style repr quoting is avoided by subclassing LookupError, not KeyError.
        super().__init__("\n".join(lines))


class DuplicateRegistrationError(LrnnxError, ValueError):
    """Two plugins registered the same name for the same kind."""


class ConfigError(LrnnxError, TypeError, ValueError):
    """Options given to a component do not validate (unknown option, wrong type or value).

    Subclasses both TypeError and ValueError so callers may catch either.
    """


class InputError(LrnnxError, ValueError):
    """A tensor passed to a layer or op has the wrong shape, dtype, device or value."""


class InputTypeError(LrnnxError, TypeError):
    """A tensor passed to a layer or op has the wrong type or dtype."""


class BackendUnavailableError(LrnnxError, RuntimeError):
    """An explicitly requested scan backend cannot run this problem (the reason is included)."""
