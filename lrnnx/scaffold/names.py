"""Every name of a generated plugin package, derived once from the NAME given to ``new-layer``.

``my-rnn``, ``my_rnn``, ``MyRnn`` and ``my rnn`` all split into the words ``["my", "rnn"]``::

    distribution  lrnnx-my-rnn     (pip install / uninstall, `lrnnx list`'s package column)
    module        lrnnx_my_rnn     (import name, the plugin's entry-point name)
    class_name    MyRnn            (CamelCase NAME is kept as typed: MyRNN stays MyRNN)
    registry_name my_rnn           (build_model("my_rnn*2"), lrnnx check my_rnn)

A leading ``lrnnx`` word is dropped (``lrnnx-my-rnn`` gives the same names), so the prefix is
never doubled.  :func:`check_available` then refuses names that the registry already holds for
that kind or whose module another distribution already provides: two plugins registering one
name make that name unusable for both (see ``lrnnx list``'s "name clash" warning).
"""

from __future__ import annotations

import importlib.util
import keyword
import re
from dataclasses import dataclass

from ..errors import ConfigError, DuplicateRegistrationError

KINDS = ("layer", "parameterization")
#: registry names whose module would be one of lrnnx's own import packages
RESERVED = {"plugins": "lrnnx_plugins", "kernels": "lrnnx_kernels", "templates": "lrnnx_templates"}

# a CamelCase boundary: "myRnn" -> my|Rnn, "MyRNNCell" -> My|RNN|Cell (digits stay attached:
# "S4DPlus" -> S4D|Plus, so an acronym with a digit is one word)
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z0-9])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[-_\s]+")
_WORD = re.compile(r"^[a-z0-9]+$")


@dataclass(frozen=True)
class Names:
    """The names of one generated package (see the module docstring)."""

    words: tuple[str, ...]
    registry_name: str
    module: str
    distribution: str
    class_name: str

    @property
    def title(self) -> str:
        """Human-readable title, e.g. ``"My Rnn"``."""
        return " ".join(w.capitalize() for w in self.words)


def _suggest(text: str) -> str | None:
    """A valid NAME close to ``text`` (invalid characters dropped), if one exists."""
    cleaned = re.sub(r"[^A-Za-z0-9_\-\s]+", "_", text).strip("-_ ")
    try:
        names = derive_names(cleaned, _suggesting=True)
    except ConfigError:
        return None
    return names.registry_name


def derive_names(name: str, *, _suggesting: bool = False) -> Names:
    """Split NAME into words and derive every name from them.

    Raises ConfigError (with a suggestion) when NAME is empty, has characters other than letters,
    digits, ``-``, ``_`` and spaces, starts with a digit, or makes a Python keyword.
    """
    if not isinstance(name, str):
        raise ConfigError(f"new-layer: NAME must be a string, got {type(name).__name__}.")
    raw = name.strip()
    if not raw:
        raise ConfigError("new-layer: NAME is empty; give a name such as 'my-rnn' (it becomes "
                          "the package lrnnx-my-rnn, module lrnnx_my_rnn, class MyRnn, registry "
                          "name my_rnn).")
    words = [w.lower() for part in _SEPARATORS.split(raw) for w in _CAMEL.split(part) if w]
    if len(words) > 1 and words[0] == "lrnnx":
        words = words[1:]  # "lrnnx-my-rnn" names the package; the prefix is added back below
    bad = sorted({c for w in words for c in w if not _WORD.match(c)})
    if bad or not words:
        sugg = None if _suggesting else _suggest(raw)
        hint = f" Did you mean {sugg!r}?" if sugg else ""
        what = " ".join(repr(c) for c in bad) or "only separators"
        raise ConfigError(f"new-layer: NAME {name!r} has characters that cannot appear in a "
                          f"Python identifier ({what}); use letters, digits, '-' or '_' (e.g. "
                          f"'my-rnn').{hint}")
    registry_name = "_".join(words)
    if registry_name[0].isdigit():
        hint = "" if _suggesting else f" Did you mean 'my_{registry_name}'?"
        raise ConfigError(f"new-layer: NAME {name!r} starts with a digit, but the registry name "
                          f"{registry_name!r} must be a Python identifier (it is written in "
                          f"specs such as '{registry_name}*2 + attn').{hint}")
    if keyword.iskeyword(registry_name):
        raise ConfigError(f"new-layer: NAME {name!r} gives the registry name {registry_name!r}, "
                          f"a Python keyword, which specs cannot use. Did you mean "
                          f"'{registry_name}_rnn' or 'my_{registry_name}'?")
    is_camel = _SEPARATORS.search(raw) is None and raw[0].isupper() and raw.isidentifier()
    class_name = raw if is_camel and not raw.lower().startswith("lrnnx") else \
        "".join(w[:1].upper() + w[1:] for w in words)
    return Names(words=tuple(words), registry_name=registry_name,
                 module=f"lrnnx_{registry_name}", distribution="lrnnx-" + "-".join(words),
                 class_name=class_name)


def _normalize_dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _free_alternative(names: Names, taken: set[str]) -> str:
    for cand in (f"my_{names.registry_name}", f"{names.registry_name}_v2",
                 f"{names.registry_name}_x"):
        if cand not in taken:
            return cand
    return f"my_{names.registry_name}_2"


def check_available(names: Names, kind: str) -> None:
    """Raise unless ``names`` is free: no ``kind`` of that name in the registry (loading the
    plugins, which imports torch) and no module of that name from another distribution.

    A name registered by the very distribution being generated (re-rendering an installed
    package with ``--force``) is not a clash.
    """
    if kind not in KINDS:
        raise ConfigError(f"new-layer: --kind must be one of {', '.join(KINDS)}, got {kind!r}.")
    if names.registry_name in RESERVED:
        raise ConfigError(f"new-layer: NAME {names.registry_name!r} would make the module "
                          f"{RESERVED[names.registry_name]!r}, one of lrnnx's own packages. "
                          f"Did you mean 'my_{names.registry_name}'?")
    from ..registry.core import REGISTRY

    ours = _normalize_dist(names.distribution)
    taken = set(REGISTRY.names(kind))
    if names.registry_name in taken:
        entry = REGISTRY.entry(kind, names.registry_name)
        if _normalize_dist(entry.dist) != ours:
            raise DuplicateRegistrationError(
                f"new-layer: a {kind} named {names.registry_name!r} is already registered by "
                f"plugin {entry.plugin!r} ({entry.package}); two plugins with one name make it "
                f"unusable for both. Choose another NAME, e.g. "
                f"{_free_alternative(names, taken)!r} (see `lrnnx list {kind}s`).")
    for key, entries in REGISTRY.conflicts().items():
        if key == (kind, names.registry_name):  # already claimed twice: never free
            who = ", ".join(e.package for e in entries)
            raise DuplicateRegistrationError(
                f"new-layer: the {kind} name {names.registry_name!r} is already claimed by "
                f"{who}. Choose another NAME, e.g. {_free_alternative(names, taken)!r}.")
    _check_module_free(names, ours)


def _check_module_free(names: Names, ours: str) -> None:
    try:
        spec = importlib.util.find_spec(names.module)
    except (ImportError, ValueError):
        spec = None
    # a namespace package (a bare folder of that name on sys.path) has no origin: not a clash
    if spec is None or spec.origin in (None, "namespace"):
        return
    from importlib.metadata import packages_distributions

    dists = packages_distributions().get(names.module, [])
    if any(_normalize_dist(d) == ours for d in dists):
        return
    owner = f"distribution {', '.join(dists)}" if dists else f"{spec.origin}"
    raise ConfigError(f"new-layer: the module {names.module!r} already exists ({owner}); a "
                      f"second package with that import name would shadow it. Choose another "
                      f"NAME, e.g. 'my_{names.registry_name}'.")
