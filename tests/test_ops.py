"""lrnnx.ops public API: every CPU-capable backend against the float64 sequential reference, and
every input-validation error path (message content asserted, no kernel reached)."""

from __future__ import annotations

import os

import pytest
import torch
from lrnnx_kernels import diag_scan_ref, selective_scan_ref
from lrnnx_kernels import discretize as kernels_discretize

import lrnnx
import lrnnx.ops as ops
from lrnnx.errors import InputError, InputTypeError, LrnnxError
from lrnnx.ops import validation

BACKENDS = ["torch", "torch_ref", "cpu"]
LENGTHS = [1, 2, 63, 64, 65, 1000]
# max |x - ref| / max |ref|.  bf16: 8 mantissa bits (eps 7.8e-3) on the stored output.
TOL = {torch.float64: 1e-12, torch.complex128: 1e-12, torch.float32: 1e-5,
       torch.complex64: 1e-5, torch.bfloat16: 1e-2}
C128, F64 = torch.complex128, torch.float64


def rel_err(x, ref) -> float:
    ref = ref.detach().to(C128 if ref.is_complex() else F64)
    x = x.detach().to(ref.dtype)
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


def close(x, ref, dtype, what):
    err = rel_err(x, ref)
    assert err <= TOL[dtype], f"{what}: rel err {err:.2e} > {TOL[dtype]:.0e} ({dtype})"


def up(t):
    return None if t is None else t.detach().to(C128 if t.is_complex() else F64)


def randn(shape, dtype, g):
    x = torch.randn(shape, dtype=C128 if dtype.is_complex else F64, generator=g)
    return x.to(dtype)


def rand_a(shape, dtype, g):
    """|a| < 0.99; real ones mostly positive with some negative, complex ones of any phase."""
    r = torch.rand(shape, dtype=F64, generator=g) * 0.99
    if dtype.is_complex:
        return torch.polar(r, torch.rand(shape, dtype=F64, generator=g) * 6.2832).to(dtype)
    neg = torch.rand(shape, generator=g) < 0.2
    return torch.where(neg, -r, r).to(dtype)


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "cpu":
        from lrnnx_plugins.backends.cpu_backend import CpuBackend, ensure_built

        try:
            ensure_built()
        except lrnnx.BackendUnavailableError as exc:
            if os.environ.get("CI"):
                pytest.fail(f"cpu backend unavailable in CI: {exc}")
            pytest.skip(str(exc))
        assert CpuBackend().available()[0]
    return request.param


# --------------------------------------------------------------------------- diag_scan
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("dtype", [F64, torch.float32, C128, torch.complex64])
@pytest.mark.parametrize("reverse", [False, True])
def test_diag_scan_forward(backend, L, dtype, reverse):
    g = torch.Generator().manual_seed(L)
    a, b, h0 = rand_a((2, L, 3), dtype, g), randn((2, L, 3), dtype, g), randn((2, 3), dtype, g)
    h, last = ops.diag_scan(a, b, h0, reverse=reverse, backend=backend)
    rh, rl = diag_scan_ref(up(a), up(b), up(h0), reverse)
    assert h.shape == (2, L, 3) and last.shape == (2, 3)
    assert h.dtype == dtype and last.dtype == dtype
    close(h, rh, dtype, f"{backend} h")
    close(last, rl, dtype, f"{backend} h_last")


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("dtype", [F64, torch.float32, C128])
@pytest.mark.parametrize("reverse", [False, True])
def test_diag_scan_gradients(backend, L, dtype, reverse):
    g = torch.Generator().manual_seed(100 + L)
    a, b, h0 = rand_a((2, L, 3), dtype, g), randn((2, L, 3), dtype, g), randn((2, 3), dtype, g)
    w, wl = randn((2, L, 3), dtype, g), randn((2, 3), dtype, g)

    def grads(fn, a, b, h0):
        a, b, h0 = (t.detach().clone().requires_grad_(True) for t in (a, b, h0))
        h, last = fn(a, b, h0)
        loss = (h * w.to(h.dtype)).real.sum() + (last * wl.to(h.dtype)).real.sum()
        return torch.autograd.grad(loss, (a, b, h0))

    got = grads(lambda *x: ops.diag_scan(*x, reverse=reverse, backend=backend), a, b, h0)
    ref = grads(lambda *x: diag_scan_ref(*x, reverse), up(a), up(b), up(h0))
    for name, x, r in zip("a b h0".split(), got, ref):
        close(x, r, dtype, f"{backend} grad {name}")


@pytest.mark.parametrize("reverse", [False, True])
def test_diag_scan_bf16_broadcast_a_no_h0(backend, reverse):
    g = torch.Generator().manual_seed(3)
    a = rand_a((1, 200, 5), torch.float32, g).to(torch.bfloat16)
    b = randn((3, 200, 5), torch.float32, g).to(torch.bfloat16)
    h, last = ops.diag_scan(a, b, reverse=reverse, backend=backend)
    rh, rl = diag_scan_ref(up(a), up(b), None, reverse)
    assert h.dtype == torch.bfloat16 and h.shape == (3, 200, 5)
    close(h, rh, torch.bfloat16, "bf16 h")
    close(last, rl, torch.bfloat16, "bf16 h_last")


def test_diag_scan_mixed_real_a_complex_b(backend):
    g = torch.Generator().manual_seed(4)
    a, b = rand_a((2, 70, 3), F64, g), randn((2, 70, 3), C128, g)
    h, last = ops.diag_scan(a, b, backend=backend)
    assert h.dtype == C128
    close(h, diag_scan_ref(a, b)[0], C128, "real a, complex b")


CUS = [[0, 70], [0, 5, 5, 40, 41, 70], [0, 0, 1, 69, 70, 70]]


@pytest.mark.parametrize("cu", CUS)
@pytest.mark.parametrize("dtype", [F64, torch.float32, C128])
@pytest.mark.parametrize("reverse", [False, True])
def test_diag_scan_varlen(backend, cu, dtype, reverse):
    n = len(cu) - 1
    g = torch.Generator().manual_seed(n)
    a, b, h0 = rand_a((1, 70, 4), dtype, g), randn((1, 70, 4), dtype, g), randn((n, 4), dtype, g)
    cu_t = torch.tensor(cu, dtype=torch.int32)
    w = randn((1, 70, 4), dtype, g)
    leaves = [t.clone().requires_grad_(True) for t in (a, b, h0)]
    h, last = ops.diag_scan(*leaves, reverse=reverse, cu_seqlens=cu_t, backend=backend)
    assert last.shape == (n, 4)
    ref_leaves = [up(t).requires_grad_(True) for t in (a, b, h0)]
    rh, rl = diag_scan_ref(*ref_leaves, reverse, cu_t.long())
    close(h, rh, dtype, "varlen h")
    close(last, rl, dtype, "varlen h_last")
    gx = torch.autograd.grad((h * w).real.sum() + last.real.sum(), leaves)
    gr = torch.autograd.grad((rh * up(w)).real.sum() + rl.real.sum(), ref_leaves)
    for name, x, r in zip("a b h0".split(), gx, gr):
        close(x, r, dtype, f"varlen grad {name}")


def test_diag_scan_empty_sequence_returns_h0(backend):
    a, b, h0 = torch.rand(2, 0, 3), torch.rand(2, 0, 3), torch.randn(2, 3)
    h, last = ops.diag_scan(a, b, h0, backend=backend)
    assert h.shape == (2, 0, 3)
    assert torch.equal(last, h0)


def test_diag_step_reproduces_scan(backend):
    g = torch.Generator().manual_seed(5)
    a, b, h0 = rand_a((2, 30, 3), C128, g), randn((2, 30, 3), C128, g), randn((2, 3), C128, g)
    h_scan, _ = ops.diag_scan(a, b, h0, backend=backend)
    h = h0
    for t in range(30):
        h = ops.diag_step(a[:, t], b[:, t], h, backend=backend)
        close(h, h_scan[:, t], C128, f"step {t}")
    first = ops.diag_step(a[:1, 0], b[:, 0], None, backend=backend)  # zero state, shared a
    assert torch.equal(first, b[:, 0])


def test_diag_step_half_precision_is_computed_in_fp32(backend):
    a = torch.full((1, 4), 0.999, dtype=torch.bfloat16)
    b = torch.full((2, 4), 1e-3, dtype=torch.bfloat16)
    h = torch.ones(2, 4, dtype=torch.bfloat16)
    out = ops.diag_step(a, b, h, backend=backend)
    assert out.dtype == torch.bfloat16
    expect = (a.float() * h.float() + b.float()).to(torch.bfloat16)
    assert torch.equal(out, expect)


# --------------------------------------------------------------------------- selective_scan
def ss_inputs(Bt, L, Dm, N, dtype=F64, *, G=None, complex_A=False, seed=0, extras=True):
    g = torch.Generator().manual_seed(seed)
    bc = (Bt, L, N) if G is None else (Bt, L, G, N)
    A = -torch.rand(Dm, N, dtype=F64, generator=g) - 0.1
    if complex_A:
        A = torch.complex(A, torch.randn(Dm, N, dtype=F64, generator=g))
    kw = dict(u=randn((Bt, L, Dm), F64, g), delta=torch.rand(Bt, L, Dm, dtype=F64, generator=g),
              A=A, B=randn(bc, C128 if complex_A else F64, g), C=randn(bc, F64, g))
    if extras:
        kw.update(D=randn((Dm,), F64, g), z=randn((Bt, L, Dm), F64, g),
                  delta_bias=randn((Dm,), F64, g), delta_softplus=True,
                  timesteps=torch.rand(Bt, L, dtype=F64, generator=g) + 0.5,
                  h0=randn((Bt, Dm, N), C128 if complex_A else F64, g))
    if dtype != F64:
        kw = {k: (v.to(torch.complex64 if v.is_complex() else dtype)
                  if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    return kw


@pytest.mark.parametrize("method", ["zoh", "bilinear", "mamba", "euler", "dirac"])
@pytest.mark.parametrize("L", [1, 63, 130])
def test_selective_scan_matches_reference(backend, method, L):
    kw = ss_inputs(2, L, 4, 3, G=2, seed=L)
    y, last = ops.selective_scan(**kw, discretization=method, return_last_state=True,
                                 backend=backend)
    ry, rl = selective_scan_ref(**kw, discretization=method, return_last_state=True)
    assert y.shape == (2, L, 4) and last.shape == (2, 4, 3)
    close(y, ry, F64, f"{backend} {method} y")
    close(last, rl, F64, f"{backend} {method} h_last")


@pytest.mark.parametrize("complex_A", [False, True])
@pytest.mark.parametrize("extras", [False, True])
def test_selective_scan_fp32_and_gradients(backend, complex_A, extras):
    kw64 = ss_inputs(2, 65, 4, 3, complex_A=complex_A, extras=extras, seed=7)
    kw32 = ss_inputs(2, 65, 4, 3, torch.float32, complex_A=complex_A, extras=extras, seed=7)
    method = "zoh" if complex_A else "mamba"
    y = ops.selective_scan(**kw32, discretization=method, backend=backend)
    ref_in = {k: up(v) if isinstance(v, torch.Tensor) else v for k, v in kw32.items()}
    assert y.dtype == torch.float32
    close(y, selective_scan_ref(**ref_in, discretization=method), torch.float32, "fp32 y")
    names = [k for k, v in kw64.items() if isinstance(v, torch.Tensor)]

    def grads(fn, kw):
        leaves = {k: v.clone().requires_grad_(True) if k in names else v for k, v in kw.items()}
        y, last = fn(**leaves, discretization=method, return_last_state=True)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=F64).view_as(y)).sum()
        loss = loss + last.real.sum()
        return torch.autograd.grad(loss, [leaves[k] for k in names])

    got = grads(lambda **k: ops.selective_scan(**k, backend=backend), kw64)
    ref = grads(selective_scan_ref, kw64)
    for name, x, r in zip(names, got, ref):
        close(x, r, F64, f"{backend} grad {name}")


def test_selective_step_reproduces_scan(backend):
    kw = ss_inputs(2, 12, 4, 3, G=2, complex_A=True, seed=9)
    y, last = ops.selective_scan(**kw, discretization="bilinear", return_last_state=True,
                                 backend=backend)
    state = kw["h0"]
    for t in range(12):
        y_t, state = ops.selective_step(
            kw["u"][:, t], kw["delta"][:, t], kw["A"], kw["B"][:, t], kw["C"][:, t], state,
            D=kw["D"], z_t=kw["z"][:, t], delta_bias=kw["delta_bias"], delta_softplus=True,
            discretization="bilinear", timesteps_t=kw["timesteps"][:, t], backend=backend)
        close(y_t, y[:, t], F64, f"step {t}")
    close(state, last, C128, "final state")


def test_discretize_is_the_kernel_implementation():
    assert ops.discretize is kernels_discretize
    assert set(ops.METHODS) == {"zoh", "bilinear", "mamba", "euler", "dirac"}
    A, dt = torch.tensor([-1.0], dtype=F64), torch.tensor([0.5], dtype=F64)
    A_bar, _ = ops.discretize("zoh", A, dt)
    assert torch.allclose(A_bar, torch.exp(torch.tensor([-0.5], dtype=F64)))


# --------------------------------------------------------------------------- validation
@pytest.fixture
def no_kernel(monkeypatch):
    """Validation must reject before any backend is selected or kernel is called."""
    def boom(*a, **k):
        raise AssertionError("a backend was reached although the inputs are invalid")

    monkeypatch.setattr(ops.dispatch, "call", boom)


def check_message(err: BaseException, fragments) -> None:
    assert isinstance(err, LrnnxError), f"{type(err).__name__} is not an lrnnx error: {err}"
    msg = str(err)
    for f in fragments:
        assert f in msg, f"{f!r} not in message:\n{msg}"


def ab(B=2, L=10, D=3, dtype=torch.float32):
    return torch.rand(B, L, D, dtype=dtype), torch.randn(B, L, D, dtype=dtype)


DIAG_ERRORS = [
    # (name, call, error type, fragments)
    ("a not tensor", lambda: ops.diag_scan([[1.0]], ab()[1]), InputTypeError,
     ["lrnnx.ops.diag_scan: a must be a torch.Tensor", "got list", "torch.as_tensor"]),
    ("b missing", lambda: ops.diag_scan(ab()[0], None), InputTypeError,
     ["b must be a torch.Tensor", "got None"]),
    ("b rank 2", lambda: ops.diag_scan(torch.rand(2, 3), torch.rand(2, 3)), InputError,
     ["b must be of rank 3 (B, L, D)", "got shape (2, 3)", "lrnnx.ops.diag_step"]),
    ("a shape", lambda: ops.diag_scan(torch.rand(2, 10, 4), ab()[1]), InputError,
     ["a must be of shape (2, 10, 3) like b, or (1, 10, 3)", "got shape (2, 10, 4)"]),
    ("a batch", lambda: ops.diag_scan(torch.rand(3, 10, 3), ab()[1]), InputError,
     ["a must be of shape (2, 10, 3)", "got shape (3, 10, 3)"]),
    ("a int", lambda: ops.diag_scan(torch.ones(2, 10, 3, dtype=torch.long), ab()[1]),
     InputTypeError, ["a must be a floating-point or complex tensor", "dtype torch.int64",
                      "a.float()"]),
    ("devices", lambda: ops.diag_scan(torch.rand(2, 10, 3, device="meta"), ab()[1]), InputError,
     ["a must be on the same device as b (cpu)", "got device meta", "a.to(b.device)"]),
    ("reverse", lambda: ops.diag_scan(*ab(), reverse="yes"), InputTypeError,
     ["reverse must be a bool", "str 'yes'"]),
    ("h0 shape", lambda: ops.diag_scan(*ab(), torch.zeros(2, 4)), InputError,
     ["h0 must be of shape (2, 3) (one row per batch element)", "got shape (2, 4)"]),
    ("h0 complex", lambda: ops.diag_scan(*ab(), torch.zeros(2, 3, dtype=C128)), InputTypeError,
     ["h0 must be real because the recurrence is real", "complex dtype torch.complex128",
      "h0.real"]),
    ("cu list", lambda: ops.diag_scan(*ab(1), cu_seqlens=[0, 10]), InputTypeError,
     ["cu_seqlens must be a torch.Tensor", "got list"]),
    ("cu float", lambda: ops.diag_scan(*ab(1), cu_seqlens=torch.tensor([0.0, 10.0])),
     InputTypeError, ["cu_seqlens must be an int32/int64 tensor", "dtype torch.float32",
                      "cu_seqlens.long()"]),
    ("cu 2-D", lambda: ops.diag_scan(*ab(1), cu_seqlens=torch.tensor([[0, 10]])), InputError,
     ["cu_seqlens must be 1-D with at least 2 entries", "got shape (1, 2)"]),
    ("cu short", lambda: ops.diag_scan(*ab(1), cu_seqlens=torch.tensor([0])), InputError,
     ["cu_seqlens must be 1-D with at least 2 entries", "got shape (1,)"]),
    ("cu batch", lambda: ops.diag_scan(*ab(2), cu_seqlens=torch.tensor([0, 10])), InputError,
     ["b must be of batch size 1 when cu_seqlens is given", "got batch size 2",
      "torch.cat(seqs, dim=1)"]),
    ("cu start", lambda: ops.diag_scan(*ab(1), cu_seqlens=torch.tensor([1, 10])), InputError,
     ["cu_seqlens must be offsets starting at 0 and ending at L=10", "got 1 ... 10"]),
    ("cu end", lambda: ops.diag_scan(*ab(1), cu_seqlens=torch.tensor([0, 4, 9])), InputError,
     ["ending at L=10", "got 0 ... 9", "total packed length"]),
    ("cu decreasing", lambda: ops.diag_scan(*ab(1), cu_seqlens=torch.tensor([0, 6, 4, 10])),
     InputError, ["cu_seqlens must be non-decreasing", "got [0, 6, 4, 10]"]),
    ("cu device", lambda: ops.diag_scan(*ab(1), cu_seqlens=torch.tensor([0, 10], device="meta")),
     InputError, ["cu_seqlens must be on the device of the inputs (cpu)", "got device meta"]),
    ("varlen h0", lambda: ops.diag_scan(*ab(1), torch.zeros(1, 3),
                                        cu_seqlens=torch.tensor([0, 4, 10])), InputError,
     ["h0 must be of shape (2, 3) (one row per packed sequence", "got shape (1, 3)"]),
    ("step rank", lambda: ops.diag_step(*ab()), InputError,
     ["lrnnx.ops.diag_step: b_t must be of rank 2 (B, D)", "lrnnx.ops.diag_scan"]),
    ("step h", lambda: ops.diag_step(torch.rand(2, 3), torch.rand(2, 3), torch.rand(3)),
     InputError, ["lrnnx.ops.diag_step: h must be of shape (2, 3)", "got shape (3,)"]),
    ("step a", lambda: ops.diag_step(torch.rand(3, 3), torch.rand(2, 3)), InputError,
     ["a_t must be of shape (2, 3) like b_t, or (1, 3)", "got shape (3, 3)"]),
]


@pytest.mark.parametrize("case", DIAG_ERRORS, ids=[c[0] for c in DIAG_ERRORS])
def test_diag_validation_errors(case, no_kernel):
    _, fn, exc, fragments = case
    with pytest.raises(exc) as info:
        fn()
    check_message(info.value, fragments)


def test_backend_argument_type():
    # checked by the dispatcher (not the validators), so no no_kernel spy here
    with pytest.raises(InputTypeError) as info:
        ops.diag_scan(*ab(), backend=None)
    check_message(info.value, ["backend must be 'auto' or the name of a registered scan backend",
                               "NoneType None"])


def test_value_checks_skipped_while_compiling(monkeypatch):
    bad = torch.tensor([0, 6, 4, 10])
    with pytest.raises(InputError, match="non-decreasing"):
        validation.cu_seqlens("diag_scan", bad, B=1, L=10, device=bad.device)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert validation.cu_seqlens("diag_scan", bad, B=1, L=10, device=bad.device) == 3


def ss(**over):
    kw = dict(u=torch.randn(2, 5, 6), delta=torch.rand(2, 5, 6), A=-torch.rand(6, 4),
              B=torch.randn(2, 5, 4), C=torch.randn(2, 5, 4))
    kw.update(over)
    return lambda: ops.selective_scan(**kw)


def sstep(**over):
    kw = dict(u_t=torch.randn(2, 6), delta_t=torch.rand(2, 6), A=-torch.rand(6, 4),
              B_t=torch.randn(2, 4), C_t=torch.randn(2, 4), state=None)
    kw.update(over)
    return lambda: ops.selective_step(**kw)


SEL_ERRORS = [
    ("u rank", ss(u=torch.randn(5, 6)), InputError,
     ["lrnnx.ops.selective_scan: u must be of rank 3 (Bt, L, Dm)", "lrnnx.ops.selective_step"]),
    ("u complex", ss(u=torch.randn(2, 5, 6, dtype=torch.complex64)), InputTypeError,
     ["u must be a real floating-point tensor", "torch.complex64", "u.real"]),
    ("delta shape", ss(delta=torch.rand(2, 5, 1)), InputError,
     ["delta must be of the shape of u (2, 5, 6)", "got shape (2, 5, 1)", "expand_as"]),
    ("delta int", ss(delta=torch.ones(2, 5, 6, dtype=torch.int32)), InputTypeError,
     ["delta must be a real floating-point tensor", "torch.int32"]),
    ("A Dm", ss(A=-torch.rand(5, 4)), InputError,
     ["A must be of shape (Dm, N) with Dm=6", "got shape (5, 4)"]),
    ("A missing", ss(A=None), InputTypeError, ["A must be a torch.Tensor", "got None"]),
    ("B lead", ss(B=torch.randn(2, 4, 4)), InputError,
     ["B must be of shape (Bt, L, N) or (Bt, L, G, N) with (Bt, L) = (2, 5)",
      "got shape (2, 4, 4)"]),
    ("B N", ss(B=torch.randn(2, 5, 3)), InputError,
     ["B must be of state size N=4", "got shape (2, 5, 3)", "d_state"]),
    ("C groups", ss(C=torch.randn(2, 5, 4, 4)), InputError,
     ["C must be grouped with a number of groups G dividing Dm=6", "G=4", "[1, 2, 3, 6]"]),
    ("D shape", ss(D=torch.ones(5)), InputError, ["D must be of shape (6,)", "got shape (5,)"]),
    ("delta_bias complex", ss(delta_bias=torch.ones(6, dtype=torch.complex64)), InputTypeError,
     ["delta_bias must be a real floating-point tensor"]),
    ("z shape", ss(z=torch.randn(2, 5)), InputError,
     ["z must be of the shape of u (2, 5, 6) (the gate)", "got shape (2, 5)"]),
    ("timesteps shape", ss(timesteps=torch.rand(2, 5, 6)), InputError,
     ["timesteps must be of shape (2, 5)", "got shape (2, 5, 6)", "drop the channel dim"]),
    ("h0 shape", ss(h0=torch.zeros(2, 6)), InputError,
     ["h0 must be of shape (Bt, Dm, N) = (2, 6, 4)", "got shape (2, 6)"]),
    ("h0 complex", ss(h0=torch.zeros(2, 6, 4, dtype=torch.complex64)), InputTypeError,
     ["h0 must be real because the recurrence is real"]),
    ("method typo", ss(discretization="zho"), InputError,
     ["discretization must be one of zoh, bilinear, mamba, euler, dirac", "got 'zho'",
      "did you mean 'zoh'?"]),
    ("method type", ss(discretization=3), InputTypeError,
     ["discretization must be one of", "int 3"]),
    ("softplus flag", ss(delta_softplus="true"), InputTypeError,
     ["delta_softplus must be a bool"]),
    ("devices", ss(C=torch.randn(2, 5, 4, device="meta")), InputError,
     ["C must be on the same device as u (cpu)", "got device meta"]),
    ("step rank", sstep(u_t=torch.randn(2, 5, 6)), InputError,
     ["lrnnx.ops.selective_step: u_t must be of rank 2 (Bt, Dm)", "lrnnx.ops.selective_scan"]),
    ("step state", sstep(state=torch.zeros(2, 6, 5)), InputError,
     ["state must be of shape (Bt, Dm, N) = (2, 6, 4)", "got shape (2, 6, 5)"]),
    ("step B", sstep(B_t=torch.randn(3, 4)), InputError,
     ["B_t must be of shape (Bt, N) or (Bt, G, N) with (Bt) = (2,)", "got shape (3, 4)"]),
    ("step timesteps", sstep(timesteps_t=torch.rand(2, 1)), InputError,
     ["timesteps_t must be of shape (2,)", "got shape (2, 1)"]),
]


@pytest.mark.parametrize("case", SEL_ERRORS, ids=[c[0] for c in SEL_ERRORS])
def test_selective_validation_errors(case, no_kernel):
    _, fn, exc, fragments = case
    with pytest.raises(exc) as info:
        fn()
    check_message(info.value, fragments)


def test_valid_calls_reach_the_backend(no_kernel):
    """The no_kernel spy does fire for valid inputs (so the error tests above are meaningful)."""
    with pytest.raises(AssertionError, match="backend was reached"):
        ops.diag_scan(*ab())
    with pytest.raises(AssertionError, match="backend was reached"):
        ss()()


def test_compile_constant_marker_matches_torch_and_import_stays_light():
    # dispatch._assume_constant sets the attribute torch.compiler.assume_constant_result sets,
    # without importing torch._dynamo (and with it triton) at `import lrnnx.ops`
    import subprocess
    import sys

    from lrnnx.ops import dispatch

    def f():
        return 1

    marked = torch.compiler.assume_constant_result(f)
    assert marked is f and f.__dict__ == {"_dynamo_marked_constant": True}
    assert dispatch._backend_for._dynamo_marked_constant is True
    code = ("import sys, lrnnx.ops; "
            "print('torch._dynamo' in sys.modules, 'triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout
