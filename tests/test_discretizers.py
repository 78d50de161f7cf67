"""The built-in discretizers (lrnnx_plugins.discretizers): registration, pinned values, limits."""

from __future__ import annotations

import cmath
import math

import pytest
import torch

import lrnnx
from lrnnx.errors import InputError, InputTypeError, UnknownComponentError

NAMES = ("zoh", "bilinear", "euler", "mamba", "dirac")
f64, c128 = torch.float64, torch.complex128


def disc(name):
    return lrnnx.get_discretizer(name)


def closed_form(name: str, a: complex, dt: float) -> tuple[complex, complex]:
    """(A_bar, B_scale) of one scalar, written out with cmath (independent of the kernels)."""
    x = dt * a
    if name == "zoh":
        return cmath.exp(x), (cmath.exp(x) - 1) / a
    if name == "bilinear":
        return (1 + x / 2) / (1 - x / 2), dt / (1 - x / 2)
    if name in ("euler", "mamba"):
        return cmath.exp(x), dt
    return cmath.exp(x), 1.0


def test_registered_as_instances_of_the_interface():
    assert set(NAMES) <= set(lrnnx.list_discretizers())
    for name in NAMES:
        d = disc(name)
        assert isinstance(d, lrnnx.Discretizer) and d.name == name and d.method == name
        entry = lrnnx.registry.get_entry("discretizer", name)
        assert entry.builtin and entry.plugin == "lrnnx_discretizers"


@pytest.mark.parametrize("name", NAMES)
def test_delegates_to_the_one_kernel_formula(name):
    g = torch.Generator().manual_seed(0)
    A = torch.complex(-torch.rand(3, 5, generator=g, dtype=f64),
                      torch.randn(3, 5, generator=g, dtype=f64))
    dt = torch.rand(3, 1, generator=g, dtype=f64) * 0.5 + 0.01
    A_bar, scale = disc(name)(A, dt)
    A_ref, s_ref = lrnnx.ops.discretize(name, A, dt)
    assert A_bar.shape == scale.shape == (3, 5)
    assert torch.equal(A_bar, A_ref) and torch.equal(scale, s_ref)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("a", [-0.5, -3.0 + 2.0j, -0.01 + 40.0j, -1e-3 - 0.2j])
def test_matches_the_closed_forms(name, a):
    dt = 0.07
    A = torch.tensor([a], dtype=c128)
    A_bar, scale = disc(name)(A, torch.tensor([dt], dtype=f64))
    want_a, want_s = closed_form(name, a, dt)
    assert abs(complex(A_bar[0]) - want_a) <= 1e-14 * max(1, abs(want_a))
    assert abs(complex(scale[0]) - want_s) <= 1e-13 * max(1, abs(want_s))


def test_bilinear_pinned_value():
    A_bar, scale = disc("bilinear")(torch.tensor([-0.5], dtype=f64), torch.tensor([0.1], dtype=f64))
    assert round(abs(float(A_bar[0])), 6) == 0.951220          # 0.975 / 1.025
    assert float(A_bar[0]) == pytest.approx(0.975 / 1.025, rel=1e-15)
    assert float(scale[0]) == pytest.approx(0.1 / 1.025, rel=1e-15)
    # fp32 too (the layer's usual dtype)
    A32, _ = disc("bilinear")(torch.tensor([-0.5]), torch.tensor([0.1]))
    assert abs(float(A32[0]) - 0.951220) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zoh_limit_a_to_zero(dtype):
    """(exp(dt A) - 1) / A -> dt as A -> 0, without cancellation, and a finite gradient at 0."""
    dt = torch.tensor(0.1, dtype=dtype)
    for a in (1e-3, 1e-6, 1e-9, 0.0, -1e-9):
        A = torch.tensor(a, dtype=dtype, requires_grad=True)
        A_bar, scale = disc("zoh")(A, dt)
        want = 0.1 if a == 0 else math.expm1(0.1 * a) / a  # expm1: no cancellation
        tol = 1e-7 if dtype == torch.float32 else 1e-15
        assert abs(float(scale.detach()) - want) <= tol * 0.1, (a, float(scale.detach()))
        (g,) = torch.autograd.grad(scale, A)
        assert math.isfinite(float(g)) and float(g) == pytest.approx(0.1**2 / 2, rel=1e-3)
    # complex A -> 0 as well
    A = torch.tensor([1e-10 + 1e-10j], dtype=c128)
    _, scale = disc("zoh")(A, torch.tensor([0.1], dtype=f64))
    assert abs(complex(scale[0]) - 0.1) < 1e-12


def test_zoh_is_exact_for_constant_input():
    """ZOH composes: two steps of dt equal one step of 2 dt (A_bar(2dt) = A_bar^2,
    B(2dt) = A_bar B(dt) + B(dt)) -- what makes dt_eff = dt * timesteps meaningful."""
    A = torch.tensor([-0.3 + 2.0j, -1.5 + 0.0j], dtype=c128)
    dt = torch.tensor([0.2], dtype=f64)
    a1, s1 = disc("zoh")(A, dt)
    a2, s2 = disc("zoh")(A, lrnnx.ops.effective_dt(dt, torch.tensor([2.0], dtype=f64)))
    torch.testing.assert_close(a2, a1 * a1, rtol=1e-14, atol=0)
    torch.testing.assert_close(s2, a1 * s1 + s1, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_complex_and_stability(name):
    """Re A < 0 gives |A_bar| < 1 for every method; |A_bar| = exp(dt Re A) for the exp ones."""
    A = torch.complex(-torch.linspace(0.01, 5, 7, dtype=f64), torch.linspace(-30, 30, 7,
                                                                             dtype=f64))
    dt = torch.full((7,), 0.05, dtype=f64)
    A_bar, scale = disc(name)(A, dt)
    assert A_bar.dtype == c128
    assert bool((A_bar.abs() < 1).all())
    if name != "bilinear":
        torch.testing.assert_close(A_bar.abs(), torch.exp(dt * A.real), rtol=1e-14, atol=0)
    if name == "dirac":
        assert bool((scale == 1).all())
    if name in ("euler", "mamba"):
        assert torch.equal(scale.real if scale.is_complex() else scale, dt)


def test_broadcast_per_channel_step():
    A = -torch.rand(4, 6, dtype=f64)
    dt = torch.rand(4, dtype=f64)
    A_bar, scale = disc("zoh")(A, dt[:, None])
    assert A_bar.shape == scale.shape == (4, 6)
    torch.testing.assert_close(A_bar, torch.exp(dt[:, None] * A))


def test_bad_arguments_are_clear_errors():
    d = disc("zoh")
    with pytest.raises(InputTypeError, match="discretizer 'zoh': dt must be a real"):
        d(torch.tensor([-1.0]), torch.tensor([0.1j]))
    with pytest.raises(InputTypeError, match="discretizer 'zoh': A must be a torch.Tensor"):
        d([-1.0], torch.tensor([0.1]))
    with pytest.raises(InputTypeError, match="A must be a floating-point or complex"):
        d(torch.tensor([-1]), torch.tensor([0.1]))
    with pytest.raises(InputError, match=r"do not broadcast; give dt one value per channel"):
        d(torch.zeros(4, 6), torch.ones(4))


def test_spec_names_resolve_to_discretizers():
    layer = lrnnx.build_layer("ssm(d_state=2, disc=bilinear)", d_model=4)
    assert layer.disc is disc("bilinear")
    with pytest.raises(UnknownComponentError) as info:
        lrnnx.build_layer("ssm(disc=bilinaer)", d_model=4)
    assert "did you mean: bilinear" in str(info.value)
