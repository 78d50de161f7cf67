"""Scan-backend registration, auto selection, logged fallback reasons, explicit backends."""

from __future__ import annotations

import logging

import pytest
import torch
from lrnnx_kernels import diag_scan_chunked, diag_scan_ref
from lrnnx_plugins.backends import cpu_backend

import lrnnx
import lrnnx.ops as ops
from lrnnx.errors import BackendUnavailableError, InputError, UnknownComponentError
from lrnnx.registry.core import REGISTRY, Entry

LOG = "lrnnx.ops"


@pytest.fixture(autouse=True)
def fresh_dispatch():
    """Every test starts (and leaves) with no cached instances, decisions or logged reasons."""
    ops.clear_backend_cache()
    yield
    ops.clear_backend_cache()


@pytest.fixture
def broken_build(monkeypatch):
    """The C++ build fails (simulated) the first time a run asks for it."""
    calls = []

    def failing():
        calls.append(1)
        return False, "g++: internal compiler error (simulated)"

    monkeypatch.setattr(cpu_backend, "_BUILD", {})
    monkeypatch.setattr(cpu_backend, "cheap_check", lambda: (True, "compiled at first use"))
    monkeypatch.setattr(cpu_backend, "cpu_available", failing)
    return calls


def cpu_can_build() -> bool:
    try:
        cpu_backend.ensure_built()
        return True
    except BackendUnavailableError:
        return False


def records(caplog, backend=None):
    return [r for r in caplog.records
            if r.name == LOG and (backend is None or repr(backend) in r.getMessage())]


def ab(B=2, L=40, D=3):
    g = torch.Generator().manual_seed(0)
    return torch.rand(B, L, D, generator=g, dtype=torch.float64), \
        torch.randn(B, L, D, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------- registration
def test_builtin_backends_are_registered():
    assert {"torch", "torch_ref", "cpu"} <= set(lrnnx.list_scan_backends())
    for name, prio in [("cpu", 20), ("torch", 10), ("torch_ref", 0)]:
        entry = REGISTRY.entry("scan_backend", name)
        assert entry.plugin == "lrnnx_backends" and entry.builtin
        assert issubclass(entry.obj, lrnnx.ScanBackend)
        assert entry.obj.priority == prio
    assert REGISTRY.plugins["lrnnx_backends"].status == "loaded"


def test_torch_backends_always_available_and_support_everything():
    for name in ("torch", "torch_ref"):
        inst = lrnnx.get_scan_backend(name)()
        assert inst.available()[0]
        for op in ops.OPS:
            assert inst.supports(op, device="cuda", dtype=torch.bfloat16, complex=True)[0]


# --------------------------------------------------------------------------- auto selection
def test_auto_prefers_cpu_on_cpu_and_torch_elsewhere():
    expect = "cpu" if cpu_can_build() else "torch"
    assert ops.select_backend("diag_scan", device="cpu", dtype=torch.float32)[0] == expect
    name, reasons = ops.select_backend("diag_scan", device="cuda", dtype="float32")
    assert name == "torch"
    assert "runs on CPU tensors only" in reasons["cpu"] and "'cuda'" in reasons["cpu"]
    # torch_ref is never auto-picked while torch can run
    assert ops.select_backend("selective_scan", device="cuda")[0] == "torch"


def test_cpu_rejects_unsupported_dtype():
    name, reasons = ops.select_backend("diag_scan", device="cpu", dtype=torch.complex32)
    assert name == "torch"
    assert "the C++ kernel supports" in reasons["cpu"] and "complex32" in reasons["cpu"]


def test_rejection_reason_logged_once_per_backend_and_reason(caplog):
    caplog.set_level(logging.INFO, logger=LOG)
    for L in (10, 20, 30):  # three different problems (three decisions), one reason
        ops.select_backend("diag_scan", device="cuda", L=L)
    ops.select_backend("selective_scan", device="cuda")
    recs = records(caplog, "cpu")
    assert len(recs) == 1
    assert "runs on CPU tensors only, got device 'cuda'" in recs[0].getMessage()
    ops.select_backend("diag_scan", device="mps")  # a new reason is logged again
    assert len(records(caplog, "cpu")) == 2
    assert not records(caplog, "torch_ref")  # lower-ranked backends are not "rejected"


def test_cpu_available_is_cheap_until_first_run(monkeypatch):
    def must_not_build():
        raise AssertionError("available() must not compile the extension")

    monkeypatch.setattr(cpu_backend, "_BUILD", {})
    monkeypatch.setattr(cpu_backend, "cpu_available", must_not_build)
    inst = cpu_backend.CpuBackend()
    ok, why = inst.available()
    assert ok == cpu_backend.cheap_check()[0]
    if ok:
        assert "compiled at first use" in why
    # selection alone does not build either
    ops.select_backend("diag_scan", device="cpu")


def test_missing_compiler_is_reported_and_auto_uses_torch(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=LOG)
    monkeypatch.setattr(cpu_backend, "_BUILD", {})
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    ok, why = cpu_backend.CpuBackend().available()
    assert not ok and "'no-such-compiler-xyz' is not on PATH" in why
    a, b = ab()
    h, _ = ops.diag_scan(a, b)
    torch.testing.assert_close(h, diag_scan_chunked(a, b)[0], rtol=0, atol=0)
    assert any("no-such-compiler-xyz" in r.getMessage() for r in records(caplog, "cpu"))


def test_failed_build_falls_back_to_torch_and_is_logged_once(broken_build, caplog):
    caplog.set_level(logging.INFO, logger=LOG)
    assert ops.select_backend("diag_scan", device="cpu", dtype=torch.float64)[0] == "cpu"
    a, b = ab()
    for _ in range(3):
        h, last = ops.diag_scan(a, b)
        rh, rl = diag_scan_ref(a, b)
        torch.testing.assert_close(h, rh, rtol=1e-12, atol=0)
    assert len(broken_build) == 1  # the build was attempted exactly once
    warn = [r for r in records(caplog, "cpu") if r.levelno == logging.WARNING]
    assert len(warn) == 1
    assert "failed at first use" in warn[0].getMessage()
    assert "internal compiler error (simulated)" in warn[0].getMessage()
    # from now on the backend reports the build failure as its reason
    ok, why = cpu_backend.CpuBackend().available()
    assert not ok and "failed to build" in why and "simulated" in why
    name, reasons = ops.select_backend("diag_scan", device="cpu", dtype=torch.float32)
    assert name == "torch" and "simulated" in reasons["cpu"]
    # selective_scan needs the kernel too and falls back as well
    u = torch.randn(1, 8, 2)
    y = ops.selective_scan(u, torch.rand(1, 8, 2), -torch.rand(2, 3), torch.randn(1, 8, 3),
                           torch.randn(1, 8, 3))
    assert y.shape == (1, 8, 2)


def test_explicit_backend_that_fails_to_build_raises(broken_build):
    with pytest.raises(BackendUnavailableError) as info:
        ops.diag_scan(*ab(), backend="cpu")
    msg = str(info.value)
    assert "scan backend 'cpu'" in msg and "simulated" in msg and "backend='auto'" in msg


def test_explicit_unavailable_backend_raises():
    a, b = (t.to("meta") for t in ab())
    with pytest.raises(BackendUnavailableError) as info:
        ops.diag_scan(a, b, backend="cpu")
    msg = str(info.value)
    assert "lrnnx.ops.diag_scan: scan backend 'cpu' cannot run this problem" in msg
    assert "runs on CPU tensors only, got device 'meta'" in msg
    assert "backend='auto' (picks 'torch' here)" in msg


def test_unknown_backend_name():
    with pytest.raises(UnknownComponentError) as info:
        ops.diag_scan(*ab(), backend="toch")
    msg = str(info.value)
    assert "unknown scan_backend 'toch'" in msg and "backend= of lrnnx.ops.diag_scan" in msg
    assert "did you mean: torch" in msg


def test_explicit_backends_give_the_same_result():
    a, b = ab(L=300)
    ref = diag_scan_ref(a, b, reverse=True)[0]
    for name in ("torch", "torch_ref") + (("cpu",) if cpu_can_build() else ()):
        h, _ = ops.diag_scan(a, b, reverse=True, backend=name)
        torch.testing.assert_close(h, ref, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- third-party backends
class Spy(lrnnx.ScanBackend):
    """Top-priority backend for reverse diag scans only; counts constructions and calls."""

    name = "spy"
    priority = 100
    built = 0
    calls = 0

    def __init__(self):
        type(self).built += 1

    def supports(self, op, **problem):
        if op != "diag_scan" or not problem["reverse"]:
            return False, "reverse diag_scan only"
        return True, "spy"

    def diag_scan(self, a, b, h0=None, reverse=False, cu_seqlens=None):
        type(self).calls += 1
        return diag_scan_ref(a, b, h0, reverse, cu_seqlens)


def test_runtime_backend_selected_and_instantiated_once(register):
    Spy.built = Spy.calls = 0
    register("scan_backend", Spy)
    a, b = ab()
    for _ in range(3):
        ops.diag_scan(a, b, reverse=True)
    ops.diag_scan(a, b)  # forward: the spy says no
    assert Spy.calls == 3 and Spy.built == 1
    name, reasons = ops.select_backend("diag_scan", reverse=False)
    assert name != "spy"
    assert reasons["spy"] == "does not support this problem: reverse diag_scan only"


def test_ranking_follows_registry_changes_without_clearing_caches():
    # the dispatcher caches its ranking per registry generation: a backend registered or
    # removed at run time takes part in (or leaves) the very next decision
    from lrnnx.registry.core import REGISTRY

    a, b = ab()
    before = ops.select_backend("diag_scan", reverse=True)[0]
    gen = REGISTRY.generation
    REGISTRY.register("scan_backend", Spy)
    try:
        assert REGISTRY.generation > gen
        assert ops.select_backend("diag_scan", reverse=True)[0] == "spy"
        Spy.calls = 0
        ops.diag_scan(a, b, reverse=True)
        assert Spy.calls == 1
    finally:
        REGISTRY.unregister("scan_backend", "spy")
    assert ops.select_backend("diag_scan", reverse=True)[0] == before != "spy"
    Spy.calls = 0
    ops.diag_scan(a, b, reverse=True)
    assert Spy.calls == 0


class Broken(lrnnx.ScanBackend):
    name = "broken"
    priority = 99

    def available(self):
        raise RuntimeError("driver exploded")

    def diag_scan(self, *a, **k):
        raise AssertionError("never called")


class NoOps(lrnnx.ScanBackend):
    name = "noops"
    priority = 98


class LateFail(lrnnx.ScanBackend):
    name = "latefail"
    priority = 97

    def diag_scan(self, *a, **k):
        raise BackendUnavailableError("device lost before launch")


def test_misbehaving_backends_are_skipped_with_reasons(register, caplog):
    caplog.set_level(logging.INFO, logger=LOG)
    for cls in (Broken, NoOps, LateFail):
        register("scan_backend", cls)
    a, b = ab()
    h, _ = ops.diag_scan(a, b)
    torch.testing.assert_close(h, diag_scan_ref(a, b)[0], rtol=1e-12, atol=1e-12)
    msgs = " | ".join(r.getMessage() for r in records(caplog))
    assert "available() raised RuntimeError: driver exploded" in msgs
    assert "'noops' not used: does not implement diag_scan()" in msgs
    assert "failed at first use: device lost before launch" in msgs
    with pytest.raises(BackendUnavailableError, match="device lost before launch"):
        ops.diag_scan(a, b, backend="latefail")
    with pytest.raises(BackendUnavailableError, match="does not implement diag_scan"):
        ops.diag_scan(a, b, backend="noops")


def test_no_backend_can_run(monkeypatch):
    class Nope(lrnnx.ScanBackend):
        name = "nope"

        def supports(self, op, **problem):
            return False, "never"

        def diag_scan(self, *a, **k):
            raise AssertionError

    only = [Entry("scan_backend", "nope", Nope, "t", "t", "0", False)]
    monkeypatch.setattr(REGISTRY, "entries", lambda kind=None: only)
    # the dispatcher caches its ranking per registry generation (bumped by register /
    # unregister / reload); replacing `entries` behind the registry's back must bump it too
    monkeypatch.setattr(REGISTRY, "generation", REGISTRY.generation + 1000)
    with pytest.raises(BackendUnavailableError) as info:
        ops.diag_scan(*ab())
    assert "no scan backend can run this problem" in str(info.value)
    assert "nope: does not support this problem: never" in str(info.value)
    assert "no backend can run diag_scan" in ops.explain("diag_scan")


# --------------------------------------------------------------------------- explain / queries
def test_explain_lists_backends_and_the_choice():
    text = ops.explain()
    for name in ("cpu", "torch", "torch_ref"):
        assert name in text
    assert "priority  20" in text and "lrnnx@" in text
    text = ops.explain("diag_scan", device="cuda", dtype="bfloat16")
    assert "scan backends for diag_scan (device=cuda, dtype=bfloat16" in text
    line = {ln.split()[1] if ln.startswith("*") else ln.split()[0]: ln
            for ln in text.splitlines()[1:]}
    assert line["torch"].startswith("* torch") and "selected" in line["torch"]
    assert "cannot run" in line["cpu"] and "CPU tensors only" in line["cpu"]
    assert "can run" in line["torch_ref"]
    rows = ops.backend_table("selective_scan", device="cpu")
    names = [r["name"] for r in rows]
    assert names[:2] == ["cuda", "triton"]  # highest priorities, listed first ...
    assert not rows[0]["selected"] and not rows[1]["selected"]  # ... but they need CUDA tensors
    assert [n for n in names if n in {"cpu", "torch", "torch_ref"}] == ["cpu", "torch", "torch_ref"]
    assert sum(r["selected"] for r in rows) == 1
    if cpu_can_build():
        cpu_row = next(r for r in rows if r["name"] == "cpu")
        assert "C++ diag scan running each chunk" in cpu_row["reason"]


def test_problem_normalization_errors():
    with pytest.raises(InputError, match="did you mean 'diag_scan'"):
        ops.select_backend("diag_scn")
    with pytest.raises(lrnnx.InputTypeError, match="dtype must be a torch.dtype"):
        ops.select_backend("diag_scan", dtype="float33")
    assert ops.select_backend("diag_scan", device=torch.device("cuda", 1))[0] == "torch"
