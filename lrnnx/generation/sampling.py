"""Next-token selection from logits: greedy, temperature, top-k and top-p (nucleus) sampling.

Top-k: Fan et al. 2018, "Hierarchical Neural Story Generation",
https://arxiv.org/abs/1805.04833.  Top-p: Holtzman et al. 2019, "The Curious Case of Neural Text
Degeneration", https://arxiv.org/abs/1904.09751.

With logits :math:`z \\in \\mathbb{R}^V` and temperature :math:`T > 0` the sampled token is
:math:`\\sim \\operatorname{softmax}(z / T)` restricted to the ``top_k`` largest logits and then to
the smallest set of most likely tokens whose probability mass reaches ``top_p`` (renormalized).
``T = 0`` is greedy (``argmax z``; top-k/top-p cannot change the argmax, so they are ignored).

Example::

    tok = sample_logits(logits, temperature=0.8, top_p=0.9, generator=g)   # (B,) int64
"""

from __future__ import annotations

import torch

__all__ = ["sample_logits"]


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row of ``logits`` (B, V) -> (B,) int64.

    Arguments are assumed valid (``generate`` checks them); the filtering runs in fp32 so bf16
    logits do not tie artificially.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    z = logits.float() / temperature
    V = z.shape[-1]
    if top_k is not None and top_k < V:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_z, order = z.sort(dim=-1, descending=True)
        probs = sorted_z.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass: this
        # keeps the smallest set reaching top_p, and always the most likely token
        drop = (probs.cumsum(dim=-1) - probs) > top_p
        z = z.scatter(-1, order, sorted_z.masked_fill(drop, float("-inf")))
    probs = z.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
