"""Resolving the ``param`` / ``disc`` / ``scan`` options of the ``ssm`` layer, and checking that
what a parameterization returns follows the protocol of
:mod:`lrnnx_plugins.parameterizations.base` (so a third-party parameterization that gets a shape
wrong fails with a message naming it, not deep inside a scan).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

import lrnnx
from lrnnx.errors import ConfigError, UnknownComponentError
from lrnnx.registry.core import REGISTRY
from lrnnx.registry.options import option_kinds
from lrnnx.registry.spec import Component

from lrnnx_plugins.parameterizations.base import STRUCTURES, SSMParams


def _plain_kwargs(cls: type, comp: Component, where: str) -> dict[str, Any]:
    """Options of a spec component: a bare NAME is a string unless the option is a ``Ref``."""
    refs = option_kinds(cls)
    out = {}
    for key, value in comp.kwargs:
        if key in ("d_model", "d_state"):
            raise ConfigError(f"{where}: {key} of {comp.name!r} is set by the layer; write "
                              f"ssm({key}=...) instead of {comp.name}({key}=...).")
        if isinstance(value, Component) and key not in refs:
            if value.kwargs:
                raise ConfigError(f"{where}: option {key!r} of {comp.name!r} takes a plain "
                                  f"value, not the call {value.name}(...).")
            value = value.name
        out[key] = value
    return out


def build_parameterization(value: Any, d_model: int, d_state: int, where: str):
    """A fresh parameterization module from a name, a spec Component, a class or an instance.

    An instance is used as given (its ``d_model``/``d_state`` must match); every other form is
    constructed as ``cls(d_model=d_model, d_state=d_state, **kwargs)``.
    """
    kwargs: dict[str, Any] = {}
    label = value
    if isinstance(value, Component):
        obj = REGISTRY.get("parameterization", value.name)
        label = value.name
    elif isinstance(value, str):
        obj = REGISTRY.get("parameterization", value)
    else:
        obj = value
    if isinstance(obj, lrnnx.Parameterization):
        if isinstance(value, Component) and value.kwargs:
            raise ConfigError(f"{where}: parameterization {label!r} is registered as an "
                              f"instance and takes no options; drop the (...).")
        for attr, want in (("d_model", d_model), ("d_state", d_state)):
            got = getattr(obj, attr, want)
            if got != want:
                raise ConfigError(f"{where}: the parameterization instance has {attr}={got} but "
                                  f"the layer has {attr}={want}; build it with {attr}={want}.")
        # a registered (shared) instance must not share its parameters between layers
        return copy.deepcopy(obj) if not isinstance(value, lrnnx.Parameterization) else obj
    if not (isinstance(obj, type) and issubclass(obj, lrnnx.Parameterization)):
        raise ConfigError(f"{where}: option 'param' must name a registered parameterization "
                          f"(see `lrnnx list parameterizations`), or be a spec component, a "
                          f"lrnnx.Parameterization subclass or instance; got "
                          f"{type(value).__name__} {value!r}.")
    if isinstance(value, Component):
        kwargs = _plain_kwargs(obj, value, where)
    try:
        return obj(d_model=d_model, d_state=d_state, **kwargs)
    except ConfigError as exc:  # say which layer asked for it
        raise ConfigError(f"{where}: {exc}") from None


def build_discretizer(value: Any, where: str):
    """The discretizer object of a name, a spec Component, a class or an instance."""
    kwargs: dict[str, Any] = {}
    if isinstance(value, Component):
        obj = REGISTRY.get("discretizer", value.name)
        if value.kwargs:
            if not isinstance(obj, type):
                raise ConfigError(f"{where}: discretizer {value.name!r} takes no options; "
                                  f"write disc={value.name}.")
            kwargs = _plain_kwargs(obj, value, where)
    elif isinstance(value, str):
        obj = REGISTRY.get("discretizer", value)
    else:
        obj = value
    if isinstance(obj, type) and issubclass(obj, lrnnx.Discretizer):
        obj = obj(**kwargs)
    if not isinstance(obj, lrnnx.Discretizer):
        raise ConfigError(f"{where}: option 'disc' must name a registered discretizer (see "
                          f"`lrnnx list discretizers`) or be a lrnnx.Discretizer; got "
                          f"{type(value).__name__} {value!r}.")
    return obj


def check_scan(value: Any, where: str) -> str:
    """``"auto"`` or the name of a registered scan backend (passed to ``lrnnx.ops`` ops)."""
    if isinstance(value, Component) and not value.kwargs:
        value = value.name
    if not isinstance(value, str):
        raise ConfigError(f"{where}: option 'scan' must be 'auto' or the name of a registered "
                          f"scan backend (str), got {type(value).__name__} {value!r}.")
    names = REGISTRY.names("scan_backend")
    if value != "auto" and value not in names:
        raise UnknownComponentError("scan_backend", value, ["auto", *names],
                                    context=f"option 'scan' of {where}")
    return value


# --------------------------------------------------------------------------- protocol checks

def traits(param) -> tuple[str, bool, bool]:
    """``(structure, discrete, selective)`` of a parameterization, validated."""
    structure = getattr(param, "structure", "siso")
    if structure not in STRUCTURES:
        raise ConfigError(f"parameterization {_name(param)}: class attribute `structure` must be "
                          f"one of {STRUCTURES}, got {structure!r}.")
    discrete = bool(getattr(param, "discrete", False))
    selective = bool(getattr(param, "selective", False))
    if discrete and selective:
        raise ConfigError(f"parameterization {_name(param)}: a selective parameterization must "
                          f"be continuous-time (discrete=False): the layer discretizes its "
                          f"input-dependent dt.")
    if selective and structure != "siso":
        raise ConfigError(f"parameterization {_name(param)}: selective parameterizations must "
                          f"be SISO (structure='siso'), got {structure!r}.")
    return structure, discrete, selective


def _name(param) -> str:
    return repr(getattr(param, "name", "") or type(param).__name__)


def check_params(param, P: Any, H: int, N: int, x: torch.Tensor | None) -> SSMParams:
    """Raise ConfigError unless ``P`` has the protocol's types and shapes for ``param``."""
    who = f"parameterization {_name(param)}"
    if not isinstance(P, SSMParams):
        raise ConfigError(f"{who}: forward() must return lrnnx_plugins.parameterizations."
                          f"SSMParams, got {type(P).__name__}.")
    structure, discrete, selective = traits(param)
    if selective:
        Bt, L = x.shape[:2]
        want = {"A": (H, N), "B": (Bt, L, N), "C": (Bt, L, N), "dt": (Bt, L, H)}
    elif structure == "siso":
        want = {"A": (H, N), "B": (H, N), "C": (H, N), "dt": ((H,), (H, N))}
    else:
        want = {"A": (N,), "B": (N, H), "C": (H, N), "dt": (N,)}
    if discrete:
        want.pop("dt")
    for key, shapes in want.items():
        t = getattr(P, key)
        shapes = shapes if isinstance(shapes[0], tuple) else (shapes,)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) not in shapes:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            exp = " or ".join(str(s) for s in shapes)
            raise ConfigError(f"{who} ({structure}{', selective' if selective else ''}): "
                              f"SSMParams.{key} must have shape {exp} for d_model={H}, "
                              f"d_state={N}, got {got}; see lrnnx_plugins.parameterizations."
                              f"base for the protocol.")
    if not discrete and P.dt is not None and P.dt.is_complex():
        raise ConfigError(f"{who}: SSMParams.dt must be real (positive step sizes), got "
                          f"{P.dt.dtype}.")
    if discrete and P.dt is not None:
        raise ConfigError(f"{who}: a discrete parameterization returns A_bar directly and "
                          f"must leave SSMParams.dt as None.")
    return P
