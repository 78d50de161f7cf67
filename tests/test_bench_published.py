"""The published lrnnx peer, on CPU: the child-process protocol of ``lrnnx.bench.peers``
(``PublishedWorker``) and the rows of ``lrnnx.bench.impls``, against a fake published package
written to a temporary folder (same module layout and call signatures as lrnnx 1.0.0.post1, pure
PyTorch).  The real one needs its CUDA extensions and a GPU: benchmarks/peers/README.md."""
from __future__ import annotations

import os
import textwrap
import time

import pytest
import torch

from lrnnx.bench import impls as impls_mod
from lrnnx.bench import peers
from lrnnx.bench import suite as suite_mod
from lrnnx.bench.workloads import make_inputs, suite, tiny

FAKE = {
    "lrnnx/__init__.py": '__version__ = "9.9.9"\n',
    "lrnnx/ops/__init__.py": "",
    "lrnnx/ops/selective_scan.py": '''
        import torch
        import torch.nn.functional as F

        def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, deltaA=None,
                              delta_softplus=False, return_last_state=False,
                              discretization="mamba"):
            # mamba_ssm layouts: u, delta, z (B, D, L); B, C (B, N, L); A (D, N)
            print("prints of the published package must not break the protocol")
            dt = delta.float() + delta_bias[None, :, None]
            dt = F.softplus(dt) if delta_softplus else dt
            h = torch.zeros(u.shape[0], u.shape[1], A.shape[1])
            ys = []
            for t in range(u.shape[2]):
                h = torch.exp(dt[:, :, t, None] * A) * h + \\
                    dt[:, :, t, None] * B[:, None, :, t].float() * u[:, :, t, None].float()
                ys.append((h * C[:, None, :, t].float()).sum(-1))
            y = torch.stack(ys, -1) + D[None, :, None] * u.float()
            return (y * F.silu(z.float())).to(u.dtype)
    ''',
    "lrnnx/models/__init__.py": "",
    "lrnnx/models/lti/__init__.py": '''
        import torch

        class _Fake(torch.nn.Module):
            def __init__(self, d_model, d_state=64, **kw):
                super().__init__()
                self.kw = dict(kw, d_state=d_state)
                self.lin = torch.nn.Linear(d_model, d_model)

            def forward(self, x):
                return self.lin(x).cumsum(1)

        class LRU(_Fake):
            pass

        class S5(_Fake):
            def __init__(self, d_model, d_state, discretization):
                super().__init__(d_model, d_state, discretization=discretization)

        class S4D(_Fake):
            def __init__(self, d_model, transposed=True, d_state=64):
                assert transposed is False
                super().__init__(d_model, d_state)

            def forward(self, x):
                return super().forward(x), None  # (y, state) like the published S4D
    ''',
    "lrnnx/models/ltv/__init__.py": '''
        import os
        from lrnnx.models.lti import _Fake

        class Mamba(_Fake):
            pass

        class RGLRU(_Fake):
            def __init__(self, d_model):
                super().__init__(d_model)

        class S7(_Fake):
            def forward(self, x):
                if os.environ.get("FAKE_S7_FAILS") == "sleep":
                    import time
                    time.sleep(60)
                if os.environ.get("FAKE_S7_FAILS") == "exit":
                    os._exit(3)  # a crash of the child (e.g. an illegal memory access)
                if os.environ.get("FAKE_S7_FAILS"):
                    raise RuntimeError("S7 exploded")
                return super().forward(x)

        class S5(_Fake):
            def __init__(self, d_model, d_state, discretization):
                super().__init__(d_model, d_state, discretization=discretization)
    ''',
    "lrnnx-9.9.9.dist-info/METADATA": "Metadata-Version: 2.1\nName: lrnnx\nVersion: 9.9.9\n",
}


def write_fake(root, files=FAKE):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(peers.PUBLISHED_ENV, raising=False)
    peers.clear_cache()
    yield
    peers.clear_cache()


@pytest.fixture
def fake_published(tmp_path, monkeypatch):
    root = write_fake(tmp_path / "pub")
    monkeypatch.setenv(peers.PUBLISHED_ENV, str(root))
    monkeypatch.setattr(peers, "published_device_ok", lambda kind: (True, ""))
    monkeypatch.setattr(impls_mod, "LRNNX_BACKENDS", ("torch",))  # fast on CPU
    monkeypatch.setattr(suite_mod, "_auto_backend", lambda w, device: "torch")
    return root


def by_name(prefix):
    return [w for w in suite() if w.name.startswith(prefix)]


def opts():
    return suite_mod.SuiteOptions(device="cpu", smoke=True, out=None)


def published_rows(w):
    return [i for i in impls_mod.impls_for(w, torch.device("cpu"))
            if i.name.startswith(peers.PUBLISHED_LRNNX)]


def run_row(impl, w, check=None, budget=120.0):
    row = suite_mod._row(impl)
    if impl.why:
        return {**row, "status": "why", "note": impl.why}
    return impl.external(w, row, torch.device("cpu"), opts(), time.monotonic() + budget,
                         {} if check is None else check)


# ------------------------------------------------------------------------------- absent

def test_unset_path_says_why():
    w = tiny(by_name("layer lru")[0])
    (row,) = [i for i in impls_mod.impls_for(w, torch.device("cuda")) if i.peer == "lrnnx"]
    assert row.name == "published lrnnx" and row.why.startswith("not installed")
    assert peers.PUBLISHED_ENV in row.why
    assert peers.all_status()["published lrnnx"].startswith("not installed")
    sel = tiny(by_name("selective_scan float32")[0])
    names = [i.name for i in impls_mod.impls_for(sel, torch.device("cuda"))]
    assert names[-1] == "published lrnnx.selective_scan_fn"


def test_path_without_package_and_cpu_device(tmp_path, monkeypatch):
    monkeypatch.setenv(peers.PUBLISHED_ENV, str(tmp_path))
    path, why = peers.published_path()
    assert path is None and why.startswith("not installed") and "lrnnx/__init__.py" in why
    write_fake(tmp_path)
    assert peers.published_path()[0] == str(tmp_path.resolve())
    assert peers.published_version(str(tmp_path)) == "9.9.9"
    (row,) = published_rows(tiny(by_name("layer mamba")[0]))
    assert row.why.startswith("n/a") and "CUDA" in row.why  # the real kernels need a GPU
    assert peers._WORKER is None  # not started for a row that cannot run


def test_broken_package_is_import_failed(tmp_path, monkeypatch):
    root = write_fake(tmp_path, {**FAKE, "lrnnx/ops/selective_scan.py":
                                 "import selective_scan_cuda\n"})
    monkeypatch.setenv(peers.PUBLISHED_ENV, str(root))
    monkeypatch.setattr(peers, "published_device_ok", lambda kind: (True, ""))
    (row,) = published_rows(tiny(by_name("layer lru")[0]))
    assert row.why.startswith("import failed") and "selective_scan_cuda" in row.why
    assert peers.published_status() == row.why


# ----------------------------------------------------------------------- child process

def test_child_sees_only_the_published_package(fake_published, monkeypatch):
    root = str(impls_mod.__file__).rsplit("/lrnnx/", 1)[0]
    monkeypatch.setenv("PYTHONPATH", root)  # the parent's path must not reach the child
    worker, why = peers.published_worker()
    assert why == "" and worker.alive()
    hello = worker.hello
    assert hello["ok"] and hello["version"] == "9.9.9"
    assert hello["lrnnx_file"].startswith(str(fake_published.resolve()))
    assert peers.published_worker()[0] is worker  # one child per run
    assert "9.9.9" in peers.published_status()
    peers.close_published_worker()
    assert not worker.alive()


def test_selective_scan_row_agrees(fake_published):
    w = tiny(by_name("selective_scan float32")[0])
    (impl,) = published_rows(w)
    assert impl.name == "published lrnnx.selective_scan_fn" and impl.why == ""
    # the reference output: lrnnx's own selective scan on the same inputs (same seed)
    import lrnnx.ops as ops

    x = make_inputs(w, torch.device("cpu"))
    ref = ops.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                             x["delta_bias"], delta_softplus=True, backend="torch_ref")
    row = run_row(impl, w, {"ref": ref, "name": "lrnnx (torch_ref)"})
    assert row["status"] == "ok", row
    assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0 and row["fwd"]["repeats"] == 1
    assert row["check_vs"] == "lrnnx (torch_ref)" and row["check_rel_diff"] < 1e-4, row
    assert row["note"].startswith("lrnnx.ops.selective_scan.selective_scan_fn")


def test_bf16_selective_scan_is_na(fake_published):
    (impl,) = published_rows(tiny(by_name("selective_scan bfloat16")[0]))
    assert impl.why.startswith("n/a") and "float32 only" in impl.why
    assert peers._WORKER is None  # no child started for it


@pytest.mark.parametrize("layer", ["lru", "s5", "s4d", "mamba", "rglru", "s7"])
def test_layer_rows(fake_published, layer):
    w = tiny(by_name(f"layer {layer}")[0])
    rows = published_rows(w)
    assert [r.name for r in rows] == (["published lrnnx", "published lrnnx (ltv.S5, scan)"]
                                      if layer == "s5" else ["published lrnnx"])
    for impl in rows:
        row = run_row(impl, w)
        assert row["status"] == "ok", row
        assert row["fwd_ms"] is None and row["fwd_bwd_ms"] > 0  # train step only
        assert row["check_rel_diff"] is None  # other weights: no agreement check
    assert f"{peers.PUBLISHED_LAYERS[layer][1]}(16" in row["note"]  # d_model of tiny()


def test_failing_layer_is_an_error_row_and_the_child_goes_on(fake_published, monkeypatch):
    monkeypatch.setenv("FAKE_S7_FAILS", "1")  # inherited by the child started below
    w = tiny(by_name("layer s7")[0])
    (impl,) = published_rows(w)
    row = run_row(impl, w)
    assert row["status"] == "error" and "RuntimeError: S7 exploded" in row["note"]
    (impl,) = published_rows(tiny(by_name("layer lru")[0]))
    assert run_row(impl, tiny(by_name("layer lru")[0]))["status"] == "ok"


def test_dead_child_is_reported_then_restarted(fake_published, monkeypatch):
    worker = peers.published_worker()[0]
    worker.proc.kill()  # died between two jobs: restarted without a word
    worker.proc.wait()
    w = tiny(by_name("layer rglru")[0])
    (impl,) = published_rows(w)
    assert run_row(impl, w)["status"] == "ok"
    second = peers.published_worker()[0]
    assert second is not worker
    monkeypatch.setenv("FAKE_S7_FAILS", "exit")
    peers.clear_cache()  # a child that inherits FAKE_S7_FAILS
    w7 = tiny(by_name("layer s7")[0])
    (impl7,) = published_rows(w7)
    row = run_row(impl7, w7)  # died during the job: an error row that quotes the exit code
    assert row["status"] == "error" and row["note"].startswith("child process:")
    assert "exited (code 3)" in row["note"]
    assert run_row(impl, w)["status"] == "ok"  # and the next row gets a new child


def test_budget_used_up_skips(fake_published):
    w = tiny(by_name("layer lru")[0])
    (impl,) = published_rows(w)
    assert run_row(impl, w, budget=-1.0)["status"] == "skipped"


def test_job_timeout_kills_the_child(fake_published, monkeypatch):
    monkeypatch.setenv("FAKE_S7_FAILS", "sleep")
    worker = peers.published_worker()[0]
    job = peers.published_job(tiny(by_name("layer s7")[0]), "cpu")
    t0 = time.monotonic()
    with pytest.raises(peers.PublishedWorkerError, match="no answer within 2 s"):
        worker.run(job, 2.0)
    assert not worker.alive() and time.monotonic() - t0 < 30


# ------------------------------------------------------------------- through the suite

def test_rows_in_the_suite_table(fake_published):
    w = by_name("layer lru")[0]
    wd = suite_mod.run_workload(tiny(w), torch.device("cpu"), opts(), copy_gbps=10.0,
                                deadline=time.monotonic() + 120)
    rows = {r["impl"]: r for r in wd["rows"]}
    assert list(rows) == ["lrnnx (torch)", "published lrnnx"]
    assert rows["published lrnnx"]["status"] == "ok"
    assert rows["published lrnnx"]["ratio_fwd_bwd"] == pytest.approx(1.0)  # the reference
    target = rows["lrnnx (torch)"]
    assert target["target_row"] and target["result"] in ("pass", "FAIL")
    assert target["ratio_fwd_bwd"] > 0


def test_no_child_without_the_env(monkeypatch):
    assert os.environ.get(peers.PUBLISHED_ENV) is None
    assert peers.published_worker() == (None, peers.PUBLISHED_LRNNX_WHY)
