"""Option validation: pydantic models derived from a component's typed ``__init__`` signature.

A plugin author writes a normal typed constructor once::

    def __init__(self, d_model: int, d_state: int = 16, disc: Ref("discretizer") = "zoh"): ...

and gets validated options (unknown option -> close-match suggestion, wrong type -> the field,
the expected type and what was given) both from Python calls and from spec strings.
A field annotated with ``Ref(kind)`` names another registered component: spec strings resolve a
bare NAME there in that kind's registry.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Annotated, Any

from ..errors import ConfigError, UnknownComponentError, close_matches


class Ref:
    """Annotation marker: the option names a registered component of ``kind``.

    Use as ``disc: Ref("discretizer") = "zoh"`` (a str or spec ``Component`` is accepted; so is an
    instance or class of the component, for Python callers).
    """

    def __init__(self, kind: str):
        from .hookspecs import KINDS

        if kind not in KINDS:
            raise ValueError(f"Ref kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind

    def __repr__(self) -> str:
        return f"Ref({self.kind!r})"

    # Make ``x: Ref("k")`` usable directly as an annotation: pydantic sees Annotated[Any, self].
    def __class_getitem__(cls, item):  # pragma: no cover - not used
        raise TypeError("use Ref('kind'), not Ref['kind']")


def _ref_of(annotation: Any) -> Ref | None:
    if isinstance(annotation, Ref):
        return annotation
    if typing.get_origin(annotation) is Annotated:
        for meta in typing.get_args(annotation)[1:]:
            if isinstance(meta, Ref):
                return meta
    return None


def _resolved_hints(func) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable forward refs: fall back to raw annotations
        return dict(getattr(func, "__annotations__", {}))


def option_kinds(cls) -> dict[str, str]:
    """``{option: registry kind}`` for every ``Ref``-annotated option of ``cls.__init__``."""
    hints = _resolved_hints(cls.__init__)
    out = {}
    for name, ann in hints.items():
        ref = _ref_of(ann)
        if ref is not None:
            out[name] = ref.kind
    return out


def _check_ref(kind: str, value: Any, info: Any = None) -> Any:
    from .core import REGISTRY
    from .spec import Component

    if isinstance(value, Component):
        name = value.name
    elif isinstance(value, str):
        name = value
    else:
        return value  # an instance or class given directly from Python
    if name not in REGISTRY.names(kind):
        field = getattr(info, "field_name", None)
        raise UnknownComponentError(kind, name, REGISTRY.names(kind),
                                    context=f"option {field!r}" if field else None)
    return value


@functools.lru_cache(maxsize=None)
def options_model(cls):
    """The pydantic model of ``cls.__init__``'s options (cached per class)."""
    import pydantic
    from pydantic import AfterValidator, ConfigDict

    sig = inspect.signature(cls.__init__)
    hints = _resolved_hints(cls.__init__)
    fields: dict[str, Any] = {}
    for pname, p in list(sig.parameters.items())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = hints.get(pname, Any)
        ref = _ref_of(ann)
        if ref is not None:
            ann = Annotated[Any, AfterValidator(functools.partial(_check_ref, ref.kind))]
        elif ann is inspect.Parameter.empty:
            ann = Any
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[pname] = (ann, default)
    allow_extra = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    config = ConfigDict(extra="allow" if allow_extra else "forbid",
                        arbitrary_types_allowed=True, protected_namespaces=())
    return pydantic.create_model(f"{cls.__name__}Options", __config__=config, **fields)


def _owner_label(cls) -> str:
    name = getattr(cls, "name", None)
    return f"{name!r} ({cls.__name__})" if name else cls.__name__


def validate_options(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Validate ``kwargs`` for ``cls(**kwargs)``; return the (coerced) values.

    Raises ConfigError for unknown options (with close matches), missing required options and
    values of the wrong type; UnknownComponentError for a Ref option naming an unknown component.
    """
    import pydantic

    model = options_model(cls)
    known = list(model.model_fields)
    label = _owner_label(cls)
    if model.model_config.get("extra") == "forbid":
        for key in kwargs:
            if key not in model.model_fields:
                sugg = close_matches(key, known)
                did = f" Did you mean {' or '.join(repr(s) for s in sugg)}?" if sugg else ""
                raise ConfigError(
                    f"{label}: unknown option {key!r}.{did} Valid options: {', '.join(known)}.")
    try:
        validated = model(**kwargs)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "?"
        if err["type"] == "missing":
            raise ConfigError(f"{label}: missing required option {field!r}.") from None
        ctx_exc = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_exc, UnknownComponentError):
            raise ctx_exc from None
        given = err.get("input")
        expected = model.model_fields[err["loc"][0]].annotation if err["loc"] and \
            err["loc"][0] in model.model_fields else "?"
        if typing.get_origin(expected) is typing.Literal:
            exp_name = "one of " + ", ".join(repr(a) for a in typing.get_args(expected))
        else:
            exp_name = getattr(expected, "__name__", None) or str(expected).replace("typing.", "")
        raise ConfigError(
            f"{label}: option {field!r} expects {exp_name}, got {type(given).__name__} "
            f"{given!r} ({err['msg']}).") from None
    out = {k: getattr(validated, k) for k in model.model_fields if k in kwargs}
    for k in kwargs:  # extras allowed through **kwargs
        out.setdefault(k, kwargs[k])
    return out


def wrap_init(cls) -> None:
    """Make ``cls.__init__`` validate its options when ``cls`` is the class being built."""
    init = cls.__dict__.get("__init__")
    if init is None or getattr(init, "__lrnnx_validating__", False):
        return
    sig = inspect.signature(init)
    params = list(sig.parameters.values())[1:]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        # validate once, in the __init__ the instance's own class resolves to (subclasses that
        # call super().__init__ have validated their own options already)
        if type(self).__init__ is __init__ and not _VALIDATION_OFF:
            owner = type(self)
            if len(args) > sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                               for p in params):
                raise ConfigError(f"{_owner_label(owner)}: too many positional arguments "
                                  f"({len(args)}); pass options by keyword.")
            for p, a in zip(params, args):
                if p.name in kwargs:
                    raise ConfigError(f"{_owner_label(owner)}: option {p.name!r} given twice.")
                kwargs[p.name] = a
            kwargs = validate_options(owner, kwargs)
            args = ()
        init(self, *args, **kwargs)

    __init__.__lrnnx_validating__ = True
    cls.__init__ = __init__


_VALIDATION_OFF = False
