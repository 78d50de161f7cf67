"""benchmarks/gpu_scan.py and the ``lrnnx bench`` command, run on CPU at tiny sizes: JSON schemas,
the markdown report, the plot (or the message naming ``pip install matplotlib``), peers reported
as "not installed", argument errors.  The harness internals: tests/test_bench_harness.py."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lrnnx.bench import peers
from lrnnx.cli import main

ROOT = Path(__file__).resolve().parents[1]
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(autouse=True)
def _cpu_env(monkeypatch):
    # the triton backend is unavailable on CPU without the interpreter: its rows say "n/a" (fast)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    peers.clear_cache()
    yield
    peers.clear_cache()


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------- benchmarks/gpu_scan.py

def _gpu_scan():
    spec = importlib.util.spec_from_file_location("gpu_scan", ROOT / "benchmarks" /
                                                  "gpu_scan.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_scan_script_rounds(tmp_path, capsys):
    """--rounds 2: the options record it and the measured rows carry two rounds each."""
    code = _gpu_scan().main(["--device", "cpu", "--smoke", "--only", "diag_scan float32",
                             "--rounds", "2", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["options"]["rounds"] == 2
    row = next(r for r in data["workloads"][0]["rows"] if r["impl"] == "lrnnx (torch)")
    assert row["rounds"] == 2 and len(row["fwd_rounds_ms"]) == 2
    assert row["fwd_ms"] == pytest.approx(sum(row["fwd_rounds_ms"]) / 2)
    assert "median of 2 of 2 rounds" in row["note"]


def test_gpu_scan_script_smoke_on_cpu(tmp_path, capsys):
    code = _gpu_scan().main(["--device", "cpu", "--smoke", "--only", "diag_scan float32",
                             "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["schema"] == "lrnnx.gpu_bench/1" and data["complete"] is True
    assert set(data) >= {"environment", "options", "copy_bandwidth", "workloads", "elapsed_s"}
    assert set(data["environment"]["peers"]) == {"accelerated_scan", "fla", "mamba_ssm",
                                                 "published lrnnx"}
    assert data["copy_bandwidth"]["GBps"] > 0
    (wd,) = data["workloads"]
    assert wd["name"] == "diag_scan float32 B2 L48 D16"
    assert set(wd) >= {"kind", "dtype", "dims", "reference", "target", "ideal_bytes", "rows",
                       "auto_backend"}
    rows = {r["impl"]: r for r in wd["rows"]}
    assert list(rows) == ["lrnnx (cuda)", "lrnnx (triton)", "lrnnx (torch)",
                          "accelerated_scan.scalar", "fla.chunk_hgrn", "fla.fused_recurrent_hgrn"]
    assert rows["lrnnx (triton)"]["status"] == "n/a"  # no CUDA, no interpreter
    assert rows["lrnnx (cuda)"]["status"] == "n/a"
    assert rows["lrnnx (torch)"]["status"] == "ok" and rows["lrnnx (torch)"]["fwd_ms"] > 0
    for peer in ("accelerated_scan.scalar", "fla.chunk_hgrn"):
        if importlib.util.find_spec(peer.split(".")[0]) is None:
            assert rows[peer]["status"] == "not installed"
    for r in wd["rows"]:
        assert set(r) >= {"impl", "status", "note", "fwd_ms", "fwd_bwd_ms", "ratio_fwd",
                          "ratio_fwd_bwd", "pct_bw_fwd", "pct_bw_fwd_bwd", "result",
                          "check_rel_diff"}
    md = (tmp_path / "RESULTS-gpu.md").read_text()
    assert "| workload | impl | ms (fwd) | ms (fwd+bwd) |" in md and "not installed" in md
    assert "Byte model" in md and "3·n·e" in md
    assert "lrnnx (torch)" in out and "not installed" in out


def test_gpu_scan_script_errors(tmp_path, capsys):
    mod = _gpu_scan()
    assert mod.main(["--device", "cpu", "--smoke", "--only", "zzz", "--out", str(tmp_path)]) == 2
    assert "matches no workload" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main(["--device", "cpu", "--smoke", "--rounds", "0"])
    assert "--rounds must be >= 1, got 0" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert mod.main(["--out", str(tmp_path)]) == 2
        assert "needs a CUDA device" in capsys.readouterr().err


# ------------------------------------------------------------------------------ lrnnx bench

def test_bench_ops_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "r.json", tmp_path / "p.png"
    argv = ["bench", "ops", "--device", "cpu", "--lengths", "16,32", "--batch", "2",
            "--d-model", "8", "--d-state", "4", "--backend", "torch", "--backend", "triton",
            "--backward", "--repeats", "2", "--warmup", "1", "--json", str(js)]
    if HAS_MPL:
        argv += ["--plot", str(png)]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    data = json.loads(js.read_text())
    assert data["schema"] == "lrnnx.bench/1" and data["kind"] == "ops"
    assert data["config"]["lengths"] == [16, 32] and data["config"]["backends"] == ["torch",
                                                                                      "triton"]
    rows = data["results"]
    assert [(r["name"], r["backend"], r["length"]) for r in rows] == [
        (op, bk, L) for op in ("diag_scan", "selective_scan") for L in (16, 32)
        for bk in ("torch", "triton")]
    for r in rows:
        assert set(r) >= {"name", "backend", "resolved_backend", "length", "fwd_ms",
                          "fwd_bwd_ms", "status", "note"}
        if r["backend"] == "torch":
            assert r["status"] == "ok" and r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0
            assert r["fwd"]["repeats"] == 2
        else:
            assert r["status"] == "unavailable" and "no CUDA device" in r["note"]
            assert "device=cpu" not in r["note"]  # the problem dump is trimmed
    assert "diag_scan" in out and "selective_scan" in out and "unavailable" in out
    if HAS_MPL:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_bench_spec_backends_and_auto(tmp_path, capsys):
    js = tmp_path / "s.json"
    code, out, err = run(capsys, "bench", "s7(d_state=4)", "--device", "cpu", "--lengths", "8",
                         "--batch", "2", "--d-model", "8", "--backend", "torch", "--backend",
                         "torch_ref", "--backward", "--repeats", "1", "--json", str(js))
    assert code == 0, err
    data = json.loads(js.read_text())
    assert data["kind"] == "spec" and [r["backend"] for r in data["results"]] == ["torch",
                                                                                  "torch_ref"]
    assert all(r["status"] == "ok" and r["fwd_bwd_ms"] > 0 for r in data["results"])
    code, out, err = run(capsys, "bench", "diag_scan", "--device", "cpu", "--lengths", "8",
                         "--batch", "1", "--d-model", "4", "--repeats", "1", "--json", str(js))
    assert code == 0, err
    (r,) = json.loads(js.read_text())["results"]
    assert r["backend"] == "auto" and r["resolved_backend"] in ("cpu", "torch")
    assert r["fwd_bwd_ms"] is None  # no --backward


def test_bench_spec_without_scan_and_bf16(tmp_path, capsys):
    js = tmp_path / "m.json"
    code, out, err = run(capsys, "bench", "mlp", "--device", "cpu", "--lengths", "8", "--batch",
                         "1", "--d-model", "8", "--backend", "torch", "--repeats", "1",
                         "--dtype", "bfloat16", "--backward", "--json", str(js))
    assert code == 0, err
    data = json.loads(js.read_text())
    assert [r["backend"] for r in data["results"]] == ["-"]
    assert data["results"][0]["status"] == "ok" and "no layer" in data["notes"][0]
    assert "no layer of this spec takes a scan backend" in out


@pytest.mark.parametrize("argv,msg", [
    (["ops", "--backend", "tritn"], "did you mean"),
    (["ops", "--lengths", "16,x"], "--lengths takes comma-separated positive integers"),
    (["ops", "--lengths", "0"], "--lengths"),
    (["ops", "--batch", "0"], "--batch must be a positive integer"),
    (["ops", "--device", "tpu"], "--device takes cpu or cuda"),
    (["no_such_layer*2"], "unknown layer 'no_such_layer'"),
])
def test_bench_bad_arguments_exit_2(capsys, argv, msg):
    extra = [] if "--device" in argv else ["--device", "cpu"]
    code, out, err = run(capsys, "bench", *argv, *extra)
    assert code == 2
    assert msg in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_bench_cuda_without_gpu(capsys):
    code, _, err = run(capsys, "bench", "ops", "--device", "cuda")
    assert code == 2 and "no CUDA device" in err


def test_bench_plot_without_matplotlib(monkeypatch, capsys, tmp_path):
    from lrnnx.bench import report

    real = importlib.util.find_spec
    monkeypatch.setattr(report.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    t0 = time.perf_counter()
    code, out, err = run(capsys, "bench", "ops", "--device", "cpu", "--plot",
                         str(tmp_path / "x.png"))
    assert code == 2 and "pip install matplotlib" in err
    assert time.perf_counter() - t0 < 5  # refused before benchmarking anything
    assert not (tmp_path / "x.png").exists()


def test_help_lists_bench_and_import_is_light(capsys):
    code, out, _ = run(capsys, "--help")
    assert "bench" in out
    code, out, _ = run(capsys, "bench", "--help")
    assert code == 0 and "--backward" in out and "--plot" in out
    res = subprocess.run([sys.executable, "-c", "import sys, lrnnx.bench; "
                          "print('torch' in sys.modules)"], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
