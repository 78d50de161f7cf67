"""``lrnnx build-kernels``: compile the JIT kernels ahead of time (CUDA, and the C++ CPU scan).

    lrnnx build-kernels [--arch 90 --arch 80] [--cpu] [--verbose]

Without ``--arch`` the CUDA kernels are built for the visible GPU (what the first op would do);
``--arch`` cross-compiles for the named compute capabilities (no GPU needed, nvcc is).  The
libraries land in the kernel cache (``$LRNNX_KERNELS_CACHE`` or ``~/.cache/lrnnx/kernels``); the
command prints where, how long it took and whether it was already cached.  Exit code 0 when
everything asked for was built, 1 otherwise (the reason is printed).
"""
from __future__ import annotations

import argparse
import time


def add_commands(subparsers) -> None:
    s = subparsers.add_parser("build-kernels", help="compile the CUDA (and C++ CPU) kernels now",
                              description=__doc__.split("\n\n")[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--arch", action="append", metavar="CC",
                   help="compute capability without the dot (90 for H100/H200, 80 for A100); "
                        "repeatable; default: the visible GPU")
    s.add_argument("--cpu", action="store_true", help="also build the C++ CPU scan")
    s.add_argument("--verbose", action="store_true", help="show the compiler's output")
    s.set_defaults(func=cmd_build_kernels)


def cmd_build_kernels(args, console) -> int:
    import torch
    from lrnnx_kernels.cuda import _build

    rc = 0
    archs = None
    if args.arch:
        archs = [a.replace(".", "").replace("sm_", "") for a in args.arch]
        bad = [a for a in archs if not a.isdigit() or len(a) < 2]
        if bad:
            console.print(f"[red]error:[/red] --arch takes compute capabilities such as 90 or 8.0, "
                          f"got {', '.join(bad)}")
            return 2
    if torch.version.cuda is None:
        console.print(f"[yellow]CUDA kernels not built:[/yellow] this PyTorch "
                      f"({torch.__version__}) is a CPU-only build")
        rc = 1
    elif archs is None and not torch.cuda.is_available():
        console.print("[yellow]CUDA kernels not built:[/yellow] no CUDA device visible; pass "
                      "--arch CC to cross-compile")
        rc = 1
    else:
        t0 = time.perf_counter()
        try:
            lib = _build.build(archs, verbose=args.verbose)
        except RuntimeError as exc:
            console.print(f"[red]CUDA kernels failed to build:[/red] {exc}")
            rc = 1
        else:
            secs, cached = _build.load_seconds() or (time.perf_counter() - t0, False)
            how = "found in the cache" if cached else "compiled"
            console.print(f"CUDA kernels {how} in {secs:.1f} s: {lib}")
    if args.cpu:
        from lrnnx_kernels.diag_scan import cpu_available

        t0 = time.perf_counter()
        ok, why = cpu_available()
        if ok:
            console.print(f"C++ CPU scan ready in {time.perf_counter() - t0:.1f} s")
        else:
            console.print(f"[red]C++ CPU scan failed to build:[/red] {why}")
            rc = 1
    return rc
