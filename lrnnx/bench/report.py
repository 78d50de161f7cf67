"""Reports of :mod:`lrnnx.bench`: rich tables, JSON, the GPU run's markdown, time-vs-length plots.

* GPU suite (``benchmarks/gpu_scan.py``): :func:`suite_table` (rich), :func:`suite_markdown`,
  :func:`write_suite` -> ``OUT/results.json`` and ``OUT/RESULTS-gpu.md``.
* ``lrnnx bench``: :func:`bench_table` (rich), :func:`write_json`, :func:`plot` (PNG of time vs
  sequence length; needs matplotlib: :func:`require_matplotlib` names ``pip install matplotlib``).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from ..errors import LrnnxError
from .workloads import BYTE_MODEL

PLOT_HINT = "--plot needs matplotlib, which is not installed: pip install matplotlib"
COLUMNS = ("workload", "impl", "ms (fwd)", "ms (fwd+bwd)", "ratio fwd", "ratio fwd+bwd",
           "% copy BW fwd", "% copy BW fwd+bwd", "target", "result", "check", "note")


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms:.3f}" if ms < 1 else (f"{ms:.2f}" if ms < 100 else f"{ms:.1f}")


def fmt_ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}x"


def fmt_pct(p: float | None) -> str:
    return "—" if p is None else f"{p:.0f}%"


def fmt_check(row: dict[str, Any]) -> str:
    d = row.get("check_rel_diff")
    if d is None:
        return "—"
    return "ref" if row.get("check_vs") == row["impl"] else f"{d:.1e}"


def target_text(wd: dict[str, Any]) -> str:
    t = wd["target"]
    parts = [f"{k.replace('_', '+')} <= {v:g}x" for k, v in t.items() if v is not None]
    return f"{', '.join(parts)} vs {wd['reference']}"


def suite_rows(results: dict[str, Any]) -> list[list[str]]:
    """The report's table as text cells, one list per row (COLUMNS order)."""
    out = []
    for wd in results["workloads"]:
        first = True
        for r in wd["rows"]:
            ok = r["status"] == "ok"
            note = r["note"] if (ok or r["note"] != r["status"]) else ""
            out.append([
                wd["name"] if first else "", r["impl"],
                fmt_ms(r["fwd_ms"]) if ok else r["status"],
                fmt_ms(r["fwd_bwd_ms"]) if ok else "—",
                fmt_ratio(r.get("ratio_fwd")), fmt_ratio(r.get("ratio_fwd_bwd")),
                fmt_pct(r.get("pct_bw_fwd")), fmt_pct(r.get("pct_bw_fwd_bwd")),
                target_text(wd) if r.get("target_row") else "", r.get("result", ""),
                fmt_check(r), "; ".join(x for x in (note, r.get("result_note", "")) if x)])
            first = False
        if wd.get("error"):
            out.append([wd["name"], "—", "error", "—", "", "", "", "", "", "", "", wd["error"]])
    return out


def suite_table(results: dict[str, Any]):
    from rich.table import Table
    from rich.text import Text

    cb = results["copy_bandwidth"]
    table = Table(title=f"lrnnx GPU benchmark on {results['environment']['device']} (copy "
                  f"bandwidth {cb['GBps'] or 0:.0f} GB/s)", title_justify="left")
    for c in COLUMNS:
        table.add_column(c, overflow="fold", justify="right" if c.startswith(("ms", "ratio", "%"))
                         else "left")
    styles = {"pass": "green", "FAIL": "bold red", "n/a": "yellow"}
    for cells in suite_rows(results):
        table.add_row(*[Text(c, style=styles.get(c, "") if i == 9 else "")
                        for i, c in enumerate(cells)])
    return table


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def suite_markdown(results: dict[str, Any]) -> str:
    env, cb = results["environment"], results["copy_bandwidth"]
    clock = "CUDA events" if results["options"]["device"].startswith("cuda") else \
        "time.perf_counter"
    peers = ", ".join(f"{k}: {v}" for k, v in env["peers"].items())
    lines = [
        "# lrnnx GPU benchmark (issue #6)", "",
        f"- device: {env['device']} (L2 {env['l2_bytes'] / 2**20:.0f} MiB); torch {env['torch']}, "
        f"triton {env['triton']}, CUDA {env['cuda']}, Python {env['python']}, lrnnx {env['lrnnx']}",
        f"- date: {env['date']}; command: `{env['command']}`"
        + ("" if results.get("complete") else " (**incomplete**: the run stopped early)"),
        f"- peers: {peers}",
        f"- device-to-device copy bandwidth (`dst.copy_(src)`, {cb['bytes'] / 2**30:.2f} GiB, "
        f"read + written): **{cb['GBps'] or 0:.0f} GB/s** ({fmt_ms(cb['ms'])} ms)",
        f"- timing: median of {results['options']['repeats']} calls "
        f"({clock}) after "
        f"{results['options']['warmup']} warm-up calls"
        + (f" and {results['options']['warmup_ms']:g} ms of queued warm-up calls"
           if results["options"].get("warmup_ms") else "")
        + " (on a GPU rotating among input copies "
        f"that together exceed 2x the L2); fwd under `torch.no_grad()`, fwd+bwd = forward + "
        f"`torch.autograd.grad` w.r.t. every input (layers: input and parameters).",
        "- ratio = time / time of the reference peer (lower is better); the target is judged on "
        "the lrnnx backend that `backend=\"auto\"` picks (see `lrnnx backends`); other lrnnx rows are "
        "informational.  check = max |out - ref| / max |ref| of the forward output against the "
        "first row (\"ref\").",
        "", "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(" ---: " if c.startswith(("ms", "ratio", "%")) else " --- "
                       for c in COLUMNS) + "|",
    ]
    for cells in suite_rows(results):
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    lines += ["", "## Byte model (ideal DRAM traffic; % copy BW = ideal bytes / time / copy "
              "bandwidth)", ""]
    lines += [f"- {line}" for line in BYTE_MODEL]
    return "\n".join(lines) + "\n"


def write_suite(results: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "results.json", out / "RESULTS-gpu.md"
    write_json(js, results)
    md.write_text(suite_markdown(results))
    return js, md


def write_json(path: str | Path, data: Any) -> Path:
    p = Path(path)
    if p.parent != Path(""):
        p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return p


# ------------------------------------------------------------------------- lrnnx bench

def bench_table(data: dict[str, Any]):
    """Rich table of an ``lrnnx bench`` run (see :mod:`.cli` for ``data``)."""
    from rich.table import Table
    from rich.text import Text

    cfg = data["config"]
    table = Table(title=f"lrnnx bench {data['target']}: batch {cfg['batch']}, d_model "
                  f"{cfg['d_model']}, {cfg['dtype']}, {cfg['device']}", title_justify="left")
    for c in ("name", "backend", "L", "fwd (ms)", "fwd+bwd (ms)", "fwd tokens/s", "status"):
        table.add_column(c, justify="right" if c[0] in "Lf" else "left", overflow="fold")
    for r in data["results"]:
        ok = r["status"] == "ok"
        tps = (f"{cfg['batch'] * r['length'] / (r['fwd_ms'] * 1e-3):,.0f}"
               if r["fwd_ms"] else "—")
        be = r["backend"] + (f" ({r['resolved_backend']})" if r.get("resolved_backend") and
                             r["resolved_backend"] != r["backend"] else "")
        status = r["status"] + (f": {r['note']}" if r["note"] else "")
        table.add_row(Text(r["name"]), Text(be), Text(str(r["length"])), Text(fmt_ms(r["fwd_ms"])),
                      Text(fmt_ms(r["fwd_bwd_ms"])), Text(tps),
                      Text(status, style="" if ok else "yellow"))
    return table


def require_matplotlib() -> None:
    """Raise an LrnnxError naming ``pip install matplotlib`` if matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise LrnnxError(PLOT_HINT)


def plot(data: dict[str, Any], path: str | Path) -> Path:
    """PNG of time vs sequence length: one line per (name, backend), solid fwd, dashed fwd+bwd."""
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    series: dict[tuple[str, str], list[dict]] = {}
    for r in data["results"]:
        series.setdefault((r["name"], r["backend"]), []).append(r)
    drawn = 0
    for i, ((name, backend), rows) in enumerate(series.items()):
        rows = sorted(rows, key=lambda r: r["length"])
        for key, style, label in (("fwd_ms", "-", "fwd"), ("fwd_bwd_ms", "--", "fwd+bwd")):
            pts = [(r["length"], r[key]) for r in rows if r[key]]
            if pts:  # one colour per (name, backend): solid forward, dashed forward+backward
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, color=f"C{i % 10}", marker="o",
                        label=f"{name} [{backend}] {label}")
                drawn += 1
    ax.set_xscale("log", base=2)
    lengths = sorted({r["length"] for r in data["results"]})
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("time (ms, median)")
    cfg = data["config"]
    ax.set_title(f"lrnnx bench {data['target']} (batch {cfg['batch']}, d_model "
                 f"{cfg['d_model']}, {cfg['dtype']}, {cfg['device']})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no successful measurement", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    p = Path(path)
    if p.parent != Path(""):
        p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    return p
