"""lrnnx.bench internals on CPU: the GPU benchmark's workload table and byte models, timing,
peer import guards, and the peer adapters.  Peers (accelerated_scan, fla, mamba_ssm) are absent
here: the real absence is checked ("not installed"), and small pure-PyTorch stand-ins with the
peers' documented APIs and layouts check the adapters' layout conversions through the agreement
check.  The script and the ``lrnnx bench`` command: tests/test_bench.py."""
from __future__ import annotations

import importlib.util
import sys
import time
import types

import pytest
import torch

from lrnnx.bench import peers, timing, workloads
from lrnnx.bench import impls as impls_mod
from lrnnx.bench import suite as suite_mod
from lrnnx.bench.workloads import Workload, ideal_bytes, select, suite, tiny


@pytest.fixture(autouse=True)
def _cpu_env(monkeypatch):
    # the triton backend is unavailable on CPU without the interpreter: its rows say "n/a" (fast)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    peers.clear_cache()
    yield
    peers.clear_cache()


# ------------------------------------------------------------------ workloads, byte models

def by_name(prefix):
    return [w for w in suite() if w.name.startswith(prefix)]


def test_suite_matches_the_issue_table():
    names = [w.name for w in suite()]
    assert len(names) == len(set(names))
    assert "diag_scan float32 B16 L4096 D1024" in names
    assert "diag_scan bfloat16 B16 L4096 D1024" in names
    assert "diag_scan complex64 B16 L4096 D512" in names
    assert "selective_scan float32 B8 L2048 D1536 N16" in names
    assert "selective_scan bfloat16 B8 L2048 D1536 N16" in names
    for w in by_name("diag_scan"):
        ref = "accelerated_scan.complex" if w.dtype == "complex64" else "accelerated_scan.scalar"
        assert w.reference == ref
        assert (w.target_fwd, w.target_fwd_bwd) == ((0.6, 0.6) if w.dtype == "complex64"
                                                    else (1.05, 0.75))
    for w in by_name("selective_scan"):
        assert w.reference == "mamba_ssm.selective_scan_fn"
        assert (w.target_fwd, w.target_fwd_bwd) == (1.0, 0.8)
    layers = by_name("layer")
    assert {w.spec for w in layers} == {"lru(d_state=256)", "s5(d_state=256)", "s4d",
                                        "mamba(d_state=16)", "rglru", "s7(d_state=256)"}
    assert {w.dim["L"] for w in layers} == {1024, 4096}
    assert all(w.dim["B"] == 32 and w.dim["d_model"] == 256 for w in layers)
    assert all(w.reference == "published lrnnx" and w.target_fwd_bwd == 0.67 and
               not w.measure_fwd for w in layers)
    kinds = [w.kind for w in suite()]
    assert kinds == sorted(kinds, key=["diag", "selective", "layer"].index)  # layers last


def test_byte_models():
    d32, dbf, dc = by_name("diag_scan float32")[0], by_name("diag_scan bfloat16")[0], \
        by_name("diag_scan complex64")[0]
    n = 16 * 4096 * 1024
    assert ideal_bytes(d32) == (3 * n * 4, 8 * n * 4)
    assert ideal_bytes(dbf) == (3 * n * 2, 8 * n * 2)
    nc = 16 * 4096 * 512
    assert ideal_bytes(dc) == (3 * nc * 8, 8 * nc * 8)
    sel = by_name("selective_scan float32")[0]
    bld, bln, p = 8 * 2048 * 1536, 8 * 2048 * 16, (1536 * 16 + 2 * 1536) * 4
    fwd = (4 * bld + 2 * bln) * 4 + p
    assert ideal_bytes(sel) == (fwd, fwd + (7 * bld + 4 * bln) * 4 + 2 * p)
    selbf = by_name("selective_scan bfloat16")[0]
    assert ideal_bytes(selbf)[0] == (4 * bld + 2 * bln) * 2 + p
    assert ideal_bytes(by_name("layer")[0]) == (None, None)
    assert workloads.BYTE_MODEL and all(isinstance(s, str) for s in workloads.BYTE_MODEL)


def test_select_and_tiny():
    assert [w.name for w in select(suite(), "complex")] == ["diag_scan complex64 B16 L4096 D512"]
    assert len(select(suite(), "DIAG_SCAN")) == 3
    assert len(select(suite(), "layer mamba*")) == 2
    assert select(suite(), None) == suite()
    assert select(suite(), "nothing-matches") == []
    both = select(suite(), "complex, selective_scan bfloat16")
    assert [w.name for w in both] == ["diag_scan complex64 B16 L4096 D512",
                                      "selective_scan bfloat16 B8 L2048 D1536 N16"]
    for w in suite():
        t = tiny(w)
        assert (t.kind, t.dtype, t.reference, t.target_fwd, t.target_fwd_bwd, t.layer) == \
            (w.kind, w.dtype, w.reference, w.target_fwd, w.target_fwd_bwd, w.layer)
        assert set(t.dim) == set(w.dim) and all(t.dim[k] <= w.dim[k] for k in w.dim)
        assert all(v <= 8 for k, v in t.options if k == "d_state")
    assert len({tiny(w).name for w in suite()}) == len(suite())


@pytest.mark.parametrize("w", [tiny(w) for w in suite()[:5]] +
                         [tiny(by_name("layer s7")[0])], ids=lambda w: w.name)
def test_make_inputs_shapes_and_dtypes(w):
    x = workloads.make_inputs(w, torch.device("cpu"))
    d = w.dim
    if w.kind == "diag":
        assert x["a"].shape == x["b"].shape == x["grad_h"].shape == (d["B"], d["L"], d["D"])
        assert all(t.dtype == w.torch_dtype for t in x.values())
        mag = x["a"].abs().float()
        assert mag.min() >= 0.5 - 1e-2 and mag.max() <= 1.0
    elif w.kind == "selective":
        assert x["u"].shape == (d["B"], d["L"], d["D"]) and x["B"].shape == (d["B"], d["L"],
                                                                            d["N"])
        assert x["A"].dtype == torch.float32 and (x["A"] < 0).all()
        dt = torch.nn.functional.softplus(x["delta_bias"])
        assert dt.min() >= 1e-3 * 0.99 and dt.max() <= 0.1 * 1.01
    else:
        assert x["x"].shape == (d["B"], d["L"], d["d_model"])


# ----------------------------------------------------------------------------------- timing

def test_n_copies():
    assert timing.n_copies(10, 0) == 1
    assert timing.n_copies(10 * 2**20, 60 * 2**20) == 12
    assert timing.n_copies(2**30, 60 * 2**20) == 1
    assert timing.n_copies(1, 60 * 2**20) == 64
    assert timing.l2_bytes("cpu") == 0


def test_measure_rotates_copies_and_counts_calls():
    seen = []
    m = timing.measure(lambda c: seen.append(c), ["a", "b", "c"], "cpu", warmup=2, repeats=5,
                       warmup_ms=0)
    assert m.status == "ok" and m.repeats == 5 and len(m.times_ms) == 5
    assert seen == ["a", "b", "a", "b", "c", "a", "b"]  # 2 warm-up calls, then 5 timed
    assert m.ms == sorted(m.times_ms)[2] and m.min_ms == min(m.times_ms)
    with pytest.raises(ValueError):
        timing.measure(lambda c: None, [], "cpu")


@pytest.mark.parametrize("walls,calls,status", [
    ([50.0, 0.5, 0.5], 3, "ok"),  # a slow first call (compilation), then fast: measured
    ([30.0, 30.0], 2, "skipped"),  # slow twice: not repeated
    ([100.0], 1, "skipped"),  # far over the limit: no second call
])
def test_measure_limit(monkeypatch, walls, calls, status):
    seen = []

    def fake_wall(fn, arg, dev):
        seen.append(arg)
        return walls[len(seen) - 1]

    monkeypatch.setattr(timing, "_wall", fake_wall)
    m = timing.measure(lambda c: None, [0], "cpu", warmup=2, repeats=3, limit_s=20.0)
    assert len(seen) == calls and m.status == status
    if status == "skipped":
        assert m.ms is None and f"took {walls[-1]:.1f} s (> 20 s limit)" in m.note
    else:
        assert m.repeats == 3 and m.ms is not None


def test_measure_warms_up_for_warmup_ms():
    # after the warm-up calls, untimed calls until ~warmup_ms have passed, at most warmup_ms /
    # (one call) of them and a tenth of the budget's worth
    calls = []

    def fn(_):
        calls.append(1)
        time.sleep(0.002)

    timing.measure(fn, [None], "cpu", warmup=1, repeats=3, warmup_ms=30.0)
    extra = len(calls) - 1 - 3  # the first (estimating) call and the timed ones
    assert 5 <= extra <= 15, extra
    calls.clear()
    timing.measure(fn, [None], "cpu", warmup=1, repeats=3, warmup_ms=30.0, budget_s=0.05)
    assert len(calls) - 1 - 3 <= 3  # 5 ms of the budget: two calls of >= 2 ms
    calls.clear()
    timing.measure(fn, [None], "cpu", warmup=1, repeats=3, warmup_ms=0)
    assert len(calls) == 4
    assert timing.WARMUP_MS == 25.0


def test_measure_caps_repeats_by_budget():
    m = timing.measure(lambda _: time.sleep(0.02), [None], "cpu", warmup=1, repeats=50,
                       limit_s=5, budget_s=0.1)
    assert m.status == "ok" and 1 <= m.repeats <= 5 and "capped" in m.note


def test_copy_bandwidth_cpu():
    cb = timing.copy_bandwidth("cpu", 2**20, repeats=2, warmup=1)
    assert cb["bytes"] == 2**20 and cb["ms"] > 0 and cb["GBps"] > 0


# ------------------------------------------------------------------------------------ peers

def test_absent_peers_are_not_installed():
    for peer, (module, _, _) in peers.PEERS.items():
        if importlib.util.find_spec(module) is None:
            assert peers.load(peer, module)[1] == "not installed"
            assert peers.status(peer) == "not installed"
    st = peers.all_status()
    assert st["published lrnnx"].startswith("not installed")


def test_peer_import_failures(monkeypatch):
    def absent(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name.split(".")[0])

    monkeypatch.setattr(peers, "_import", absent)
    assert peers.load("accelerated_scan", "accelerated_scan.scalar", "scan") == \
        (None, "not installed")
    peers.clear_cache()

    def broken(name):
        raise RuntimeError("CUDA driver too old")

    monkeypatch.setattr(peers, "_import", broken)
    obj, why = peers.load("fla", "fla.ops.hgrn", "chunk_hgrn")
    assert obj is None and why == "import failed: RuntimeError: CUDA driver too old"
    peers.clear_cache()

    def missing_dep(name):
        raise ModuleNotFoundError("No module named 'causal_conv1d'", name="causal_conv1d")

    monkeypatch.setattr(peers, "_import", missing_dep)
    assert peers.load("mamba_ssm", "mamba_ssm", "Mamba")[1].startswith("import failed")


def test_peer_device_rules(monkeypatch):
    assert peers.device_ok("mamba_ssm", "cuda") == (True, "")
    assert not peers.device_ok("mamba_ssm", "cpu")[0]
    assert not peers.device_ok("accelerated_scan", "cpu")[0]
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert peers.device_ok("accelerated_scan", "cpu")[0]
    assert not peers.device_ok("mamba_ssm", "cpu")[0]


# ------------------------------------------------------ fake peers: adapters and the report

def _ref_scan_bld(a, b):
    h, out = torch.zeros_like(b[:, 0]), []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, 1)


def _fake_accelerated_scan(gates, tokens):
    # accelerated_scan.{scalar,complex}.scan: (B, C, T) contiguous
    assert gates.is_contiguous() and tokens.is_contiguous() and gates.shape == tokens.shape
    return _ref_scan_bld(gates.transpose(1, 2), tokens.transpose(1, 2)).transpose(1, 2)


def _fake_hgrn(x, g, initial_state=None, output_final_state=False):
    # fla.ops.hgrn: (B, T, D), h_t = exp(g_t) h_{t-1} + x_t
    h = _ref_scan_bld(g.float().exp(), x.float()).to(x.dtype)
    return h, None


def _fake_selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                            delta_softplus=False, return_last_state=False):
    # mamba_ssm layout: u, delta, z (B, D, L); B, C (B, N, L); out (B, D, L)
    import lrnnx.ops as ops

    y = ops.selective_scan(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2),
                           C.transpose(1, 2), D, z.transpose(1, 2), delta_bias, delta_softplus,
                           backend="torch_ref")
    return y.transpose(1, 2)


class _FakeMamba(torch.nn.Module):
    def __init__(self, d_model, d_state=16, d_conv=4, expand=2):
        super().__init__()
        self.lin = torch.nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.lin(x)


@pytest.fixture
def fake_peers(monkeypatch):
    mods = {
        "accelerated_scan": {}, "accelerated_scan.scalar": {"scan": _fake_accelerated_scan},
        "accelerated_scan.complex": {"scan": _fake_accelerated_scan}, "fla": {}, "fla.ops": {},
        "fla.ops.hgrn": {"chunk_hgrn": _fake_hgrn, "fused_recurrent_hgrn": _fake_hgrn},
        "mamba_ssm": {"Mamba": _FakeMamba}, "mamba_ssm.ops": {},
        "mamba_ssm.ops.selective_scan_interface": {"selective_scan_fn": _fake_selective_scan_fn},
    }
    for name, attrs in mods.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    monkeypatch.setattr(peers, "device_ok", lambda peer, kind: (True, ""))
    monkeypatch.setattr(impls_mod, "LRNNX_BACKENDS", ("torch",))  # fast on CPU
    monkeypatch.setattr(suite_mod, "_auto_backend", lambda w, device: "torch")
    peers.clear_cache()


def _run(w, budget=60.0):
    opts = suite_mod.SuiteOptions(device="cpu", smoke=True, out=None)
    return suite_mod.run_workload(tiny(w), torch.device("cpu"), opts, copy_gbps=10.0,
                                  deadline=time.monotonic() + budget)


@pytest.mark.parametrize("name,tol", [("diag_scan float32", 1e-5), ("diag_scan complex64", 1e-5),
                                      ("diag_scan bfloat16", 5e-2),
                                      ("selective_scan float32", 1e-4)])
def test_peer_adapters_agree_with_lrnnx(fake_peers, name, tol):
    wd = _run(by_name(name)[0])
    rows = {r["impl"]: r for r in wd["rows"]}
    expected = {"diag_scan": ["lrnnx (torch)", "accelerated_scan.complex" if "complex" in name
                              else "accelerated_scan.scalar"],
                "selective_scan": ["lrnnx (torch)", "mamba_ssm.selective_scan_fn",
                                   "published lrnnx.selective_scan_fn"]}
    want = expected[name.split()[0]] + (["fla.chunk_hgrn", "fla.fused_recurrent_hgrn"]
                                        if name in ("diag_scan float32", "diag_scan bfloat16")
                                        else [])
    assert list(rows) == want
    assert rows.pop("published lrnnx.selective_scan_fn", {"status": "not installed"})["status"] \
        == "not installed"  # its rows: tests/test_bench_published.py
    for r in rows.values():
        assert r["status"] == "ok", r
        assert r["check_vs"] == "lrnnx (torch)" and r["check_rel_diff"] <= tol, r
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0
        assert r["pct_bw_fwd"] > 0 and r["pct_bw_fwd_bwd"] > 0
    ref = rows[wd["reference"]]
    assert ref["ratio_fwd"] == pytest.approx(1.0) and ref["ratio_fwd_bwd"] == pytest.approx(1.0)
    target = rows["lrnnx (torch)"]
    assert target["target_row"] and target["result"] in ("pass", "FAIL")
    assert [r["impl"] for r in wd["rows"] if r["target_row"]] == ["lrnnx (torch)"]


def test_layer_rows_and_mamba_peer(fake_peers):
    wd = _run(by_name("layer mamba")[0])
    rows = {r["impl"]: r for r in wd["rows"]}
    assert list(rows) == ["lrnnx (torch)", "mamba_ssm.Mamba", "published lrnnx"]
    assert rows["lrnnx (torch)"]["status"] == "ok" and rows["lrnnx (torch)"]["fwd_ms"] is None
    assert rows["lrnnx (torch)"]["fwd_bwd_ms"] > 0
    assert rows["mamba_ssm.Mamba"]["status"] == "ok" and \
        rows["mamba_ssm.Mamba"]["check_rel_diff"] is None  # other weights: no agreement check
    assert rows["published lrnnx"]["status"] == "not installed"
    assert rows["lrnnx (torch)"]["result"] == "n/a"
    assert "published lrnnx: not installed" in rows["lrnnx (torch)"]["result_note"]


def test_rounds_interleave_and_take_the_median(fake_peers, monkeypatch):
    """rounds = 3: each usable implementation is measured three times, interleaved (A, B, A, B,
    ...); its row carries the median of the rounds, the per-round times and their spread;
    unusable rows are measured once."""
    order = []
    real = suite_mod.run_impl
    fake_ms = {"lrnnx (torch)": iter([3.0, 1.0, 2.0]), "mamba_ssm.Mamba": iter([5.0, 7.0, 6.0])}

    def spy(w, impl, inputs, device, opts, deadline, check):
        order.append(impl.name)
        row = real(w, impl, inputs, device, opts, deadline, check)
        if row["status"] == "ok":
            row["fwd_bwd_ms"] = next(fake_ms[impl.name])
        return row

    monkeypatch.setattr(suite_mod, "run_impl", spy)
    opts = suite_mod.SuiteOptions(device="cpu", smoke=True, out=None, rounds=3)
    logged = []
    wd = suite_mod.run_workload(tiny(by_name("layer mamba")[0]), torch.device("cpu"), opts,
                                copy_gbps=10.0, deadline=time.monotonic() + 60,
                                log=lambda w, row: logged.append(row["impl"]))
    assert order == ["lrnnx (torch)", "mamba_ssm.Mamba", "published lrnnx"] + \
        ["lrnnx (torch)", "mamba_ssm.Mamba"] * 2  # "not installed" is not retried
    rows = {r["impl"]: r for r in wd["rows"]}
    assert logged == list(rows)  # one merged row each, logged once
    ours, peer = rows["lrnnx (torch)"], rows["mamba_ssm.Mamba"]
    assert ours["fwd_bwd_ms"] == 2.0 and ours["fwd_bwd_rounds_ms"] == [3.0, 1.0, 2.0]
    assert peer["fwd_bwd_ms"] == 6.0 and ours["rounds"] == 3
    assert "median of 3 of 3 rounds (1-3 ms)" in ours["note"]
    assert rows["published lrnnx"]["status"] == "not installed"
    assert "rounds" not in rows["published lrnnx"]


def test_merge_rounds_skips_unmeasured_rounds():
    ok = {"status": "ok", "fwd_ms": 2.0, "fwd_bwd_ms": 4.0, "note": "x",
          "fwd": {"ms": 2.0, "times_ms": [2.0]}}
    late = {"status": "skipped", "fwd_ms": None, "fwd_bwd_ms": None, "note": "budget"}
    m = suite_mod.merge_rounds([ok, dict(ok, fwd_ms=4.0, fwd_bwd_ms=8.0), late])
    assert m["status"] == "ok" and m["fwd_ms"] == 3.0 and m["fwd_bwd_ms"] == 6.0
    assert m["fwd_rounds_ms"] == [2.0, 4.0, None] and m["fwd"]["ms"] == 3.0
    assert m["note"].startswith("x; fwd: median of 2 of 3 rounds (2-4 ms)")
    assert suite_mod.merge_rounds([late]) is late


def test_unregistered_layer_is_na(fake_peers):
    wd = _run(Workload("layer", "float32", (("B", 32), ("L", 1024), ("d_model", 256)),
                       "published lrnnx", None, 0.67, layer="no_such_layer"))
    assert wd["rows"][0]["status"] == "n/a" and "not registered" in wd["rows"][0]["note"]


def test_time_budget_skips(fake_peers):
    wd = _run(by_name("diag_scan float32")[0], budget=-1.0)
    assert {r["status"] for r in wd["rows"]} == {"skipped"}
    assert "budget" in wd["rows"][0]["note"]


def test_failing_impl_is_reported_not_raised(fake_peers, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("kernel exploded\nsecond line")

    monkeypatch.setitem(sys.modules, "accelerated_scan.scalar", types.SimpleNamespace(scan=boom))
    peers.clear_cache()
    wd = _run(by_name("diag_scan float32")[0])
    row = next(r for r in wd["rows"] if r["impl"] == "accelerated_scan.scalar")
    assert row["status"] == "error" and row["note"] == "RuntimeError: kernel exploded"
    target = next(r for r in wd["rows"] if r["target_row"])
    assert target["result"] == "n/a" and "accelerated_scan.scalar" in target["result_note"]


def _wd(ratio_fwd, ratio_fb, ref_status="ok"):
    rows = [{"impl": "lrnnx (triton)", "status": "ok", "fwd_ms": ratio_fwd, "fwd_bwd_ms": ratio_fb},
            {"impl": "lrnnx (torch)", "status": "ok", "fwd_ms": 5.0, "fwd_bwd_ms": 5.0},
            {"impl": "peer", "status": ref_status, "note": "not installed",
             "fwd_ms": 1.0 if ref_status == "ok" else None,
             "fwd_bwd_ms": 1.0 if ref_status == "ok" else None}]
    return {"rows": rows, "reference": "peer", "target": {"fwd": 1.05, "fwd_bwd": 0.75},
            "ideal_bytes": {"fwd": 10**9, "fwd_bwd": 2 * 10**9}}


def test_evaluate_pass_fail_na():
    wd = _wd(1.0, 0.7)
    suite_mod.evaluate(wd, copy_gbps=1000.0, auto="triton")
    tri, tor, ref = wd["rows"]
    assert tri["result"] == "pass" and tri["target_row"] and not tor["target_row"]
    assert tor["result"] == ""  # informational row
    assert tri["ratio_fwd"] == pytest.approx(1.0) and tor["ratio_fwd_bwd"] == pytest.approx(5.0)
    # 1e9 bytes in 1 ms = 1000 GB/s = 100% of a 1000 GB/s copy
    assert tri["pct_bw_fwd"] == pytest.approx(100.0)
    wd = _wd(1.0, 0.8)
    suite_mod.evaluate(wd, 1000.0, "triton")
    assert wd["rows"][0]["result"] == "FAIL"
    wd = _wd(1.0, 0.7, ref_status="not installed")
    suite_mod.evaluate(wd, 1000.0, "triton")
    assert wd["rows"][0]["result"] == "n/a" and wd["rows"][0]["ratio_fwd"] is None
    assert wd["rows"][0]["result_note"] == "reference peer: not installed"
    wd = _wd(1.0, 0.7)
    suite_mod.evaluate(wd, None, None)  # no auto backend benchmarked: nobody judged
    assert not any(r["target_row"] for r in wd["rows"]) and wd["rows"][0]["pct_bw_fwd"] is None


@pytest.mark.parametrize("spec,L,conv", [("s4d(d_state=4)", 1024, True), ("s4d(d_state=4)", 8, False),
                                         ("s5(d_state=8)", 1024, False),
                                         ("lru(d_state=8)", 1024, False),
                                         ("s4d(d_state=4, mode=scan)", 1024, False)])
def test_mode_note_asks_the_layer(spec, L, conv):
    """The layer rows' "convolves (FFT)" note follows the layer's own mode resolution: MIMO
    systems (s5, lru) scan at every length under mode='auto' (AUTO_CONV_MIN_LEN_MIMO = None),
    so their backend rows do time different scans."""
    import lrnnx

    layer = lrnnx.build_layer(spec, d_model=8)
    note = impls_mod._mode_note(layer, L)
    assert ("convolves (FFT)" in note) == conv, note
    assert layer.resolved_mode(L) == ("conv" if conv else "scan")


@pytest.mark.parametrize("spec,conv", [("s4d(d_state=4)", True), ("lru(d_state=8)", False)])
def test_resolved_mode_is_the_route_the_forward_takes(spec, conv, monkeypatch):
    import lrnnx
    from lrnnx_plugins.ssm.ssm import SSM

    calls = []
    real = SSM._conv
    monkeypatch.setattr(SSM, "_conv", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    layer = lrnnx.build_layer(spec, d_model=8)
    layer(torch.randn(1, 32, 8))
    assert bool(calls) == conv == (layer.resolved_mode(32) == "conv")
