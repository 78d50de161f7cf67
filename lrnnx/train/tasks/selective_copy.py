"""Selective copying, the synthetic task of the Mamba paper (Sec. 4.1.1).

Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
https://arxiv.org/abs/2312.00752 (after the copying task of Arjovsky et al. 2016).

``num_tokens`` data tokens (ids ``2..V-1``) sit at random positions of a context of
``seq_len`` noise tokens (id 0), in order; then ``num_tokens`` copy markers (id 1) follow, and
at the j-th marker the target is the j-th data token::

    0 5 0 0 9 0 3 0 | 1 1 1        targets at the markers: 5 9 3

Sequence length ``seq_len + num_tokens``.  Solving it needs content-aware selection (skip the
noise), which time-invariant SSMs lack.  Metric: accuracy over the marker positions.

Example::

    task = SelectiveCopy.from_config({"seq_len": 32, "num_tokens": 4})
    b = task.batch("train", 0, 8)          # inputs (8, 36), 4 scored positions per row
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from .base import IGNORE, Task, TaskOptions

__all__ = ["SelectiveCopy"]


class SelectiveCopyOptions(TaskOptions):
    vocab_size: int = Field(16, ge=3, description="noise 0, marker 1, data 2..V-1")
    seq_len: int = Field(64, ge=1, description="context length (markers come after)")
    num_tokens: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _fits(self):
        if self.num_tokens > self.seq_len:
            raise ValueError(f"num_tokens={self.num_tokens} data tokens do not fit in a context "
                             f"of seq_len={self.seq_len}")
        return self


class SelectiveCopy(Task):
    name = "selective_copy"
    kind = "lm"
    metric = "accuracy"
    Options = SelectiveCopyOptions
    suggested_spec = "s4d(d_state=16) + attn"

    def model_keys(self):
        return {"vocab_size": self.options.vocab_size}

    def _batch(self, split, index, batch_size, g):
        o = self.options
        B, L, n = batch_size, o.seq_len, o.num_tokens
        data = torch.randint(2, o.vocab_size, (B, n), generator=g)
        pos = torch.rand(B, L, generator=g).argsort(dim=1)[:, :n].sort(dim=1).values
        inputs = torch.zeros(B, L + n, dtype=torch.long)
        inputs.scatter_(1, pos, data)
        inputs[:, L:] = 1
        targets = torch.full((B, L + n), IGNORE, dtype=torch.long)
        targets[:, L:] = data
        return {"inputs": inputs, "targets": targets}
