"""Tests of the spec-string language (lrnnx.registry.spec)."""

from __future__ import annotations

import keyword
import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrnnx.errors import SpecError, UnknownComponentError
from lrnnx.registry.spec import (
    MAX_LAYERS,
    MAX_SPEC_CHARS,
    Component,
    Repeat,
    Spec,
    format_spec,
    parse_spec,
    resolve_names,
    spec_from_config,
    spec_to_config,
)


def names(text: str) -> list[str]:
    return [c.name for c in parse_spec(text).expand()]


def C(name, **kw):
    return Component(name, tuple(kw.items()))


# ---------------------------------------------------------------------------------- grammar

def test_single_name():
    sp = parse_spec("mamba")
    assert sp == Spec((Component("mamba", ()),))
    assert sp.items[0].span == (0, 5)


def test_call_with_kwargs_keeps_user_order():
    c = parse_spec("mamba(d_state=16, expand=2, dt_min=0.001)").items[0]
    assert c.kwargs == (("d_state", 16), ("expand", 2), ("dt_min", 0.001))
    assert c.kwargs_dict == {"d_state": 16, "expand": 2, "dt_min": 0.001}
    assert c.span == (0, 5)
    assert c.arg_span("expand") == (18, 26)
    assert c.arg_span("nope") is None


def test_all_value_kinds():
    c = parse_spec("x(a=1, b=-2.5, c='s', d=\"t\", e=True, f=False, g=None, h=name, "
                   "i=f2(k=[1, -3]), j=[1, [2, 3]], k=(4, 5), l=+7, m=1e-5, n=[])").items[0]
    d = c.kwargs_dict
    assert d["a"] == 1 and type(d["a"]) is int
    assert d["b"] == -2.5
    assert d["c"] == "s" and d["d"] == "t"
    assert d["e"] is True and d["f"] is False and d["g"] is None
    assert d["h"] == Component("name", ())
    assert d["i"] == C("f2", k=(1, -3))
    assert d["j"] == (1, (2, 3))
    assert d["k"] == (4, 5)
    assert d["l"] == 7 and d["m"] == 1e-5 and d["n"] == ()


def test_bare_name_value_equals_empty_call():
    assert parse_spec("ssm(param=s4d_inv)") == parse_spec("ssm(param=s4d_inv())")


def test_brief_examples():
    assert names("mamba(d_state=16)*4 + attn") == ["mamba"] * 4 + ["attn"]
    assert names("2*(s5(d_state=64) + mlp) + attn(window=128)") == [
        "s5", "mlp", "s5", "mlp", "attn"]
    c = parse_spec("ssm(param=s4d_inv, disc=bilinear, scan=torch)").items[0]
    assert c.kwargs_dict == {"param": Component("s4d_inv", ()), "disc": Component("bilinear", ()),
                             "scan": Component("torch", ())}
    c = parse_spec("ssm(param=lru_ring(r_min=0.9), d_state=[1, 2])").items[0]
    assert c.kwargs_dict == {"param": C("lru_ring", r_min=0.9), "d_state": (1, 2)}


def test_precedence():
    assert names("a + b*2") == ["a", "b", "b"]
    assert names("2*(a+b)") == ["a", "b", "a", "b"]
    assert names("(a+b)*2") == ["a", "b", "a", "b"]
    assert names("a*2 + b") == ["a", "a", "b"]
    assert names("2*a + 3*b") == ["a", "a", "b", "b", "b"]
    assert names("a + (b + c)") == ["a", "b", "c"]
    assert names("((a))") == ["a"]
    assert names("(a*2)*3") == ["a"] * 6
    assert names("2*(a + 3*(b + c))") == ["a", "b", "c", "b", "c", "b", "c"] * 2


def test_structure_kept():
    sp = parse_spec("a + (b + c)*2")
    assert sp.items[0] == Component("a", ())
    assert sp.items[1] == Repeat(Spec((Component("b", ()), Component("c", ()))), 2)
    assert parse_spec("a + (b + c)") == parse_spec("a + b + c")
    assert parse_spec("2*a") == parse_spec("a*2")
    assert parse_spec("a*1") == Spec((Repeat(Spec((Component("a", ()),)), 1),))


def test_whitespace_and_newlines():
    assert parse_spec("  mamba *  2\n+\tattn  ") == parse_spec("mamba*2 + attn")
    sp = parse_spec("   mamba")
    assert sp.items[0].span == (3, 8)
    assert names("a +\r\n b") == ["a", "b"]


def test_spans_with_unicode():
    c = parse_spec("x(s='üüü', y=z)").items[0]
    z = c.kwargs_dict["y"]
    assert z.span == (13, 14)
    assert c.arg_span("y") == (11, 14)


def test_hashable_and_span_ignored():
    a, b = parse_spec("m(x=[1, 2], p=q(r=1))"), parse_spec("  m( x=(1,2) , p=q(r=1) )")
    assert a == b and hash(a) == hash(b)
    assert a.items[0].span != b.items[0].span
    assert {a, b} == {a}


def test_expand_and_num_layers():
    sp = parse_spec("(a + b*3)*4 + c")
    assert sp.num_layers() == 17 == len(sp.expand())
    assert all(isinstance(c, Component) for c in sp.expand())


def test_str_is_format():
    assert str(parse_spec("2*a")) == "a*2"


# ---------------------------------------------------------------------------------- formatting

@pytest.mark.parametrize("text,canonical", [
    ("mamba", "mamba"),
    ("mamba()", "mamba"),
    ("mamba( d_state = 16 )*4+attn", "mamba(d_state=16)*4 + attn"),
    ("2*(s5(d_state=64) + mlp) + attn(window=128)", "(s5(d_state=64) + mlp)*2 + attn(window=128)"),
    ('x(s="a", t=1.0, u=1e-05, v=-0.0, w=None, b=True)',
     "x(s='a', t=1.0, u=1e-05, v=-0.0, w=None, b=True)"),
    ("x(p=q(r=(1, 2)), l=[a, b()])", "x(p=q(r=[1, 2]), l=[a, b])"),
    ("(a*2)*3", "(a*2)*3"),
    ("x(a=1e999, b=-1e999)", "x(a=1e999, b=-1e999)"),
    ("a + (b + c)", "a + b + c"),
    ("x(s=\"it's\")", "x(s=\"it's\")"),
])
def test_format_canonical(text, canonical):
    assert format_spec(text) == canonical
    assert format_spec(parse_spec(text)) == canonical
    assert format_spec(canonical) == canonical
    assert parse_spec(canonical) == parse_spec(text)


def test_format_rejects_unwritable():
    with pytest.raises(SpecError, match="nan"):
        format_spec(Spec((C("x", a=math.nan),)))
    with pytest.raises(SpecError, match="not a valid component name"):
        format_spec(Spec((Component("bad-name", ()),)))
    with pytest.raises(SpecError, match="cannot be written"):
        format_spec(Spec((C("x", a=object()),)))
    with pytest.raises(SpecError, match="empty"):
        format_spec(Spec(()))


_NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True).filter(
    lambda s: not keyword.iskeyword(s))

_scalars = (st.integers(-10**20, 10**20) | st.floats(allow_nan=False) | st.text(max_size=8)
            | st.booleans() | st.none())


def _components(values):
    kw = st.lists(st.tuples(_NAMES, values), max_size=3, unique_by=lambda kv: kv[0])
    return st.builds(lambda n, k: Component(n, tuple(k)), _NAMES, kw)


_values = st.recursive(_scalars, lambda v: st.lists(v, max_size=3).map(tuple) | _components(v),
                       max_leaves=8)
_layers = _components(_values)


def _items(item_st):
    return st.lists(item_st, min_size=1, max_size=3).map(tuple)


_item = st.recursive(_layers, lambda it: st.builds(
    lambda items, n: Repeat(Spec(items), n), _items(it), st.integers(1, 3)), max_leaves=6)
_specs = _items(_item).map(Spec)


@settings(max_examples=300, deadline=None)
@given(_specs)
def test_round_trip_generated(sp):
    text = format_spec(sp)
    again = parse_spec(text)
    assert again == sp
    assert format_spec(again) == text
    assert again.expand() == sp.expand()


@settings(max_examples=200, deadline=None)
@given(_specs)
def test_config_round_trip_generated(sp):
    cfg = spec_to_config(sp)
    back = spec_from_config(cfg)
    assert back.expand() == sp.expand()
    assert spec_to_config(back) == cfg


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab_(),=*+-1.'[] \"#x", max_size=30) | st.text(max_size=30))
def test_fuzz_only_spec_errors(text):
    try:
        sp = parse_spec(text)
    except SpecError as e:
        if e.start is not None:
            assert 0 <= e.start <= len(e.spec)
        return
    assert parse_spec(format_spec(sp)) == sp


# ---------------------------------------------------------------------------------- errors

def _err(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    return info.value


@pytest.mark.parametrize("text,fragment,start,end", [
    # positional / unpacking / duplicate arguments
    ("mamba(16)*4 + attn", "positional arguments", 6, 8),
    ("mamba(d_state=16, 2)", "positional arguments", None, None),  # a Python syntax error
    ("mamba(*xs)", "positional arguments", 6, 9),
    ("mamba(**kw)", "'**' unpacking", 6, 10),
    ("a(x=1, x=2)", "given twice", 7, 10),
    # repetition counts
    ("a*0", "positive integer", 2, 3),
    ("a*-1", "got -1", 2, 4),
    ("a*2.5", "got 2.5", 2, 5),
    ("a*True", "got True", 2, 6),
    ("a*b", "positive integer literal", 2, 3),
    ("n*m", "positive integer literal", 2, 3),
    ("(a + b)*c", "positive integer literal", 8, 9),
    ("a*(2+3)", "positive integer literal", 3, 6),
    ("0*a", "got 0", 0, 1),
    ("2*3", "got the literal 3", 2, 3),
    ("a*1000000", f"at most {MAX_LAYERS}", 2, 9),
    # layer positions
    ("a - b", "operator '-'", 0, 5),
    ("a / 2", "operator '/'", 0, 5),
    ("a + 16", "the literal 16", 4, 6),
    ("a + 'x'", "the literal 'x'", 4, 7),
    ("a + [b]", "got list", 4, 7),
    ("a + ()", "empty parentheses", 4, 6),
    ("a + b.c", "attribute access", 4, 7),
    ("a + b[0]", "subscript", 4, 8),
    ("a + (lambda: 1)", "lambda", 5, 14),
    ("a + (b < c)", "comparison", 5, 10),
    ("a + -b", "operator '-'", 4, 6),
    ("a + b.c(x=1)", "plain name", 4, 7),
    ("__import__('os').system('touch x')", "plain name", 0, 23),
    ("a + (b if c else d)", "conditional", 5, 18),
    ("a + {b}", "set", 4, 7),
    ("a + (b := c)", "assignment expression", 5, 11),
    ("a + (b and c)", "boolean operator", 5, 12),
    # value positions
    ("a(x=b.c)", "attribute access", 4, 7),
    ("a(x=b[1])", "subscript", 4, 8),
    ("a(x=lambda: 1)", "lambda", 4, 13),
    ("a(x=1 < 2)", "comparison", 4, 9),
    ("a(x=f'{y}')", "f-string", 4, 10),
    ("a(x=1 + 2)", "operator '+'", 4, 9),
    ("a(x=2*3)", "operator '*'", 4, 7),
    ("a(x=-y)", "only allowed before a number", 4, 6),
    ("a(x=not 1)", "operator 'not'", 4, 9),
    ("a(x=~1)", "operator '~'", 4, 6),
    ("a(x=--1)", "only allowed before a number", 4, 7),
    ("a(x=-True)", "only allowed before a number", 4, 9),
    ("a(x=1j)", "1j", 4, 6),
    ("a(x=b'1')", "b'1'", 4, 8),
    ("a(x=...)", "Ellipsis", 4, 7),
    ("a(x={'k': 1})", "dict", 4, 12),
    ("a(x={1})", "set", 4, 7),
    ("a(x=[i for i in y])", "comprehension", 4, 18),
    ("a(x=b.c(d=1))", "plain name", 4, 7),
    ("a(x=q(1))", "positional arguments", 6, 7),
    ("a(x=[1, q.r])", "attribute access", 8, 11),
    ("a(x=__import__('os'))", "positional arguments", 15, 19),
    # syntax errors and comments
    ("mamba(d_state=16", "was never closed", 5, 6),
    ("a b", "invalid spec syntax", 2, 3),
    ("a +", "invalid spec syntax", None, None),
    ("a(x=)", "invalid spec syntax", None, None),
    ("a(lambda=1)", "invalid spec syntax", None, None),
    ("a # comment", "comments are not allowed", 2, 11),
    ("a(x='ü') +", "invalid spec syntax", None, None),
])
def test_error_carets(text, fragment, start, end):
    e = _err(text)
    assert fragment in e.message
    assert e.spec == text
    if start is not None:
        assert (e.start, e.end) == (start, end), (e.start, e.end, str(e))
        assert str(e).endswith("    " + " " * start + "^" * (end - start))
    else:
        assert e.start is not None and 0 <= e.start <= len(text)


def test_error_message_readable():
    e = _err("mamba(16)*4 + attn")
    assert str(e) == ("positional arguments are not allowed in a spec; write key=value\n"
                      "    mamba(16)*4 + attn\n"
                      "          ^^")
    assert isinstance(e, ValueError)


def test_error_caret_with_leading_space_and_newline():
    e = _err("  a +\n b*0")
    assert e.spec == "  a +  b*0"
    assert (e.start, e.end) == (9, 10)
    e = _err("   a(x=1")
    assert e.start == 4


def test_error_caret_after_unicode():
    e = _err("x(s='ééé', t=a.b)")
    assert (e.start, e.end) == (13, 16)
    assert e.spec[e.start:e.end] == "a.b"


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "\t"])
def test_empty(text):
    e = _err(text)
    assert "empty spec" in e.message


def test_too_long():
    e = _err("a + " * (MAX_SPEC_CHARS // 4) + "a")
    assert "at most 10000" in e.message and e.start is None


def test_max_length_ok_and_no_recursion_error():
    text = " + ".join(["a"] * 2400)
    assert len(text) <= MAX_SPEC_CHARS
    assert len(parse_spec(text).expand()) == 2400


def test_deep_nesting_is_spec_error():
    for text in ["(" * 300 + "a" + ")" * 300, "x(v=" + "[" * 300 + "]" * 300 + ")"]:
        with pytest.raises(SpecError):
            parse_spec(text)


def test_nul_and_non_str():
    assert "NUL" in _err("a\0b").message
    with pytest.raises(SpecError, match="must be a string"):
        parse_spec(None)  # type: ignore[arg-type]


def test_nested_repeat_product_capped():
    e = _err("(a*1000)*1000")
    assert f"at most {MAX_LAYERS}" in e.message
    assert e.spec[e.start:e.end] == "1000" and e.start == 9


def test_import_injection_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for text in ["__import__('os').system('touch x')",
                 "a(v=__import__('os').system('touch x'))",
                 "a + __import__('os').system('touch x')*2",
                 "(lambda: __import__('os').system('touch x'))()"]:
        with pytest.raises(SpecError):
            parse_spec(text)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------- names

REG = {
    "layer": ["mamba", "mamba2", "attn", "mlp", "s5", "ssm"],
    "parameterization": ["s4d_inv", "s4d_lin", "lru_ring"],
    "discretizer": ["zoh", "bilinear"],
    "scan_backend": ["torch", "triton"],
    "init": ["uniform", "ring"],
}
FIELDS = {
    ("ssm", "param"): "parameterization", ("ssm", "disc"): "discretizer",
    ("ssm", "scan"): "scan_backend", ("ssm", "blocks"): "layer",
    ("lru_ring", "init"): "init",
}


def lookup(kind):
    return REG[kind]


def field_kinds(owner, name):
    return FIELDS.get((owner, name))


def _resolve(text):
    resolve_names(parse_spec(text), text, lookup, field_kinds)


def test_resolve_ok():
    _resolve("mamba*4 + ssm(param=s4d_inv, disc=bilinear, scan=torch, mode=fast) + attn")
    _resolve("ssm(param=lru_ring(init=ring), blocks=[mlp, attn(w=1)])")
    _resolve("mamba(whatever=unknown_thing)")  # field with no declared kind: left alone


def test_resolve_unknown_layer_with_suggestion():
    text = "mamba*2 + atn(window=1)"
    with pytest.raises(UnknownComponentError) as info:
        _resolve(text)
    e = info.value
    assert (e.kind, e.name) == ("layer", "atn")
    assert "attn" in e.suggestions
    msg = str(e)
    assert "unknown layer 'atn' in spec" in msg
    assert "    mamba*2 + atn(window=1)\n              ^^^" in msg
    assert "did you mean: attn" in msg
    assert isinstance(e, LookupError)


def test_resolve_unknown_in_repeat_body():
    with pytest.raises(UnknownComponentError) as info:
        _resolve("2*(s5 + mlpp)")
    assert info.value.name == "mlpp" and "mlp" in info.value.suggestions
    assert "       ^^^^" in str(info.value)


def test_resolve_unknown_value_kind():
    text = "ssm(param=s4d_inv, disc=bilinar)"
    with pytest.raises(UnknownComponentError) as info:
        _resolve(text)
    e = info.value
    assert (e.kind, e.name, e.suggestions) == ("discretizer", "bilinar", ["bilinear"])
    assert "(value of ssm.disc)" in str(e)
    assert "    " + " " * 24 + "^" * 7 in str(e)


def test_resolve_nested_and_list_values():
    with pytest.raises(UnknownComponentError) as info:
        _resolve("ssm(param=lru_ring(init=rng))")
    assert (info.value.kind, info.value.name) == ("init", "rng")
    assert "value of lru_ring.init" in str(info.value)
    with pytest.raises(UnknownComponentError) as info:
        _resolve("ssm(blocks=[mlp, atten])")
    assert (info.value.kind, info.value.name) == ("layer", "atten")
    with pytest.raises(UnknownComponentError) as info:
        _resolve("ssm(param=lru_rng(r_min=0.9))")
    assert info.value.kind == "parameterization" and "lru_ring" in info.value.suggestions


def test_resolve_without_field_kinds_and_without_spans():
    resolve_names(parse_spec("ssm(param=nope)"), "ssm(param=nope)", lookup)
    sp = spec_from_config([{"name": "nosuch", "kwargs": {}}])
    with pytest.raises(UnknownComponentError) as info:
        resolve_names(sp, None, lookup)
    assert "^" not in str(info.value)


# ---------------------------------------------------------------------------------- config

def test_config_round_trip():
    text = "mamba(d_state=16)*2 + ssm(param=lru_ring(r_min=0.9), d_state=[1, 2], s='x')"
    cfg = spec_to_config(text)
    assert cfg == [
        {"name": "mamba", "kwargs": {"d_state": 16}},
        {"name": "mamba", "kwargs": {"d_state": 16}},
        {"name": "ssm", "kwargs": {"param": {"name": "lru_ring", "kwargs": {"r_min": 0.9}},
                                   "d_state": [1, 2], "s": "x"}},
    ]
    back = spec_from_config(cfg)
    assert back.expand() == parse_spec(text).expand()
    assert spec_to_config(back) == cfg
    assert spec_from_config(text) == parse_spec(text)


def test_config_accepts_string_entries_and_missing_kwargs():
    sp = spec_from_config(["mamba*2", {"name": "attn"}, {"name": "mlp", "kwargs": None}])
    assert [c.name for c in sp.expand()] == ["mamba", "mamba", "attn", "mlp"]


def test_config_with_omegaconf():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create(spec_to_config("ssm(param=q(r=[1, 2]), x=None)*2"))
    assert spec_to_config(spec_from_config(cfg)) == spec_to_config(
        "ssm(param=q(r=[1, 2]), x=None)*2")


@pytest.mark.parametrize("cfg,fragment", [
    ([], "empty"),
    ({"name": "a"}, "list of layers"),
    (5, "list of layers"),
    ([{"kwargs": {}}], "layer 0"),
    ([{"name": "a", "extra": 1}], "layer 0"),
    ([{"name": "a-b"}], "identifier"),
    ([{"name": "a", "kwargs": [1]}], "must be a mapping"),
    ([{"name": "a", "kwargs": {"1x": 1}}], "identifier"),
    ([{"name": "a", "kwargs": {"x": {"nope": 1}}}], "a.x"),
    ([{"name": "a", "kwargs": {"x": object()}}], "not allowed"),
    (["a +"], "invalid spec syntax"),
])
def test_config_errors(cfg, fragment):
    with pytest.raises(SpecError) as info:
        spec_from_config(cfg)
    assert fragment in str(info.value)
