"""Instruction counts of a CUDA kernel's main loop, region by region, without a GPU.

    python benchmarks/sass_regions.py kernels/cuda/csrc/selective_states_bwd.cu \
        --kernel 'sel_bwd_states_kernelIfLi0ELi1ELi16E' [--arch 90] [--top 12]
    python benchmarks/sass_regions.py dump.sass --kernel ...   # an existing cuobjdump listing

A ``.cu`` file is compiled with nvcc (``-cubin``, the backend's flags, ``-Xptxas -v``) and
disassembled with ``cuobjdump -sass`` (pip wheels ``nvidia-cuda-cuobjdump`` and
``nvidia-cuda-nvdisasm`` work without a GPU; set ``$CUDA_BIN`` to their ``bin``).  For every
kernel whose mangled name matches ``--kernel``: the outermost loop (the longest backward branch),
cut at its ``BAR.SYNC``s into regions (e.g. staging / walk / epilogue of a tiled scan), each with
its static instruction count and most frequent opcodes; spill traffic (``STL`` / ``LDL``) inside
the loop; and *early consumers*: a global load whose result is used before the loop's next
barrier (for a register prefetch of the next tile that is a stall of a memory latency per tile,
see benchmarks/NOTES.md, session 9).

Session 9 used this on the S6 state-parallel backward: 254 + 434 + 499 instructions per warp and
tile (the epilogue recomputed its shared-memory addresses) -> 238 + 433 + 181 after the fix, and
the bf16 kernels' early conversions of prefetched loads.  Counts are static (branches not
taken are counted too): compare versions of one kernel, not kernels with different control flow.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

_INS = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_PRED = re.compile(r"^@!?U?P[T0-9]+\s+")


@dataclass
class Region:
    start: int
    end: int
    ops: collections.Counter = field(default_factory=collections.Counter)

    @property
    def count(self) -> int:
        return sum(self.ops.values())


@dataclass
class LoopReport:
    kernel: str
    start: int
    end: int
    regions: list[Region]
    spills: int
    early: list[tuple[int, str, int, str]]


def split_functions(sass: str) -> dict[str, list[tuple[int, str]]]:
    """cuobjdump -sass text -> {mangled name: [(address, instruction text)]}."""
    out: dict[str, list[tuple[int, str]]] = {}
    for chunk in re.split(r"\n\s*Function : ", "\n" + sass)[1:]:
        name = chunk.split("\n", 1)[0].strip()
        ins = []
        for line in chunk.splitlines():
            m = _INS.match(line)
            if m:
                ins.append((int(m.group(1), 16), m.group(2).strip()))
        out[name] = ins
    return out


def _opcode(text: str) -> str:
    return _PRED.sub("", text).split(None, 1)[0].split(".", 1)[0]


def _operands(text: str) -> list[str]:
    body = _PRED.sub("", text)
    parts = body.split(None, 1)
    return [o.strip() for o in parts[1].split(",")] if len(parts) > 1 else []


def main_loop(ins: list[tuple[int, str]]) -> tuple[int, int] | None:
    """The outermost loop: the backward branch spanning the most addresses."""
    best = None
    for addr, text in ins:
        if _opcode(text) != "BRA":
            continue
        m = re.search(r"(0x[0-9a-f]+)\s*$", text)
        if m is None:
            continue
        target = int(m.group(1), 16)
        if target < addr and (best is None or addr - target > best[1] - best[0]):
            best = (target, addr)
    return best


def analyse(name: str, ins: list[tuple[int, str]]) -> LoopReport | None:
    loop = main_loop(ins)
    if loop is None:
        return None
    lo, hi = loop
    body = [(a, t) for a, t in ins if lo <= a <= hi]
    cuts = [lo] + [a + 16 for a, t in body if _opcode(t) == "BAR"] + [hi + 16]
    regions = []
    for s, e in zip(cuts, cuts[1:]):
        r = Region(s, e)
        for a, t in body:
            if s <= a < e:
                r.ops[_opcode(t)] += 1
        regions.append(r)
    spills = sum(1 for _, t in body if _opcode(t) in ("STL", "LDL"))
    early = []
    for i, (a, t) in enumerate(body):
        if _opcode(t) != "LDG":
            continue
        dst = _operands(t)[0]
        for a2, t2 in body[i + 1:]:
            if _opcode(t2) == "BAR":
                break
            ops2 = _operands(t2)
            srcs = ops2 if _opcode(t2) in ("STG", "STS", "STL", "RED", "ATOM", "BRA") else ops2[1:]
            if any(re.search(r"(^|[\[\s\-|!])" + re.escape(dst) + r"(\b|\.)", s) for s in srcs):
                early.append((a, t, a2, t2))
                break
            if ops2 and ops2[0] == dst:  # overwritten: no consumer of this load
                break
    return LoopReport(name, lo, hi, regions, spills, early)


def format_report(rep: LoopReport, top: int = 12) -> str:
    lines = [f"{rep.kernel}", f"  main loop {rep.start:#x}..{rep.end:#x}: "
             f"{sum(r.count for r in rep.regions)} instructions, {len(rep.regions)} regions "
             f"(cut at BAR.SYNC), {rep.spills} STL/LDL"]
    for k, r in enumerate(rep.regions):
        common = ", ".join(f"{op} {n}" for op, n in r.ops.most_common(top))
        lines.append(f"  region {k} [{r.start:#x}, {r.end:#x}): {r.count:5d}  {common}")
    lines.append(f"  global loads consumed before the next barrier: {len(rep.early)}")
    for a, t, a2, t2 in rep.early[:5]:
        lines.append(f"    {a:#06x} {t}  ->  {a2:#06x} {t2}")
    return "\n".join(lines)


def _tool(name: str) -> str:
    cand = [Path(os.environ["CUDA_BIN"]) / name] if os.environ.get("CUDA_BIN") else []
    for c in cand:
        if c.exists():
            return str(c)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: put the CUDA toolkit's bin/ on PATH or set "
                         f"$CUDA_BIN (pip wheels nvidia-cuda-nvcc, nvidia-cuda-cuobjdump, "
                         f"nvidia-cuda-nvdisasm)")
    return found


def sass_of(source: Path, arch: str) -> str:
    if source.suffix != ".cu":
        return source.read_text()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lrnnx_kernels.cuda._build import NVCC_FLAGS

    csrc = source.resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        out = subprocess.run([_tool("nvcc"), *NVCC_FLAGS, f"-arch=sm_{arch}", "-cubin", f"-I{csrc}",
                              str(source), "-o", str(cubin), "-Xptxas", "-v"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"nvcc failed:\n{out.stderr[-4000:]}")
        env = dict(os.environ)
        env["PATH"] = str(Path(_tool("cuobjdump")).parent) + os.pathsep + env.get("PATH", "")
        dis = subprocess.run([_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True,
                             text=True, env=env)
        if dis.returncode != 0:
            raise SystemExit(f"cuobjdump failed:\n{dis.stderr[-2000:]}")
        return dis.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="a .cu file, or a cuobjdump -sass listing")
    ap.add_argument("--kernel", default="", help="regex on the mangled kernel names")
    ap.add_argument("--arch", default="90")
    ap.add_argument("--top", type=int, default=12, help="opcodes shown per region")
    args = ap.parse_args(argv)
    funcs = split_functions(sass_of(args.source, args.arch))
    shown = 0
    for name, ins in funcs.items():
        if not re.search(args.kernel, name):
            continue
        rep = analyse(name, ins)
        if rep is not None:
            print(format_report(rep, args.top))
            shown += 1
    if shown == 0:
        print(f"no kernel with a loop matches {args.kernel!r} ({len(funcs)} functions)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
