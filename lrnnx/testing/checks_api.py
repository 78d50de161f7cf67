"""Conformance checks of the API contract of a Layer.

* ``bad_inputs``: every malformed input is rejected with the documented error type
  (:class:`~lrnnx.errors.InputError` / :class:`~lrnnx.errors.InputTypeError`) whose message
  names the layer; the cases depend on the capabilities (cu_seqlens / timesteps / step given to
  a layer without the capability must be rejected too).
* ``empty_and_single``: L = 0 returns an empty (B, 0, d_model) output and the incoming state
  unchanged (``init_state`` when none is given); L = 1 works and, for a causal layer, equals
  the first output of a longer sequence.
* ``spec_round_trip``: ``lrnnx.build_layer(format_spec(name(**options)), d_model)`` builds the
  same class, accepts the original's ``state_dict`` and computes the same forward.
* ``state_dict_round_trip``: a state_dict saved with ``torch.save`` and loaded into an instance
  built from another seed reproduces every tensor and the forward (non-persistent random
  buffers that change the output would be caught here).
"""

from __future__ import annotations

import io

import torch

from ..errors import InputError, InputTypeError, SpecError
from ._common import (
    BATCH,
    SEQ_LEN,
    Subject,
    clone_state,
    conformance_check,
    resolve_layer,
    to_dtype,
)


def _bad_input_cases(s: Subject, layer) -> list[tuple[str, object, type]]:
    B, L, d = BATCH, 5, s.d_model
    dev = s.device
    x = s.randn(B, L, d)
    x1 = s.randn(1, L, d)
    caps = s.caps

    def cu(vals, dtype=torch.int64):
        return torch.tensor(vals, dtype=dtype, device=dev)

    def ones(*shape, dtype=None):
        return torch.ones(*shape, device=dev, dtype=dtype or s.dtype)

    cases = [
        ("x of rank 2 (B, d_model)", lambda: layer(x[0]), InputError),
        ("x of rank 4", lambda: layer(x[None]), InputError),
        (f"x with last dim {d + 1} != d_model={d}", lambda: layer(s.randn(B, L, d + 1)),
         InputError),
        ("x of integer dtype", lambda: layer(x.long()), InputTypeError),
        ("x given as a list", lambda: layer(x.tolist()), InputTypeError),
        ("state given as a list", lambda: layer(x, state=[x]), InputTypeError),
    ]
    if any(p.is_floating_point() for p in layer.parameters()):
        other = torch.float64 if s.dtype == torch.float32 else torch.float32
        cases.append((f"x of dtype {other} for parameters in {s.dtype}",
                      lambda: layer(x.to(other)), InputTypeError))
    if "varlen" in caps:
        cases += [
            ("cu_seqlens of dtype float32", lambda: layer(x1, cu_seqlens=cu([0, 2, L]).float()),
             InputTypeError),
            ("cu_seqlens that is 2-D", lambda: layer(x1, cu_seqlens=cu([[0, 2, L]])),
             InputError),
            ("cu_seqlens not starting at 0", lambda: layer(x1, cu_seqlens=cu([1, 2, L])),
             InputError),
            ("cu_seqlens not ending at L", lambda: layer(x1, cu_seqlens=cu([0, 2, L - 1])),
             InputError),
            ("decreasing cu_seqlens", lambda: layer(x1, cu_seqlens=cu([0, 3, 2, L])),
             InputError),
            ("cu_seqlens with batch size 2", lambda: layer(x, cu_seqlens=cu([0, 2, L])),
             InputError),
        ]
    else:
        cases.append(("cu_seqlens for a layer without 'varlen'",
                      lambda: layer(x1, cu_seqlens=cu([0, 2, L])), InputError))
    if "timesteps" in caps:
        neg = ones(B, L)
        neg[0, 2] = -1.0
        cases += [
            ("timesteps of shape (B, L + 1)", lambda: layer(x, timesteps=ones(B, L + 1)),
             InputError),
            ("timesteps of shape (B,)", lambda: layer(x, timesteps=ones(B)), InputError),
            ("negative timesteps", lambda: layer(x, timesteps=neg), InputError),
            ("timesteps of integer dtype",
             lambda: layer(x, timesteps=ones(B, L, dtype=torch.int64)), InputTypeError),
        ]
    else:
        cases.append(("timesteps for a layer without 'timesteps'",
                      lambda: layer(x, timesteps=ones(B, L)), InputError))
    if "step" in caps:
        cases += [
            ("step() with x_t of rank 3", lambda: layer.step(x, layer.init_state(B)),
             InputError),
            (f"step() with x_t last dim {d + 1}",
             lambda: layer.step(s.randn(B, d + 1), layer.init_state(B)), InputError),
            ("step() with state=None", lambda: layer.step(x[:, 0], None), InputError),
        ]
    else:
        cases.append(("step() on a layer without 'step'",
                      lambda: layer.step(x[:, 0], layer.init_state(B)), InputError))
    return cases


@conformance_check("bad_inputs")
def check_bad_inputs(s: Subject) -> str:
    """Malformed inputs raise the documented error types, naming the layer."""
    layer = s.build()
    problems = []
    cases = _bad_input_cases(s, layer)
    for label, call, expected in cases:
        try:
            with torch.no_grad():
                call()
        except expected as exc:
            if s.name not in str(exc):
                problems.append(f"{label}: the {expected.__name__} message does not name the "
                                f"layer: {str(exc)[:160]!r}")
        except Exception as exc:  # noqa: BLE001 - the wrong error type is the finding
            problems.append(f"{label}: raised {type(exc).__name__} ({str(exc)[:160]}) instead "
                            f"of lrnnx.errors.{expected.__name__}")
        else:
            problems.append(f"{label}: accepted silently (expected "
                            f"lrnnx.errors.{expected.__name__})")
    if problems:
        raise s.fail(f"{len(problems)} of {len(cases)} bad inputs were not rejected properly:\n"
                     + "\n".join(f"  - {p}" for p in problems))
    return f"{len(cases)} bad inputs rejected"


@conformance_check("empty_and_single")
def check_empty_and_single(s: Subject) -> str:
    """L = 0 gives (B, 0, d_model) and the state unchanged; L = 1 works."""
    B, L, d = BATCH, SEQ_LEN, s.d_model
    layer = s.build()
    x = s.randn(B, L, d)
    x0 = x[:, :0]
    with torch.no_grad():
        for label, out in (("forward(x[:, :0])", layer(x0)),
                           ("forward(x[:, :0], return_state=True)[0]",
                            layer(x0, return_state=True)[0])):
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (B, 0, d) \
                    or out.dtype != s.dtype:
                got = (f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor)
                       else type(out).__name__)
                raise s.fail(f"{label} must be an empty tensor of shape {(B, 0, d)} and dtype "
                             f"{s.dtype}, got {got}")
        _, st = layer(x0, return_state=True)
        s.assert_states_close(st, layer.init_state(B, device=s.device, dtype=s.dtype),
                              "state returned for L = 0 without a state vs init_state(B)", 0.0)
        y_full, s0 = layer(x, return_state=True)
        _, st = layer(x0, state=clone_state(s0), return_state=True)
        s.assert_states_close(st, s0, "state returned for L = 0 vs the state passed in", 0.0)
        if "varlen" in s.caps:
            cu = torch.tensor([0, 0], device=s.device)
            y = layer(x0[:1], cu_seqlens=cu)
            if tuple(y.shape) != (1, 0, d):
                raise s.fail(f"forward(x of shape (1, 0, d), cu_seqlens=[0, 0]) returned "
                             f"shape {tuple(y.shape)}; expected {(1, 0, d)}")
        y1 = layer(x[:, :1])
        if tuple(y1.shape) != (B, 1, d) or not bool(torch.isfinite(y1).all()):
            raise s.fail(f"forward(x[:, :1]) must return finite values of shape {(B, 1, d)}, "
                         f"got shape {tuple(y1.shape)}")
        y1s, _ = layer(x[:, :1], return_state=True)
        s.assert_close(y1s, y1, "forward(x[:, :1], return_state=True)[0] vs forward(x[:, :1])")
        if not s.declares("causality"):
            s.assert_close(y1, y_full[:, :1], "forward(x[:, :1]) vs forward(x)[:, :1]")
    return "L = 0 and L = 1 ok"


def _registered_as_itself(cls: type) -> str | None:
    from ..registry.core import REGISTRY

    name = getattr(cls, "name", "")
    if name in REGISTRY.names("layer"):
        try:
            if resolve_layer(REGISTRY.get("layer", name)) is cls:
                return None
        except Exception:  # noqa: BLE001 - a clash is reported by the registry itself
            pass
    return (f"{cls.__name__} is not the layer registered as {name!r}; register it "
            f"(lrnnx.register('layer', cls)) to check building it from a spec")


@conformance_check("spec_round_trip", applies=_registered_as_itself)
def check_spec_round_trip(s: Subject) -> str:
    """build_layer(format_spec(...)) rebuilds the layer; same state_dict -> same forward."""
    import lrnnx
    from ..registry.spec import Component, Spec, format_spec, parse_spec

    try:
        text = format_spec(Spec((Component(s.name, tuple(s.kwargs.items())),)))
    except SpecError as exc:
        raise s.fail(f"the build options {s.kwargs!r} cannot be written as a spec: "
                     f"{exc}") from None
    again = format_spec(parse_spec(text))
    if again != text:
        raise s.fail(f"format_spec is not canonical: {text!r} re-formats as {again!r}")
    layer = s.build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)  # a different init, so loading the state_dict matters
        built = lrnnx.build_layer(text, d_model=s.d_model)
    if type(built) is not s.cls:
        raise s.fail(f"build_layer({text!r}) returned {type(built).__name__}, expected "
                     f"{s.cls.__name__}")
    built = to_dtype(built, s.dtype, s.device).eval()
    try:
        built.load_state_dict(layer.state_dict())
    except RuntimeError as exc:
        raise s.fail(f"the state_dict of {s.cls.__name__}(d_model={s.d_model}, **{s.kwargs}) "
                     f"does not load into build_layer({text!r}): {exc}") from None
    x = s.randn(BATCH, SEQ_LEN, s.d_model)
    with torch.no_grad():
        s.assert_close(built(x), layer(x), f"forward of build_layer({text!r}) with the "
                                           f"loaded state_dict vs the original")
    return f"spec {text!r}"


@conformance_check("state_dict_round_trip")
def check_state_dict_round_trip(s: Subject) -> str:
    """torch.save/torch.load of the state_dict into a differently seeded instance."""
    a = s.build(seed=0)
    b = s.build(seed=1)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True, map_location=s.device)
    try:
        b.load_state_dict(sd)
    except RuntimeError as exc:
        raise s.fail(f"load_state_dict into a fresh instance failed: {exc}") from None
    sa, sb = a.state_dict(), b.state_dict()
    if set(sa) != set(sb):
        raise s.fail(f"state_dict keys differ after loading: {sorted(set(sa) ^ set(sb))}")
    for k in sa:
        if not torch.equal(sa[k], sb[k]):
            raise s.fail(f"state_dict[{k!r}] differs after a save/load round trip")
    x = s.randn(BATCH, SEQ_LEN, s.d_model)
    with torch.no_grad():
        ya, sta = a(x, return_state=True)
        yb, stb = b(x, return_state=True)
    s.assert_close(yb, ya, "forward after loading the state_dict vs the original (a tensor "
                           "that matters is missing from the state_dict?)")
    s.assert_states_close(stb, sta, "state after loading the state_dict vs the original")
    return f"{len(sa)} tensors"
