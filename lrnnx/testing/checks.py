"""The lrnnx conformance suite: the ordered table of checks, a runner and a pytest helper.

Every check is a plain function ``check_<property>(layer, *, device="cpu",
dtype=torch.float32, **build_kwargs)`` that builds the layer (a registry name or a
``lrnnx.Layer`` subclass) with ``{**cls.test_kwargs, **build_kwargs}`` (``d_model`` defaults to
8), returns a one-line summary, and raises ``AssertionError`` naming the check, the layer, what
differs, where and by how much.  Tolerances: rel. 1e-5 (float32) / 1e-10 (float64) of the
largest magnitude of the reference.

Checks, in order (the names are the keys of ``CHECKS`` and of ``expected_failures``)::

    declarations           class attributes well formed                      always
    forward_shapes         (B, L, d) -> (B, L, d), dtype, return_state           always
    causality              y[:, :t] independent of x[:, t:]                   always
    step_matches_forward   token-by-token step == forward (+ final state)     "step"
    split_state            chunks with carried state == one forward, grads    "step"
    varlen                 packed cu_seqlens == per-sequence forward          "varlen"
    timesteps_ones         timesteps = 1 == no timesteps                      "timesteps"
    backend_parity         every scan backend vs float64 scan="torch"         `scan` option
    gradcheck              float64 finite differences (x, state, params)      always
    bad_inputs             documented InputError / InputTypeError             always
    empty_and_single       L = 0 and L = 1                                    always
    spec_round_trip        build_layer(format_spec(...)) + state_dict         registered
    state_dict_round_trip  torch.save / load into a fresh instance            always

Layers that cannot meet a check by design list it in ``expected_failures = {check: reason}``
(e.g. ``{"causality": "bidirectional"}``); those checks must fail (strict xfail): a declared
check that passes is reported as "unexpectedly passed".  A layer whose smallest valid options
differ from the defaults declares ``test_kwargs = {"d_model": 16, "d_state": 4}``; they are
merged under the ``build_kwargs`` given to a check.

Example (a plugin's test file)::

    from lrnnx.testing import check_layer, parametrize_with_checks

    @parametrize_with_checks(["my_layer"])
    def test_my_layer(layer, check):
        check(layer)

    def test_all_at_once():
        report = check_layer("my_layer", dtype=torch.float64)
"""

from __future__ import annotations

import traceback
from typing import Any, Callable, NamedTuple

import torch

from ._common import TOLERANCES, CheckNotApplicable, layer_label, resolve_layer
from .checks_api import (
    check_bad_inputs,
    check_empty_and_single,
    check_spec_round_trip,
    check_state_dict_round_trip,
)
from .checks_core import (
    check_causality,
    check_declarations,
    check_forward_shapes,
    check_split_state,
    check_step_matches_forward,
    check_timesteps_ones,
    check_varlen,
)
from .checks_numeric import check_backend_parity, check_gradcheck

__all__ = [
    "CHECKS", "TOLERANCES", "CheckNotApplicable", "CheckResult", "ConformanceError", "Report",
    "applicable_checks", "check_layer", "parametrize_with_checks",
    *[f.__name__ for f in (
        check_declarations, check_forward_shapes, check_causality, check_step_matches_forward,
        check_split_state, check_varlen, check_timesteps_ones, check_backend_parity,
        check_gradcheck, check_bad_inputs, check_empty_and_single, check_spec_round_trip,
        check_state_dict_round_trip)],
]

#: check name -> check function, in the order they run (cheap structural checks first).
CHECKS: dict[str, Callable[..., str]] = {
    f.check_name: f for f in (
        check_declarations,
        check_forward_shapes,
        check_causality,
        check_step_matches_forward,
        check_split_state,
        check_varlen,
        check_timesteps_ones,
        check_backend_parity,
        check_gradcheck,
        check_bad_inputs,
        check_empty_and_single,
        check_spec_round_trip,
        check_state_dict_round_trip,
    )
}

#: statuses that make :func:`check_layer` fail
FAILING = ("failed", "error", "xpassed")


class CheckResult(NamedTuple):
    check: str
    status: str  # passed | failed | error | xfailed | xpassed | skipped
    message: str


class Report(list):
    """Outcome of :func:`check_layer`: a list of :class:`CheckResult` ``(check, status,
    message)`` with the layer's name as ``.layer``."""

    def __init__(self, layer: str, results: list[CheckResult]):
        super().__init__(results)
        self.layer = layer

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self if r.status in FAILING]

    @property
    def ok(self) -> bool:
        return not self.failures

    def status_of(self, check: str) -> str:
        for r in self:
            if r.check == check:
                return r.status
        raise KeyError(check)

    def __str__(self) -> str:
        width = max((len(r.check) for r in self), default=0)
        lines = [f"conformance of layer {self.layer!r}:"]
        for r in self:
            first = r.message.splitlines()[0] if r.message else ""
            lines.append(f"  {r.check:<{width}}  {r.status:<8} {first}")
        return "\n".join(lines)


class ConformanceError(AssertionError):
    """Raised by :func:`check_layer` when a check fails; ``.report`` holds every result."""

    def __init__(self, report: Report):
        self.report = report
        fails = report.failures
        lines = [f"layer {report.layer!r}: {len(fails)} of {len(report)} conformance checks "
                 f"failed:"]
        for r in fails:
            body = r.message.replace("\n", "\n      ")
            lines.append(f"  - {r.check} ({r.status}): {body}")
        super().__init__("\n".join(lines))


def applicable_checks(layer: Any) -> dict[str, str | None]:
    """``{check: None if it applies else the reason it does not}`` for a layer."""
    cls = resolve_layer(layer)
    return {name: fn.not_applicable(cls) for name, fn in CHECKS.items()}


def _expected_failures(cls: type) -> dict:
    xf = getattr(cls, "expected_failures", None) or {}
    return xf if isinstance(xf, dict) else {}


def check_layer(name_or_cls: Any, device: Any = "cpu", dtype: torch.dtype = torch.float32,
                checks: list[str] | None = None, **build_kwargs: Any) -> Report:
    """Run every applicable check (or those named in ``checks``, in suite order) on a layer.

    Honours ``expected_failures`` as strict xfail.  Returns a :class:`Report` when everything
    passed; otherwise raises :class:`ConformanceError` (an AssertionError) summarizing the
    failures, with the full report as ``.report``.
    """
    cls = resolve_layer(name_or_cls)
    if isinstance(checks, str):
        checks = [checks]
    unknown = [c for c in checks or () if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown conformance check(s) {unknown}; known: {', '.join(CHECKS)}")
    # always in the suite's order (cheap structural checks first), each once
    selected = [c for c in CHECKS if checks is None or c in checks]
    xf = _expected_failures(cls)
    results: list[CheckResult] = []
    for name in selected:
        fn = CHECKS[name]
        reason = fn.not_applicable(cls)
        if reason:
            results.append(CheckResult(name, "skipped", f"not applicable: {reason}"))
            continue
        expected = xf.get(name)
        try:
            msg = fn(cls, device=device, dtype=dtype, **build_kwargs)
        except CheckNotApplicable as exc:
            results.append(CheckResult(name, "skipped", f"not applicable: {exc}"))
        except AssertionError as exc:
            if expected:
                results.append(CheckResult(name, "xfailed", f"expected failure ({expected}): "
                                                            f"{exc}"))
            else:
                results.append(CheckResult(name, "failed", str(exc)))
        except Exception as exc:  # noqa: BLE001 - a crash is a failure of the layer
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
            results.append(CheckResult(name, "error", f"{type(exc).__name__}: {exc}\n{tb}"))
        else:
            if expected:
                results.append(CheckResult(
                    name, "xpassed", f"unexpectedly passed: the layer declares "
                    f"expected_failures[{name!r}] ({expected}) but the check passed; remove the "
                    f"declaration"))
            else:
                results.append(CheckResult(name, "passed", msg))
    report = Report(layer_label(cls), results)
    if report.failures:
        raise ConformanceError(report)
    return report


class BoundCheck:
    """A check with its device/dtype fixed: ``check(layer, **build_kwargs)``."""

    def __init__(self, fn: Callable[..., str], dtype: torch.dtype, device: Any):
        self.fn, self.dtype, self.device = fn, dtype, device
        self.check_name = fn.check_name

    def __call__(self, layer: Any, **build_kwargs: Any) -> str:
        return self.fn(layer, device=self.device, dtype=self.dtype, **build_kwargs)

    def __repr__(self) -> str:
        return f"<check {self.check_name} {str(self.dtype).replace('torch.', '')}>"


def parametrize_with_checks(layers: list[Any], dtype: torch.dtype = torch.float32,
                            device: Any = "cpu", checks: list[str] | None = None):
    """``pytest.mark.parametrize("layer, check", ...)`` over every (layer, applicable check).

    Declared expected failures become ``xfail(strict=True, raises=AssertionError)`` params.
    The test calls ``check(layer)``; ids read ``<layer>-<check>``.  ``checks`` restricts the
    suite to the named checks.
    """
    import pytest

    unknown = [c for c in checks or () if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown conformance check(s) {unknown}; known: {', '.join(CHECKS)}")
    params = []
    for layer in layers:
        cls = resolve_layer(layer)
        label = layer_label(layer)
        xf = _expected_failures(cls)
        for name, fn in CHECKS.items():
            if (checks is not None and name not in checks) or fn.not_applicable(cls):
                continue
            marks = ()
            if name in xf:
                marks = pytest.mark.xfail(strict=True, raises=AssertionError,
                                          reason=f"declared expected failure: {xf[name]}")
            params.append(pytest.param(layer, BoundCheck(fn, dtype, device), marks=marks,
                                       id=f"{label}-{name}"))
    return pytest.mark.parametrize("layer, check", params)
