"""Conformance checks of the sequence semantics of a Layer.

* ``declarations``: class attributes are well formed (name, capabilities, expected_failures,
  test_kwargs).
* ``forward_shapes``: ``forward(x)`` maps (B, L, d_model) -> (B, L, d_model) in x's dtype and
  device without touching x; ``return_state=True`` gives ``(y, state)`` with the same y and a
  state with the keys and tensor ranks of ``init_state(B)``.
* ``causality``: y[:, :t] does not depend on x[:, t:].
* ``step_matches_forward``: y_t, h_t = step(x_t, h_{t-1}) reproduces forward(x) and its final
  state, from ``init_state`` and from a carried non-zero state.
* ``split_state``: forward(x[:, :t]) then forward(x[:, t:], state=h_t) == forward(x): outputs,
  final state and gradients wrt x and every parameter.
* ``varlen``: packed sequences with ``cu_seqlens`` == one forward per sequence.
* ``timesteps_ones``: ``timesteps = 1`` everywhere == no timesteps (all-equal timesteps c != 1
  scale the step size, so only ones are neutral).
"""

from __future__ import annotations

import torch

from ..registry.inputs import CAPABILITIES
from ._common import (
    BATCH,
    SEQ_LEN,
    Subject,
    clone_state,
    conformance_check,
    real_view,
)

VARLEN_LENGTHS = (5, 0, 1, 7)  # includes an empty sequence: valid input (cu_seqlens repeats)


def _known_checks() -> dict:
    from .checks import CHECKS  # circular at import time only

    return CHECKS


@conformance_check("declarations")
def check_declarations(s: Subject) -> str:
    """The layer's class attributes are well formed."""
    import inspect
    import keyword

    cls = s.cls
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise s.fail(f"class attribute `name` must be a Python identifier, got {name!r}")
    bad = set(s.caps) - CAPABILITIES
    if bad:
        raise s.fail(f"unknown capabilities {sorted(bad)}; allowed: {sorted(CAPABILITIES)}")
    params = inspect.signature(cls.__init__).parameters
    if "d_model" not in params:
        raise s.fail("__init__ must accept `d_model` (layers are built as cls(d_model, ...))")
    xf = getattr(cls, "expected_failures", None) or {}
    if not isinstance(xf, dict):
        raise s.fail(f"expected_failures must be a dict {{check: reason}}, got "
                     f"{type(xf).__name__}")
    checks = _known_checks()
    for check, reason in xf.items():
        if check not in checks or check == "declarations":
            valid = ", ".join(c for c in checks if c != "declarations")
            raise s.fail(f"expected_failures names unknown check {check!r}; valid: {valid}")
        if not isinstance(reason, str) or not reason.strip():
            raise s.fail(f"expected_failures[{check!r}] must give the reason as a non-empty "
                         f"string, got {reason!r}")
        why_not = checks[check].not_applicable(cls)
        if why_not:
            raise s.fail(f"expected_failures lists {check!r}, which does not apply to this "
                         f"layer ({why_not}); remove it")
    tk = getattr(cls, "test_kwargs", None) or {}
    if not isinstance(tk, dict) or not all(isinstance(k, str) for k in tk):
        raise s.fail(f"test_kwargs must be a dict of option name -> value, got {tk!r}")
    return f"{len(xf)} expected failure(s) declared"


@conformance_check("forward_shapes")
def check_forward_shapes(s: Subject) -> str:
    """forward keeps shape/dtype/device, leaves x alone, and return_state=True returns (y, dict)."""
    B, L, d = BATCH, SEQ_LEN, s.d_model
    layer = s.build()
    x = s.randn(B, L, d)
    x_copy = x.clone()
    with torch.no_grad():
        y = layer(x)
        if not isinstance(y, torch.Tensor):
            raise s.fail(f"forward(x) must return a Tensor when return_state=False, got "
                         f"{type(y).__name__}")
        if tuple(y.shape) != (B, L, d):
            raise s.fail(f"forward(x) with x of shape {(B, L, d)} returned shape "
                         f"{tuple(y.shape)}; expected {(B, L, d)}")
        if y.dtype != x.dtype:
            raise s.fail(f"forward(x) returned dtype {y.dtype} for x of dtype {x.dtype}")
        if y.device != x.device:
            raise s.fail(f"forward(x) returned a tensor on {y.device} for x on {x.device}")
        if not bool(torch.isfinite(y).all()):
            raise s.fail("forward(x) returned non-finite values for x ~ N(0, 1)")
        if not torch.equal(x, x_copy):
            raise s.fail("forward(x) modified its input x in place")
        out = layer(x, return_state=True)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise s.fail(f"forward(x, return_state=True) must return (y, state), got "
                         f"{type(out).__name__}" + (f" of length {len(out)}"
                                                     if isinstance(out, tuple) else ""))
        y2, state = out
        s.assert_close(y2, y, "y of forward(x, return_state=True) vs forward(x)")
        if not isinstance(state, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise s.fail(f"the state must be a dict[str, Tensor], got {state!r:.200}")
        init = layer.init_state(B, device=s.device, dtype=s.dtype)
        if not isinstance(init, dict):
            raise s.fail(f"init_state({B}) must return a dict[str, Tensor], got "
                         f"{type(init).__name__}")
        if set(init) != set(state):
            raise s.fail(f"init_state({B}) keys {sorted(init)} differ from the keys of the "
                         f"state returned by forward: {sorted(state)}")
        for k in sorted(state):
            # sizes may differ (a KV cache grows with L); the layout may not
            if init[k].dim() != state[k].dim():
                raise s.fail(f"state[{k!r}] has shape {tuple(state[k].shape)} after forward "
                             f"but {tuple(init[k].shape)} (another rank) from init_state({B})")
            if state[k].device != x.device:
                raise s.fail(f"state[{k!r}] is on {state[k].device}, x on {x.device}")
    return f"y {tuple(y.shape)} {y.dtype}; state keys {sorted(state)}"


@conformance_check("causality")
def check_causality(s: Subject) -> str:
    """Changing x[:, t:] must leave y[:, :t] unchanged (up to rounding, e.g. FFT convolutions)."""
    B, L, d = BATCH, SEQ_LEN, s.d_model
    layer = s.build()
    x = s.randn(B, L, d)
    worst = 0.0
    with torch.no_grad():
        y = layer(x)
        for t in (1, L // 2, L - 1):
            x2 = x.clone()
            x2[:, t:] = s.randn(B, L - t, d, seed=100 + t)
            y2 = layer(x2)
            worst = max(worst, s.assert_close(
                y2[:, :t], y[:, :t], f"y[:, :{t}] changed when only x[:, {t}:] changed "
                f"(the layer looks into the future)"))
    return f"max rel change of past outputs {worst:.2g}"


def _run_steps(s: Subject, layer, x: torch.Tensor, state: dict):
    ys = []
    for t in range(x.shape[1]):
        out = layer.step(x[:, t], state)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise s.fail(f"step(x_t, state) must return (y_t, state), got "
                         f"{type(out).__name__}")
        y_t, state = out
        if tuple(y_t.shape) != (x.shape[0], x.shape[2]):
            raise s.fail(f"step() returned y_t of shape {tuple(y_t.shape)}; expected "
                         f"(B, d_model) = {(x.shape[0], x.shape[2])}")
        ys.append(y_t)
    return torch.stack(ys, dim=1), state


@conformance_check("step_matches_forward", requires=("step",))
def check_step_matches_forward(s: Subject) -> str:
    """Stepping token by token gives forward's outputs and final state."""
    B, L, d = BATCH, SEQ_LEN, s.d_model
    layer = s.build()
    x = s.randn(B, L, d)
    worst = 0.0
    with torch.no_grad():
        y_ref, st_ref = layer(x, return_state=True)
        init = layer.init_state(B, device=s.device, dtype=s.dtype)
        y, st = _run_steps(s, layer, x, clone_state(init))
        worst = max(worst, s.assert_close(y, y_ref, "outputs of step() from init_state(B) vs "
                                                    "forward(x)"))
        worst = max(worst, s.assert_states_close(st, st_ref, "state after L steps vs "
                                                             "forward(x, return_state=True)"))
        # from a non-zero state carried out of a previous segment
        _, s0 = layer(s.randn(B, 5, d, seed=7), return_state=True)
        y_ref, st_ref = layer(x, state=clone_state(s0), return_state=True)
        y, st = _run_steps(s, layer, x, clone_state(s0))
        worst = max(worst, s.assert_close(y, y_ref, "outputs of step() from a carried state vs "
                                                    "forward(x, state)"))
        worst = max(worst, s.assert_states_close(st, st_ref, "state after L steps from a "
                                                             "carried state vs forward"))
    return f"max rel err {worst:.2g}"


@conformance_check("split_state", requires=("step",))
def check_split_state(s: Subject) -> str:
    """Chunked forward with carried state == full forward, including every gradient."""
    B, L, d = BATCH, SEQ_LEN, s.d_model
    layer = s.build()
    x = s.randn(B, L, d)
    w = s.randn(B, L, d, seed=3)
    names, params = zip(*[(n, p) for n, p in layer.named_parameters() if p.requires_grad]) \
        if any(p.requires_grad for p in layer.parameters()) else ((), ())

    def run(bounds):
        xl = x.clone().requires_grad_(True)
        state, ys = None, []
        for a, b in zip(bounds, bounds[1:]):
            y, state = layer(xl[:, a:b], state=state, return_state=True)
            ys.append(y)
        return xl, torch.cat(ys, dim=1), state

    def grads(xl, y, state, w_state):
        # the loss also weighs the final state so gradients flowing through it are checked
        loss = (y * w).sum()
        for k, ws in w_state.items():
            loss = loss + (real_view(state[k]) * ws).sum()
        gs = torch.autograd.grad(loss, [xl, *params], allow_unused=True)
        return [torch.zeros_like(t) if g is None else g for g, t in zip(gs, [xl, *params])]

    xl, y_ref, st_ref = run([0, L])
    w_state = {k: s.randn(*real_view(v).shape, seed=11 + i)
               for i, (k, v) in enumerate(sorted(st_ref.items()))
               if (v.is_floating_point() or v.is_complex()) and v.requires_grad}
    g_ref = grads(xl, y_ref, st_ref, w_state)
    worst = 0.0
    for bounds in ([0, 5, L], [0, 1, 9, L]):
        cut = "|".join(f"{a}:{b}" for a, b in zip(bounds, bounds[1:]))
        xl, y, st = run(bounds)
        worst = max(worst, s.assert_close(y, y_ref, f"outputs of chunks [{cut}] with carried "
                                                    f"state vs one forward"))
        worst = max(worst, s.assert_states_close(st, st_ref, f"final state of chunks [{cut}] "
                                                             f"vs one forward"))
        missing = [k for k in w_state if not st[k].requires_grad]
        if missing:
            raise s.fail(f"chunks [{cut}]: state {missing} carries no gradient although the "
                         f"full forward's state does (state detached between chunks?)")
        g = grads(xl, y, st, w_state)
        for label, ga, gr in zip(["x", *[f"param {n!r}" for n in names]], g, g_ref):
            worst = max(worst, s.assert_close(ga, gr, f"gradient wrt {label} with chunks "
                                                      f"[{cut}] vs one forward"))
    return f"max rel err {worst:.2g} (outputs, state, {1 + len(params)} gradients)"


@conformance_check("varlen", requires=("varlen",))
def check_varlen(s: Subject) -> str:
    """Packed sequences (B=1, cu_seqlens) == a separate forward per sequence."""
    d = s.d_model
    L = sum(VARLEN_LENGTHS)
    bounds = [0]
    for n in VARLEN_LENGTHS:
        bounds.append(bounds[-1] + n)
    layer = s.build()
    x = s.randn(1, L, d)
    with_ts = "timesteps" in s.caps
    ts = s.rand(1, L, seed=5, low=0.5, high=1.5) if with_ts else None
    worst = 0.0
    with torch.no_grad():
        for dt in (torch.int32, torch.int64):
            cu = torch.tensor(bounds, dtype=dt, device=s.device)
            y = layer(x, cu_seqlens=cu)
            if tuple(y.shape) != (1, L, d):
                raise s.fail(f"forward(x, cu_seqlens) returned shape {tuple(y.shape)}; "
                             f"expected {(1, L, d)}")
            for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
                if a == b:
                    continue
                y_i = layer(x[:, a:b])
                worst = max(worst, s.assert_close(
                    y[:, a:b], y_i, f"sequence {i} (positions {a}:{b}, cu_seqlens {dt}) of the "
                    f"packed forward vs forward on that sequence alone"))
            if with_ts and dt is torch.int64:
                y = layer(x, cu_seqlens=cu, timesteps=ts)
                for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
                    if a == b:
                        continue
                    y_i = layer(x[:, a:b], timesteps=ts[:, a:b])
                    worst = max(worst, s.assert_close(
                        y[:, a:b], y_i, f"sequence {i} (positions {a}:{b}) with timesteps, "
                        f"packed vs alone"))
    return f"lengths {VARLEN_LENGTHS}: max rel err {worst:.2g}"


@conformance_check("timesteps_ones", requires=("timesteps",))
def check_timesteps_ones(s: Subject) -> str:
    """timesteps of all ones is the same as no timesteps.

    (Whether other timesteps change y is not checked: a position-wise layer such as an MLP
    accepts timesteps so it can sit in a stack that uses them, and rightly ignores them.)
    """
    B, L, d = BATCH, SEQ_LEN, s.d_model
    layer = s.build()
    x = s.randn(B, L, d)
    ones = torch.ones(B, L, device=s.device, dtype=s.dtype)
    with torch.no_grad():
        y0, st0 = layer(x, return_state=True)
        y1, st1 = layer(x, timesteps=ones, return_state=True)
        worst = s.assert_close(y1, y0, "forward(x, timesteps=ones) vs forward(x)")
        worst = max(worst, s.assert_states_close(st1, st0, "state with timesteps=ones vs "
                                                           "without timesteps"))
    return f"max rel err {worst:.2g}"
