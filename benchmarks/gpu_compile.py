"""torch.compile(fullgraph=True) on every registered layer, on the GPU (issue #6 acceptance).

For each layer of the registry: build it (d_model 64, fp32, on CUDA, ``backend="auto"``), run
eager forward + backward, then ``torch.compile(layer, fullgraph=True)`` forward + backward, and
record whether it compiled without a graph break, the max relative difference of output and
input gradient against eager, and the first-call (compile) time.  Writes a Markdown table and
JSON under ``--out``.

    python benchmarks/gpu_compile.py --out benchmarks/out/compile [--only mamba,lru]
"""
from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def run_one(name: str, device: str, L: int, backend: str = "inductor") -> dict:
    import lrnnx

    torch.manual_seed(0)
    layer = lrnnx.build_layer(name, 64).to(device)
    x = torch.randn(2, L, 64, device=device)

    def fwd_bwd(m):
        xi = x.clone().requires_grad_()
        y = m(xi)
        y = y[0] if isinstance(y, tuple) else y
        y.square().mean().backward()
        return y.detach(), xi.grad

    y0, g0 = fwd_bwd(layer)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    t = time.perf_counter()
    try:
        y1, g1 = fwd_bwd(compiled)
    except Exception as exc:  # noqa: BLE001 - the point is to record which layers break
        return {"layer": name, "fullgraph": False, "backend": backend,
                "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                "trace": traceback.format_exc(limit=3)[-600:]}
    first = time.perf_counter() - t
    return {"layer": name, "fullgraph": True, "backend": backend, "compile_s": round(first, 1),
            "out_rel_err": _rel(y1, y0), "grad_rel_err": _rel(g1, g0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/out/compile")
    p.add_argument("--only", help="comma-separated layer names (default: every registered layer)")
    p.add_argument("--L", type=int, default=128)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    from lrnnx.registry import REGISTRY

    names = args.only.split(",") if args.only else REGISTRY.names("layer")
    rows = []
    for n in names:
        r = run_one(n, args.device, args.L)
        if not r["fullgraph"]:  # is it the graph capture or inductor's code generation?
            r2 = run_one(n, args.device, args.L, backend="aot_eager")
            r["aot_eager"] = "fullgraph ok" if r2["fullgraph"] else r2["error"]
        rows.append(r)
        print(r if not r["fullgraph"] else
              f"{n}: fullgraph ok, compile {r['compile_s']} s, out {r['out_rel_err']:.1e}, "
              f"grad {r['grad_rel_err']:.1e}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile.json").write_text(json.dumps(rows, indent=1))
    lines = ["| layer | fullgraph | first call (compile) s | out rel. diff vs eager | grad rel. diff | error |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r["fullgraph"]:
            lines.append(f"| {r['layer']} | yes | {r['compile_s']} | {r['out_rel_err']:.1e} | "
                         f"{r['grad_rel_err']:.1e} | |")
        else:
            extra = f" (backend aot_eager: {r['aot_eager']})" if "aot_eager" in r else ""
            lines.append(f"| {r['layer']} | **no** | | | | {r['error']}{extra} |")
    dev = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    head = (f"torch {torch.__version__}, {dev}, d_model 64, B 2, "
            f"L {args.L}, fp32, backend auto, forward + backward\n\n")
    (out / "COMPILE.md").write_text(head + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
