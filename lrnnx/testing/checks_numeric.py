"""Numerical conformance checks: scan-backend parity and finite-difference gradients.

* ``backend_parity``: a layer with a ``scan`` option is built once per registered scan backend
  (skipping those whose ``available()`` is false or that raise BackendUnavailableError for the
  problem) and compared with the same parameters in float64 with ``scan="torch"``: outputs,
  final state and gradients wrt x and every parameter, on the plain problem (from a carried
  state when the layer has one) and, per capability, with timesteps and packed varlen input.
* ``gradcheck``: :func:`torch.autograd.gradcheck` in float64 on tiny shapes (L=4): the
  full Jacobian wrt x of one sequence; then, with B=2 in gradcheck's randomized ``fast_mode`` (a random projection
  instead of the full Jacobian, so the cost does not grow with the state or parameter count),
  wrt x and the incoming state through ``forward`` and ``step``, and wrt every parameter
  through :func:`torch.func.functional_call`.
  gradcheck keeps its own defaults (eps 1e-6, atol 1e-5, rtol 1e-3): they bound the
  finite-difference error, not our accuracy target.
"""

from __future__ import annotations

import inspect
import sys

import torch

from ..errors import BackendUnavailableError
from ._common import BATCH, SEQ_LEN, Subject, cast_tensor, conformance_check, real_view
from .checks_core import VARLEN_LENGTHS


def _has_scan_option(cls: type) -> str | None:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return "cannot read the signature of __init__"
    return None if "scan" in params else "the layer has no `scan` option"


def _params(layer) -> tuple[list[str], list[torch.nn.Parameter]]:
    named = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
    return [n for n, _ in named], [p for _, p in named]


def _run_problem(layer, x: torch.Tensor, w: torch.Tensor, kwargs: dict, stateful: bool):
    """y, final state and grads wrt (x, *params) of sum(y * w) + sum(final state)."""
    names, params = _params(layer)
    x = x.detach().clone().requires_grad_(True)
    if stateful:
        y, st = layer(x, return_state=True, **kwargs)
    else:
        y, st = layer(x, **kwargs), {}
    loss = (y * w.to(y.dtype)).sum()
    for k in sorted(st):
        v = st[k]
        if (v.is_floating_point() or v.is_complex()) and v.requires_grad:
            loss = loss + real_view(v).sum()
    gs = torch.autograd.grad(loss, [x, *params], allow_unused=True)
    gs = [torch.zeros_like(t) if g is None else g for g, t in zip(gs, [x, *params])]
    return y.detach(), {k: v.detach() for k, v in st.items()}, gs, names


@conformance_check("backend_parity", applies=_has_scan_option)
def check_backend_parity(s: Subject) -> str:
    """Every usable scan backend matches the float64 ``scan="torch"`` reference."""
    from ..registry.core import REGISTRY

    backends = REGISTRY.names("scan_backend")
    if not backends:
        return "nothing to compare: no scan backend is registered"
    try:
        ref = s.build(dtype=torch.float64, scan="torch")
    except Exception as exc:  # noqa: BLE001 - reported as the failure it is
        raise s.fail(f"building the float64 reference with scan='torch' failed: "
                     f"{type(exc).__name__}: {exc}") from exc
    stateful = "step" in s.caps
    B, L, d = BATCH, SEQ_LEN, s.d_model
    f64 = torch.float64
    # (label, batch, forward kwargs, compare the final state?)
    problems: list[tuple[str, int, dict, bool]] = []
    plain: dict = {}
    if stateful:
        with torch.no_grad():
            _, s0 = ref(s.randn(B, 5, d, seed=7, dtype=f64), return_state=True)
        plain["state"] = {k: v.detach() for k, v in s0.items()}
    problems.append(("plain" + (" from a carried state" if stateful else ""), B, plain,
                     stateful))
    if "timesteps" in s.caps:
        problems.append(("with timesteps", B,
                         {"timesteps": s.rand(B, L, seed=5, low=0.2, high=2.0, dtype=f64)},
                         stateful))
    if "varlen" in s.caps:
        bounds = [0]
        for n in VARLEN_LENGTHS:
            bounds.append(bounds[-1] + n)
        # the state returned for packed input is not part of the contract: outputs only
        problems.append(("packed varlen", 1, {"cu_seqlens": torch.tensor(bounds,
                                                                        device=s.device)},
                         False))

    compared, skipped = [], []
    for name in backends:
        obj = REGISTRY.get("scan_backend", name)
        try:
            inst = obj() if isinstance(obj, type) else obj
            ok, why = inst.available()
        except Exception as exc:  # noqa: BLE001 - a broken backend is not this layer's fault
            ok, why = False, f"available() raised {type(exc).__name__}: {exc}"
        if not ok:
            skipped.append(f"{name} (unavailable: {why})")
            continue
        try:
            layer = s.build(scan=name)
            layer.load_state_dict(ref.state_dict())
            worst = 0.0
            for label, b, kw, with_state in problems:
                x64 = s.randn(b, L, d, seed=1, dtype=f64)
                w = s.randn(b, L, d, seed=3, dtype=f64)
                kw_t = {k: ({sk: cast_tensor(sv, s.dtype) for sk, sv in v.items()}
                            if k == "state" else
                            cast_tensor(v, s.dtype) if k == "timesteps" else v)
                        for k, v in kw.items()}
                y_r, st_r, g_r, names = _run_problem(ref, x64, w, kw, with_state)
                y, st, g, _ = _run_problem(layer, x64.to(s.dtype), w, kw_t, with_state)
                where = f"scan={name!r}, {label}: "
                worst = max(worst, s.assert_close(y, y_r, where + "y vs float64 scan='torch'"))
                if with_state:
                    worst = max(worst, s.assert_states_close(
                        st, st_r, where + "final state vs float64 scan='torch'"))
                for lab, ga, gr in zip(["x", *[f"param {n!r}" for n in names]], g, g_r):
                    worst = max(worst, s.assert_close(
                        ga, gr, where + f"gradient wrt {lab} vs float64 scan='torch'"))
        except BackendUnavailableError as exc:
            skipped.append(f"{name} (cannot run this problem: {exc})")
            continue
        compared.append(f"{name} (rel err {worst:.2g})")
    if not compared:
        return "nothing to compare: " + "; ".join(skipped)
    msg = "compared " + ", ".join(compared)
    return msg + ("; skipped " + "; ".join(skipped) if skipped else "")


def _gradcheck(s: Subject, fn, inputs: tuple, labels: list[str], what: str, fast: bool) -> None:
    # the submodule is shadowed by the function of the same name in torch.autograd
    gradcheck_error = sys.modules["torch.autograd.gradcheck"].GradcheckError
    try:
        torch.autograd.gradcheck(fn, inputs, fast_mode=fast)
    except gradcheck_error as exc:
        text = str(exc)
        text = text if len(text) < 800 else text[:800] + " ..."
        legend = ", ".join(f"{i}={lab}" for i, lab in enumerate(labels))
        raise s.fail(f"{what}: analytical gradient != finite differences (inputs: {legend}): "
                     f"{text}") from None


@conformance_check("gradcheck")
def check_gradcheck(s: Subject) -> str:
    """float64 finite-difference gradient checks wrt input, state and parameters."""
    f64 = torch.float64
    B, L, d = 2, 4, s.d_model
    layer = s.build(dtype=f64)
    x = s.randn(B, L, d, dtype=f64).requires_grad_(True)
    # full Jacobian wrt x of one sequence (B=1: 2 forwards per input element); the batched
    # checks below use gradcheck's fast mode (a random projection of the Jacobian: it catches
    # a wrong gradient with probability ~1 at the cost of a few forwards, where a KV-cache
    # state or the parameters would need hundreds)
    _gradcheck(s, lambda x: layer(x), (x[:1].detach().clone().requires_grad_(True),), ["x"],
               "forward(x) wrt x (B=1)", fast=False)
    done = ["full Jacobian wrt x"]
    if "step" in s.caps:
        with torch.no_grad():
            _, s0 = layer(s.randn(B, 3, d, seed=7, dtype=f64), return_state=True)
        keys = [k for k in sorted(s0) if s0[k].is_floating_point() or s0[k].is_complex()]
        fixed = {k: v for k, v in s0.items() if k not in keys}
        h0 = tuple(s0[k].detach().clone().requires_grad_(True) for k in keys)
        labels = ["x", *[f"state[{k!r}]" for k in keys]]

        def fwd(x, *h):
            y, st = layer(x, state={**fixed, **dict(zip(keys, h))}, return_state=True)
            return (y, *[st[k] for k in keys])

        def stp(x_t, *h):
            y, st = layer.step(x_t, {**fixed, **dict(zip(keys, h))})
            return (y, *[st[k] for k in keys])

        _gradcheck(s, fwd, (x, *h0), labels, "forward(x, state) wrt x and state", fast=True)
        x_t = x[:, 0].detach().clone().requires_grad_(True)
        _gradcheck(s, stp, (x_t, *h0), labels, "step(x_t, state) wrt x_t and state",
                   fast=True)
        done.append("fast mode wrt x and state through forward and step" if keys else
                    "fast mode wrt x through step")
    names, params = _params(layer)
    if params:
        leaves = tuple(p.detach().clone().requires_grad_(True) for p in params)

        def functional(x, *ps):
            return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

        _gradcheck(s, functional, (x.detach().clone().requires_grad_(True), *leaves),
                   ["x", *[f"param {n!r}" for n in names]], "forward(x) wrt the parameters",
                   fast=True)
        done.append(f"fast mode wrt {len(params)} parameters")
    return "ok: " + "; ".join(done)
