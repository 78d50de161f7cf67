"""diag_scan fast paths (chunked PyTorch, C++ CPU) against the float64 loop."""
import pytest
import torch

import lrnnx_kernels.diag_scan.chunked as chunked_mod
from lrnnx_kernels import diag_scan_chunked, diag_scan_cpu, diag_scan_ref, diag_step
from lrnnx_kernels_testutils import assert_close, rand_a, randn, require_cpu_ext, up

IMPLS = {"chunked": diag_scan_chunked, "cpu": diag_scan_cpu}
LENGTHS = [1, 2, 63, 64, 65, 1000]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.complex128, torch.complex64]


@pytest.fixture(params=list(IMPLS))
def impl(request):
    if request.param == "cpu":
        require_cpu_ext()
    return IMPLS[request.param]


def make(B, L, D, dtype, seed, Ba=None, h0=True, nseq=None):
    g = torch.Generator().manual_seed(seed)
    a = rand_a((Ba or B, L, D), dtype if dtype != torch.bfloat16 else torch.float32, g).to(dtype)
    b = randn((B, L, D), dtype if dtype != torch.bfloat16 else torch.float32, g).to(dtype)
    h = randn((nseq or B, D), b.dtype, g) if h0 else None
    return a, b, h


def check(out, ref, dtype, what):
    h, last = out
    assert h.dtype == dtype and last.dtype == dtype, what
    assert_close(h, ref[0], dtype, what + " h")
    assert_close(last, ref[1], dtype, what + " h_last")


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_forward(impl, L, dtype, reverse):
    a, b, h0 = make(2, L, 5, dtype, seed=L)
    ref = diag_scan_ref(up(a), up(b), up(h0), reverse)
    check(impl(a, b, h0, reverse), ref, dtype, f"L={L}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128, torch.float32])
@pytest.mark.parametrize("reverse", [False, True])
def test_no_h0_and_broadcast_a(impl, dtype, reverse):
    a, b, _ = make(3, 150, 7, dtype, seed=1, Ba=1, h0=False)
    ref = diag_scan_ref(up(a), up(b), None, reverse)
    check(impl(a, b, None, reverse), ref, dtype, "broadcast")
    # same as an explicitly expanded a
    check(impl(a.expand(3, -1, -1).contiguous(), b, None, reverse), ref, dtype, "expanded")


CUS = [[0, 300], [0, 5, 5, 100, 101, 300], [0, 0, 1, 299, 300, 300], [0, 64, 128, 192, 300]]


@pytest.mark.parametrize("cu", CUS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128, torch.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_varlen_vs_per_sequence(impl, cu, dtype, reverse, with_h0):
    n = len(cu) - 1
    a, b, h0 = make(1, 300, 6, dtype, seed=n, h0=with_h0, nseq=n)
    cu_t = torch.tensor(cu, dtype=torch.int32)
    h, last = impl(a, b, h0, reverse, cu_t)
    assert last.shape == (n, 6)
    for i in range(n):
        s, e = cu[i], cu[i + 1]
        hi = None if h0 is None else up(h0[i : i + 1])
        rh, rl = diag_scan_ref(up(a[:, s:e]), up(b[:, s:e]), hi, reverse)
        if e > s:
            assert_close(h[:, s:e], rh, dtype, f"seq {i}")
            assert_close(last[i : i + 1], rl, dtype, f"last {i}")
        else:  # empty sequence: its final state is its initial state
            expect = h0[i] if h0 is not None else torch.zeros(6, dtype=dtype)
            assert torch.equal(last[i], expect)


def test_varlen_matches_ref_varlen(impl):
    a, b, h0 = make(1, 200, 4, torch.float64, seed=3, nseq=3)
    cu = torch.tensor([0, 50, 120, 200])
    ref = diag_scan_ref(a, b, h0, False, cu)
    check(impl(a, b, h0, False, cu), ref, torch.float64, "varlen")


@pytest.mark.parametrize("L", [1, 65, 300])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128, torch.float32, torch.complex64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode", ["plain", "bcast", "varlen"])
def test_gradients_vs_ref(impl, L, dtype, reverse, mode):
    B, Ba, cu, n = 2, None, None, 2
    if mode == "bcast":
        Ba = 1
    if mode == "varlen":
        B, cu = 1, torch.tensor([0, L // 3, L // 3, L])
        n = 3
    a, b, h0 = make(B, L, 4, dtype, seed=L + 7, Ba=Ba, nseq=n)
    g = torch.Generator().manual_seed(0)
    gh, gl = randn(b.shape, dtype, g), randn(h0.shape, dtype, g)

    def grads(f, a, b, h0):
        a, b, h0 = (x.detach().requires_grad_() for x in (a, b, h0))
        h, last = f(a, b, h0, reverse, cu)
        loss = (h * gh.to(h.dtype).conj()).real.sum() + (last * gl.to(h.dtype).conj()).real.sum()
        return torch.autograd.grad(loss, (a, b, h0))

    ref = grads(diag_scan_ref, up(a), up(b), up(h0))
    got = grads(impl, a, b, h0)
    for name, x, r in zip("a b h0".split(), got, ref):
        assert x.dtype == dtype
        assert_close(x, r, dtype, f"grad {name}")


def test_real_a_complex_b(impl):
    a, _, _ = make(2, 70, 3, torch.float64, seed=5)
    _, b, h0 = make(2, 70, 3, torch.complex128, seed=6)
    a.requires_grad_()
    ref = diag_scan_ref(a, b, h0)
    out = impl(a, b, h0)
    assert out[0].dtype == torch.complex128
    assert_close(out[0], ref[0], torch.complex128, "h")
    (ga,) = torch.autograd.grad(out[0].abs().sum(), a)
    (gr,) = torch.autograd.grad(ref[0].abs().sum(), a)
    assert ga.dtype == torch.float64
    assert_close(ga, gr, torch.float64, "grad a")


def test_bf16_gradients(impl):
    a, b, h0 = make(2, 65, 8, torch.bfloat16, seed=9)
    a, b, h0 = (x.requires_grad_() for x in (a, b, h0))
    h, last = impl(a, b, h0)
    (h.float().sum() + last.float().sum()).backward()
    ar, br, hr = (up(x).requires_grad_() for x in (a, b, h0))
    rh, rl = diag_scan_ref(ar, br, hr)
    (rh.sum() + rl.sum()).backward()
    for x, r in ((a, ar), (b, br), (h0, hr)):
        assert x.grad.dtype == torch.bfloat16
        assert_close(x.grad, r.grad, torch.bfloat16, "bf16 grad")


def test_non_contiguous_inputs(impl):
    a, b, h0 = make(2, 40, 6, torch.float64, seed=2)
    at = a.transpose(1, 2).contiguous().transpose(1, 2)
    bt = b.transpose(1, 2).contiguous().transpose(1, 2)
    assert not at.is_contiguous()
    check(impl(at, bt, h0), diag_scan_ref(a, b, h0), torch.float64, "strided")


def test_split_sequence_carried_state(impl):
    a, b, h0 = make(2, 200, 5, torch.float64, seed=4)
    full = impl(a, b, h0)
    h1, l1 = impl(a[:, :77], b[:, :77], h0)
    h2, l2 = impl(a[:, 77:], b[:, 77:], l1)
    assert_close(torch.cat([h1, h2], 1), full[0], torch.float64, "split")
    assert_close(l2, full[1], torch.float64, "split last")


def test_step_loop_equals_scan(impl):
    a, b, h0 = make(2, 50, 5, torch.complex128, seed=8)
    h = h0
    states = []
    for t in range(50):
        h = diag_step(a[:, t], b[:, t], h)
        states.append(h)
    hs, last = impl(a, b, h0)
    assert_close(hs, torch.stack(states, 1), torch.complex128, "steps")
    assert_close(last, h, torch.complex128, "steps last")


def test_errors(impl):
    a = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError):
        impl(a, torch.zeros(2, 5, 4))
    with pytest.raises(ValueError):
        impl(a, a, torch.zeros(3, 3))
    with pytest.raises(ValueError):
        impl(a, a, None, False, torch.tensor([0, 5]))  # B != 1
    with pytest.raises(ValueError):
        impl(a[:1], a[:1], None, False, torch.tensor([0, 4]))  # does not end at L


# ----- gradcheck (float64, tiny shapes) ---------------------------------------


def _gradcheck(f, dtype, reverse, mode):
    B, Ba, L, D, n, cu = 2, 2, 11, 2, 2, None
    if mode == "bcast":
        Ba = 1
    if mode == "varlen":
        B, Ba, n, cu = 1, 1, 3, torch.tensor([0, 4, 4, 11])
    a, b, h0 = make(B, L, D, dtype, seed=11, Ba=Ba, nseq=n)
    args = tuple(x.requires_grad_() for x in (a, b, h0))
    assert torch.autograd.gradcheck(lambda a, b, h0: f(a, b, h0, reverse, cu), args)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode", ["plain", "bcast", "varlen"])
def test_gradcheck(impl, dtype, reverse, mode, monkeypatch):
    # Tiny chunks so that L = 11 runs the multi-level chunked algorithm.
    monkeypatch.setattr(chunked_mod, "_MIN_CHUNK", 2)
    monkeypatch.setattr(chunked_mod, "_MAX_CHUNK", 3)
    _gradcheck(impl, dtype, reverse, mode)


@pytest.mark.parametrize("L", [5, 17, 100, 1000])
@pytest.mark.parametrize("reverse", [False, True])
def test_chunked_deep_recursion(L, reverse, monkeypatch):
    monkeypatch.setattr(chunked_mod, "_MIN_CHUNK", 2)
    monkeypatch.setattr(chunked_mod, "_MAX_CHUNK", 3)
    a, b, h0 = make(2, L, 3, torch.complex128, seed=L, Ba=1)
    check(diag_scan_chunked(a, b, h0, reverse), diag_scan_ref(a, b, h0, reverse), torch.complex128, "deep")


def test_empty_sequence(impl):
    a = torch.zeros(2, 0, 3)
    h0 = torch.randn(2, 3)
    h, last = impl(a, a, h0)
    assert h.shape == (2, 0, 3) and torch.equal(last, h0)


def test_cpu_custom_op_opcheck():
    """Schema, fake kernel and autograd registration of the CPU scan's custom ops, which
    torch.compile traces (the C++ module's pybind functions cannot be traced)."""
    require_cpu_ext()
    torch.manual_seed(0)
    for bcast, with_h0, cu in ((False, True, None), (True, False, torch.tensor([0, 2, 7]))):
        B = 1 if cu is not None else 2
        a = (torch.rand(1 if bcast else B, 7, 3) * 0.9).requires_grad_()
        b = torch.randn(B, 7, 3, requires_grad=True)
        nseq = B if cu is None else 2
        h0 = torch.randn(nseq, 3, requires_grad=True) if with_h0 else None
        torch.library.opcheck(torch.ops.lrnnx.cpu_diag_scan.default, (a, b, h0, cu, True),
                              test_utils=("test_schema", "test_autograd_registration",
                                          "test_faketensor"))


def test_cpu_scan_compiles_fullgraph():
    """torch.compile(fullgraph=True) through the CPU backend: the same outputs and gradients
    as eager (aot_eager: capture + autograd, no code generation, keeps the test fast)."""
    require_cpu_ext()
    torch.manual_seed(0)
    a = (torch.rand(1, 9, 4) * 0.9).requires_grad_()
    b = torch.randn(2, 9, 4, requires_grad=True)
    h0 = torch.randn(2, 4, requires_grad=True)

    def f(a, b, h0):
        h, last = diag_scan_cpu(a, b, h0, reverse=False)
        return (h * torch.arange(4.0)).sum() + last.square().sum()

    ref = torch.autograd.grad(f(a, b, h0), (a, b, h0))
    torch._dynamo.reset()
    got = torch.autograd.grad(torch.compile(f, fullgraph=True, backend="aot_eager")(a, b, h0),
                              (a, b, h0))
    for x, y in zip(got, ref):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
