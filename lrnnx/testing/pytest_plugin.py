"""pytest plugin of lrnnx (entry point ``pytest11: lrnnx``): run the conformance suite on layers.

    pytest --lrnnx-layer my_layer [--lrnnx-layer other] [--lrnnx-dtype float64]

adds one test per (layer, applicable check), named ``lrnnx::<layer>-<check>`` (``-k`` and
``-m`` select among them as usual); checks a layer declares in ``expected_failures`` run as
strict xfail.  Tests of your own can take the ``lrnnx_layer`` fixture: they are parametrized
over the ``--lrnnx-layer`` names (and skipped when none is given)::

    def test_my_property(lrnnx_layer):
        layer = lrnnx.build_layer(lrnnx_layer, d_model=16)
        ...

This module is imported at every pytest start once lrnnx is installed, so it imports neither
torch nor the checks at import time: only when ``--lrnnx-layer`` is used.
"""

from __future__ import annotations

import pytest

SUITE_NAME = "lrnnx"


def pytest_addoption(parser):
    group = parser.getgroup("lrnnx", "lrnnx layer conformance suite")
    group.addoption("--lrnnx-layer", action="append", default=[], metavar="NAME",
                    dest="lrnnx_layer",
                    help="run the lrnnx conformance checks on the registered layer NAME "
                         "(repeatable); also parametrizes the lrnnx_layer fixture")
    group.addoption("--lrnnx-dtype", default="float32", choices=("float32", "float64"),
                    dest="lrnnx_dtype", help="dtype of the conformance checks (default float32)")
    group.addoption("--lrnnx-device", default="cpu", metavar="DEVICE", dest="lrnnx_device",
                    help="device of the conformance checks (default cpu)")


def _layer_names(config) -> list[str]:
    names: list[str] = []
    for n in config.getoption("lrnnx_layer") or []:
        if n not in names:
            names.append(n)
    return names


@pytest.fixture
def lrnnx_layer(request):
    """A layer name given with ``--lrnnx-layer`` (the test is parametrized over all of them)."""
    if not hasattr(request, "param"):
        pytest.skip("no layer to test: pass --lrnnx-layer NAME")
    return request.param


def pytest_generate_tests(metafunc):
    if "lrnnx_layer" in metafunc.fixturenames:
        names = _layer_names(metafunc.config)
        if names:
            metafunc.parametrize("lrnnx_layer", names, indirect=True, ids=names)


class ConformanceItem(pytest.Item):
    """One conformance check on one layer."""

    def __init__(self, *, layer: str, check: str, dtype: str, device: str, **kw):
        super().__init__(**kw)
        self.layer, self.check, self.dtype, self.device = layer, check, dtype, device

    def runtest(self) -> None:
        import torch

        from .checks import CHECKS

        CHECKS[self.check](self.layer, device=self.device, dtype=getattr(torch, self.dtype))

    def repr_failure(self, excinfo, style=None):
        # the check's message already says what, where and by how much
        if isinstance(excinfo.value, AssertionError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"lrnnx conformance {self.layer}-{self.check}"


class ConformanceSuite(pytest.Collector):
    """Collects a :class:`ConformanceItem` per (layer, applicable check)."""

    def __init__(self, *, layers: list[str], dtype: str, device: str, **kw):
        super().__init__(**kw)
        self.layers, self.dtype, self.device = layers, dtype, device

    def collect(self):
        from .checks import CHECKS
        from ._common import resolve_layer

        items = []
        for name in self.layers:
            cls = resolve_layer(name)
            xf = getattr(cls, "expected_failures", None) or {}
            for check, fn in CHECKS.items():
                if fn.not_applicable(cls):
                    continue
                item = ConformanceItem.from_parent(self, name=f"{name}-{check}", layer=name,
                                                   check=check, dtype=self.dtype,
                                                   device=self.device)
                if isinstance(xf, dict) and check in xf:
                    item.add_marker(pytest.mark.xfail(
                        strict=True, raises=AssertionError,
                        reason=f"declared expected failure: {xf[check]}"))
                items.append(item)
        return items


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselection, so those select our items too
def pytest_collection_modifyitems(session, config, items):
    names = _layer_names(config)
    if not names:
        return
    from lrnnx.errors import LrnnxError

    from ._common import resolve_layer

    for name in names:  # a typo is a usage error with suggestions, not a collection error
        try:
            resolve_layer(name)
        except LrnnxError as exc:
            raise pytest.UsageError(f"--lrnnx-layer {name}: {exc}") from None
    suite = ConformanceSuite.from_parent(session, name=SUITE_NAME, nodeid=SUITE_NAME,
                                         layers=names, dtype=config.getoption("lrnnx_dtype"),
                                         device=config.getoption("lrnnx_device"))
    # through the collect-report hooks, so the terminal counts and reports these items
    report = suite.ihook.pytest_make_collect_report(collector=suite)
    suite.ihook.pytest_collectreport(report=report)
    if report.failed:
        raise pytest.UsageError(f"lrnnx conformance suite could not be collected:\n"
                                f"{report.longreprtext}")
    items.extend(report.result)
