"""Decode throughput of an LM: tokens per second of ``generate``'s decode loop.

The time of one decode step is measured as ``(t(N) - t(1)) / (N - 1)`` where ``t(n)`` is the
wall time of ``generate(prompt, n)`` (greedy), so the prefill, the graph capture (done by a
warm-up call) and the per-call set-up cancel out; what remains is one sampling + one model step
per token, as in real use.  CUDA timings synchronize before reading the clock.

Example::

    lm = lrnnx.build_model("mamba*24", d_model=768, vocab_size=50277).cuda().eval()
    for graph in (False, True):
        print(benchmark_decode(lm, batch=1, steps=256, cuda_graph=graph))
"""

from __future__ import annotations

import statistics
import time

import torch

from lrnnx.errors import InputError

from .generate import generate

__all__ = ["benchmark_decode"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_decode(model, batch: int, steps: int, cuda_graph: bool | str = "auto",
                     prompt_len: int = 8, repeats: int = 3, seed: int = 0) -> dict:
    """Measure decode speed of ``model`` (an LM) at batch size ``batch`` over ``steps`` tokens.

    Returns ``{"batch", "steps", "cuda_graph", "ms_per_step", "tokens_per_s", "device"}`` where
    ``ms_per_step`` is the median over ``repeats`` of the time per decode step (all ``batch``
    sequences advance one token) and ``tokens_per_s = batch * 1000 / ms_per_step``.
    """
    if steps < 2 or batch < 1 or repeats < 1 or prompt_len < 1:
        raise InputError(f"benchmark_decode: needs steps >= 2, batch >= 1, repeats >= 1 and "
                         f"prompt_len >= 1, got steps={steps}, batch={batch}, repeats={repeats}, "
                         f"prompt_len={prompt_len}.")
    dev = model.embedding.weight.device
    g = torch.Generator(device="cpu").manual_seed(seed)
    prompt = torch.randint(0, model.vocab_size, (batch, prompt_len), generator=g).to(dev)

    def timed(n: int) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        generate(model, prompt, n, temperature=0, cuda_graph=cuda_graph)
        _sync(dev)
        return time.perf_counter() - t0

    timed(steps)  # warm-up: kernels, allocator, graph capture (cached for the timed calls)
    per_step = []
    for _ in range(repeats):
        per_step.append((timed(steps) - timed(1)) / (steps - 1))
    ms = 1000 * statistics.median(per_step)
    return {"batch": batch, "steps": steps, "cuda_graph": cuda_graph, "ms_per_step": ms,
            "tokens_per_s": batch * 1000 / ms if ms > 0 else float("inf"), "device": str(dev)}
