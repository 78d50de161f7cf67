"""lrnnx.testing: the conformance suite every Layer (built-in or plugin) should pass.

Run it from Python::

    from lrnnx.testing import check_layer, check_causality
    check_layer("my_layer")                 # all applicable checks, strict expected failures
    check_causality("my_layer", dtype=torch.float64)

from pytest (one test per layer x check)::

    from lrnnx.testing import parametrize_with_checks

    @parametrize_with_checks(["my_layer"])
    def test_conformance(layer, check):
        check(layer)

or on the command line: ``pytest --lrnnx-layer my_layer`` (pytest plugin) or
``lrnnx check my_layer``.  See :mod:`lrnnx.testing.checks` for the list of checks.

Importing this package is cheap (no torch); the checks load on first use.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "CHECKS": "checks", "TOLERANCES": "checks", "CheckNotApplicable": "checks",
    "CheckResult": "checks", "ConformanceError": "checks", "Report": "checks",
    "applicable_checks": "checks", "check_layer": "checks", "parametrize_with_checks": "checks",
    "check_declarations": "checks", "check_forward_shapes": "checks",
    "check_causality": "checks", "check_step_matches_forward": "checks",
    "check_split_state": "checks", "check_varlen": "checks", "check_timesteps_ones": "checks",
    "check_backend_parity": "checks", "check_gradcheck": "checks", "check_bad_inputs": "checks",
    "check_empty_and_single": "checks", "check_spec_round_trip": "checks",
    "check_state_dict_round_trip": "checks",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'lrnnx.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
