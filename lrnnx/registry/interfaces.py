"""Typed interfaces of the registry: Layer, Block, Parameterization, Discretizer, ScanBackend.

``Layer`` is the common API of every sequence mixer.  Subclasses write a plain typed
``__init__`` (options are validated from its signature) and ``forward`` / ``step`` /
``init_state``; the base class validates inputs before any compute and handles L = 0.
"""

from __future__ import annotations

import functools
import keyword
import re
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import InputError
from . import inputs
from .options import wrap_init

State = dict[str, torch.Tensor]
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _wrap_forward(fwd):
    @functools.wraps(fwd)
    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None,
                **kwargs):
        inputs.check_x(self, x)
        inputs.check_state(self, state)
        inputs.check_timesteps(self, timesteps, x)
        inputs.check_cu_seqlens(self, cu_seqlens, x)
        if x.shape[1] == 0 and cu_seqlens is None:
            y = x.new_zeros(x.shape)
            if not return_state:
                return y
            if state is None:
                state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
            return y, state
        return fwd(self, x, state=state, return_state=return_state, timesteps=timesteps,
                   cu_seqlens=cu_seqlens, **kwargs)

    forward.__lrnnx_wrapped__ = True
    return forward


def _wrap_step(step):
    @functools.wraps(step)
    def wrapped(self, x_t, state, **kwargs):
        if "step" not in self.capabilities:
            inputs._require(self, "step", "step()")
        inputs.check_x(self, x_t, arg="x_t", step=True)
        if state is None:
            raise InputError(f"layer {self.name!r}: step() needs a state; start from "
                             f"layer.init_state(batch_size) or forward(..., return_state=True).")
        inputs.check_state(self, state)
        if "timesteps" in kwargs and kwargs["timesteps"] is not None:
            inputs.check_timesteps(self, kwargs["timesteps"], x_t, step=True)
        return step(self, x_t, state, **kwargs)

    wrapped.__lrnnx_wrapped__ = True
    return wrapped


class Component:
    """Mixin of every registrable class: a registry ``name`` and validated typed options."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        wrap_init(cls)


class Layer(Component, nn.Module):
    """Base class of every sequence-mixing layer (``lrnnx.Layer``).

    Contract
    --------
    * ``name``: registry key; ``capabilities``: subset of
      ``{"step", "varlen", "timesteps", "bidirectional", "complex"}``.
    * ``forward(x, state=None, return_state=False, timesteps=None, cu_seqlens=None)``:
      x (B, L, d_model) -> y (B, L, d_model), or ``(y, state)`` with ``return_state=True``.
    * ``step(x_t, state) -> (y_t, state)`` with x_t (B, d_model).
    * ``init_state(batch_size, device=None, dtype=None) -> dict[str, Tensor]``.
    * ``expected_failures``: ``{check_name: reason}`` for conformance checks the layer cannot
      meet by design; they run as strict xfail.
    Subclasses set ``self.d_model`` in ``__init__`` so inputs can be validated.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset()
    expected_failures: ClassVar[dict[str, str]] = {}
    d_model: int

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        bad = set(cls.capabilities) - inputs.CAPABILITIES
        if bad:
            raise TypeError(f"{cls.__name__}.capabilities has unknown entries {sorted(bad)}; "
                            f"allowed: {sorted(inputs.CAPABILITIES)}")
        cls.capabilities = frozenset(cls.capabilities)
        fwd = cls.__dict__.get("forward")
        if fwd is not None and not getattr(fwd, "__lrnnx_wrapped__", False):
            cls.forward = _wrap_forward(fwd)
        stp = cls.__dict__.get("step")
        if stp is not None and not getattr(stp, "__lrnnx_wrapped__", False):
            cls.step = _wrap_step(stp)

    def __init__(self) -> None:
        super().__init__()

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def step(self, x_t, state):
        inputs._require(self, "step", "step()")
        raise NotImplementedError(f"{type(self).__name__} lists 'step' but has no step()")

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        """An all-zero recurrent state (empty dict for stateless layers)."""
        return {}

    def state_numel(self) -> int:
        """Elements of the recurrent state per sequence (for `lrnnx info`)."""
        try:
            st = self.init_state(1, device=torch.device("meta"))
        except Exception:  # noqa: BLE001 - some layers cannot build a state on meta
            st = self.init_state(1)
        return sum(v.numel() for v in st.values())


class Block(Component, nn.Module):
    """A residual block around a mixer layer (norm -> mixer -> residual [-> MLP]).

    Constructed as ``Block(d_model, mixer, **options)``; follows the Layer call signature and
    passes ``state``/``timesteps``/``cu_seqlens`` through to the mixer.
    """

    def __init__(self) -> None:
        super().__init__()


class Parameterization(Component, nn.Module):
    """Owns the learnable parameters of a diagonal SSM (S4D-Lin/Inv, HiPPO-N, LRU ring, ...).

    The concrete protocol (constructor ``(d_model, d_state, complex=None, **options)``, class
    attributes ``structure`` / ``discrete`` / ``selective``, and the ``SSMParams`` that ``forward``
    returns) is documented in ``lrnnx_plugins.parameterizations.base``; the ``ssm`` layer composes
    a parameterization with a discretizer and a scan backend.
    """

    def __init__(self) -> None:
        super().__init__()


class Discretizer(Component):
    """A pure function (A, dt) -> (A_bar, B_scale) with B_bar = B_scale * B."""

    def __call__(self, A: torch.Tensor, dt: torch.Tensor):
        raise NotImplementedError


class ScanBackend(Component):
    """Runs the diagonal linear recurrence and the selective scan (see ``lrnnx.ops``).

    ``priority``: higher wins under ``backend="auto"``.  ``available()`` is cheap and returns
    ``(ok, reason)``; ``supports(op, **problem)`` says whether this backend can run a problem
    (keys: device, dtype, complex, varlen, reverse, ...) and why not.  ``prefer(op, **problem)``
    (optional) lets a backend that *can* run a problem step aside under ``"auto"`` when another
    one is measured faster there: ``(False, reason)`` makes ``"auto"`` take the next backend that
    can run it (this one is still used when no other can, and by name).  ``prepare(op)``
    (optional) does first-use work (a JIT build) and raises BackendUnavailableError if it fails;
    under ``torch.compile`` the dispatcher calls it at trace time, and the op methods should skip
    such checks while ``lrnnx.ops.dispatch.compiling()`` is true (dynamo cannot trace locks or
    builds), so that ``fullgraph=True`` holds.
    """

    priority: ClassVar[int] = 0

    def available(self) -> tuple[bool, str]:
        return True, ""

    def supports(self, op: str, **problem: Any) -> tuple[bool, str]:
        return True, ""

    def prefer(self, op: str, **problem: Any) -> tuple[bool, str]:
        return True, ""

    def prepare(self, op: str) -> None:
        return None


_BASES = {
    "layer": Layer,
    "block": Block,
    "parameterization": Parameterization,
    "discretizer": Discretizer,
    "scan_backend": ScanBackend,
}


def validate_component(kind: str, obj: Any, name: str | None) -> None:
    """Raise TypeError unless ``obj`` can be registered as ``kind`` under ``name``."""
    base = _BASES[kind]
    ok = (isinstance(obj, type) and issubclass(obj, base)) or isinstance(obj, base)
    if not ok:
        raise TypeError(f"cannot register {obj!r} as a {kind}: expected a subclass (or instance) "
                        f"of lrnnx.{base.__name__}")
    if not isinstance(name, str) or not _NAME_RE.match(name) or keyword.iskeyword(name):
        raise TypeError(f"cannot register {obj!r} as a {kind}: its name {name!r} must be a "
                        f"Python identifier (set the class attribute `name`)")
