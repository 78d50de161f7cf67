"""Decode throughput of a 24-layer d_model=768 ``mamba`` LM: lrnnx eager vs CUDA graph, and
mamba_ssm's ``MambaLMHeadModel.generate(cg=True)`` on the same config (issue #7).

    python benchmarks/gpu_generate.py [--device cuda] [--out DIR] [--dtypes float32,bfloat16]
                                      [--batches 1,16] [--prompt-len 100] [--new-tokens 128]
                                      [--repeats 3] [--budget 480] [--impls ...] [--smoke]

For each dtype and batch size: tokens/s of ``lrnnx eager`` / ``lrnnx graph`` (``generate`` with
``cuda_graph=False / True``) and ``mamba_ssm eager`` / ``mamba_ssm graph`` (``generate(...,
cg=False / True, top_k=1)``; mamba_ssm's model gets lrnnx's weights, so the greedy tokens are
compared too).  A missing mamba_ssm gives rows that say "not installed".  Prints a markdown
table and writes DIR/generate.json and DIR/RESULTS-generate.md (default DIR:
benchmarks/out).  The work is in :mod:`lrnnx.generation.benchmark` (method, config and the
remaining differences between the two models are documented there); ``--smoke`` runs every
code path at tiny sizes (2 layers, d_model 64; on a CPU the graph and mamba_ssm rows are
skipped).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bootstrap() -> None:
    """Run from a plain checkout too: put the repo on sys.path and map kernels/ -> lrnnx_kernels,
    plugins/ -> lrnnx_plugins when the project is not pip-installed."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    for name, folder in (("lrnnx_kernels", "kernels"), ("lrnnx_plugins", "plugins")):
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue
        spec = importlib.util.spec_from_file_location(
            name, ROOT / folder / "__init__.py", submodule_search_locations=[str(ROOT / folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="device (default cuda)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"),
                   help="folder for generate.json and RESULTS-generate.md (benchmarks/out)")
    p.add_argument("--dtypes", default="float32,bfloat16",
                   help="comma-separated: float32, bfloat16, float16 (default float32,bfloat16)")
    p.add_argument("--batches", default="1,16", help="batch sizes (default 1,16)")
    p.add_argument("--prompt-len", type=int, default=100, help="prompt tokens (100)")
    p.add_argument("--new-tokens", type=int, default=128,
                   help="new tokens per generate; new-tokens - 1 decode steps are timed (128)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats, median (3)")
    p.add_argument("--budget", type=float, default=480.0,
                   help="seconds for the whole run; later rows are skipped (480)")
    p.add_argument("--impls", default=None,
                   help="comma-separated subset of: lrnnx eager, lrnnx graph, mamba_ssm eager, "
                        "mamba_ssm graph (default all)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model (2 layers, d_model 64, vocab 256), 8 new tokens, 1 repeat")
    args = p.parse_args(argv)
    _bootstrap()

    from lrnnx.errors import LrnnxError
    from lrnnx.generation.benchmark import IMPLS, DecodeBenchConfig, decode_markdown, \
        run_decode_comparison

    cfg = DecodeBenchConfig(device=args.device, dtypes=_names(args.dtypes),
                            batches=_ints(args.batches), prompt_len=args.prompt_len,
                            new_tokens=args.new_tokens, repeats=args.repeats,
                            budget_s=args.budget,
                            impls=_names(args.impls) if args.impls else IMPLS)
    if args.smoke:
        cfg.d_model, cfg.n_layer, cfg.vocab_size = 64, 2, 256
        cfg.prompt_len, cfg.new_tokens, cfg.repeats = 4, 8, 1

    def log(row: dict) -> None:
        tps = row.get("tokens_per_s")
        speed = f"{row['ms_per_step']:.3f} ms/step, {tps:.0f} tok/s" if tps else ""
        print(f"{row['dtype']} B={row['batch']} {row['impl']}: {row['status']} {speed} "
              f"{row.get('note', '')}", file=sys.stderr, flush=True)

    try:
        results = run_decode_comparison(cfg, log=log)
    except LrnnxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = decode_markdown(results)
    (out / "generate.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "RESULTS-generate.md").write_text(md)
    print(md)
    print(f"wrote {out / 'generate.json'} and {out / 'RESULTS-generate.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
