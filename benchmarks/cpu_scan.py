"""CPU benchmark of the diagonal scan and the chunked selective scan.

    python benchmarks/cpu_scan.py [--repeats 7] [--no-write]

diag_scan at B=8, L=4096, D=256 (fp32 and complex64), forward and
forward+backward, for the per-step Python loop (``diag_scan_ref``), the
chunked PyTorch scan and the C++ kernel; the "roofline" is one elementwise
``a*b+c`` on the same shapes (out-of-place, as every scan allocates its
output, and with a preallocated ``out=`` for pure memory traffic).  Then the
chunked selective scan at B=2, L=1024, Dm=256, N=16.  Medians of repeats
after a warm-up.  The table is printed and written into benchmarks/RESULTS.md
(between this script's markers, replacing its previous section).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- cpu_scan:begin -->", "<!-- cpu_scan:end -->"


def _import_kernels():
    try:
        import lrnnx_kernels
    except ImportError:  # plain checkout: register kernels/ as lrnnx_kernels
        spec = importlib.util.spec_from_file_location(
            "lrnnx_kernels", ROOT / "kernels" / "__init__.py",
            submodule_search_locations=[str(ROOT / "kernels")],
        )
        lrnnx_kernels = importlib.util.module_from_spec(spec)
        sys.modules["lrnnx_kernels"] = lrnnx_kernels
        spec.loader.exec_module(lrnnx_kernels)
    return lrnnx_kernels


BEST: dict[str, float] = {}  # fastest repeat per label, for the noise note


def median_ms(fn, repeats: int, warmup: int = 1, label: str = "") -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    if label:
        BEST[label] = min(ts) * 1e3
    return statistics.median(ts) * 1e3


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "n/a"


def bench_diag(K, dtype, repeats, ref_repeats):
    B, L, D = 8, 4096, 256
    g = torch.Generator().manual_seed(0)
    r = torch.rand(B, L, D, generator=g) * 0.99
    a = torch.polar(r, torch.rand(B, L, D, generator=g) * 6.28).to(dtype) if dtype.is_complex else r.to(dtype)
    b = torch.randn(B, L, D, generator=g).to(dtype)
    c = torch.randn(B, L, D, generator=g).to(dtype)
    gh = torch.randn(B, L, D, generator=g).to(dtype)
    out = torch.empty_like(a)
    rows = {}

    def fwd(f):
        with torch.no_grad():
            return lambda: f(a, b)

    def fwd_bwd(f):
        def run():
            aa, bb = a.detach().requires_grad_(), b.detach().requires_grad_()
            h, _ = f(aa, bb)
            torch.autograd.backward(h, gh)
        return run

    impls = [("loop (diag_scan_ref)", K.diag_scan_ref, ref_repeats), ("chunked", K.diag_scan_chunked, repeats)]
    ok, why = K.cpu_available()
    if ok:
        impls.append(("cpu (C++)", K.diag_scan_cpu, repeats))
    else:
        print(f"C++ kernel unavailable: {why}", file=sys.stderr)
    for name, f, n in impls:
        rows[name] = (median_ms(fwd(f), n, label=f"{dtype} {name} fwd"),
                      median_ms(fwd_bwd(f), n, label=f"{dtype} {name} fwd+bwd"))
        print(f"  {dtype} {name}: {rows[name][0]:.1f} / {rows[name][1]:.1f} ms", file=sys.stderr, flush=True)
    roof = median_ms(lambda: a * b + c, repeats)
    roof_out = median_ms(lambda: torch.addcmul(c, a, b, out=out), repeats)
    return rows, roof, roof_out


def bench_selective(K, repeats):
    Bt, L, Dm, N = 2, 1024, 256, 16
    g = torch.Generator().manual_seed(0)
    u = torch.randn(Bt, L, Dm, generator=g)
    delta = torch.randn(Bt, L, Dm, generator=g) * 0.5 - 1
    A = -torch.rand(Dm, N, generator=g) - 0.1
    Bm, Cm = torch.randn(Bt, L, N, generator=g), torch.randn(Bt, L, N, generator=g)
    Dv, z = torch.randn(Dm, generator=g), torch.randn(Bt, L, Dm, generator=g)
    rows = {}
    scans = ["chunked"] + (["cpu"] if K.cpu_available()[0] else [])
    for scan in scans:
        def fwd():
            with torch.no_grad():
                K.selective_scan_chunked(u, delta, A, Bm, Cm, Dv, z, delta_softplus=True, scan=scan)

        def fwd_bwd():
            xs = [t.detach().requires_grad_() for t in (u, delta, A, Bm, Cm, Dv, z)]
            y = K.selective_scan_chunked(*xs, delta_softplus=True, scan=scan)
            y.sum().backward()

        name = f"selective_scan_chunked (scan={scan!r})"
        rows[name] = (median_ms(fwd, repeats, label=f"{name} fwd"), median_ms(fwd_bwd, repeats, label=f"{name} fwd+bwd"))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--ref-repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    p.add_argument("--note", default="", help="free text added to the RESULTS.md section")
    args = p.parse_args()
    K = _import_kernels()
    load0 = _loadavg()
    lines = []
    for dtype in (torch.float32, torch.complex64):
        rows, roof, roof_out = bench_diag(K, dtype, args.repeats, args.ref_repeats)
        loop_f, loop_fb = rows["loop (diag_scan_ref)"]
        lines += [
            f"**diag_scan, B=8, L=4096, D=256, {str(dtype).replace('torch.', '')}**",
            "",
            "| implementation | fwd (ms) | fwd speedup | fwd+bwd (ms) | fwd+bwd speedup | fwd vs roofline |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, (f, fb) in rows.items():
            lines.append(
                f"| {name} | {f:.1f} | {loop_f / f:.1f}x | {fb:.1f} | {loop_fb / fb:.1f}x | {100 * roof / f:.0f}% |"
            )
        lines += [
            f"| roofline `a*b+c` (out-of-place) | {roof:.1f} | | | | 100% |",
            f"| `torch.addcmul(c, a, b, out=)` (preallocated) | {roof_out:.1f} | | | | |",
            "",
        ]
    rows = bench_selective(K, max(3, args.repeats // 2))
    lines += [
        "**selective_scan_chunked, B=2, L=1024, Dm=256, N=16, fp32, mamba, chunk_size=128**",
        "",
        "| implementation | fwd (ms) | fwd+bwd (ms) |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {f:.1f} | {fb:.1f} |" for name, (f, fb) in rows.items()]
    lines += ["", "Fastest single repeat (ms), a lower bound less affected by other jobs on the cores:", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in BEST.items()]
    table = "\n".join(lines)
    print(table)
    if args.no_write:
        return
    header = [
        BEGIN,
        "## CPU scan kernels (`kernels/`: diag_scan, selective_scan)",
        "",
        f"- machine: {cpu_model()}, {torch.get_num_threads()} threads (2 cores), torch {torch.__version__}",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; 1-min load average at start/end:"
        f" {load0} / {_loadavg()} (the 2 cores are shared with other jobs; timings are noisy)",
        f"- command: `python benchmarks/cpu_scan.py --repeats {args.repeats}` (median of repeats after warm-up)",
        "- speedups are against the per-step Python loop; \"vs roofline\" = time of the out-of-place",
        "  elementwise `a*b+c` on the same shapes divided by the scan time (100% = as fast as one",
        "  elementwise op that allocates its output).",
    ]
    if args.note:
        header.append(f"- note: {args.note}")
    header.append("")
    section = "\n".join(header) + "\n" + table + "\n" + END + "\n"
    path = ROOT / "benchmarks" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if BEGIN in text and END in text:
        pre, rest = text.split(BEGIN, 1)
        post = rest.split(END, 1)[1].lstrip("\n")
        text = pre + section + ("\n" + post if post else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
