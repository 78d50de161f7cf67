"""GPU benchmark of lrnnx's scans and layers against the peers, in one run on one GPU (issue #6).

    python benchmarks/gpu_scan.py [--quick] [--only PATTERN] [--device cuda] [--out DIR]
                                  [--budget 330] [--limit 20] [--rounds 1] [--smoke]

Times lrnnx (triton and torch backends) against accelerated_scan, fla (chunk_hgrn,
fused_recurrent_hgrn) and mamba_ssm on issue #6's workloads (diag scan fp32 / bf16 / complex64,
selective scan fp32 / bf16, layer train steps), with the device-to-device copy bandwidth as the
roofline; prints a table and writes DIR/results.json and DIR/RESULTS-gpu.md (default DIR:
benchmarks/out).  Absent peers are reported as "not installed".  The work is in
:mod:`lrnnx.bench` (``suite``, ``workloads`` has the byte model); ``--smoke`` runs every code path
at tiny sizes (``--device cpu`` with ``TRITON_INTERPRET=1`` for the Triton rows).  ``--rounds R``
measures each workload's implementations R times, interleaved (A, B, A, B, ...), and reports the
median of the rounds with their spread: use it for rows bound by the host CPU (the layer steps at
L1024), whose times drift with the host's load between one implementation and the next.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bootstrap() -> None:
    """Run from a plain checkout too: put the repo on sys.path and map kernels/ -> lrnnx_kernels,
    plugins/ -> lrnnx_plugins when the project is not pip-installed."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    for name, folder in (("lrnnx_kernels", "kernels"), ("lrnnx_plugins", "plugins")):
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue
        spec = importlib.util.spec_from_file_location(
            name, ROOT / folder / "__init__.py", submodule_search_locations=[str(ROOT / folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats (5 instead of 20)")
    p.add_argument("--only", metavar="PATTERN", help="workloads whose name matches: comma-"
                   "separated substrings or shell wildcards, e.g. 'diag_scan,selective' or "
                   "'layer mamba*'")
    p.add_argument("--device", default="cuda", help="device (default cuda)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"),
                   help="folder for results.json and RESULTS-gpu.md (default benchmarks/out)")
    p.add_argument("--budget", type=float, default=330.0,
                   help="seconds for the whole run; later measurements are skipped (330)")
    p.add_argument("--limit", type=float, default=20.0,
                   help="a single call slower than this many seconds is not repeated (20)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure each workload's implementations this many times, interleaved, "
                   "and report the median (1)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 1 repeat (tests)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    _bootstrap()

    from rich.console import Console

    from lrnnx.bench.report import fmt_ms, suite_table
    from lrnnx.bench.suite import SuiteOptions, run_suite
    from lrnnx.errors import LrnnxError

    out = Console(width=None if sys.stdout.isatty() else 250, highlight=False)
    err = Console(file=sys.stderr, highlight=False)

    def log(w, row):
        ms = " / ".join(fmt_ms(row[k]) for k in ("fwd_ms", "fwd_bwd_ms"))
        err.print(f"{w.name} | {row['impl']}: {row['status']} {ms} ms {row['note']}",
                  markup=False)

    opts = SuiteOptions(device=args.device, quick=args.quick, only=args.only,
                        out=Path(args.out), budget_s=args.budget, limit_s=args.limit,
                        smoke=args.smoke, rounds=args.rounds)
    try:
        results = run_suite(opts, log=log)
    except LrnnxError as exc:
        err.print(f"error: {exc}", style="bold red", markup=False)
        return 2
    out.print(suite_table(results))
    out.print(f"wrote {opts.out / 'results.json'} and {opts.out / 'RESULTS-gpu.md'} "
              f"({results['elapsed_s']} s)", markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
