"""Forward+backward time of every registered layer on this CPU (issues #4 and #5).

    python benchmarks/cpu_layers.py [--batch 8] [--length 1024] [--d-model 128] [--repeats 3]

Each layer is built with its default options (`lrnnx.build_layer(name, d_model)`); the time is
the median of `--repeats` calls of forward + backward (sum of outputs) after one warm-up call.
Prints a markdown table to paste into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import lrnnx


def time_layer(name: str, B: int, L: int, d: int, repeats: int) -> tuple[float, float]:
    torch.manual_seed(0)
    layer = lrnnx.build_layer(name, d_model=d)
    x = torch.randn(B, L, d, requires_grad=True)

    def fwd():
        with torch.no_grad():
            layer(x)

    def fwd_bwd():
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()

    out = []
    for fn in (fwd, fwd_bwd):
        fn()  # warm-up (and first-use JIT builds)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        out.append(statistics.median(ts) * 1e3)
    return out[0], out[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layers", default="", help="comma-separated names (default: all)")
    a = p.parse_args()
    names = a.layers.split(",") if a.layers else lrnnx.list_layers()
    print(f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average "
          f"{os.getloadavg()[0]:.2f} at start")
    print(f"- B={a.batch}, L={a.length}, d_model={a.d_model}, fp32, default options, median of "
          f"{a.repeats} after one warm-up\n")
    print("| layer | fwd (ms) | fwd+bwd (ms) |\n|---|---:|---:|")
    for n in names:
        try:
            f, fb = time_layer(n, a.batch, a.length, a.d_model, a.repeats)
            print(f"| {n} | {f:.1f} | {fb:.1f} |", flush=True)
        except Exception as exc:  # report and go on: one slow or failing layer must not hide others
            print(f"| {n} | error: {type(exc).__name__}: {exc} | |", flush=True)
    print(f"\n- load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
