"""Generation: autoregressive decoding of LMs and closed-loop rollout of layers.

* :func:`generate` (also ``LM.generate``): prefill in parallel, then recurrent decode steps,
  replayed from a CUDA graph on GPUs; greedy / temperature / top-k / top-p sampling, EOS.
* :func:`rollout`: feed a layer's output back as its next input (continuous signals).
* :func:`sample_logits`: the token-selection rule on its own.
* :func:`benchmark_decode`: decode tokens/s, eager vs CUDA graph.
* :class:`StaticDecoder`, :func:`clear_graph_cache`: the static-buffer / CUDA-graph decode step.

Example::

    lm = lrnnx.build_model("s4d*2 + attn + mlp", d_model=64, vocab_size=256).eval()
    out = lm.generate(torch.randint(0, 256, (2, 4)), max_new_tokens=16, temperature=0)
"""

from __future__ import annotations

from .benchmark import benchmark_decode
from .cuda_graph import NotGraphable, StaticDecoder, clear_graph_cache, decoder_for
from .generate import generate
from .rollout import rollout
from .sampling import sample_logits

__all__ = ["generate", "rollout", "sample_logits", "benchmark_decode", "StaticDecoder",
           "NotGraphable", "decoder_for", "clear_graph_cache"]
