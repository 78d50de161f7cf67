"""benchmarks/sass_regions.py on a small hand-written cuobjdump listing (no CUDA tools needed):
the main loop, its barrier-delimited regions, spills and early consumers of global loads."""
import importlib.util
import pathlib
import sys

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "sass_regions.py"
_spec = importlib.util.spec_from_file_location("sass_regions", _PATH)
sr = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("sass_regions", sr)  # dataclasses look their module up while defining
_spec.loader.exec_module(sr)


def _listing(body: list[str], name: str = "_Z6kernelv") -> str:
    lines = [f"\t\tFunction : {name}", "\t.headerflags\t@\"EF_CUDA_SM90\""]
    for k, text in enumerate(body):
        lines.append(f"        /*{16 * k:04x}*/                   {text} ;"
                     f"  /* 0x000000000000000000000000 */")
        lines.append("                                                                 "
                     "/* 0x000000000000000000000000 */")
    return "\n".join(lines) + "\n"


# 0x00 setup, loop 0x10..0x90: staging (2 LDG, an early SHF on one), BAR, walk with a spill, BAR,
# epilogue, back branch; 0xa0 exit
BODY = [
    "MOV R1, c[0x0][0x28]",                   # 0x00
    "LDG.E.U16 R4, desc[UR4][R2.64]",         # 0x10 loop head: prefetch, converted early
    "@!P0 LDG.E R5, desc[UR4][R6.64]",        # 0x20 prefetch, consumed after the barrier
    "SHF.L.U32 R8, R4, 0x10, RZ",             # 0x30 early consumer of R4
    "BAR.SYNC.DEFER_BLOCKING 0x0",            # 0x40
    "FFMA R9, R5, R5, R9",                    # 0x50 walk
    "STL [R1], R9",                           # 0x60 spill
    "BAR.SYNC.DEFER_BLOCKING 0x0",            # 0x70
    "LDS R10, [R11+0x40]",                    # 0x80 epilogue
    "@P1 BRA 0x10",                           # 0x90 back branch
    "EXIT",                                   # 0xa0
]


def test_regions_spills_and_early_consumers():
    funcs = sr.split_functions(_listing(BODY))
    assert list(funcs) == ["_Z6kernelv"] and len(funcs["_Z6kernelv"]) == len(BODY)
    rep = sr.analyse("_Z6kernelv", funcs["_Z6kernelv"])
    assert (rep.start, rep.end) == (0x10, 0x90)
    assert [r.count for r in rep.regions] == [4, 3, 2]
    assert rep.regions[0].ops == {"LDG": 2, "SHF": 1, "BAR": 1}
    assert rep.spills == 1
    assert [(a, a2) for a, _, a2, _ in rep.early] == [(0x10, 0x30)]
    text = sr.format_report(rep)
    assert "9 instructions, 3 regions" in text and "before the next barrier: 1" in text


def test_a_load_overwritten_before_use_and_a_store_source():
    body = list(BODY)
    body[3] = "MOV R4, RZ"                    # R4 overwritten: no consumer of the first load
    body[2] = "STG.E desc[UR4][R12.64], R5"   # a store reading R5 is a consumer
    rep = sr.analyse("k", sr.split_functions(_listing(body, "k"))["k"])
    assert [(a, a2) for a, _, a2, _ in rep.early] == []
    body[2] = "@!P0 LDG.E R5, desc[UR4][R6.64]"
    body[3] = "STG.E desc[UR4][R12.64], R4"
    rep = sr.analyse("k", sr.split_functions(_listing(body, "k"))["k"])
    assert [(a, a2) for a, _, a2, _ in rep.early] == [(0x10, 0x30)]


def test_no_loop_and_cli_exit_code(tmp_path, capsys):
    listing = _listing(["MOV R1, c[0x0][0x28]", "EXIT"], "flat")
    assert sr.analyse("flat", sr.split_functions(listing)["flat"]) is None
    path = tmp_path / "k.sass"
    path.write_text(listing + _listing(BODY))
    assert sr.main([str(path), "--kernel", "flat"]) == 1
    assert sr.main([str(path), "--kernel", "kernel"]) == 0
    assert "region 2" in capsys.readouterr().out
