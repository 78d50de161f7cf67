"""The pure-PyTorch fast paths on CUDA (run on a GPU machine; skipped here)."""
import pytest
import torch

from lrnnx_kernels import METHODS, diag_scan_chunked, diag_scan_ref, selective_scan_chunked, selective_scan_ref
from lrnnx_kernels_testutils import assert_close, rand_a, randn, up

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("L", [1, 65, 1000, 5000])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.complex64])
@pytest.mark.parametrize("reverse", [False, True])
def test_diag_scan_chunked_cuda(L, dtype, reverse):
    g = torch.Generator().manual_seed(L)
    base = torch.complex64 if dtype.is_complex else torch.float32
    a, b, h0 = rand_a((3, L, 17), base, g).to(dtype), randn((3, L, 17), base, g).to(dtype), randn((3, 17), base, g).to(dtype)
    ref = diag_scan_ref(up(a), up(b), up(h0), reverse)
    ad, bd, hd = (x.cuda().requires_grad_() for x in (a, b, h0))
    h, last = diag_scan_chunked(ad, bd, hd, reverse)
    assert h.device.type == "cuda"
    assert_close(h.cpu(), ref[0], dtype, "h")
    assert_close(last.cpu(), ref[1], dtype, "last")
    (h.real.float().sum() + last.real.float().sum()).backward()
    assert all(torch.isfinite(x.grad).all() for x in (ad, bd, hd))


def test_diag_scan_varlen_cuda():
    g = torch.Generator().manual_seed(0)
    a, b, h0 = rand_a((1, 300, 8), torch.float64, g), randn((1, 300, 8), torch.float64, g), randn((4, 8), torch.float64, g)
    cu = torch.tensor([0, 10, 10, 200, 300], dtype=torch.int32)
    ref = diag_scan_ref(a, b, h0, False, cu)
    out = diag_scan_chunked(a.cuda(), b.cuda(), h0.cuda(), False, cu.cuda())
    assert_close(out[0].cpu(), ref[0], torch.float64, "h")
    assert_close(out[1].cpu(), ref[1], torch.float64, "last")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cplx", [False, True])
def test_selective_scan_chunked_cuda(method, cplx):
    g = torch.Generator().manual_seed(1)
    Bt, L, Dm, N = 2, 300, 8, 4
    A = -torch.rand(Dm, N, dtype=torch.float64, generator=g) - 0.1
    if cplx:
        A = torch.complex(A, torch.randn(Dm, N, dtype=torch.float64, generator=g))
    kw = dict(u=torch.randn(Bt, L, Dm, dtype=torch.float64, generator=g),
              delta=torch.randn(Bt, L, Dm, dtype=torch.float64, generator=g), A=A,
              B=torch.randn(Bt, L, 2, N, dtype=torch.float64, generator=g),
              C=torch.randn(Bt, L, 2, N, dtype=torch.float64, generator=g),
              D=torch.randn(Dm, dtype=torch.float64, generator=g),
              z=torch.randn(Bt, L, Dm, dtype=torch.float64, generator=g))
    yr, hr = selective_scan_ref(**kw, delta_softplus=True, discretization=method, return_last_state=True)
    kd = {k: v.cuda().requires_grad_() for k, v in kw.items()}
    y, h = selective_scan_chunked(**kd, delta_softplus=True, discretization=method, return_last_state=True,
                                  chunk_size=64)
    assert_close(y.cpu(), yr, torch.float64, "y")
    assert_close(h.cpu(), hr, hr.dtype, "h")
    (y.sum() + h.abs().sum()).backward()
    assert all(torch.isfinite(v.grad).all() for v in kd.values())
