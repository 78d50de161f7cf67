"""Shared machinery of the conformance checks: resolving and building the layer under test,
seeded inputs, tolerance-aware comparisons and readable failure messages.

Every check receives a :class:`Subject` (the layer class, its build options, device, dtype and
the check's name) and raises ``AssertionError`` through :meth:`Subject.fail` /
:meth:`Subject.assert_close` so that every message reads::

    [causality] layer 'toy': y[:, :6] changed when only x[:, 6:] changed (the layer looks
    into the future): max abs err 0.231 at (0, 2, 5) (got 0.412, expected 0.181); rel err
    0.0843 of max |ref| 2.74 > tol 1e-05

Tolerances are relative to the largest magnitude of the reference tensor (``max |ref|``):
``|actual - ref|.max() <= tol * max |ref|`` with tol 1e-5 for float32 and 1e-10 for float64
(an all-zero reference, e.g. the gradient of an unused parameter, is compared absolutely).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..registry.interfaces import Layer

#: rel. tolerance (of max |reference|) per dtype; the project-wide accuracy targets.
TOLERANCES: dict[torch.dtype, float] = {torch.float32: 1e-5, torch.float64: 1e-10}
COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}

DEFAULT_D_MODEL = 8
BATCH = 2
SEQ_LEN = 13  # odd, so split points and halves are uneven


class CheckNotApplicable(Exception):
    """The check does not apply to this layer (missing capability, option or registration)."""


# ------------------------------------------------------------------------------ resolution

def resolve_layer(layer: Any) -> type:
    """The Layer class of a registry name, a Layer subclass or a Layer instance."""
    if isinstance(layer, str):
        from ..registry.core import REGISTRY

        layer = REGISTRY.get("layer", layer)
    if isinstance(layer, Layer):
        layer = type(layer)
    if not (isinstance(layer, type) and issubclass(layer, Layer)):
        raise TypeError(f"expected a registered layer name or a subclass of lrnnx.Layer, got "
                        f"{layer!r}")
    return layer


def layer_label(layer: Any) -> str:
    """A short display name (registry name, else class name) without resolving anything."""
    if isinstance(layer, str):
        return layer
    cls = layer if isinstance(layer, type) else type(layer)
    return getattr(cls, "name", "") or cls.__name__


def to_dtype(module: torch.nn.Module, dtype: torch.dtype, device) -> torch.nn.Module:
    """Move ``module`` to ``device`` and cast real floating tensors to ``dtype`` and complex ones
    to the matching complex dtype.  (``Module.to(dtype)`` would drop the imaginary part of
    complex parameters; ``Module.double()`` would leave them in single precision.)"""
    cdtype = COMPLEX_OF.get(dtype)

    def convert(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        if t.is_complex() and cdtype is not None:
            return t.to(device=device, dtype=cdtype)
        return t.to(device=device)

    return module._apply(convert)


def cast_tensor(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if t.is_floating_point():
        return t.to(dtype)
    if t.is_complex():
        return t.to(COMPLEX_OF[dtype])
    return t


# -------------------------------------------------------------------------------- subject

@dataclass
class Subject:
    """The layer under test: class, options and where/how to run it."""

    cls: type
    check: str
    device: torch.device
    dtype: torch.dtype
    d_model: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return getattr(self.cls, "name", "") or self.cls.__name__

    @property
    def caps(self) -> frozenset:
        return frozenset(getattr(self.cls, "capabilities", ()))

    @property
    def tol(self) -> float:
        return TOLERANCES[self.dtype]

    def declares(self, check: str) -> bool:
        """True when the layer declares ``check`` as an expected failure."""
        return check in (getattr(self.cls, "expected_failures", None) or {})

    # ---------------------------------------------------------------------------- building
    def build(self, *, dtype: torch.dtype | None = None, seed: int = 0, **overrides) -> Layer:
        """A fresh layer (eval mode) with seeded init, cast to ``dtype`` on the device."""
        kw = {**self.kwargs, **overrides}
        # fork the CPU RNG so building never disturbs the caller's random stream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layer = self.cls(d_model=self.d_model, **kw)
        return to_dtype(layer, dtype or self.dtype, self.device).eval()

    def randn(self, *shape: int, seed: int = 1, dtype: torch.dtype | None = None) -> torch.Tensor:
        # drawn in float64 then cast, so float32 and float64 runs see the same values
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        return x.to(device=self.device, dtype=dtype or self.dtype)

    def rand(self, *shape: int, seed: int = 1, low: float = 0.0, high: float = 1.0,
             dtype: torch.dtype | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        x = low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)
        return x.to(device=self.device, dtype=dtype or self.dtype)

    # ---------------------------------------------------------------------------- failing
    def fail(self, message: str) -> AssertionError:
        return AssertionError(f"[{self.check}] layer {self.name!r}: {message}")

    def assert_close(self, actual: Any, expected: Any, what: str, tol: float | None = None
                     ) -> float:
        """Raise unless ``actual`` matches ``expected`` within ``tol`` (relative to max |ref|).

        Returns the relative error so checks can report their margin.
        """
        tol = self.tol if tol is None else tol
        if not isinstance(actual, torch.Tensor):
            raise self.fail(f"{what}: expected a Tensor, got {type(actual).__name__}")
        if tuple(actual.shape) != tuple(expected.shape):
            raise self.fail(f"{what}: shape {tuple(actual.shape)} != expected "
                            f"{tuple(expected.shape)}")
        if actual.numel() == 0:
            return 0.0
        a = actual.detach().to(torch.complex128 if actual.is_complex() or expected.is_complex()
                               else torch.float64).cpu()
        e = expected.detach().to(a.dtype).cpu()
        bad_a, bad_e = ~torch.isfinite(a), ~torch.isfinite(e)
        # non-finite values must sit at the same places and agree (NaN with NaN, inf with inf)
        same = (torch.isnan(a) & torch.isnan(e)) | (a == e)
        mismatch = (bad_a != bad_e) | (bad_a & bad_e & ~same)
        if bool(mismatch.any()):
            idx = tuple(int(i) for i in torch.nonzero(mismatch)[0])
            raise self.fail(f"{what}: non-finite values differ from the reference (first at "
                            f"{idx}: got {_scalar(a, idx)}, expected {_scalar(e, idx)})")
        fin = ~bad_e
        diff = torch.where(fin, (a - e).abs(), torch.zeros((), dtype=torch.float64))
        scale = float(torch.where(fin, e.abs(), torch.zeros((), dtype=torch.float64)).max())
        err = float(diff.max())
        # an all-zero reference (e.g. the gradient of an unused parameter) is compared absolutely
        rel = err / scale if scale > 0 else err
        if rel > tol:
            flat = int(diff.argmax())
            idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
            raise self.fail(f"{what}: max abs err {err:.3g} at {idx} (got {_scalar(a, idx)}, "
                            f"expected {_scalar(e, idx)}); rel err {rel:.3g} of max |ref| "
                            f"{scale:.3g} > tol {tol:g}")
        return rel

    def assert_states_close(self, actual: Any, expected: Mapping, what: str,
                            tol: float | None = None) -> float:
        """Compare two state dicts key by key."""
        if not isinstance(actual, Mapping):
            raise self.fail(f"{what}: expected a dict of tensors, got {type(actual).__name__}")
        if set(actual) != set(expected):
            raise self.fail(f"{what}: keys {sorted(actual)} != expected {sorted(expected)}")
        worst = 0.0
        for key in sorted(expected):
            worst = max(worst, self.assert_close(actual[key], expected[key],
                                                 f"{what}[{key!r}]", tol))
        return worst


def _scalar(t: torch.Tensor, idx: Any) -> str:
    try:
        v = t[idx].item()
    except Exception:  # noqa: BLE001 - only used for messages
        return "?"
    return f"{v:.6g}"


def clone_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def real_view(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


# ------------------------------------------------------------------------------ decorator

def make_subject(layer: Any, check: str, device: Any, dtype: torch.dtype,
                 build_kwargs: dict[str, Any]) -> Subject:
    cls = resolve_layer(layer)
    if dtype not in TOLERANCES:
        raise ValueError(f"conformance checks run in float32 or float64 (the dtypes with a "
                         f"defined tolerance), got {dtype}")
    test_kwargs = getattr(cls, "test_kwargs", None) or {}
    if not isinstance(test_kwargs, Mapping):
        raise TypeError(f"{cls.__name__}.test_kwargs must be a dict, got "
                        f"{type(test_kwargs).__name__}")
    kwargs = {**test_kwargs, **build_kwargs}
    d_model = kwargs.pop("d_model", DEFAULT_D_MODEL)
    return Subject(cls, check, torch.device(device), dtype, d_model, kwargs)


def conformance_check(name: str, *, requires: tuple[str, ...] = (),
                      applies: Callable[[type], str | None] | None = None):
    """Turn ``fn(subject) -> message`` into a public check
    ``check(layer_cls_or_name, *, device="cpu", dtype=torch.float32, **build_kwargs)``.

    ``requires``: capabilities the layer must list; ``applies(cls)`` returns a reason why the
    check does not apply (or None).  The public function raises :class:`CheckNotApplicable`
    when it does not apply, AssertionError on failure, and returns a one-line summary.
    """

    def not_applicable(cls: type) -> str | None:
        caps = frozenset(getattr(cls, "capabilities", ()))
        missing = [c for c in requires if c not in caps]
        if missing:
            return f"needs capability {', '.join(repr(m) for m in missing)}"
        return applies(cls) if applies is not None else None

    def deco(fn: Callable[[Subject], str | None]):
        @functools.wraps(fn)
        def check(layer: Any, *, device: Any = "cpu", dtype: torch.dtype = torch.float32,
                  **build_kwargs: Any) -> str:
            subject = make_subject(layer, name, device, dtype, build_kwargs)
            reason = not_applicable(subject.cls)
            if reason:
                raise CheckNotApplicable(f"[{name}] layer {subject.name!r}: {reason}")
            return fn(subject) or "ok"

        check.check_name = name
        check.not_applicable = not_applicable
        return check

    return deco
