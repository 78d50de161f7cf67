"""The component registry: plugin discovery (entry points + pluggy), entries and lookups.

Nothing here runs at ``import lrnnx``: the registry loads its plugins on the first lookup.
Built-in plugins are found through the same ``lrnnx`` entry-point group as third-party ones
(their distribution is ``lrnnx``); in a source checkout that is not pip-installed the built-in
modules listed in ``BUILTIN_PLUGINS`` are loaded directly instead.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

from ..errors import DuplicateRegistrationError, LrnnxError, UnknownComponentError
from .hookspecs import ENTRY_POINT_GROUP, HOOK_FOR_KIND, KINDS, PROJECT_NAME

#: entry-point name -> module of every built-in plugin.  Must equal the ``[project.entry-points.lrnnx]``
#: table of pyproject.toml (a test checks this); used when lrnnx runs from a source checkout.
BUILTIN_PLUGINS: dict[str, str] = {
    "lrnnx_blocks": "lrnnx_plugins.blocks",
    "lrnnx_attention": "lrnnx_plugins.attention",
    "lrnnx_mlp": "lrnnx_plugins.mlp",
    "lrnnx_backends": "lrnnx_plugins.backends",
    "lrnnx_discretizers": "lrnnx_plugins.discretizers",
    "lrnnx_parameterizations": "lrnnx_plugins.parameterizations",
    "lrnnx_ssm": "lrnnx_plugins.ssm",
    "lrnnx_recurrent": "lrnnx_plugins.recurrent",
    "lrnnx_mamba": "lrnnx_plugins.mamba",
    "lrnnx_lti": "lrnnx_plugins.lti",
}

BUILTIN_DIST = "lrnnx"


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    obj: Any
    plugin: str
    dist: str
    version: str
    builtin: bool

    @property
    def package(self) -> str:
        return f"{self.dist}@{self.version}"


@dataclass
class PluginRecord:
    """What happened to one plugin: ``status`` is ``loaded``, ``failed`` or ``disabled``."""

    name: str
    module: str
    dist: str
    version: str
    builtin: bool
    status: str = "loaded"
    error: str | None = None
    traceback: str | None = None
    registered: list[tuple[str, str]] = field(default_factory=list)


def _env_list(var: str) -> set[str]:
    return {p.strip() for p in os.environ.get(var, "").split(",") if p.strip()}


def _truthy(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}


class Registry:
    """Holds every component by (kind, name).  Thread-safe lazy loading."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._loaded = False
        self._loading = False
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        # (kind, name) -> every Entry that claimed it, when more than one package did
        self._conflicts: dict[tuple[str, str], list[Entry]] = {}
        self.plugins: dict[str, PluginRecord] = {}
        self._pm = None
        #: bumped by every change of the entries (load, register, unregister, reload), so callers
        #: can cache what they derive from them (the scan dispatcher's ranked backends)
        self.generation = 0

    # ------------------------------------------------------------------ loading
    def ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                self._load_all()
            finally:
                self._loading = False
                self._loaded = True

    def reload(self) -> None:
        """Forget everything and discover plugins again (after ``pip install`` in-process)."""
        with self._lock:
            self.generation += 1
            self._entries = {k: {} for k in KINDS}
            self._conflicts.clear()
            self.plugins.clear()
            self._pm = None
            self._loaded = False
            importlib.invalidate_caches()
        self.ensure_loaded()

    def _discover(self) -> list[tuple[str, str, str, str, bool, Any]]:
        """(name, module, dist, version, builtin, entry point or None) for every plugin."""
        from importlib.metadata import entry_points

        from .._version import __version__

        found = []
        builtin_seen = False
        seen_names: set[tuple[str, str]] = set()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "?"
            version = dist.version if dist is not None else "?"
            key = (ep.name, ep.value)
            if key in seen_names:  # the same dist visible twice on sys.path
                continue
            seen_names.add(key)
            builtin = dist_name.lower() == BUILTIN_DIST
            builtin_seen |= builtin
            found.append((ep.name, ep.value, dist_name, version, builtin, ep))
        if not builtin_seen:  # running from a source checkout
            for name, module in BUILTIN_PLUGINS.items():
                found.insert(0, (name, module, BUILTIN_DIST, __version__, True, None))
        # built-ins first so a third-party clash is attributed to the third party
        found.sort(key=lambda f: (not f[4], f[0]))
        return found

    def _load_all(self) -> None:
        import pluggy

        from . import hookspecs

        pm = pluggy.PluginManager(PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        self._pm = pm
        disabled = _env_list("LRNNX_DISABLE_PLUGINS")
        builtins_only = _truthy("LRNNX_DISABLE_PLUGIN_AUTOLOAD")
        for name, module, dist, version, builtin, ep in self._discover():
            rec = PluginRecord(name, module, dist, version, builtin)
            self.plugins[name] = rec
            if name in disabled or dist in disabled:
                rec.status, rec.error = "disabled", "blocked by LRNNX_DISABLE_PLUGINS"
                continue
            if builtins_only and not builtin:
                rec.status, rec.error = "disabled", "LRNNX_DISABLE_PLUGIN_AUTOLOAD=1 (built-ins only)"
                continue
            try:
                obj = ep.load() if ep is not None else importlib.import_module(module)
                pm.register(obj, name=name)
            except BaseException as exc:  # noqa: BLE001 - a plugin must never break lrnnx
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                self._fail(rec, "import", exc)
                continue
            self._register_from(rec, obj)

    def _fail(self, rec: PluginRecord, stage: str, exc: BaseException) -> None:
        rec.status = "failed"
        rec.error = f"{stage} failed: {type(exc).__name__}: {exc}"
        rec.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

    def _register_from(self, rec: PluginRecord, plugin_obj: Any) -> None:
        """Call the plugin's hooks, staging its entries; commit them only if all hooks succeed."""
        staged: list[Entry] = []
        for kind, hook_name in HOOK_FOR_KIND.items():
            impls = [
                i for i in getattr(self._pm.hook, hook_name).get_hookimpls()
                if i.plugin is plugin_obj
            ]
            for impl in impls:
                def register(obj: Any, name: str | None = None, _kind: str = kind) -> Any:
                    staged.append(self._make_entry(_kind, obj, name, rec))
                    return obj

                try:
                    impl.function(register=register)
                except BaseException as exc:  # noqa: BLE001
                    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                        raise
                    self._fail(rec, f"{hook_name}()", exc)
                    return
        clashes = []
        for entry in staged:
            clash = self._add(entry)
            if clash:
                clashes.append(clash)
            else:
                rec.registered.append((entry.kind, entry.name))
        if clashes:
            rec.status = "failed"
            rec.error = "; ".join(clashes)

    def _make_entry(self, kind: str, obj: Any, name: str | None, rec: PluginRecord) -> Entry:
        from .interfaces import validate_component

        name = name or getattr(obj, "name", None)
        validate_component(kind, obj, name)
        return Entry(kind, name, obj, rec.name, rec.dist, rec.version, rec.builtin)

    def _add(self, entry: Entry) -> str | None:
        """Add an entry; on a clash between packages record it and return a message."""
        self.generation += 1
        table = self._entries[entry.kind]
        key = (entry.kind, entry.name)
        if key in self._conflicts:
            self._conflicts[key].append(entry)
            return self._conflict_message(key)
        old = table.get(entry.name)
        if old is None:
            table[entry.name] = entry
            return None
        if old.obj is entry.obj and old.plugin == entry.plugin:
            return None  # the same object registered twice by one plugin: harmless
        del table[entry.name]
        self._conflicts[key] = [old, entry]
        return self._conflict_message(key)

    def _conflict_message(self, key: tuple[str, str]) -> str:
        kind, name = key
        who = " and ".join(f"plugin {e.plugin!r} ({e.package})" for e in self._conflicts[key])
        return (f"{kind} name {name!r} is registered by {who}; a name must be unique. "
                f"Uninstall one of them, or block one with LRNNX_DISABLE_PLUGINS=<plugin>.")

    # ------------------------------------------------------------------ lookups
    def _check_kind(self, kind: str) -> None:
        if kind not in self._entries:
            raise LrnnxError(f"unknown registry kind {kind!r}; kinds are: {', '.join(KINDS)}")

    def names(self, kind: str, pattern: str | None = None) -> list[str]:
        """Sorted names of ``kind``; ``pattern`` is a shell-style wildcard (``"s4*"``) or substring."""
        self._check_kind(kind)
        self.ensure_loaded()
        names = sorted(self._entries[kind])
        if pattern:
            wildcard = any(c in pattern for c in "*?[")
            names = [n for n in names
                     if (fnmatch.fnmatchcase(n, pattern) if wildcard else pattern in n)]
        return names

    def entry(self, kind: str, name: str) -> Entry:
        self._check_kind(kind)
        self.ensure_loaded()
        if not isinstance(name, str):
            raise TypeError(f"{kind} name must be a str, got {type(name).__name__}")
        try:
            return self._entries[kind][name]
        except KeyError:
            pass
        if (kind, name) in self._conflicts:
            raise DuplicateRegistrationError(self._conflict_message((kind, name)))
        raise UnknownComponentError(kind, name, self._entries[kind])

    def get(self, kind: str, name: str) -> Any:
        return self.entry(kind, name).obj

    def entries(self, kind: str | None = None) -> list[Entry]:
        self.ensure_loaded()
        kinds = [kind] if kind else list(KINDS)
        for k in kinds:
            self._check_kind(k)
        return [e for k in kinds for _, e in sorted(self._entries[k].items())]

    def conflicts(self) -> dict[tuple[str, str], list[Entry]]:
        self.ensure_loaded()
        return dict(self._conflicts)

    def register(self, kind: str, obj: Any, name: str | None = None, *, plugin: str = "__main__",
                 replace: bool = False) -> Any:
        """Register a component at run time (tests, notebooks).  ``replace`` overwrites a name."""
        self._check_kind(kind)
        self.ensure_loaded()
        rec = self.plugins.get(plugin) or PluginRecord(plugin, plugin, "(runtime)", "-", False)
        self.plugins.setdefault(plugin, rec)
        entry = self._make_entry(kind, obj, name, rec)
        if replace:
            self._entries[kind].pop(entry.name, None)
            self._conflicts.pop((kind, entry.name), None)
        msg = self._add(entry)
        if msg:
            raise DuplicateRegistrationError(msg)
        rec.registered.append((kind, entry.name))
        return obj

    def unregister(self, kind: str, name: str) -> None:
        self._check_kind(kind)
        self.generation += 1
        entry = self._entries[kind].pop(name, None)
        self._conflicts.pop((kind, name), None)
        if entry is not None and entry.plugin in self.plugins:
            registered = self.plugins[entry.plugin].registered
            registered[:] = [r for r in registered if r != (kind, name)]


REGISTRY = Registry()
