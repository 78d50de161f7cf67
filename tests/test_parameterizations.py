"""Built-in parameterizations: protocol shapes, init formulas (S4D, HiPPO-N/S5, LRU, Mamba)."""

from __future__ import annotations

import math

import pytest
import torch

import lrnnx
from lrnnx.errors import ConfigError, InputError
from lrnnx_plugins.parameterizations import SSMParameterization, SSMParams, hippo_legs, \
    hippo_n_eig

H, N = 6, 8
BUILTINS = ("s4d_lin", "s4d_inv", "s4d_real", "hippo_n", "lru_ring", "selective")


def make(name, d_model=H, d_state=N, seed=0, **kw):
    torch.manual_seed(seed)
    return lrnnx.get_parameterization(name)(d_model=d_model, d_state=d_state, **kw)


def params(p, x=None):
    return p(x) if p.selective else p()


# ------------------------------------------------------------------------------- protocol

def test_registered_with_their_traits():
    assert set(BUILTINS) <= set(lrnnx.list_parameterizations())
    traits = {n: (lrnnx.get_parameterization(n).structure, lrnnx.get_parameterization(n).discrete,
                  lrnnx.get_parameterization(n).selective) for n in BUILTINS}
    assert traits == {
        "s4d_lin": ("siso", False, False), "s4d_inv": ("siso", False, False),
        "s4d_real": ("siso", False, False), "hippo_n": ("mimo", False, False),
        "lru_ring": ("mimo", True, False), "selective": ("siso", False, True)}
    for n in BUILTINS:
        assert issubclass(lrnnx.get_parameterization(n), SSMParameterization)


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("cplx", [None, True, False])
def test_protocol_shapes(name, cplx):
    if name == "hippo_n" and cplx is False:
        with pytest.raises(ConfigError, match="complex=False is not possible"):
            make(name, complex=cplx)
        return
    p = make(name, complex=cplx)
    default = {"s4d_real": False, "selective": False}.get(name, True)
    assert p.complex is (default if cplx is None else cplx)
    x = torch.randn(3, 5, H)
    P = params(p, x)
    assert isinstance(P, SSMParams)
    if p.selective:
        want = {"A": (H, N), "B": (3, 5, N), "C": (3, 5, N), "dt": (3, 5, H)}
    elif p.structure == "siso":
        want = {"A": (H, N), "B": (H, N), "C": (H, N), "dt": (H,)}
    else:
        want = {"A": (N,), "B": (N, H), "C": (H, N), "dt": (N,)}
    if p.discrete:
        assert P.dt is None
        del want["dt"]
    for key, shape in want.items():
        assert tuple(getattr(P, key).shape) == shape, key
    assert P.A.is_complex() is p.complex
    assert bool((P.A.real < 0).all()) if not p.discrete else bool((P.A.abs() < 1).all())
    if P.dt is not None:
        assert not P.dt.is_complex() and bool((P.dt > 0).all())
    # every stored parameter is real (complex ones as (..., 2)), so .to(dtype) keeps them whole
    assert all(t.is_floating_point() for t in p.parameters())
    p64 = p.double()
    assert params(p64, x.double()).A.dtype == (torch.complex128 if p.complex else torch.float64)


@pytest.mark.parametrize("name", BUILTINS)
def test_option_errors(name):
    cls = lrnnx.get_parameterization(name)
    with pytest.raises(ConfigError, match="d_state must be a positive int"):
        cls(d_model=4, d_state=0)
    with pytest.raises(ConfigError, match="unknown option 'bogus'"):
        cls(d_model=4, d_state=2, bogus=1)


def test_typo_in_an_option_gets_a_suggestion():
    with pytest.raises(ConfigError, match="Did you mean 'r_min'"):
        make("lru_ring", r_mn=0.5)


def test_real_part_is_stored_as_a_log_so_it_stays_negative():
    for name in ("s4d_lin", "s4d_inv", "hippo_n"):
        p = make(name)
        with torch.no_grad():
            p.log_neg_A_re.uniform_(-20, 20)  # any value of the parameter
        assert bool((p().A.real < 0).all())


# ------------------------------------------------------------------------------- S4D

def test_s4d_lin_init():
    p = make("s4d_lin")
    A = p().A.detach().to(torch.complex128)
    n = torch.arange(N, dtype=torch.float64)
    torch.testing.assert_close(A.real, torch.full((H, N), -0.5, dtype=torch.float64))
    torch.testing.assert_close(A.imag, (math.pi * n).expand(H, N), rtol=1e-7, atol=0)
    assert p().conj_sym


def test_s4d_inv_init():
    A = make("s4d_inv")().A.detach().to(torch.complex128)
    Nf = 2 * N  # the paper's N: N/2 = d_state conjugate pairs kept
    n = torch.arange(N, dtype=torch.float64)
    want = Nf / math.pi * (Nf / (2 * n + 1) - 1)
    torch.testing.assert_close(A.imag, want.expand(H, N), rtol=1e-7, atol=1e-6)
    torch.testing.assert_close(A.real, torch.full((H, N), -0.5, dtype=torch.float64))
    assert float(A.imag[0, 0]) == pytest.approx(Nf / math.pi * (Nf - 1), rel=1e-7)


def test_s4d_real_init():
    P = make("s4d_real")()
    assert not P.A.is_complex() and not P.conj_sym
    torch.testing.assert_close(P.A.detach(), -(torch.arange(N) + 1.0).expand(H, N))


def test_s4d_b_c_and_step_init():
    p = make("s4d_lin", d_model=64, d_state=64, dt_min=0.01, dt_max=0.2)
    P = p()
    assert torch.equal(P.B.detach(), torch.ones(64, 64, dtype=torch.complex64))
    C = P.C.detach()
    # complex standard normal: E|C|^2 = 1, parts of variance 1/2 (4096 samples)
    assert abs(float((C.abs() ** 2).mean()) - 1) < 0.08
    assert abs(float(C.real.var()) - 0.5) < 0.05 and abs(float(C.imag.var()) - 0.5) < 0.05
    assert bool((P.dt >= 0.01 * (1 - 1e-6)).all()) and bool((P.dt <= 0.2 * (1 + 1e-6)).all())
    # log-uniform: the mean of log dt sits mid-range
    mid = (math.log(0.01) + math.log(0.2)) / 2
    assert abs(float(P.dt.detach().log().mean()) - mid) < 0.35
    Cr = make("s4d_real", d_model=64, d_state=64)().C.detach()
    assert not Cr.is_complex() and abs(float(Cr.var()) - 1) < 0.1
    with pytest.raises(ConfigError, match="dt_min=0.5 must be <= dt_max=0.1"):
        make("s4d_lin", dt_min=0.5, dt_max=0.1)


# ------------------------------------------------------------------------------- HiPPO-N (S5)

def test_hippo_legs_matrix():
    A = hippo_legs(4)
    for n in range(4):
        for k in range(4):
            want = (-math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1) if n > k
                    else -(n + 1) if n == k else 0.0)
            assert float(A[n, k]) == pytest.approx(want, abs=1e-14)


@pytest.mark.parametrize("n", [2, 8, 16])
def test_hippo_n_eigendecomposition(n):
    lam, V = hippo_n_eig(n)
    assert lam.dtype == torch.complex128 and V.dtype == torch.complex128
    assert bool((lam.real == -0.5).all())  # the real part is exactly -1/2
    # V unitary and S = A + P P^T = V diag(lambda) V^*
    torch.testing.assert_close(V.conj().T @ V, torch.eye(n, dtype=torch.complex128),
                               rtol=0, atol=1e-12)
    P = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)
    S = (hippo_legs(n) + P[:, None] * P[None, :]).to(torch.complex128)
    torch.testing.assert_close(V @ torch.diag(lam) @ V.conj().T, S, rtol=0, atol=1e-10 * n)
    # conjugate pairs: the first half holds one of each (negative imaginary parts)
    w = lam.imag
    assert bool((w[: n // 2] < 0).all())
    torch.testing.assert_close(w[n // 2:], -w[: n // 2].flip(0), rtol=1e-12, atol=1e-12)


def test_hippo_n_parameterization():
    p = make("hippo_n", d_model=H, d_state=N)
    P = p()
    assert P.conj_sym and P.A.shape == (N,)
    torch.testing.assert_close(P.A.real.detach(), torch.full((N,), -0.5))
    lam, V = hippo_n_eig(2 * N)
    torch.testing.assert_close(P.A.detach().to(torch.complex128), lam[:N], rtol=1e-6, atol=1e-6)
    # per-state steps in [dt_min, dt_max]
    assert P.dt.shape == (N,) and bool((P.dt >= 0.001 * 0.999).all())
    assert bool((P.dt <= 0.1 * 1.001).all())


def test_hippo_n_lecun_init_of_b():
    """B~ = V^-1 B (first P rows) of a real LeCun-normal B (2P, H), variance 1/(2P): mapping
    back with both conjugate halves recovers that real B."""
    p = make("hippo_n", d_model=32, d_state=64)
    lam, V = hippo_n_eig(128)
    B_t = p().B.detach().to(torch.complex128)            # (64, 32) = V[:, :64]^* B
    # project back: the full (128, 32) real B has variance 1/128 (LeCun, fan-in 2P)
    B_half = V[:, :64] @ B_t
    B_full = B_half + B_half.conj()  # the conjugate modes carry the conjugate coefficients
    assert float(B_full.imag.abs().max()) < 1e-5
    assert abs(float(B_full.real.var()) * 128 - 1) < 0.15


def test_hippo_n_blocks_and_no_conj_sym():
    p = make("hippo_n", d_model=H, d_state=8, blocks=2)
    A = p().A.detach().to(torch.complex128)
    lam, _ = hippo_n_eig(8)
    torch.testing.assert_close(A, lam[:4].repeat(2), rtol=1e-6, atol=1e-6)
    q = make("hippo_n", d_model=H, d_state=8, conj_sym=False)
    Q = q()
    assert not Q.conj_sym
    lam, _ = hippo_n_eig(8)
    torch.testing.assert_close(Q.A.detach().to(torch.complex128), lam, rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="'blocks' must be a positive divisor of d_state=8"):
        make("hippo_n", d_state=8, blocks=3)


# ------------------------------------------------------------------------------- LRU

@pytest.mark.parametrize("r_min, r_max, max_phase", [(0.0, 1.0, 2 * math.pi),
                                                     (0.9, 0.999, math.pi / 10),
                                                     (0.4, 0.5, 0.0)])
def test_lru_ring_init(r_min, r_max, max_phase):
    p = make("lru_ring", d_model=16, d_state=512, r_min=r_min, r_max=r_max, max_phase=max_phase)
    P = p()
    lam = P.A.detach().to(torch.complex128)
    r = lam.abs()
    eps = 1e-6
    assert bool((r >= r_min - eps).all()) and bool((r <= r_max + eps).all())
    phase = torch.exp(p.theta_log.detach().double())
    assert bool((phase >= 0).all()) and bool((phase <= max_phase + 1e-6).all())
    # |lambda|^2 uniform on [r_min^2, r_max^2]: its mean is the midpoint
    assert abs(float((r**2).mean()) - (r_min**2 + r_max**2) / 2) < 0.05 * (r_max**2 - r_min**2)
    # the normalization
    torch.testing.assert_close(P.gamma.detach().double(), torch.sqrt(1 - r**2), rtol=1e-4,
                               atol=1e-6)
    # exp(log_A) is lambda, with the learned (unwrapped) phase
    torch.testing.assert_close(torch.exp(P.log_A.detach()), P.A.detach())
    assert P.dt is None and not P.conj_sym


def test_lru_b_c_scaling():
    p = make("lru_ring", d_model=64, d_state=128)
    P = p()
    B, C = P.B.detach(), P.C.detach()
    # B = (N(0,1) + i N(0,1)) / sqrt(2H): E|B|^2 = 1/H; C: E|C|^2 = 2/P
    assert abs(float((B.abs() ** 2).mean()) * 64 - 1) < 0.08
    assert abs(float((C.abs() ** 2).mean()) * 128 / 2 - 1) < 0.08


def test_lru_real_and_bad_ring():
    P = make("lru_ring", complex=False, r_min=0.5, r_max=0.9)()
    assert not P.A.is_complex()
    assert bool((P.A >= 0.5 - 1e-6).all()) and bool((P.A <= 0.9 + 1e-6).all())
    with pytest.raises(ConfigError, match="0 <= r_min < r_max <= 1"):
        make("lru_ring", r_min=0.9, r_max=0.5)
    with pytest.raises(ConfigError, match="'max_phase' must be a finite number >= 0"):
        make("lru_ring", max_phase=-1.0)


# ------------------------------------------------------------------------------- selective

def test_selective_shapes_and_init():
    p = make("selective", d_model=32, d_state=N)
    assert p.dt_rank == 2 and p.x_proj.out_features == 2 + 2 * N
    x = torch.randn(2, 7, 32)
    P = p(x)
    assert P.A.shape == (32, N) and P.B.shape == (2, 7, N) and P.C.shape == (2, 7, N)
    assert P.dt.shape == (2, 7, 32) and bool((P.dt > 0).all())
    torch.testing.assert_close(P.A.detach(), -(torch.arange(N) + 1.0).expand(32, N))
    # with x = 0 the step is softplus(bias): log-uniform in [dt_min, dt_max]
    dt0 = p(torch.zeros(1, 1, 32)).dt.detach().flatten()
    assert bool((dt0 >= 0.001 * 0.999).all()) and bool((dt0 <= 0.1 * 1.001).all())
    bound = p.dt_rank ** -0.5
    assert float(p.dt_proj.weight.detach().abs().max()) <= bound
    # B and C depend on the input, A does not
    P2 = p(x + 1)
    assert not torch.allclose(P2.B, P.B) and torch.equal(P2.A, P.A)


def test_selective_options_and_errors():
    p = make("selective", d_model=8, d_state=4, dt_rank=3, complex=True)
    P = p(torch.randn(1, 2, 8))
    assert p.dt_rank == 3 and P.A.is_complex()
    torch.testing.assert_close(P.A.imag.detach(), (math.pi * torch.arange(4.0)).expand(8, 4))
    with pytest.raises(InputError, match=r"needs the layer input x of shape \(Bt, L, 8\)"):
        p()
    with pytest.raises(InputError, match="got \\(2, 8\\)"):
        p(torch.randn(2, 8))
    with pytest.raises(ConfigError, match="'dt_rank' must be a positive int"):
        make("selective", dt_rank=0)
