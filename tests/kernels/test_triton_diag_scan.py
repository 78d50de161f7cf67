"""Triton diag_scan / diag_step on CPU through the Triton interpreter, against the float64 loop.

``TRITON_INTERPRET=1`` is set by a module fixture before the kernels are first imported (lazily,
inside the tests) and restored afterwards; on a CUDA machine these tests skip unless it is
already set (tests/gpu/test_triton_gpu.py covers the GPU).  The interpreter is slow, so shapes
are tiny and tiles are small (``BL``) to cross tile boundaries.  Without triton the module
skips, except under CI (``CI`` set), where it fails.
"""
import importlib.util
import os

import pytest
import torch

if importlib.util.find_spec("triton") is None:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        pytest.fail("triton must be installed in CI (pip install -e '.[dev]')", pytrace=False)
    pytest.skip("triton is not installed", allow_module_level=True)
if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
    pytest.skip("CUDA present: the kernels are tested by tests/gpu/test_triton_gpu.py (set "
                "TRITON_INTERPRET=1 to run these CPU tests)", allow_module_level=True)

from lrnnx_kernels import diag_scan_ref, diag_step
from lrnnx_kernels_testutils import assert_close, rand_a, randn, up


@pytest.fixture(autouse=True, scope="module")
def triton_interpreter():
    """TRITON_INTERPRET=1 while this module runs.  It must be set when the kernels are first
    imported (``@triton.jit`` reads it then; they are imported lazily, inside the tests), and
    it is restored afterwards so that other test modules never see the triton backend as
    available for CPU tensors."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    yield
    if old is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = old


BL = 4  # tile length used by the tests (lengths BL - 1, BL, BL + 1 and several tiles)
BD = 4  # channel block: D = 5 gives one full and one masked block


def tri():
    from lrnnx_kernels import triton as kt

    return kt


def make(B, L, D, dtype, seed, Ba=None, nseq=None, h0=True):
    g = torch.Generator().manual_seed(seed)
    base = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    a = rand_a((Ba or B, L, D), base, g).to(dtype)
    b = randn((B, L, D), base, g).to(dtype)
    h = randn((nseq or B, D), base, g).to(dtype) if h0 else None
    return a, b, h


def scan(a, b, h0=None, reverse=False, cu=None, **kw):
    kw.setdefault("block_l", BL)
    kw.setdefault("block_d", BD)
    return tri().diag_scan(a, b, h0, reverse, cu, **kw)


def check(out, ref, dtype, what):
    h, last = out
    assert h.dtype == dtype and last.dtype == dtype, what
    assert h.shape == ref[0].shape and last.shape == ref[1].shape, what
    assert_close(h, ref[0], dtype, what + " h")
    assert_close(last, ref[1], dtype, what + " h_last")


@pytest.mark.parametrize("L", [BL - 1, BL, BL + 1, 3 * BL + 1])
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_lengths(L, reverse):
    a, b, h0 = make(2, L, 5, torch.float32, seed=L)
    check(scan(a, b, h0, reverse), diag_scan_ref(up(a), up(b), up(h0), reverse),
          torch.float32, f"L={L}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16,
                                   torch.complex64, torch.complex128])
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_dtypes(dtype, reverse):
    a, b, h0 = make(2, 2 * BL + 1, 5, dtype, seed=3)
    check(scan(a, b, h0, reverse), diag_scan_ref(up(a), up(b), up(h0), reverse), dtype,
          str(dtype))


def test_default_blocks_long_sequence():
    """Default tiles (64 x 32) over several tiles, a shared ``a`` and no h0."""
    a, b, _ = make(2, 150, 3, torch.float32, seed=1, Ba=1, h0=False)
    out = tri().diag_scan(a, b)
    check(out, diag_scan_ref(up(a), up(b)), torch.float32, "default blocks")


CUS = [[0, 2, 2, 7, 11], [0, 0, 11, 11]]


@pytest.mark.parametrize("cu", CUS)
@pytest.mark.parametrize("reverse", [False, True])
def test_varlen_forward(cu, reverse):
    n = len(cu) - 1
    a, b, h0 = make(1, 11, 5, torch.float32, seed=n, nseq=n)
    cu_t = torch.tensor(cu)
    check(scan(a, b, h0, reverse, cu_t), diag_scan_ref(up(a), up(b), up(h0), reverse, cu_t),
          torch.float32, "varlen")
    # without h0: every sequence starts from zeros; empty ones end at zeros
    check(scan(a, b, None, reverse, cu_t.to(torch.int32)),
          diag_scan_ref(up(a), up(b), None, reverse, cu_t), torch.float32, "varlen no h0")


def _grads(f, a, b, h0, gh, gl, reverse, cu, **kw):
    a, b, h0 = (x.detach().clone().requires_grad_() for x in (a, b, h0))
    h, last = f(a, b, h0, reverse, cu, **kw)
    loss = (h * gh.to(h.dtype).conj()).real.sum() + (last * gl.to(h.dtype).conj()).real.sum()
    return torch.autograd.grad(loss, (a, b, h0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode", ["plain", "bcast", "varlen"])
def test_gradients(dtype, reverse, mode):
    B, Ba, cu, n, L = 2, None, None, 2, 2 * BL + 1
    if mode == "bcast":
        Ba = 1
    if mode == "varlen":
        B, n, cu = 1, 3, torch.tensor([0, 3, 3, L])
    a, b, h0 = make(B, L, 5, dtype, seed=L + 7, Ba=Ba, nseq=n)
    g = torch.Generator().manual_seed(0)
    gh, gl = randn(b.shape, dtype, g), randn(h0.shape, dtype, g)
    ref = _grads(diag_scan_ref, up(a), up(b), up(h0), up(gh), up(gl), reverse, cu)
    got = _grads(scan, a, b, h0, gh, gl, reverse, cu)
    for name, x, r in zip(("a", "b", "h0"), got, ref):
        assert x.dtype == dtype and x.shape == r.shape, name
        assert_close(x, r, dtype, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_gradients(dtype):
    a, b, h0 = make(2, BL + 1, 5, dtype, seed=9)
    a, b, h0 = (x.requires_grad_() for x in (a, b, h0))
    h, last = scan(a, b, h0)
    (h.float().sum() + last.float().square().sum()).backward()
    ar, br, hr = (up(x).requires_grad_() for x in (a, b, h0))
    rh, rl = diag_scan_ref(ar, br, hr)
    (rh.sum() + rl.square().sum()).backward()
    for x, r in ((a, ar), (b, br), (h0, hr)):
        assert x.grad.dtype == dtype
        assert_close(x.grad, r.grad, dtype, f"{dtype} grad")


def test_gradient_of_one_output_only():
    """Only h (no h_last gradient), then only h_last: the missing grad is treated as zero."""
    a, b, h0 = make(2, BL + 3, 5, torch.float32, seed=4)
    for pick in (0, 1):
        xs = [x.detach().clone().requires_grad_() for x in (a, b, h0)]
        rs = [up(x).requires_grad_() for x in (a, b, h0)]
        scan(*xs)[pick].sum().backward()
        diag_scan_ref(*rs)[pick].sum().backward()
        for x, r in zip(xs, rs):
            assert_close(x.grad, r.grad, torch.float32, f"output {pick}")


def test_real_a_complex_b_and_no_h0_grad():
    a, _, _ = make(2, BL + 2, 3, torch.float32, seed=5)
    _, b, _ = make(2, BL + 2, 3, torch.complex64, seed=6)
    a.requires_grad_()
    h, last = scan(a, b)
    assert h.dtype == torch.complex64
    ar = up(a).requires_grad_()
    rh, rl = diag_scan_ref(ar, up(b))
    assert_close(h, rh, torch.complex64, "h")
    (ga,) = torch.autograd.grad(h.abs().sum() + last.abs().sum(), a)
    (gr,) = torch.autograd.grad(rh.abs().sum() + rl.abs().sum(), ar)
    assert ga.dtype == torch.float32
    assert_close(ga, gr, torch.float32, "grad a")


def test_split_sequence_carried_state():
    a, b, h0 = make(2, 3 * BL, 5, torch.float64, seed=4)
    full = scan(a, b, h0)
    h1, l1 = scan(a[:, :5], b[:, :5], h0)
    h2, l2 = scan(a[:, 5:], b[:, 5:], l1)
    assert_close(torch.cat([h1, h2], 1), full[0], torch.float64, "split")
    assert_close(l2, full[1], torch.float64, "split last")


def test_empty_length_and_errors():
    a = torch.zeros(2, 0, 3)
    h, last = scan(a, a, torch.ones(2, 3))
    assert h.shape == (2, 0, 3) and torch.equal(last, torch.ones(2, 3))
    a = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError):
        scan(a, torch.zeros(2, 5, 4))
    with pytest.raises(ValueError):
        scan(a, a, torch.zeros(3, 3))
    with pytest.raises(ValueError):
        scan(a, a, None, False, torch.tensor([0, 5]))  # B != 1
    with pytest.raises(ValueError):
        scan(a[:1], a[:1], None, False, torch.tensor([0, 4]))  # does not end at L
    with pytest.raises(TypeError):
        scan(a.int(), a.int())
    with pytest.raises(ValueError):
        scan(a, a, block_l=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.bfloat16])
def test_diag_step(dtype):
    a, b, h0 = make(3, 1, 5, dtype, seed=2)
    a1 = a[:1, 0]
    ref = diag_step(up(a1), up(b[:, 0]), up(h0))
    got = tri().diag_step(a1, b[:, 0], h0)
    assert got.dtype == dtype
    assert_close(got, ref, dtype, "step")
    assert torch.equal(tri().diag_step(a1, b[:, 0], None), b[:, 0])


def test_diag_step_gradients():
    a, b, h0 = make(3, 1, 5, torch.complex64, seed=8)
    xs = [x[:, 0].detach().requires_grad_() if x.dim() == 3 else x.detach().requires_grad_()
          for x in (a, b, h0)]
    rs = [up(x).requires_grad_() for x in xs]
    tri().diag_step(*xs).abs().sum().backward()
    diag_step(*rs).abs().sum().backward()
    for x, r in zip(xs, rs):
        assert_close(x.grad, r.grad, torch.complex64, "step grad")


def test_custom_op_opcheck():
    """Schema, fake (meta) kernel and autograd registration of lrnnx::triton_diag_scan."""
    tri()  # registers the ops
    a, b, h0 = make(1, BL + 1, 3, torch.float32, seed=0)
    cu = torch.tensor([0, 2, BL + 1], dtype=torch.int32)
    args = (a.requires_grad_(), b.requires_grad_(), h0[:1].expand(2, 3).contiguous(), cu,
            True, BL, BD)
    torch.library.opcheck(torch.ops.lrnnx.triton_diag_scan.default, args,
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


def test_torch_compile_fullgraph():
    """No graph break around the custom ops (aot_eager: the interpreter runs the kernels)."""
    a, b, h0 = make(2, BL + 2, 3, torch.float32, seed=1)
    kt = tri()

    def f(a, b, h0):
        h, last = kt.diag_scan(a, b, h0, block_l=BL, block_d=BD)
        return kt.diag_step(a[:, -1], b[:, -1], last), h

    fc = torch.compile(f, fullgraph=True, backend="aot_eager")
    xs = [x.requires_grad_() for x in (a, b, h0)]
    y, h = fc(*xs)
    y.sum().backward()
    ref_y, ref_h = f(*[x.detach() for x in xs])
    assert_close(y, ref_y, torch.float32, "compiled step")
    assert_close(h, ref_h, torch.float32, "compiled scan")
    assert all(x.grad is not None for x in xs)


def test_backend_plugin():
    """The ``triton`` scan backend: availability, what it rejects (with reasons), dispatch."""
    pytest.importorskip("pydantic")  # lrnnx.ops needs the registry
    import lrnnx.ops as ops
    from lrnnx_plugins.backends.triton_backend import TritonBackend

    be = TritonBackend()
    assert be.name == "triton" and be.priority == 30
    ok, why = be.available()
    assert ok and "TRITON_INTERPRET" in why
    assert be.supports("diag_scan", device="cpu", dtype=torch.complex64, varlen=True)[0]
    ok, why = be.supports("diag_scan", device="cuda", dtype=torch.float32)
    assert not ok and "CPU tensors only" in why
    for op in ("selective_scan", "selective_step"):  # complex S6 runs here too
        assert be.supports(op, device="cpu", dtype=torch.float32, complex=True)[0]
    ok, why = be.supports("selective_scan", device="cpu", dtype=torch.complex64, complex=True)
    assert not ok and "u" in why  # u itself is real
    ok, why = be.supports("diag_scan", device="cpu", dtype=torch.int32)
    assert not ok and "int32" in why
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        ok, why = be.available()
        assert not ok and "CUDA" in why
    finally:
        os.environ["TRITON_INTERPRET"] = "1"
    ops.clear_backend_cache()  # the built-in plugin registers TritonBackend
    try:
        a, b, h0 = make(2, BL + 1, 3, torch.float32, seed=3)
        h, last = ops.diag_scan(a, b, h0, reverse=True, backend="triton")
        check((h, last), diag_scan_ref(up(a), up(b), up(h0), True), torch.float32, "ops")
        assert ops.select_backend("diag_scan", device="cpu", dtype="float32")[0] == "triton"
    finally:
        ops.clear_backend_cache()
