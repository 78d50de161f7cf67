"""Multi-query associative recall (MQAR), the Zoology benchmark.

Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models",
https://arxiv.org/abs/2312.04927 (generator: ``zoology/data/associative_recall.py``).

A sequence of length ``seq_len`` is ``n = num_kv_pairs`` key-value pairs followed by a query
region::

    k_1 v_1 k_2 v_2 ... k_n v_n | 0 0 k_3 0 k_1 0 0 0 k_n ...
                                       ^     ^         ^      scored: predict v_3, v_1, v_n

Keys are distinct ids from ``[1, V/2)``, values distinct ids from ``[V/2, V)`` (``V =
vocab_size``; 0 fills the query region).  Every key is queried once, at an even offset
``2 * gap`` of the query region; gaps are drawn without replacement with probability
:math:`p(g) \\propto a\\,(g+1)^{a-1}` (``power_a = a``; small ``a`` puts queries close to the
context, as in Zoology).  At a query position the target is the key's value; nothing else is
scored.  Metric: accuracy over the queries.  Solving it needs input-dependent recall: attention
does it, time-invariant SSMs with a small state do not (Zoology, Fig. 2).

Example::

    task = MQAR.from_config({"num_kv_pairs": 4, "seq_len": 32})
    b = task.batch("train", 0, batch_size=8)     # inputs (8, 32) int64, targets (8, 32)
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from .base import IGNORE, Task, TaskOptions

__all__ = ["MQAR"]


class MQAROptions(TaskOptions):
    vocab_size: int = Field(128, ge=4)
    seq_len: int = Field(64, ge=4)
    num_kv_pairs: int = Field(8, ge=1)
    power_a: float = Field(0.01, gt=0, le=1)

    @model_validator(mode="after")
    def _fits(self):
        n, V, L = self.num_kv_pairs, self.vocab_size, self.seq_len
        if n > V // 2 - 1 or n > V - V // 2:
            raise ValueError(f"num_kv_pairs={n} needs vocab_size >= {2 * n + 2} (distinct keys "
                             f"in [1, V/2) and values in [V/2, V)), got {V}")
        if (L - 2 * n) // 2 < n:
            raise ValueError(f"seq_len={L} leaves room for {(L - 2 * n) // 2} queries after "
                             f"{n} key-value pairs; needs seq_len >= {4 * n}")
        return self


def _distinct(g: torch.Generator, rows: int, low: int, high: int, n: int) -> torch.Tensor:
    """(rows, n) distinct ids from [low, high) per row, uniformly."""
    return torch.rand(rows, high - low, generator=g).argsort(dim=1)[:, :n] + low


class MQAR(Task):
    name = "mqar"
    kind = "lm"
    metric = "accuracy"
    Options = MQAROptions
    suggested_spec = "s4d(d_state=16) + attn"

    def model_keys(self):
        return {"vocab_size": self.options.vocab_size}

    def _batch(self, split, index, batch_size, g):
        o = self.options
        B, n, V, L = batch_size, o.num_kv_pairs, o.vocab_size, o.seq_len
        keys = _distinct(g, B, 1, V // 2, n)
        values = _distinct(g, B, V // 2, V, n)
        context = torch.stack([keys, values], dim=2).reshape(B, 2 * n)
        space = (L - 2 * n) // 2
        p = o.power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (o.power_a - 1)
        gaps = torch.multinomial(p.expand(B, space), n, replacement=False, generator=g)
        pos = 2 * n + 2 * gaps                                     # query positions (B, n)
        inputs = torch.zeros(B, L, dtype=torch.long)
        inputs[:, :2 * n] = context
        inputs.scatter_(1, pos, keys)
        targets = torch.full((B, L), IGNORE, dtype=torch.long)
        targets.scatter_(1, pos, values)
        return {"inputs": inputs, "targets": targets}
