"""Build layers and models from spec strings or configs.

* ``build_layer("attn(n_heads=8)", d_model=64)`` -> one Layer.
* ``build_model("mamba*4 + attn", d_model=64, vocab_size=None, block="prenorm", **globals)``
  -> :class:`lrnnx.models.Backbone`, or :class:`lrnnx.models.LM` with ``vocab_size``.
* ``build_model_from_config("model.yaml", overrides=["d_model=128"])``; ``model.kind``
  (lm | backbone | classifier | unet) selects :class:`lrnnx.models.Classifier` or
  :class:`lrnnx.models.UNet` too.
* ``build_backbones(specs, d_models, ...)``: several backbones sharing one set of globals (the
  stages of those multi-stack models).

Rules.  Every layer gets ``d_model``.  A *global* option (``**globals``) goes to every layer,
block and model part whose ``__init__`` names it (``n_heads=8`` reaches every ``attn``; ``norm``
reaches the blocks and the final norm); options written in the spec win over globals.  A global
that nothing accepts is an error (typos must not pass silently).  A bare NAME value in the spec
is passed as the Component for options annotated ``Ref(kind)`` (checked against that registry)
and as the string ``"NAME"`` otherwise (``mlp(activation=gelu)``).  Option errors carry the spec
text with a caret under the offending layer.  The spec is parsed, never evaluated.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigError, LrnnxError, SpecError, UnknownComponentError, caret_line, \
    close_matches
from .registry.core import REGISTRY
from .registry.options import option_kinds, validate_options
from .registry.spec import Component, Spec, format_spec, parse_spec, resolve_names, \
    spec_from_config

__all__ = ["build_layer", "build_model", "build_model_from_config", "build_backbones"]

_MODEL_KEYS = ("spec", "d_model", "vocab_size", "block")


# ------------------------------------------------------------------------------ helpers

def _parse(spec: Any) -> tuple[Spec, str | None]:
    """(Spec, text for carets or None) from a string, Spec, Component or list config."""
    if isinstance(spec, str):
        return parse_spec(spec), spec
    if isinstance(spec, Spec):
        return spec, None
    if isinstance(spec, Component):
        return Spec((spec,)), None
    if isinstance(spec, Sequence) and not isinstance(spec, (bytes, bytearray)):
        return spec_from_config(spec), None
    raise SpecError(f"a spec must be a string such as 'attn*2 + mlp' (or a parsed Spec, a "
                    f"Component, or a list of {{name, kwargs}} dicts), got "
                    f"{type(spec).__name__}")


def _cls_of(obj: Any) -> type:
    return obj if isinstance(obj, type) else type(obj)


def _params(cls: type, skip: tuple[str, ...] = ("d_model",)) -> list[str]:
    """Named ``__init__`` options of ``cls`` (not ``**kwargs``: it would swallow typos)."""
    sig = inspect.signature(_cls_of(cls).__init__)
    return [n for n, p in list(sig.parameters.items())[1:]
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in skip]


def _field_kind(owner: str, fld: str) -> str | None:
    """Registry kind declared by ``owner``'s option ``fld`` (``Ref``), or None."""
    for kind in ("layer", "parameterization", "discretizer", "scan_backend", "block"):
        if owner in REGISTRY.names(kind):
            try:
                kinds = option_kinds(_cls_of(REGISTRY.get(kind, owner)))
            except LrnnxError:
                continue
            if fld in kinds:
                return kinds[fld]
    return None


def _where(comp: Component, index: int, text: str | None) -> str:
    """Caret line under ``comp`` in ``text``, or 'layer i (name)' when there is no text."""
    if text is not None and comp.span is not None and "\n" not in text:
        return caret_line(text, *comp.span)
    return f"    in layer {index} ({comp.name!r}) of the spec"


def _check_names(parsed: Spec, text: str | None, comps: list[Component]) -> None:
    conflicts = REGISTRY.conflicts()
    for c in comps:
        if ("layer", c.name) in conflicts:
            REGISTRY.entry("layer", c.name)  # raises DuplicateRegistrationError naming both
    resolve_names(parsed, text, REGISTRY.names, _field_kind)


def _plain(value: Any, comp: Component, key: str, where: str) -> Any:
    """A spec value for an option that names no component: bare NAME -> "NAME"."""
    if isinstance(value, Component):
        if value.kwargs:
            raise ConfigError(f"layer {comp.name!r}: option {key!r} takes a plain value, not a "
                              f"component call {format_spec(Spec((value,)))!r}; write "
                              f"{key}={value.name} or {key}='...'.\n{where}")
        return value.name
    if isinstance(value, tuple):
        return tuple(_plain(v, comp, key, where) for v in value)
    return value


def _layer_kwargs(comp: Component, cls: type, globals_: dict, where: str) -> dict:
    refs = option_kinds(cls)
    accepted = set(_params(cls))
    kw = {g: v for g, v in globals_.items() if g in accepted}
    for key, value in comp.kwargs:
        if key == "d_model":
            raise ConfigError(f"layer {comp.name!r}: d_model is set for every layer by the "
                              f"model (d_model=...); remove it from the spec.\n{where}")
        kw[key] = value if key in refs else _plain(value, comp, key, where)
    return kw


def _reraise(exc: Exception, what: str, where: str):
    """Re-raise an option/constructor error of ``what`` with the caret ``where``."""
    if isinstance(exc, ConfigError) or (isinstance(exc, (ValueError, TypeError)) and
                                        not isinstance(exc, LrnnxError)):
        msg = str(exc) if isinstance(exc, ConfigError) else f"{what}: {exc}"
        raise ConfigError(f"{msg}\n{where}") from exc
    raise exc


def _build_layers(comps: list[Component], text: str | None, d_model: int,
                  globals_: dict) -> list:
    plans = []
    for i, comp in enumerate(comps):
        cls = _cls_of(REGISTRY.get("layer", comp.name))
        where = _where(comp, i, text)
        kw = _layer_kwargs(comp, cls, globals_, where)
        plans.append((comp, cls, kw, where))
    validated: set[int] = set()
    for comp, cls, kw, where in plans:  # cheap option checks first, before allocating weights
        if id(comp) not in validated:
            validated.add(id(comp))
            try:
                validate_options(cls, {"d_model": d_model, **kw})
            except (LrnnxError, ValueError, TypeError) as exc:
                _reraise(exc, f"layer {comp.name!r}", where)
    layers = []
    for comp, cls, kw, where in plans:
        try:
            layers.append(cls(d_model=d_model, **kw))
        except (LrnnxError, ValueError, TypeError) as exc:
            _reraise(exc, f"layer {comp.name!r}", where)
    return layers


def _check_globals(globals_: dict, accepted: dict[str, list[str]]) -> None:
    """ConfigError for a global accepted by none of ``accepted`` ({owner: options})."""
    every = sorted({o for opts in accepted.values() for o in opts})
    for g in globals_:
        if g not in every:
            sugg = close_matches(g, every)
            did = f" Did you mean {' or '.join(repr(s) for s in sugg)}?" if sugg else ""
            owners = "; ".join(f"{k}: {', '.join(v) or '-'}" for k, v in accepted.items())
            raise ConfigError(f"global option {g!r} is accepted by no layer, block or model "
                              f"part of this spec.{did} Accepted: {owners}.")


def _check_positive(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive int, got {value!r}.")


def _parse_block(block: Any) -> tuple[type, dict, str, str]:
    """Block class, its spec options, canonical text and caret line from a block spec such as
    ``"prenorm_mlp(mlp_expand=4)"``."""
    if not isinstance(block, str):
        raise ConfigError(f"block must be the name of a registered block such as 'prenorm' "
                          f"(optionally with options: 'prenorm_mlp(mlp_expand=4)'), got "
                          f"{type(block).__name__}; see `lrnnx list blocks`.")
    items = parse_spec(block).items
    if len(items) != 1 or not isinstance(items[0], Component):
        raise SpecError(f"block must name one block, got {block!r}")
    comp = items[0]
    names = REGISTRY.names("block")
    if comp.name not in names:
        start, end = comp.span if comp.span else (None, None)
        raise UnknownComponentError("block", comp.name, names, spec=block, start=start, end=end)
    cls = _cls_of(REGISTRY.get("block", comp.name))
    where = caret_line(block, *comp.span) if comp.span and "\n" not in block else \
        f"    in block {block!r}"
    kw = {}
    for key, value in comp.kwargs:
        if key in ("d_model", "mixer"):
            raise ConfigError(f"block {comp.name!r}: {key} is set by build_model; remove it."
                              f"\n{where}")
        kw[key] = _plain(value, comp, key, where)
    return cls, kw, format_spec(Spec((comp,))), where


# ---------------------------------------------------------------------------------- API

def build_layer(spec: str | Component, d_model: int, **globals: Any):
    """Build the single layer of ``spec`` (e.g. ``"attn(n_heads=8)"``) with width ``d_model``.

    ``globals`` are options for the layer (spec options win); one it does not accept is a
    ConfigError.  A spec with more (or fewer) than one layer is a SpecError: use build_model.
    """
    _check_positive("d_model", d_model)
    parsed, text = _parse(spec)
    comps = parsed.expand()
    if len(comps) != 1:
        raise SpecError(f"build_layer builds exactly one layer, but the spec "
                        f"{format_spec(parsed)!r} has {len(comps)}; use "
                        f"lrnnx.build_model(spec, d_model) to stack layers.")
    _check_names(parsed, text, comps)
    cls = _cls_of(REGISTRY.get("layer", comps[0].name))
    _check_globals(globals, {f"layer {comps[0].name!r}": _params(cls)})
    return _build_layers(comps, text, d_model, globals)[0]


def _prepared(spec: Any) -> tuple[Spec, str | None, list[Component]]:
    """Parsed spec, its text (for carets) and expanded layers, with every name checked."""
    parsed, text = _parse(spec)
    comps = parsed.expand()
    _check_names(parsed, text, comps)
    return parsed, text, comps


def build_backbones(specs: Sequence[Any], d_models: Sequence[int], block: str = "prenorm",
                    extra_options: Mapping[str, list[str]] | None = None,
                    **globals: Any) -> tuple[list, str]:
    """One :class:`lrnnx.models.Backbone` per spec (``d_models[i]`` wide), sharing ``globals``.

    The building step of :func:`build_model` and of the multi-stack models (``Classifier``
    stages, ``UNet`` levels): every layer, block and final norm takes the globals it accepts;
    one accepted by none of them (nor by ``extra_options``: ``{owner: [option, ...]}`` of the
    caller's own model parts) is a ConfigError.  Returns ``(backbones, canonical block text)``;
    each backbone has ``.spec`` and ``.layers`` set.
    """
    from .models.backbone import Backbone

    specs, d_models = list(specs), list(d_models)
    if not specs or len(specs) != len(d_models):
        raise ConfigError(f"build_backbones needs one d_model per spec, got {len(specs)} specs "
                          f"and {len(d_models)} widths.")
    for d in d_models:
        _check_positive("d_model", d)
    prepared = [_prepared(s) for s in specs]
    block_cls, block_kw, block_text, block_where = _parse_block(block)

    accepted: dict[str, list[str]] = {}
    for _, _, comps in prepared:
        for c in comps:
            accepted.setdefault(f"layer {c.name!r}", _params(REGISTRY.get("layer", c.name)))
    block_opts = _params(block_cls, skip=("d_model", "mixer"))
    accepted[f"block {block_cls.name!r}"] = block_opts
    model_opts = _params(Backbone, skip=("blocks", "d_model"))
    accepted["final norm"] = model_opts
    accepted.update(extra_options or {})
    _check_globals(globals, accepted)

    bkw = {**{g: v for g, v in globals.items() if g in block_opts}, **block_kw}
    backbones = []
    for (parsed, text, comps), d_model in zip(prepared, d_models):
        layers = _build_layers(comps, text, d_model, globals)
        blocks = []
        for layer in layers:
            try:
                blocks.append(block_cls(d_model=d_model, mixer=layer, **bkw))
            except (LrnnxError, ValueError, TypeError) as exc:
                _reraise(exc, f"block {block_cls.name!r}", block_where)
        backbone = Backbone(blocks, d_model,
                            **{g: v for g, v in globals.items() if g in model_opts})
        backbone.spec = format_spec(parsed)
        backbone.layers = [format_spec(Spec((c,))) for c in comps]
        backbones.append(backbone)
    return backbones, block_text


def build_model(spec: Any, d_model: int, vocab_size: int | None = None, block: str = "prenorm",
                **globals: Any):
    """Build a model from ``spec``: each layer wrapped in ``block``, then a final norm.

    ``spec``: a spec string (``"attn*2 + mlp"``, ``"2*(attn + mlp)"``), a parsed Spec or a list
    of ``{"name": ..., "kwargs": {...}}`` dicts.  ``block``: a registered block name, optionally
    with options (``"prenorm_mlp(mlp_expand=4)"``).  ``globals``: options applied to every layer,
    block or model part that accepts them (the final norm takes ``norm``/``eps``; the LM takes
    ``tie_embeddings``).  Returns a ``Backbone`` ((B, L, d_model) -> (B, L, d_model)), or an
    ``LM`` (token ids -> logits, with ``generate``) when ``vocab_size`` is given.
    """
    from .models.lm import LM

    _check_positive("d_model", d_model)
    _check_positive("vocab_size", vocab_size, optional=True)
    lm_opts = _params(LM, skip=("backbone", "vocab_size")) if vocab_size else []
    (backbone,), block_text = build_backbones(
        [spec], [d_model], block, extra_options={"LM": lm_opts} if vocab_size else None,
        **globals)
    config: dict[str, Any] = {"spec": backbone.spec, "d_model": d_model}
    model: Any = backbone
    if vocab_size:
        model = LM(backbone, vocab_size, **{g: v for g, v in globals.items() if g in lm_opts})
        config["vocab_size"] = vocab_size
    config["block"] = block_text
    config.update(globals)
    model._config = {"model": config}
    return model


def _config_error(exc, data: Mapping) -> ConfigError:
    """A readable ConfigError from the first pydantic error of the model-config check."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        sugg = close_matches(key, ["model"])
        did = f" Did you mean {sugg[0]!r}?" if sugg else ""
        return ConfigError(f"config: unknown top-level key {key!r}.{did} A model config is "
                           f"{{model: {{spec, d_model, vocab_size, block, <global options>}}}} "
                           f"(or those model keys at the top level).")
    if err["type"] == "missing":
        given = list((data.get("model") or {}) if isinstance(data.get("model"), Mapping) else [])
        sugg = close_matches(str(err["loc"][-1]), given)
        did = f" (did you mean {' or '.join(repr(s) for s in sugg)}?)" if sugg else ""
        return ConfigError(f"config: required key {loc!r} is missing{did}.")
    return ConfigError(f"config: {loc}: {err['msg']} (got {err.get('input')!r}).")


def build_model_from_config(path_or_dict: Any, overrides: list[str] | None = None):
    """Build a model from a YAML file or a dict, with CLI-style ``key=value`` overrides.

    Accepted forms: ``{model: {spec, d_model, vocab_size?, block?, **globals}}`` or the same
    model keys at the top level.  ``model.kind`` picks the architecture: ``lm`` (needs
    vocab_size) or ``backbone`` (the default is lm when vocab_size is set, else backbone), or
    ``classifier`` / ``unet``, whose keys are the arguments of
    :func:`lrnnx.models.build_classifier` / :func:`lrnnx.models.build_unet`.  ``spec`` is a
    spec string or a list of ``{name, kwargs}`` dicts.  ``overrides`` are OmegaConf dotlist
    strings such as ``["d_model=128", "model.n_heads=8", "spec='attn*4'"]``; keys are relative
    to the model section (a leading ``model.`` is optional).  ``model.config()`` round-trips
    through here.
    """
    import pydantic
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(path_or_dict, (str, os.PathLike)):
        if not os.path.isfile(path_or_dict):
            raise ConfigError(f"config file {os.fspath(path_or_dict)!r} does not exist.")
        try:
            conf = OmegaConf.load(path_or_dict)
        except Exception as exc:  # noqa: BLE001 - yaml/omegaconf errors of many types
            raise ConfigError(f"cannot read config {os.fspath(path_or_dict)!r}: {exc}") from exc
    elif isinstance(path_or_dict, (Mapping, DictConfig)):
        conf = OmegaConf.create(path_or_dict if isinstance(path_or_dict, DictConfig)
                                else dict(path_or_dict))
    else:
        raise ConfigError(f"build_model_from_config takes a YAML path or a dict, got "
                          f"{type(path_or_dict).__name__}.")
    if not isinstance(conf, DictConfig):
        raise ConfigError("a model config must be a mapping, got a list.")
    if "model" not in conf:
        conf = OmegaConf.create({"model": conf})
    if overrides:
        if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
            raise ConfigError(f"overrides must be a list of 'key=value' strings, got "
                              f"{overrides!r}.")
        dotlist = []
        for o in overrides:
            key = o.split("=", 1)[0].strip()
            if "=" not in o or not key:
                raise ConfigError(f"override {o!r} must look like key=value (e.g. d_model=128).")
            dotlist.append(o if key == "model" or key.startswith("model.") else f"model.{o}")
        try:
            conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(dotlist))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"cannot apply overrides {overrides!r}: {exc}") from exc
    try:
        data = OmegaConf.to_container(conf, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve config: {exc}") from exc

    from .models.kinds import MULTI_STACK_KINDS, build_kind, model_kind

    kind = model_kind(data)
    if kind in MULTI_STACK_KINDS:
        return build_kind(kind, data)

    class ModelSection(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="allow")  # extras are global options
        spec: str | list[Any]
        d_model: int
        vocab_size: int | None = None
        block: str = "prenorm"

    class ModelConfig(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        model: ModelSection

    try:
        section = ModelConfig.model_validate(data).model
    except pydantic.ValidationError as exc:
        raise _config_error(exc, data) from None
    if kind == "lm" and section.vocab_size is None:
        raise ConfigError("config: model.kind 'lm' needs model.vocab_size (the number of "
                          "token ids); set it, or use kind 'backbone' for a float-in model.")
    if kind == "backbone" and section.vocab_size is not None:
        raise ConfigError(f"config: model.kind 'backbone' takes no vocab_size (got "
                          f"{section.vocab_size}); drop it, or use kind 'lm'.")
    spec = section.spec if isinstance(section.spec, str) else spec_from_config(section.spec)
    return build_model(spec, section.d_model, vocab_size=section.vocab_size,
                       block=section.block, **(section.model_extra or {}))
