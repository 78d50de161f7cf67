"""Induction heads, the associative-recall task of the Mamba paper (Sec. 4.1.2).

Olsson et al. 2022, "In-context Learning and Induction Heads", https://arxiv.org/abs/2209.11895;
the task as in Gu & Dao 2023, https://arxiv.org/abs/2312.00752.

Random tokens from ``[1, V)``; the trigger token 0 appears once at a random position
``p <= seq_len - 3`` followed by the answer token, and again at the last position; the target
there is the answer (the token that followed the first trigger)::

    7 3 0 12 5 8 ... 4 0      target at the last position: 12

Metric: accuracy at the last position.

Example::

    task = Induction.from_config({"seq_len": 32})
    b = task.batch("train", 0, 8)          # inputs (8, 32), one scored position per row
"""

from __future__ import annotations

import torch
from pydantic import Field

from .base import IGNORE, Task, TaskOptions

__all__ = ["Induction"]


class InductionOptions(TaskOptions):
    vocab_size: int = Field(16, ge=3, description="trigger 0, ordinary tokens 1..V-1")
    seq_len: int = Field(64, ge=4)


class Induction(Task):
    name = "induction"
    kind = "lm"
    metric = "accuracy"
    Options = InductionOptions
    suggested_spec = "attn*2"

    def model_keys(self):
        return {"vocab_size": self.options.vocab_size}

    def _batch(self, split, index, batch_size, g):
        o = self.options
        B, L = batch_size, o.seq_len
        inputs = torch.randint(1, o.vocab_size, (B, L), generator=g)
        p = torch.randint(0, L - 2, (B, 1), generator=g)       # first trigger at p <= L - 3
        inputs.scatter_(1, p, 0)
        inputs[:, -1] = 0
        targets = torch.full((B, L), IGNORE, dtype=torch.long)
        targets[:, -1] = inputs.gather(1, p + 1)[:, 0]
        return {"inputs": inputs, "targets": targets}
