"""The GPU benchmark's workloads (issue #6's table), their byte models and their inputs.

Workloads (fp32 unless named; B batch, L length, D channels, N state size), reference peer,
target ratios (lrnnx time / reference time, forward and forward+backward)::

    diag_scan float32 / bfloat16  B16 L4096 D1024    accelerated_scan.scalar   <= 1.05x, 0.75x
    diag_scan complex64           B16 L4096 D512     accelerated_scan.complex  <= 0.6x,  0.6x
    selective_scan float32 / bf16 B8 L2048 D1536 N16 mamba_ssm selective_scan_fn <= 1.0x, 0.8x
        (with z, delta_bias, delta_softplus)
    layer train step (fwd+bwd only) B32 L1024 / L4096 d_model 256: lru(d_state=256),
        s5(d_state=256), s4d, mamba(d_state=16), rglru, s7(d_state=256)
                                                     the published lrnnx       fwd+bwd <= 0.67x

Byte model (:func:`ideal_bytes`): the bytes an ideal implementation must move through DRAM, each
tensor read or written once, with ``e`` the element size of the workload's dtype (8 for
complex64) and ``n = B*L*D``::

    diag fwd        read a, b; write h                                  3 n e
    diag fwd+bwd    fwd + read a, h, grad_h; write grad_a, grad_b       (3 + 5) n e = 8 n e
    selective fwd   read u, delta, z (B,L,D), B, C (B,L,N); write y     (4 BLD + 2 BLN) e + P
    selective f+b   fwd + read u, delta, z, B, C, grad_y; write grad_u, grad_delta, grad_z,
                    grad_B, grad_C (states recomputed, never stored)    + (7 BLD + 4 BLN) e + 2 P
    layers          none (matmul-bound: "n/a")

where ``P = (D*N + 2*D) * 4`` bytes of fp32 A, D and delta_bias (read, and their gradients
written).  "% of copy bandwidth" = (ideal bytes / measured time) / (device-to-device copy
bandwidth).  :func:`tiny` shrinks every workload (same code paths) for CPU smoke tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

DIAG_REAL_TARGET = (1.05, 0.75)
COMPLEX_TARGET = (0.6, 0.6)
SELECTIVE_TARGET = (1.0, 0.8)
LAYER_TARGET = (None, 0.67)

REF_DIAG = "accelerated_scan.scalar"
REF_COMPLEX = "accelerated_scan.complex"
REF_SELECTIVE = "mamba_ssm.selective_scan_fn"
REF_LAYER = "published lrnnx"

#: layer specs of the train-step workloads: (layer name, options)
LAYERS: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (
    ("lru", (("d_state", 256),)),
    ("s5", (("d_state", 256),)),
    ("s4d", ()),
    ("mamba", (("d_state", 16),)),
    ("rglru", ()),
    ("s7", (("d_state", 256),)),
)
LAYER_LENGTHS = (1024, 4096)
#: the byte model, one line per workload kind (rendered into RESULTS-gpu.md)
BYTE_MODEL = (
    "diag_scan fwd: read a, b; write h = 3·n·e  (n = B·L·D, e = element size, 8 for complex64)",
    "diag_scan fwd+bwd: fwd + read a, h, grad_h; write grad_a, grad_b = 8·n·e",
    "selective_scan fwd: read u, delta, z (B,L,D) and B, C (B,L,N); write y "
    "= (4·BLD + 2·BLN)·e + P  (P = (D·N + 2·D)·4 bytes of fp32 A, D, delta_bias)",
    "selective_scan fwd+bwd: fwd + read u, delta, z, B, C, grad_y; write grad_u, grad_delta, "
    "grad_z, grad_B, grad_C (states recomputed, never stored) = fwd + (7·BLD + 4·BLN)·e + 2·P",
    "layers: no byte model (dominated by matmuls): % copy BW is n/a",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "complex64": torch.complex64}


@dataclass(frozen=True)
class Workload:
    """One row group of the report.  ``dims`` keys: B, L, D (+ N: selective; layers: B, L,
    d_model)."""

    kind: str  # "diag" | "selective" | "layer"
    dtype: str  # key of DTYPES
    dims: tuple[tuple[str, int], ...]
    reference: str  # impl name the ratios divide by
    target_fwd: float | None
    target_fwd_bwd: float | None
    layer: str | None = None  # layer name (kind "layer")
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def dim(self) -> dict[str, int]:
        return dict(self.dims)

    @property
    def spec(self) -> str | None:
        if self.layer is None:
            return None
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options)
        return f"{self.layer}({opts})" if opts else self.layer

    @property
    def measure_fwd(self) -> bool:
        """Layers are timed as a train step (fwd+bwd) only."""
        return self.kind != "layer"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def name(self) -> str:
        d = self.dim
        if self.kind == "diag":
            return f"diag_scan {self.dtype} B{d['B']} L{d['L']} D{d['D']}"
        if self.kind == "selective":
            return f"selective_scan {self.dtype} B{d['B']} L{d['L']} D{d['D']} N{d['N']}"
        return f"layer {self.spec} B{d['B']} L{d['L']} d_model{d['d_model']}"

    def to_dict(self) -> dict[str, Any]:
        fwd, fb = ideal_bytes(self)
        return {"name": self.name, "kind": self.kind, "dtype": self.dtype, "dims": self.dim,
                "spec": self.spec, "reference": self.reference,
                "target": {"fwd": self.target_fwd, "fwd_bwd": self.target_fwd_bwd},
                "ideal_bytes": {"fwd": fwd, "fwd_bwd": fb}}


def _dims(**kw: int) -> tuple[tuple[str, int], ...]:
    return tuple(kw.items())


def suite() -> list[Workload]:
    """Every workload of the issue's table, in run order (ops first, layers last)."""
    out = [
        Workload("diag", "float32", _dims(B=16, L=4096, D=1024), REF_DIAG, *DIAG_REAL_TARGET),
        Workload("diag", "bfloat16", _dims(B=16, L=4096, D=1024), REF_DIAG, *DIAG_REAL_TARGET),
        Workload("diag", "complex64", _dims(B=16, L=4096, D=512), REF_COMPLEX, *COMPLEX_TARGET),
        Workload("selective", "float32", _dims(B=8, L=2048, D=1536, N=16), REF_SELECTIVE,
                 *SELECTIVE_TARGET),
        Workload("selective", "bfloat16", _dims(B=8, L=2048, D=1536, N=16), REF_SELECTIVE,
                 *SELECTIVE_TARGET),
    ]
    for L in LAYER_LENGTHS:
        for layer, opts in LAYERS:
            out.append(Workload("layer", "float32", _dims(B=32, L=L, d_model=256), REF_LAYER,
                                *LAYER_TARGET, layer=layer, options=opts))
    return out


def tiny(w: Workload) -> Workload:
    """The same workload at smoke-test size (CPU, Triton interpreter): same code paths."""
    small = {"B": 2, "L": 48 if w.kind != "layer" else w.dim["L"] // 64, "D": 16, "N": 4,
             "d_model": 16}
    dims = tuple((k, small[k]) for k, _ in w.dims)
    opts = tuple((k, min(v, 8) if k == "d_state" else v) for k, v in w.options)
    return replace(w, dims=dims, options=opts)


def select(workloads: list[Workload], pattern: str | None) -> list[Workload]:
    """Workloads whose name matches ``pattern``: comma-separated alternatives, each a shell
    wildcard (``"layer mamba*"``) or a case-insensitive substring (``"bfloat16"``); all when
    ``pattern`` is empty."""
    if not pattern:
        return list(workloads)
    import fnmatch

    alts = [p.strip().lower() for p in pattern.split(",") if p.strip()]

    def hit(name: str, p: str) -> bool:
        return fnmatch.fnmatch(name, p) if any(c in p for c in "*?[") else p in name

    return [w for w in workloads if any(hit(w.name.lower(), p) for p in alts)]


def elem_size(dtype: str) -> int:
    return torch.empty(0, dtype=DTYPES[dtype]).element_size()


def ideal_bytes(w: Workload) -> tuple[int | None, int | None]:
    """(fwd, fwd+bwd) bytes an ideal implementation moves (see the module docstring)."""
    d, e = w.dim, elem_size(w.dtype)
    if w.kind == "diag":
        n = d["B"] * d["L"] * d["D"]
        return 3 * n * e, 8 * n * e
    if w.kind == "selective":
        bld, bln = d["B"] * d["L"] * d["D"], d["B"] * d["L"] * d["N"]
        params = (d["D"] * d["N"] + 2 * d["D"]) * 4
        fwd = (4 * bld + 2 * bln) * e + params
        return fwd, fwd + (7 * bld + 4 * bln) * e + 2 * params
    return None, None


# ------------------------------------------------------------------------------------ inputs

def make_inputs(w: Workload, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """The workload's inputs in lrnnx's (B, L, ...) layout, made on ``device``.

    diag: ``a`` (decays, |a| in [0.5, 1); complex: random phase), ``b``, ``grad_h``.
    selective: ``u, delta, z, B, C, grad_y`` in the dtype, ``A`` (-(1..N) per channel, Mamba's
    S4D-real init), ``D``, ``delta_bias`` (softplus^-1 of dt in [1e-3, 1e-1]) in fp32.
    layer: ``x`` and ``grad_y`` (B, L, d_model) fp32.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    d, dt = w.dim, w.torch_dtype

    def rand(*shape):
        return torch.rand(*shape, generator=g, device=device)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device)

    if w.kind == "diag":
        shape = (d["B"], d["L"], d["D"])
        r = 0.5 + 0.5 * rand(*shape)
        a = torch.polar(r, 2 * math.pi * rand(*shape)) if dt.is_complex else r
        if dt.is_complex:
            b, gh = torch.complex(randn(*shape), randn(*shape)), \
                torch.complex(randn(*shape), randn(*shape))
        else:
            b, gh = randn(*shape), randn(*shape)
        return {"a": a.to(dt), "b": b.to(dt), "grad_h": gh.to(dt)}
    if w.kind == "selective":
        B, L, D, N = d["B"], d["L"], d["D"], d["N"]
        dt_init = torch.exp(rand(D) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        return {
            "u": randn(B, L, D).to(dt), "delta": (0.5 * randn(B, L, D)).to(dt),
            "z": randn(B, L, D).to(dt), "B": randn(B, L, N).to(dt), "C": randn(B, L, N).to(dt),
            "grad_y": randn(B, L, D).to(dt),
            "A": -torch.arange(1, N + 1, device=device, dtype=torch.float32).repeat(D, 1),
            "D": randn(D), "delta_bias": dt_init + torch.log(-torch.expm1(-dt_init)),
        }
    shape = (d["B"], d["L"], d["d_model"])
    return {"x": randn(*shape), "grad_y": randn(*shape)}
