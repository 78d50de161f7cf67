"""Decode throughput of an LM: tokens per second of ``generate``'s decode loop, and the issue #7
comparison with mamba_ssm's ``MambaLMHeadModel.generate(cg=True)`` on the same configuration.

The time of one decode step is measured as ``(t(N) - t(1)) / (N - 1)`` where ``t(n)`` is the
wall time of ``generate(prompt, n)`` (greedy), so the prefill, the graph capture (done by a
warm-up call) and the per-call set-up cancel out; what remains is one sampling + one model step
per token, as in real use.  CUDA timings synchronize before reading the clock.  mamba_ssm's
``generate(input_ids, max_length=P + n, cg=True, top_k=1)`` is timed the same way (it also
returns ``n`` new tokens after ``n - 1`` decode steps; its graph, captured by the warm-up call at
the longest ``max_length``, is reused by the shorter calls).

Comparison (:func:`run_decode_comparison`, script ``benchmarks/gpu_generate.py``): for each
dtype and batch size, rows ``lrnnx eager``, ``lrnnx graph`` (``cuda_graph=False / True``),
``mamba_ssm eager``, ``mamba_ssm graph`` (``cg=False / True``).  The two models are the same
network (:class:`DecodeBenchConfig`; issue #7: 24 layers, d_model 768, d_state 16, d_conv 4,
expand 2, RMSNorm eps 1e-5 before every mixer and at the end, tied embeddings, no MLP), and
mamba_ssm's model gets lrnnx's weights (:func:`lrnnx_to_mamba_ssm_state_dict`), so the greedy
tokens can be compared too (``agree``: fraction of new tokens equal to lrnnx eager's, and the
first differing position).  Differences that remain, all on mamba_ssm's side:

* ``residual_in_fp32=True`` and ``fused_add_norm=True`` (its defaults, mamba-130m's config): the
  residual stream is kept in float32 and add + RMSNorm is one Triton kernel; lrnnx's residual
  stream has the model's dtype and its add and norm are separate ops;
* its decode step uses its CUDA kernels (``causal_conv1d_update``, ``selective_state_update``);
* built in bf16 / fp16 it keeps ``A_log`` and ``D`` in float32 (they are created in float32);
  lrnnx's ``lm.to(dtype)`` casts every parameter;
* its vocabulary is padded to a multiple of ``pad_vocab_size_multiple`` = 8; the default
  ``vocab_size`` (50280 = GPT-NeoX's 50277 padded) is a multiple of 8, so both heads match.

A row that cannot run says why: ``not installed`` (mamba_ssm is not importable), ``skipped``
(e.g. CUDA graphs or mamba_ssm's kernels on a CPU, or the time budget spent) or ``error: ...``.
mamba_ssm <= 2.3 imports ``GreedySearchDecoderOnlyOutput`` / ``SampleDecoderOnlyOutput`` from
``transformers.generation``, which transformers 5 removed; when that import fails the two names
are aliased to ``transformers.generation.GenerateDecoderOnlyOutput`` (the class they were
deprecated into, same fields) for this process, and the rows say so.

Example::

    lm = lrnnx.build_model("mamba*24", d_model=768, vocab_size=50280).cuda().eval()
    for graph in (False, True):
        print(benchmark_decode(lm, batch=1, steps=256, cuda_graph=graph))
    results = run_decode_comparison(DecodeBenchConfig(device="cuda", dtypes=("bfloat16",)))
    print(decode_markdown(results))
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import importlib.util
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lrnnx.errors import InputError

from .generate import generate

__all__ = ["benchmark_decode", "benchmark_mamba_ssm_decode", "DecodeBenchConfig",
           "MambaSSMUnavailable", "import_mamba_ssm", "build_lrnnx_lm", "build_mamba_ssm_lm",
           "lrnnx_to_mamba_ssm_state_dict", "run_decode_comparison", "decode_markdown"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: mamba_ssm's decode step runs its CUDA / Triton kernels: its rows are skipped off CUDA
MAMBA_SSM_NEEDS_CUDA = True
IMPLS = ("lrnnx eager", "lrnnx graph", "mamba_ssm eager", "mamba_ssm graph")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_sizes(where: str, batch: int, steps: int, repeats: int, prompt_len: int) -> None:
    if steps < 2 or batch < 1 or repeats < 1 or prompt_len < 1:
        raise InputError(f"{where}: needs steps >= 2, batch >= 1, repeats >= 1 and "
                         f"prompt_len >= 1, got steps={steps}, batch={batch}, repeats={repeats}, "
                         f"prompt_len={prompt_len}.")


def _prompt(vocab_size: int, batch: int, prompt_len: int, seed: int, device) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, prompt_len), generator=g).to(device)


def _time_per_step(run: Callable[[int], Any], steps: int, repeats: int, device
                   ) -> tuple[float, Any]:
    """Median seconds per decode step ``(t(steps) - t(1)) / (steps - 1)``, and the output of
    the last ``run(steps)``.  One warm-up ``run(steps)`` first (kernels, allocator, graphs).
    When timing noise exceeds the decode time (tiny models on a busy CPU) the difference can
    come out <= 0; that repeat then counts ``t(steps) / steps`` instead (an upper bound that
    includes the prefill), so the result is always a positive time."""
    last = {}

    def timed(n: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        out = run(n)
        _sync(device)
        last[n] = out
        return time.perf_counter() - t0

    timed(steps)
    per_step = []
    for _ in range(repeats):
        t_n, t_1 = timed(steps), timed(1)
        per_step.append((t_n - t_1) / (steps - 1) if t_n > t_1 else t_n / steps)
    return statistics.median(per_step), last[steps]


def _row(batch: int, steps: int, seconds: float, device, **extra) -> dict:
    ms = 1000 * seconds
    return {"batch": batch, "steps": steps, "ms_per_step": ms,
            "tokens_per_s": batch * 1000 / ms if ms > 0 else float("inf"),
            "device": str(device), **extra}


def benchmark_decode(model, batch: int, steps: int, cuda_graph: bool | str = "auto",
                     prompt_len: int = 8, repeats: int = 3, seed: int = 0,
                     return_tokens: bool = False) -> dict:
    """Measure decode speed of ``model`` (an LM) at batch size ``batch`` over ``steps`` tokens.

    Returns ``{"batch", "steps", "cuda_graph", "ms_per_step", "tokens_per_s", "device"}`` where
    ``ms_per_step`` is the median over ``repeats`` of the time per decode step (all ``batch``
    sequences advance one token) and ``tokens_per_s = batch * 1000 / ms_per_step``; with
    ``return_tokens`` also ``"tokens"``: the (batch, prompt_len + steps) output of the last
    timed ``generate``.
    """
    _check_sizes("benchmark_decode", batch, steps, repeats, prompt_len)
    dev = model.embedding.weight.device
    prompt = _prompt(model.vocab_size, batch, prompt_len, seed, dev)

    def run(n: int):
        return generate(model, prompt, n, temperature=0, cuda_graph=cuda_graph)

    sec, tokens = _time_per_step(run, steps, repeats, dev)
    row = _row(batch, steps, sec, dev, cuda_graph=cuda_graph)
    if return_tokens:
        row["tokens"] = tokens
    return row


# ------------------------------------------------------------------------------ mamba_ssm

class MambaSSMUnavailable(RuntimeError):
    """mamba_ssm cannot be used here; ``status`` is ``"not installed"`` or ``"unavailable"``."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


#: the names mamba_ssm <= 2.3's generation utils import and transformers 5 removed
_REMOVED_TRANSFORMERS_NAMES = ("GreedySearchDecoderOnlyOutput", "SampleDecoderOnlyOutput")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError, AttributeError):
        return False


def _alias_removed_transformers_names() -> str | None:
    """Alias the removed output classes in ``transformers.generation`` (see the module
    docstring); returns a note saying so, or None when nothing was missing or possible."""
    try:
        tg = importlib.import_module("transformers.generation")
        new = getattr(tg, "GenerateDecoderOnlyOutput")
    except Exception:  # noqa: BLE001 - no transformers, or not the expected one
        return None
    missing = [n for n in _REMOVED_TRANSFORMERS_NAMES if not hasattr(tg, n)]
    if not missing:
        return None
    for n in missing:
        setattr(tg, n, new)
    import transformers

    return (f"transformers {transformers.__version__} has no {' / '.join(missing)} (removed "
            f"in transformers 5); aliased to GenerateDecoderOnlyOutput for mamba_ssm's "
            f"generation utils")


def import_mamba_ssm() -> dict:
    """``{"MambaLMHeadModel", "MambaConfig", "version", "note"}`` of the installed mamba_ssm.

    Raises :class:`MambaSSMUnavailable` with status ``"not installed"`` when mamba_ssm is not
    importable, ``"unavailable"`` when it is installed but its LM does not import (the message
    says why and how to fix it).
    """
    if not _installed("mamba_ssm"):
        raise MambaSSMUnavailable("not installed", "mamba_ssm is not installed (pip install "
                                  "mamba-ssm --no-build-isolation, on a CUDA machine)")
    note = None

    def load():
        mixer = importlib.import_module("mamba_ssm.models.mixer_seq_simple")
        config = importlib.import_module("mamba_ssm.models.config_mamba")
        return mixer.MambaLMHeadModel, config.MambaConfig

    try:
        try:
            model_cls, config_cls = load()
        except ImportError as exc:
            if not any(n in str(exc) for n in _REMOVED_TRANSFORMERS_NAMES):
                raise
            note = _alias_removed_transformers_names()
            if note is None:
                raise
            for mod in [m for m in sys.modules if m == "mamba_ssm" or
                        m.startswith("mamba_ssm.")]:
                del sys.modules[mod]  # drop the half-imported modules, then retry
            model_cls, config_cls = load()
    except Exception as exc:  # noqa: BLE001 - reported in the results, never fatal
        hint = ""
        if any(n in str(exc) for n in _REMOVED_TRANSFORMERS_NAMES):
            hint = (" (mamba_ssm's generation utils import names that transformers 5 removed: "
                    "pip install 'transformers<4.50', or a mamba_ssm release that no longer "
                    "imports them)")
        elif "transformers" in str(exc):
            hint = " (mamba_ssm's generation utils need transformers: pip install transformers)"
        raise MambaSSMUnavailable("unavailable", f"mamba_ssm is installed but "
                                  f"mamba_ssm.models.mixer_seq_simple failed to import: "
                                  f"{type(exc).__name__}: {exc}{hint}") from exc
    version = getattr(importlib.import_module("mamba_ssm"), "__version__", "?")
    return {"MambaLMHeadModel": model_cls, "MambaConfig": config_cls, "version": version,
            "note": note}


# ------------------------------------------------------------------------------ the config

@dataclasses.dataclass
class DecodeBenchConfig:
    """The issue #7 decode benchmark: the LM, the sizes and where it runs.

    ``vocab_size`` 50280: GPT-NeoX's 50277 tokens padded to a multiple of 8, as mamba-130m
    (so mamba_ssm's vocabulary padding changes nothing).  ``new_tokens`` (N) per ``generate``:
    N - 1 decode steps are timed.  ``budget_s``: later rows are skipped once this many seconds
    have passed.
    """

    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50280
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    norm_eps: float = 1e-5
    batches: Sequence[int] = (1, 16)
    dtypes: Sequence[str] = ("float32", "bfloat16")
    prompt_len: int = 100
    new_tokens: int = 128
    repeats: int = 3
    seed: int = 0
    device: str = "cuda"
    impls: Sequence[str] = IMPLS
    budget_s: float = 480.0

    def spec(self) -> str:
        return (f"mamba(d_state={self.d_state}, d_conv={self.d_conv}, "
                f"expand={self.expand})*{self.n_layer}")


def build_lrnnx_lm(cfg: DecodeBenchConfig, dtype: torch.dtype, device=None):
    """lrnnx's LM of ``cfg`` (prenorm RMSNorm blocks around ``mamba``), eval mode."""
    import lrnnx

    torch.manual_seed(cfg.seed)
    lm = lrnnx.build_model(cfg.spec(), d_model=cfg.d_model, vocab_size=cfg.vocab_size,
                           norm="rms", eps=cfg.norm_eps)
    return lm.to(device=device or cfg.device, dtype=dtype).eval()


def build_mamba_ssm_lm(cfg: DecodeBenchConfig, dtype: torch.dtype, device=None,
                       mamba_ssm: dict | None = None):
    """mamba_ssm's ``MambaLMHeadModel`` of ``cfg`` (Mamba1 mixers, RMSNorm, tied embeddings,
    no MLP; ``residual_in_fp32`` / ``fused_add_norm`` at their defaults True), eval mode."""
    mamba_ssm = mamba_ssm or import_mamba_ssm()
    config_cls = mamba_ssm["MambaConfig"]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    ssm_cfg = {"d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand}
    if "d_intermediate" in fields:  # mamba_ssm 2.x: choose Mamba1 explicitly
        ssm_cfg["layer"] = "Mamba1"
    kw = {"d_model": cfg.d_model, "n_layer": cfg.n_layer, "vocab_size": cfg.vocab_size,
          "ssm_cfg": ssm_cfg, "rms_norm": True, "residual_in_fp32": True,
          "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": True,
          "d_intermediate": 0}
    config = config_cls(**{k: v for k, v in kw.items() if k in fields})
    model = mamba_ssm["MambaLMHeadModel"](config, device=device or cfg.device, dtype=dtype)
    return model.eval()


def lrnnx_to_mamba_ssm_state_dict(lm) -> dict[str, torch.Tensor]:
    """lrnnx's ``mamba*n`` LM weights under mamba_ssm's ``MambaLMHeadModel`` names (the conv
    weight gains its middle dim: (D, K) -> (D, 1, K); the head is the tied embedding)."""
    sd = {"backbone.embedding.weight": lm.embedding.weight,
          "backbone.norm_f.weight": lm.backbone.norm.weight,
          "lm_head.weight": lm.embedding.weight}
    names = ("A_log", "D", "in_proj.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
             "dt_proj.bias", "out_proj.weight")
    for i, block in enumerate(lm.backbone.blocks):
        p = f"backbone.layers.{i}."
        sd[p + "norm.weight"] = block.norm.weight
        for n in names:
            sd[p + "mixer." + n] = block.mixer.get_parameter(n)
        sd[p + "mixer.conv1d.weight"] = block.mixer.conv1d.weight[:, None, :]
        for opt in ("in_proj.bias", "out_proj.bias"):
            if getattr(getattr(block.mixer, opt.split(".")[0]), "bias", None) is not None:
                sd[p + "mixer." + opt] = block.mixer.get_parameter(opt)
    return {k: v.detach() for k, v in sd.items()}


def load_lrnnx_weights(model, lm) -> str | None:
    """Copy lrnnx's weights into mamba_ssm's model; a note if some names did not match."""
    sd = lrnnx_to_mamba_ssm_state_dict(lm)
    own = model.state_dict()
    shaped = {k: v.to(own[k].dtype) for k, v in sd.items()
              if k in own and tuple(own[k].shape) == tuple(v.shape)}
    missing = sorted(set(own) - set(shaped))
    model.load_state_dict(shaped, strict=False)
    if missing:
        return (f"{len(missing)} mamba_ssm tensors kept their own init (e.g. {missing[0]}); "
                f"token agreement is not meaningful")
    return None


def benchmark_mamba_ssm_decode(model, batch: int, steps: int, cg: bool, vocab_size: int,
                               prompt_len: int = 8, repeats: int = 3, seed: int = 0,
                               return_tokens: bool = False) -> dict:
    """Like :func:`benchmark_decode` for a mamba_ssm ``MambaLMHeadModel``, timing
    ``model.generate(input_ids, max_length=prompt_len + n, cg=cg, top_k=1)`` (greedy)."""
    _check_sizes("benchmark_mamba_ssm_decode", batch, steps, repeats, prompt_len)
    dev = next(model.parameters()).device
    prompt = _prompt(vocab_size, batch, prompt_len, seed, dev)
    fallback: list[str] = []

    def run(n: int):
        if not fallback:
            try:
                out = model.generate(input_ids=prompt, max_length=prompt_len + n, cg=cg,
                                     top_k=1)
            except NameError as exc:  # some mamba_ssm commits pass an undefined min_p
                if "min_p" not in str(exc):
                    raise
                fallback.append(f"generate() raised NameError ({exc}); timed the "
                                f"mamba_ssm.utils.generation.decode it wraps")
            else:
                return out if isinstance(out, torch.Tensor) else out.sequences
        decode = importlib.import_module("mamba_ssm.utils.generation").decode
        return decode(prompt, model, prompt_len + n, top_k=1, cg=cg).sequences

    sec, tokens = _time_per_step(run, steps, repeats, dev)
    row = _row(batch, steps, sec, dev, cg=cg, note="; ".join(fallback))
    if return_tokens:
        row["tokens"] = tokens
    return row


# ------------------------------------------------------------------------------ the comparison

def _agreement(tokens: torch.Tensor, ref: torch.Tensor, prompt_len: int) -> dict:
    """Fraction of new tokens equal to ``ref``'s and the first new position that differs."""
    a, b = tokens[:, prompt_len:].cpu(), ref[:, prompt_len:].cpu()
    if a.shape != b.shape:
        return {"agree": None, "first_diff": None}
    same = a == b
    diff_cols = (~same).any(0).nonzero()
    return {"agree": float(same.float().mean()),
            "first_diff": int(diff_cols[0]) if diff_cols.numel() else None}


def _machine(device: torch.device) -> dict:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "host": platform.machine()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    for pkg in ("mamba_ssm", "transformers", "triton", "causal_conv1d"):
        if _installed(pkg):
            try:
                info[pkg] = getattr(importlib.import_module(pkg), "__version__", "?")
            except Exception as exc:  # noqa: BLE001 - recorded, never fatal
                info[pkg] = f"import failed: {type(exc).__name__}"
        else:
            info[pkg] = "not installed"
    return info


def run_decode_comparison(cfg: DecodeBenchConfig | None = None,
                          log: Callable[[dict], None] | None = None) -> dict:
    """Every (dtype, batch, impl) row of the issue #7 decode benchmark (see the module doc).

    Returns ``{"config", "machine", "rows", "elapsed_s"}``; each row has ``impl``, ``dtype``,
    ``batch``, ``status`` (``ok`` / ``not installed`` / ``skipped`` / ``error``), ``note``
    and, when ok, ``ms_per_step``, ``tokens_per_s``, ``agree`` / ``first_diff`` (greedy tokens
    vs lrnnx eager at the same dtype and batch).  ``log(row)`` is called as rows finish.
    """
    cfg = cfg or DecodeBenchConfig()
    for name in cfg.dtypes:
        if name not in DTYPES:
            raise InputError(f"run_decode_comparison: dtype {name!r} is not one of "
                             f"{', '.join(DTYPES)}.")
    bad = [i for i in cfg.impls if i not in IMPLS]
    if bad:
        raise InputError(f"run_decode_comparison: unknown impl {bad[0]!r}; choose from "
                         f"{', '.join(IMPLS)}.")
    device = torch.device(cfg.device)
    t_start = time.perf_counter()
    rows: list[dict] = []
    want_peer = any(i.startswith("mamba_ssm") for i in cfg.impls)
    peer, peer_status = None, None
    if want_peer:
        try:
            peer = import_mamba_ssm()
        except MambaSSMUnavailable as exc:
            peer_status = (exc.status, str(exc))
        else:
            if device.type != "cuda" and MAMBA_SSM_NEEDS_CUDA:
                peer, peer_status = None, ("skipped", "mamba_ssm's decode kernels need CUDA")

    def emit(row: dict) -> None:
        rows.append(row)
        if log is not None:
            log(row)

    for dname in cfg.dtypes:
        dtype = DTYPES[dname]
        lm = model = None
        build_note = None
        for batch in cfg.batches:
            ref_tokens = None
            for impl in cfg.impls:
                row = {"impl": impl, "dtype": dname, "batch": batch, "status": "ok", "note": ""}
                graph = impl.endswith("graph")
                if time.perf_counter() - t_start > cfg.budget_s:
                    emit({**row, "status": "skipped", "note": f"time budget of "
                          f"{cfg.budget_s:g} s spent"})
                    continue
                if impl.startswith("mamba_ssm") and peer is None:
                    emit({**row, "status": peer_status[0], "note": peer_status[1]})
                    continue
                if impl == "lrnnx graph" and device.type != "cuda":
                    emit({**row, "status": "skipped", "note": "CUDA graphs need a CUDA device"})
                    continue
                try:
                    if lm is None:
                        lm = build_lrnnx_lm(cfg, dtype, device)
                    if impl.startswith("lrnnx"):
                        res = benchmark_decode(lm, batch, cfg.new_tokens, cuda_graph=graph,
                                               prompt_len=cfg.prompt_len, repeats=cfg.repeats,
                                               seed=cfg.seed, return_tokens=True)
                    else:
                        if model is None:
                            model = build_mamba_ssm_lm(cfg, dtype, device, peer)
                            build_note = load_lrnnx_weights(model, lm)
                        res = benchmark_mamba_ssm_decode(
                            model, batch, cfg.new_tokens, cg=graph, vocab_size=cfg.vocab_size,
                            prompt_len=cfg.prompt_len, repeats=cfg.repeats, seed=cfg.seed,
                            return_tokens=True)
                        notes = [n for n in (peer.get("note"), build_note,
                                             res.pop("note", "")) if n]
                        row["note"] = "; ".join(notes)
                except Exception as exc:  # noqa: BLE001 - one failing row must not stop the run
                    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    emit({**row, "status": "error", "note": f"{type(exc).__name__}: {msg}"})
                    continue
                tokens = res.pop("tokens")
                if impl == "lrnnx eager":
                    ref_tokens = tokens
                agree = _agreement(tokens, ref_tokens, cfg.prompt_len) \
                    if ref_tokens is not None else {"agree": None, "first_diff": None}
                res.pop("cuda_graph", None)
                res.pop("cg", None)
                emit({**row, **res, **agree})
        del lm, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"config": {**dataclasses.asdict(cfg), "spec": cfg.spec()},
            "machine": _machine(device), "rows": rows,
            "elapsed_s": round(time.perf_counter() - t_start, 1)}


def _fmt(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def decode_markdown(results: dict) -> str:
    """A markdown section: configuration, machine and one table row per result row."""
    c, m = results["config"], results["machine"]
    machine = ", ".join(f"{k} {v}" for k, v in m.items() if k != "date")
    lines = [
        "## Decode throughput: lrnnx vs mamba_ssm (issue #7)",
        "",
        f"- date: {m['date']}; {machine}",
        f"- model: `{c['spec']}` LM, d_model {c['d_model']}, vocab {c['vocab_size']}, RMSNorm "
        f"eps {c['norm_eps']:g}, tied embeddings; mamba_ssm: `MambaLMHeadModel` of the same "
        f"config with lrnnx's weights (residual_in_fp32, fused_add_norm)",
        f"- greedy; prompt {c['prompt_len']} tokens, {c['new_tokens']} new tokens per "
        f"`generate`; ms/step = median over {c['repeats']} of (t({c['new_tokens']}) - t(1)) / "
        f"{c['new_tokens'] - 1}; tok/s = batch * 1000 / (ms/step)",
        "- agree: fraction of new tokens equal to lrnnx eager's (same dtype and batch); "
        "first diff: first new position where any sequence differs",
        "",
        "| dtype | batch | impl | ms/step | tok/s | agree | first diff | status | note |",
        "|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for r in results["rows"]:
        speed = f"{_fmt(r.get('ms_per_step'), '.3f')} | {_fmt(r.get('tokens_per_s'), '.0f')}"
        tokens = f"{_fmt(r.get('agree'), '.3f')} | {_fmt(r.get('first_diff'), 'd')}"
        lines.append(f"| {r['dtype']} | {r['batch']} | {r['impl']} | {speed} | {tokens} | "
                     f"{r['status']} | {r.get('note', '').replace('|', '/')} |")
    lines += ["", f"({results['elapsed_s']} s)", ""]
    return "\n".join(lines)
