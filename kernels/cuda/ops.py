"""The CUDA kernels as ``torch.library`` custom ops (fake implementations for torch.compile and
autograd), and the public functions with the contracts of the reference kernels:

* :func:`diag_scan` = ``lrnnx_kernels.diag_scan.diag_scan_ref``;
* :func:`selective_scan` = ``lrnnx_kernels.selective_scan.selective_scan_ref`` (real or
  complex A / B / C, every discretization, timesteps, h0, last state);
* :func:`diag_step`, :func:`selective_step` = the single decoding steps.

The custom ops (``lrnnx::cuda_*``) exist as soon as this module is imported; the compiled library
is built / loaded only when one of them first runs on real tensors.  Inputs are cast here, with
differentiable torch ops, to what the kernels take (one storage dtype for the (Bt, L, D) tensors,
the compute dtype -- fp32, fp64 for double inputs, complex when any of A, B, C is -- for the rest),
so gradients come back in every input's own dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _build

DISC_CODES = {"mamba": 0, "euler": 0, "zoh": 1, "bilinear": 2, "dirac": 3}
_HALF = (torch.float16, torch.bfloat16)
_FAST = (torch.float32, torch.bfloat16, torch.float16)  # real dtypes with an fp32 state


def _impl():
    if _build.load() is None:
        from lrnnx.errors import BackendUnavailableError

        raise BackendUnavailableError(f"the CUDA kernels are unavailable: {_build.status()[1]}")
    return torch.ops.lrnnx_cuda_impl


def _real(dt: torch.dtype) -> torch.dtype:
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dt, dt)


def _cplx(rdt: torch.dtype) -> torch.dtype:
    return torch.complex128 if rdt == torch.float64 else torch.complex64


def _compute(dt: torch.dtype, cplx: bool) -> torch.dtype:
    r = torch.float64 if _real(dt) == torch.float64 else torch.float32
    return _cplx(r) if cplx else r


_PLAIN = (Tensor, torch.nn.Parameter)


def _direct(*tensors) -> bool:
    """Eager calls on plain tensors skip the custom-op layer and call the library's ops directly
    (through :class:`torch.autograd.Function` when a gradient is needed).  The custom op's Python
    dispatch cost ~40 us per call on the H200 host, enough to make a 0.12 ms bf16 scan
    CPU-bound (benchmarks/NOTES.md).  Under torch.compile / export, or with tensor subclasses
    (fake or functional tensors), the custom ops run as before (fake implementations)."""
    if torch.compiler.is_compiling():
        return False
    return all(t is None or type(t) in _PLAIN for t in tensors)


def chunk_len(double: bool, cplx: bool) -> int:
    """Tokens per selective-scan checkpoint (must equal ``selective_chunk`` in the library)."""
    size = (8 if double else 4) * (2 if cplx else 1)
    return 32 // size


TILED_MAX_N = 32  # selective_tiled.cu kTileMaxN


def tiled_selective(dtype: torch.dtype, cplx: bool, N: int, channels: int, groups: int) -> bool:
    """Whether the S6 forward/backward run the token-tiled kernels (``selective_tiled_ok`` in
    ``csrc/selective_tiled.cu``; keep the two in step): real, an fp32 state (fp32/fp16/bf16
    inputs), ``N <= 32``, and every block of 32 channels inside one group of B / C.  The
    ``LRNNX_SEL_TILED=0`` switch is not reflected here (it is for kernel comparisons)."""
    if cplx or dtype.is_complex or _real(dtype) == torch.float64 or not 1 <= N <= TILED_MAX_N:
        return False
    return groups == 1 or (channels // max(groups, 1)) % 32 == 0


# ----------------------------------------------------------------------------- diag scan
@torch.library.custom_op("lrnnx::cuda_diag_scan", mutates_args=())
def _diag_op(a: Tensor, b: Tensor, h0: Optional[Tensor], cu: Optional[Tensor],
             reverse: bool) -> tuple[Tensor, Tensor]:
    return _impl().diag_scan_fwd(a, b, h0, cu, reverse)


@_diag_op.register_fake
def _(a, b, h0, cu, reverse):
    B, L, D = b.shape
    nseq = B if cu is None else cu.shape[0] - 1
    # h_last: the input dtype for half inputs (the kernel stores it so), else the compute type
    last = a.dtype if a.dtype in _HALF else _compute(a.dtype, a.is_complex())
    return b.new_empty((B, L, D)), b.new_empty((nseq, D), dtype=last)


@torch.library.custom_op("lrnnx::cuda_diag_scan_bwd", mutates_args=())
def _diag_bwd_op(a: Tensor, h: Tensor, h0: Optional[Tensor], cu: Optional[Tensor],
                 gh: Optional[Tensor], gl: Optional[Tensor], reverse: bool,
                 need_a: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _impl().diag_scan_bwd(a, h, h0, cu, gh, gl, reverse, need_a)


@_diag_bwd_op.register_fake
def _(a, h, h0, cu, gh, gl, reverse, need_a):
    B, L, D = h.shape
    nseq = B if cu is None else cu.shape[0] - 1
    ga = h.new_empty((B, L, D)) if need_a else h.new_empty((0,))
    return ga, h.new_empty((B, L, D)), h.new_empty((nseq, D),
                                                   dtype=_compute(a.dtype, a.is_complex()))


def _diag_setup(ctx, inputs, output):
    a, b, h0, cu, reverse = inputs
    ctx.save_for_backward(a, output[0], h0, cu)
    ctx.reverse = reverse


def _diag_backward(ctx, gh, gl, bwd=None):
    a, h, h0, cu = ctx.saved_tensors
    gh = None if gh is None else gh.to(h.dtype).contiguous()
    gl = None if gl is None else gl.to(_compute(a.dtype, a.is_complex())).contiguous()
    ga, gb, gh0 = (bwd or _diag_bwd_op)(a, h, h0, cu, gh, gl, ctx.reverse,
                                        ctx.needs_input_grad[0])
    if not ctx.needs_input_grad[0]:
        ga = None
    elif a.shape[0] != h.shape[0]:
        ga = ga.to(_compute(a.dtype, a.is_complex())).sum(0, keepdim=True).to(a.dtype)
    return ga, gb, (gh0 if h0 is not None else None), None, None


_diag_op.register_autograd(_diag_backward, setup_context=_diag_setup)


class _DiagFn(torch.autograd.Function):
    """The eager twin of ``_diag_op`` with its autograd (same setup and backward code)."""

    @staticmethod
    def forward(ctx, a, b, h0, cu, reverse):
        out = _impl().diag_scan_fwd(a, b, h0, cu, reverse)
        ctx.set_materialize_grads(False)
        _diag_setup(ctx, (a, b, h0, cu, reverse), out)
        return out

    @staticmethod
    def backward(ctx, gh, gl):
        return _diag_backward(ctx, gh, gl, _impl().diag_scan_bwd)


def _diag_call(a, b, h0, cu, reverse):
    if not _direct(a, b, h0, cu):
        return _diag_op(a, b, h0, cu, reverse)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad
                                    or (h0 is not None and h0.requires_grad)):
        return _DiagFn.apply(a, b, h0, cu, reverse)
    return _impl().diag_scan_fwd(a, b, h0, cu, reverse)


def diag_scan(a: Tensor, b: Tensor, h0: Tensor | None = None, reverse: bool = False,
              cu_seqlens: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``h_t = a_t h_{t-1} + b_t`` on CUDA tensors; same contract as ``diag_scan_ref``.

    a (B, L, D) or (1, L, D); b (B, L, D); h0 (B, D) or (N_seq, D) with ``cu_seqlens`` (int32 /
    int64 offsets, B == 1).  Real fp16/bf16/fp32/fp64 or complex64/complex128; the state is
    carried in fp32 (fp64 for double).  Returns ``(h, h_last)`` in the promoted dtype.
    """
    if a.dim() != 3 or b.dim() != 3:
        raise ValueError(f"a and b must be (B, L, D); got {tuple(a.shape)} and {tuple(b.shape)}")
    dt = b.dtype
    if (a.dtype is dt and h0 is None and cu_seqlens is None and b.shape[1] > 0
            and dt in _FAST and a.is_contiguous() and b.is_contiguous()):
        # the common call (one real dtype, contiguous, no state, not packed): none of the
        # promotions / casts below apply; ~10 us less host time per call
        return _diag_call(a, b, None, None, bool(reverse))  # h_last already in dt
    out = torch.promote_types(a.dtype, b.dtype)
    if h0 is not None and h0.is_complex() and not out.is_complex:
        out = torch.promote_types(out, h0.dtype)
    if out.is_complex:
        out = _cplx(_real(out))
    B, L, D = b.shape
    cu = None if cu_seqlens is None else cu_seqlens.to(device=b.device, dtype=torch.int32)
    cdt = _compute(out, out.is_complex)
    if L == 0:
        nseq = B if cu is None else cu.numel() - 1
        last = h0.to(out) if h0 is not None else b.new_zeros((nseq, D), dtype=out)
        return b.new_zeros((B, 0, D), dtype=out), last
    h0c = None if h0 is None else h0.to(cdt).contiguous()
    h, last = _diag_call(a.to(out).contiguous(), b.to(out).contiguous(), h0c,
                         None if cu is None else cu.contiguous(), bool(reverse))
    return h, last.to(out)


# ----------------------------------------------------------------------------- diag step
@torch.library.custom_op("lrnnx::cuda_diag_step", mutates_args=())
def _dstep_op(a: Tensor, b: Tensor, h: Tensor) -> Tensor:
    return _impl().diag_step(a, b, h)


@_dstep_op.register_fake
def _(a, b, h):
    return b.new_empty(b.shape, dtype=_compute(a.dtype, a.is_complex()))


def _dstep_setup(ctx, inputs, output):
    a, b, h = inputs
    ctx.save_for_backward(a, h)


def _dstep_backward(ctx, g):
    # d(a h + b): grad_a = g conj(h) (summed over a shared row), grad_b = g, grad_h = g conj(a)
    a, h = ctx.saved_tensors
    ga = gh = None
    if ctx.needs_input_grad[0]:
        ga = g * h.conj()
        if a.shape[0] != g.shape[0]:
            ga = ga.sum(0, keepdim=True)
        ga = ga.to(a.dtype)
    if ctx.needs_input_grad[2]:
        gh = (g * a.conj()).to(h.dtype)
    return ga, g.to(a.dtype), gh


_dstep_op.register_autograd(_dstep_backward, setup_context=_dstep_setup)


def diag_step(a_t: Tensor, b_t: Tensor, h: Tensor | None) -> Tensor:
    """``h_new = a_t h + b_t`` in one launch; a_t (B, D) or (1, D); returns the promoted dtype."""
    if b_t.dim() != 2 or a_t.dim() != 2 or a_t.shape[1] != b_t.shape[1] \
            or a_t.shape[0] not in (1, b_t.shape[0]):
        raise ValueError(f"a_t {tuple(a_t.shape)} must be (B, D) or (1, D) with b_t "
                         f"{tuple(b_t.shape)} (B, D)")
    out = torch.promote_types(a_t.dtype, b_t.dtype)
    if h is not None and h.is_complex() and not out.is_complex:
        out = torch.promote_types(out, h.dtype)
    if out.is_complex:
        out = _cplx(_real(out))
    if h is None:
        return b_t.to(out).clone()
    if h.shape != b_t.shape:
        raise ValueError(f"h must be {tuple(b_t.shape)}; got {tuple(h.shape)}")
    cdt = _compute(out, out.is_complex)
    args = (a_t.to(out).contiguous(), b_t.to(out).contiguous(), h.to(cdt).contiguous())
    if _direct(*args) and not (torch.is_grad_enabled() and any(t.requires_grad for t in args)):
        res = _impl().diag_step(*args)
    else:
        res = _dstep_op(*args)
    return res.to(out)


# ----------------------------------------------------------------------------- selective scan
@torch.library.custom_op("lrnnx::cuda_selective_scan_fwd", mutates_args=())
def _sel_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
            z: Optional[Tensor], bias: Optional[Tensor], ts: Optional[Tensor],
            h0: Optional[Tensor], softplus: bool, disc: int,
            store_ck: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _impl().selective_fwd(u, delta, A, B, C, D, z, bias, ts, h0, softplus, disc, store_ck)


@_sel_op.register_fake
def _(u, delta, A, B, C, D, z, bias, ts, h0, softplus, disc, store_ck):
    Bt, L, Dm = u.shape
    N = A.shape[1]
    ck = chunk_len(u.dtype == torch.float64, A.is_complex())
    ck_shape = (Bt, (L + ck - 1) // ck, Dm, N) if store_ck else (0,)
    return torch.empty_like(u), A.new_empty((Bt, Dm, N)), A.new_empty(ck_shape)


@torch.library.custom_op("lrnnx::cuda_selective_scan_bwd", mutates_args=())
def _sel_bwd_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                z: Optional[Tensor], bias: Optional[Tensor], ts: Optional[Tensor], ck: Tensor,
                dy: Optional[Tensor], dlast: Optional[Tensor], softplus: bool,
                disc: int) -> list[Tensor]:
    return _impl().selective_bwd(u, delta, A, B, C, D, z, bias, ts, ck, dy, dlast, softplus, disc)


@_sel_bwd_op.register_fake
def _(u, delta, A, B, C, D, z, bias, ts, ck, dy, dlast, softplus, disc):
    Bt, L, Dm = u.shape
    N = A.shape[1]
    r = _real(A.dtype)
    return [torch.empty_like(u), torch.empty_like(u), A.new_empty((Bt, Dm, N)),
            torch.empty_like(B), torch.empty_like(C), u.new_empty((Bt, Dm), dtype=r),
            torch.empty_like(u) if z is not None else u.new_empty((0,)),
            u.new_empty((Bt, Dm), dtype=r), u.new_empty((Bt, L), dtype=r),
            A.new_empty((Bt, Dm, N))]


def _sel_setup(ctx, inputs, output):
    (u, delta, A, B, C, D, z, bias, ts, h0, softplus, disc, store_ck) = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, bias, ts, output[2])
    ctx.cfg = (softplus, disc, store_ck)


def _sel_backward(ctx, dy, dlast, _dck, bwd=None):
    u, delta, A, B, C, D, z, bias, ts, ck = ctx.saved_tensors
    softplus, disc, store_ck = ctx.cfg
    if not store_ck:
        raise RuntimeError("cuda selective_scan: the forward ran without gradients enabled, so no "
                           "state checkpoints were kept; rerun it with grad enabled")
    dy = None if dy is None else dy.to(u.dtype).contiguous()
    dlast = None if dlast is None else dlast.to(A.dtype).contiguous()
    (du, dd, dA, dB, dC, dD, dz, dbias, dts, dh0) = (bwd or _sel_bwd_op)(
        u, delta, A, B, C, D, z, bias, ts, ck, dy, dlast, softplus, disc)
    need = ctx.needs_input_grad
    return (du if need[0] else None, dd if need[1] else None,
            dA.sum(0) if need[2] else None, dB if need[3] else None, dC if need[4] else None,
            dD.sum(0) if (D is not None and need[5]) else None,
            dz if (z is not None and need[6]) else None,
            dbias.sum(0) if (bias is not None and need[7]) else None,
            dts if (ts is not None and need[8]) else None,
            dh0 if need[9] else None, None, None, None)


_sel_op.register_autograd(_sel_backward, setup_context=_sel_setup)


class _SelFn(torch.autograd.Function):
    """The eager twin of ``_sel_op`` with its autograd (same setup and backward code)."""

    @staticmethod
    def forward(ctx, *inputs):
        out = _impl().selective_fwd(*inputs)
        ctx.set_materialize_grads(False)
        _sel_setup(ctx, inputs, out)
        ctx.mark_non_differentiable(out[2])
        return tuple(out)

    @staticmethod
    def backward(ctx, dy, dlast, dck):
        return _sel_backward(ctx, dy, dlast, dck, _impl().selective_bwd)


def _sel_call(*inputs):
    if not _direct(*inputs[:10]):
        return _sel_op(*inputs)
    if inputs[12]:  # store_ck: a gradient is needed
        return _SelFn.apply(*inputs)
    return _impl().selective_fwd(*inputs)


def _sel_cast(u, delta, A, B, C, D, z, delta_bias, timesteps, h0):
    """(storage dtype, compute state dtype, tensors cast for the kernels)."""
    double = any(t is not None and _real(t.dtype) == torch.float64
                 for t in (u, delta, A, B, C, h0))
    cplx = A.is_complex() or B.is_complex() or C.is_complex()
    rdt = torch.float64 if double else torch.float32
    sdt = _cplx(rdt) if cplx else rdt
    if double:
        store = torch.float64
    else:
        store = u.dtype
        for t in (delta, z):
            if t is not None:
                store = torch.promote_types(store, t.dtype)
    c = lambda t, dt: None if t is None else t.to(dt).contiguous()  # noqa: E731
    return store, sdt, (c(u, store), c(delta, store), c(A, sdt), c(B, sdt), c(C, sdt),
                        c(D, rdt), c(z, store), c(delta_bias, rdt), c(timesteps, rdt),
                        c(h0, sdt))


def _group(X: Tensor, lead: int, Dm: int, name: str) -> Tensor:
    if X.dim() == lead + 1:
        X = X.unsqueeze(-2)
    if X.dim() != lead + 2 or Dm % X.shape[-2] != 0:
        raise ValueError(f"{name} must be (..., N) or (..., G, N) with G dividing {Dm}; got "
                         f"{tuple(X.shape)}")
    return X


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Tensor | None = None, z: Tensor | None = None,
                   delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   discretization: str = "mamba", timesteps: Tensor | None = None,
                   h0: Tensor | None = None, return_last_state: bool = False):
    """Fused S6 scan on CUDA tensors; same arguments and results as ``selective_scan_ref``.

    Real or complex A / B / C (N <= 128), methods mamba/euler/zoh/bilinear/dirac, grouped B/C,
    timesteps, h0.  ``y`` in u's dtype; the last state in the compute dtype.
    """
    if discretization not in DISC_CODES:
        raise ValueError(f"unknown discretization {discretization!r}; one of "
                         f"{sorted(DISC_CODES)}")
    Bt, L, Dm = u.shape
    N = A.shape[1]
    Bg, Cg = _group(B, 2, Dm, "B"), _group(C, 2, Dm, "C")
    store, sdt, args = _sel_cast(u, delta, A, Bg, Cg, D, z, delta_bias, timesteps, h0)
    if L == 0:
        y = u.new_zeros((Bt, 0, Dm))
        last = args[9] if h0 is not None else u.new_zeros((Bt, Dm, N), dtype=sdt)
        return (y, last) if return_last_state else y
    need = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (u, delta, A, B, C, D, z, delta_bias, timesteps, h0))
    y, last, _ = _sel_call(*args, bool(delta_softplus), DISC_CODES[discretization], need)
    y = y.to(u.dtype)
    return (y, last) if return_last_state else y


@torch.library.custom_op("lrnnx::cuda_selective_step", mutates_args=())
def _sstep_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
              z: Optional[Tensor], bias: Optional[Tensor], ts: Optional[Tensor],
              state: Optional[Tensor], softplus: bool, disc: int) -> tuple[Tensor, Tensor]:
    return _impl().selective_step(u, delta, A, B, C, D, z, bias, ts, state, softplus, disc)


@_sstep_op.register_fake
def _(u, delta, A, B, C, D, z, bias, ts, state, softplus, disc):
    return torch.empty_like(u), A.new_empty((u.shape[0], u.shape[1], A.shape[1]))


def selective_step(u_t: Tensor, delta_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor,
                   state: Tensor | None, D: Tensor | None = None, z_t: Tensor | None = None,
                   delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   discretization: str = "mamba", timesteps_t: Tensor | None = None):
    """One S6 token in one launch (decoding); contract of ``selective_step`` of the reference.

    The kernel has no backward: with gradients required the reference PyTorch step runs.
    """
    tensors = (u_t, delta_t, A, B_t, C_t, state, D, z_t, delta_bias, timesteps_t)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        from lrnnx_kernels.selective_scan import selective_step as ref_step

        return ref_step(u_t, delta_t, A, B_t, C_t, state, D, z_t, delta_bias, delta_softplus,
                        discretization, timesteps_t)
    if discretization not in DISC_CODES:
        raise ValueError(f"unknown discretization {discretization!r}")
    Dm = u_t.shape[1]
    Bg, Cg = _group(B_t, 1, Dm, "B_t"), _group(C_t, 1, Dm, "C_t")
    store, sdt, args = _sel_cast(u_t, delta_t, A, Bg, Cg, D, z_t, delta_bias, timesteps_t, state)
    if _direct(*args):
        y, new = _impl().selective_step(*args, bool(delta_softplus), DISC_CODES[discretization])
    else:
        y, new = _sstep_op(*args, bool(delta_softplus), DISC_CODES[discretization])
    return y.to(u_t.dtype), new
