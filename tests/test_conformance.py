"""The conformance suite (lrnnx.testing): every registered layer passes it, and each check
catches the defect it is about (deliberately broken toy layers)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import lrnnx
from lrnnx.errors import BackendUnavailableError
from lrnnx.testing import (
    CHECKS,
    CheckNotApplicable,
    ConformanceError,
    check_backend_parity,
    check_bad_inputs,
    check_causality,
    check_declarations,
    check_empty_and_single,
    check_forward_shapes,
    check_gradcheck,
    check_layer,
    check_spec_round_trip,
    check_split_state,
    check_state_dict_round_trip,
    check_step_matches_forward,
    check_timesteps_ones,
    check_varlen,
    parametrize_with_checks,
)

# ------------------------------------------------------------------------------ toy layers

class ToyRNN(lrnnx.Layer):
    r"""Diagonal linear RNN: :math:`h_t = a^{dt_t} h_{t-1} + dt_t\, b \odot (W x_t)`,
    :math:`y_t = c \odot h_t + D \odot x_t` with :math:`a = \sigma(a_{logit})` (dt = 1 without
    timesteps); packed sequences restart from h = 0.  Passes every check."""

    name = "_toy_rnn"
    capabilities = frozenset({"step", "varlen", "timesteps"})
    scans = ("torch", "_toy_fast")

    def __init__(self, d_model: int, scan: str = "torch"):
        super().__init__()
        if scan not in self.scans:
            raise BackendUnavailableError(f"layer {self.name!r} has no implementation for scan "
                                          f"backend {scan!r}")
        self.d_model, self.scan = d_model, scan
        self.proj = nn.Linear(d_model, d_model)
        self.a_logit = nn.Parameter(torch.randn(d_model))
        self.b = nn.Parameter(torch.randn(d_model))
        self.c = nn.Parameter(torch.randn(d_model))
        self.D = nn.Parameter(torch.randn(d_model))

    def init_state(self, batch_size, device=None, dtype=None):
        return {"h": torch.zeros(batch_size, self.d_model, device=device or self.b.device,
                                 dtype=dtype or self.b.dtype)}

    def coeffs(self, x, timesteps=None):
        a = torch.sigmoid(self.a_logit)
        u = self.b * self.proj(x)
        if timesteps is None:
            return a.expand_as(u), u
        dt = timesteps.unsqueeze(-1)
        return a ** dt, u * dt

    def scan_fn(self, A, U, h):
        if self.scan == "_toy_fast":  # a second implementation: accumulates in float64
            return self._loop(A.double(), U.double(), h.double()).to(A.dtype)
        return self._loop(A, U, h)

    @staticmethod
    def _loop(A, U, h):
        hs = []
        for t in range(A.shape[1]):
            h = A[:, t] * h + U[:, t]
            hs.append(h)
        return torch.stack(hs, dim=1) if hs else h.new_zeros(h.shape[0], 0, h.shape[-1])

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        A, U = self.coeffs(x, timesteps)
        h0 = state["h"] if state is not None else x.new_zeros(x.shape[0], self.d_model)
        if cu_seqlens is not None:
            starts = cu_seqlens[:-1][cu_seqlens[:-1] < x.shape[1]].long()
            reset = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
            reset[starts] = True
            A = torch.where(reset[None, :, None], torch.zeros_like(A), A)
        hs = self.scan_fn(A, U, h0)
        y = self.c * hs + self.D * x
        return (y, {"h": hs[:, -1] if hs.shape[1] else h0}) if return_state else y

    def step(self, x_t, state):
        h = torch.sigmoid(self.a_logit) * state["h"] + self.b * self.proj(x_t)
        return self.c * h + self.D * x_t, {"h": h}


class MeanMix(lrnnx.Layer):
    """y = W x + mean over the sequence: non-causal by design, declared as expected failure."""

    name = "_toy_meanmix"
    expected_failures = {"causality": "mixes the whole sequence (like a bidirectional layer)"}

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        y = self.proj(x) + x.mean(dim=1, keepdim=True)
        return (y, {}) if return_state else y


def _with_y(out, fn):
    return (fn(out[0]), out[1]) if isinstance(out, tuple) else fn(out)


def _postprocessed(name: str, fn):
    """A ToyRNN whose forward output y is replaced by ``fn(layer, y, x)``."""

    class Broken(ToyRNN):
        def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
            out = super().forward(x, state, return_state, timesteps, cu_seqlens)
            return _with_y(out, lambda y: fn(self, y, x))

    Broken.name, Broken.__name__ = name, name
    return Broken


class _WrongGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        return 1.5 * g


NonCausalRNN = _postprocessed("_toy_noncausal", lambda m, y, x: y + x.mean(1, keepdim=True))
BadGradRNN = _postprocessed("_toy_badgrad", lambda m, y, x: _WrongGrad.apply(y))
WrongDtypeRNN = _postprocessed("_toy_wrongdtype", lambda m, y, x: y.double())


class LeakyBufferRNN(_postprocessed("_toy_leaky", lambda m, y, x: y + m.noise)):
    """Output depends on a random buffer that is not in the state_dict."""

    def __init__(self, d_model: int, scan: str = "torch"):
        super().__init__(d_model, scan)
        self.register_buffer("noise", torch.randn(d_model), persistent=False)


class StepOffRNN(ToyRNN):
    name = "_toy_stepoff"

    def step(self, x_t, state):
        y, st = super().step(x_t, state)
        return y + 1e-3, st


class IgnoresStateRNN(ToyRNN):
    name = "_toy_nostate"

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        return super().forward(x, None, return_state, timesteps, cu_seqlens)


class NoResetRNN(ToyRNN):
    name = "_toy_noreset"

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        return super().forward(x, state, return_state, timesteps, None)


class DoubleDtRNN(ToyRNN):
    name = "_toy_doubledt"

    def coeffs(self, x, timesteps=None):
        return super().coeffs(x, None if timesteps is None else 2 * timesteps)


class BadBackendRNN(ToyRNN):
    name = "_toy_badbackend"

    def scan_fn(self, A, U, h):
        hs = super().scan_fn(A, U, h)
        return hs * 1.001 if self.scan == "_toy_fast" else hs


class LaxRNN(ToyRNN):
    """Bypasses the base class's input validation and swallows every error."""

    name = "_toy_lax"

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        try:
            return ToyRNN.forward.__wrapped__(self, x, state, return_state, timesteps, cu_seqlens)
        except Exception:  # noqa: BLE001 - the defect under test
            return x

    forward.__lrnnx_wrapped__ = True  # test only: opt out of the base class's validation


class EmptyDropsStateRNN(ToyRNN):
    """Handles L = 0 itself and returns a fresh state instead of the one passed in."""

    name = "_toy_emptybug"

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        if x.shape[1] == 0:
            y = x.new_zeros(x.shape)
            return (y, self.init_state(x.shape[0], x.device, x.dtype)) if return_state else y
        return ToyRNN.forward(self, x, state, return_state, timesteps, cu_seqlens)

    forward.__lrnnx_wrapped__ = True  # test only: opt out of the base class's L = 0 handling


class DeclaredButCausal(ToyRNN):
    name = "_toy_declared"
    expected_failures = {"causality": "claims to look ahead, but does not"}


class NeedsOptions(ToyRNN):
    """A required option, supplied by test_kwargs (with a smaller d_model)."""

    name = "_toy_needs"
    test_kwargs = {"d_model": 4, "gain": 2.0}

    def __init__(self, d_model: int, gain: float, scan: str = "torch"):
        super().__init__(d_model, scan)
        self.gain = gain


class ToyFast(lrnnx.ScanBackend):
    name = "_toy_fast"


class ToyOff(lrnnx.ScanBackend):
    name = "_toy_off"

    def available(self):
        return False, "needs a GPU"


class ToyOther(lrnnx.ScanBackend):
    name = "_toy_other"


@pytest.fixture
def toy_backends(register):
    for b in (ToyFast, ToyOff, ToyOther):
        register("scan_backend", b)


# ----------------------------------------------------------------- the suite on real layers

@parametrize_with_checks(lrnnx.list_layers())
def test_registered_layer_conforms(layer, check):
    check(layer)


# gradcheck always runs in float64: the float32 run above covers it
@parametrize_with_checks(lrnnx.list_layers(), dtype=torch.float64,
                         checks=[c for c in CHECKS if c != "gradcheck"])
def test_registered_layer_conforms_float64(layer, check):
    check(layer)


@parametrize_with_checks([ToyRNN, MeanMix])
def test_toy_layers_conform(layer, check):
    check(layer)


# ------------------------------------------------------------------------------ the runner

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_check_layer_passes_toy_rnn_with_every_check(register, toy_backends, dtype):
    register("layer", ToyRNN)
    report = check_layer("_toy_rnn", dtype=dtype)
    assert report.ok
    assert [r.check for r in report] == list(CHECKS)
    assert {r.status for r in report} == {"passed"}, str(report)
    assert "_toy_fast" in dict((r.check, r.message) for r in report)["backend_parity"]


def test_check_layer_skips_inapplicable_and_xfails_declared():
    report = check_layer(MeanMix)
    status = {r.check: r.status for r in report}
    assert status["causality"] == "xfailed"
    assert status["step_matches_forward"] == "skipped"
    assert status["spec_round_trip"] == "skipped"  # not registered
    assert status["forward_shapes"] == "passed"


def test_declared_failure_that_passes_is_unexpectedly_passed():
    with pytest.raises(ConformanceError, match="unexpectedly passed") as info:
        check_layer(DeclaredButCausal, checks=["causality", "forward_shapes"])
    assert info.value.report.status_of("causality") == "xpassed"
    assert info.value.report.status_of("forward_shapes") == "passed"
    assert "_toy_declared" in str(info.value)


def test_check_layer_summarizes_every_failure():
    with pytest.raises(ConformanceError) as info:
        check_layer(NonCausalRNN)
    msg = str(info.value)
    assert "layer '_toy_noncausal'" in msg and "causality" in msg
    assert info.value.report.status_of("causality") == "failed"
    assert info.value.report.status_of("bad_inputs") == "passed"


def test_check_layer_rejects_unknown_check_and_dtype():
    with pytest.raises(ValueError, match="unknown conformance check"):
        check_layer(ToyRNN, checks=["causalty"])
    with pytest.raises(ValueError, match="float32 or float64"):
        check_causality(ToyRNN, dtype=torch.float16)


def test_parametrize_with_checks_marks_declared_failures_strict():
    mark = parametrize_with_checks([MeanMix, ToyRNN]).mark
    argnames, params = mark.args
    assert argnames == "layer, check"
    ids = [p.id for p in params]
    assert "_toy_meanmix-causality" in ids and "_toy_rnn-varlen" in ids
    assert "_toy_meanmix-step_matches_forward" not in ids  # not applicable
    (_, only), = [parametrize_with_checks([ToyRNN], checks=["varlen"]).mark.args]
    assert [p.id for p in only] == ["_toy_rnn-varlen"]
    with pytest.raises(ValueError, match="unknown conformance check"):
        parametrize_with_checks([ToyRNN], checks=["varlne"])
    xf = [p for p in params if p.marks]
    assert [p.id for p in xf] == ["_toy_meanmix-causality"]
    (m,) = xf[0].marks
    assert m.name == "xfail" and m.kwargs["strict"] is True


def test_not_applicable_check_raises():
    with pytest.raises(CheckNotApplicable, match="needs capability 'step'"):
        check_step_matches_forward(MeanMix)
    with pytest.raises(CheckNotApplicable, match="not the layer registered"):
        check_spec_round_trip(ToyRNN)


def test_test_kwargs_are_merged_into_build_options():
    assert "(2, 13, 4)" in check_forward_shapes(NeedsOptions)
    assert "(2, 13, 6)" in check_forward_shapes(NeedsOptions, d_model=6)


# -------------------------------------------------------------- each check catches its defect

@pytest.mark.parametrize("check, broken, expect", [
    (check_forward_shapes, WrongDtypeRNN, "dtype torch.float64 for x of dtype torch.float32"),
    (check_causality, NonCausalRNN, "changed when only x[:, 1:] changed"),
    (check_step_matches_forward, StepOffRNN, "outputs of step() from init_state(B)"),
    (check_split_state, IgnoresStateRNN, "outputs of chunks [0:5|5:13]"),
    (check_varlen, NoResetRNN, "sequence 2 (positions 5:6"),
    (check_timesteps_ones, DoubleDtRNN, "forward(x, timesteps=ones) vs forward(x)"),
    (check_gradcheck, BadGradRNN, "analytical gradient != finite differences"),
    (check_bad_inputs, LaxRNN, "accepted silently"),
    (check_empty_and_single, EmptyDropsStateRNN, "state returned for L = 0 vs the state passed"),
    (check_state_dict_round_trip, LeakyBufferRNN, "forward after loading the state_dict"),
])
def test_broken_layer_is_caught(check, broken, expect):
    check(ToyRNN)  # the healthy layer passes the same check
    with pytest.raises(AssertionError) as info:
        check(broken)
    msg = str(info.value)
    assert f"[{check.check_name}] layer {broken.name!r}" in msg
    assert expect in msg, msg


def test_failure_message_gives_errors_and_location():
    with pytest.raises(AssertionError) as info:
        check_step_matches_forward(StepOffRNN, dtype=torch.float64)
    msg = str(info.value)
    assert "max abs err 0.001" in msg and "rel err" in msg and "tol 1e-10" in msg
    assert re.search(r"at \(\d, \d+, \d\) \(got -?\d", msg), msg  # where, and the values


def test_split_state_compares_gradients(register):
    class DetachesState(ToyRNN):  # right values, but no gradient through the carried state
        name = "_toy_detach"

        def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
            if state is not None:
                state = {k: v.detach() for k, v in state.items()}
            return super().forward(x, state, return_state, timesteps, cu_seqlens)

    with pytest.raises(AssertionError, match="gradient wrt x with chunks"):
        check_split_state(DetachesState)


def test_bad_inputs_reports_wrong_error_type():
    class RaisesPlain(ToyRNN):
        name = "_toy_plainerr"

        def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
            if x.dim() != 3:
                raise ValueError("bad x")
            return ToyRNN.forward(self, x, state, return_state, timesteps, cu_seqlens)

        forward.__lrnnx_wrapped__ = True

    with pytest.raises(AssertionError, match=r"x of rank 2 .*raised ValueError \(bad x\) "
                                             r"instead of lrnnx.errors.InputError"):
        check_bad_inputs(RaisesPlain)


def test_backend_parity_compares_usable_backends(toy_backends):
    msg = check_backend_parity(ToyRNN)
    assert "compared" in msg and "_toy_fast (rel err" in msg
    assert "_toy_off (unavailable: needs a GPU)" in msg
    assert "_toy_other (cannot run this problem" in msg
    with pytest.raises(AssertionError, match=r"scan='_toy_fast', plain from a carried state: "
                                             r"y vs float64 scan='torch'"):
        check_backend_parity(BadBackendRNN)


def test_backend_parity_passes_with_nothing_to_compare(monkeypatch):
    from lrnnx.registry.core import REGISTRY

    real = REGISTRY.names
    monkeypatch.setattr(REGISTRY, "names", lambda kind, pattern=None:
                        [] if kind == "scan_backend" else real(kind, pattern))
    assert "nothing to compare" in check_backend_parity(ToyRNN)
    with pytest.raises(CheckNotApplicable, match="no `scan` option"):
        check_backend_parity(MeanMix)


def test_spec_round_trip(register):
    register("layer", ToyRNN)
    assert "_toy_rnn(scan='_toy_fast')" in check_spec_round_trip("_toy_rnn", scan="_toy_fast")
    with pytest.raises(AssertionError, match="cannot be written as a spec"):
        check_spec_round_trip("_toy_rnn", scan=b"torch")


def test_declarations_catch_bad_expected_failures():
    class Typo(ToyRNN):
        name = "_toy_typo"
        expected_failures = {"causalty": "typo"}

    class NotApplicable(MeanMix):
        name = "_toy_na"
        expected_failures = {"varlen": "has no varlen anyway"}

    with pytest.raises(AssertionError, match="unknown check 'causalty'"):
        check_declarations(Typo)
    with pytest.raises(AssertionError, match="lists 'varlen', which does not apply"):
        check_declarations(NotApplicable)
    assert "1 expected failure" in check_declarations(MeanMix)
