"""Pixel-by-pixel classification of scikit-learn's 8x8 handwritten digits (``digits``).

The UCI optical-digits set shipped inside scikit-learn (``sklearn.datasets.load_digits``: 1797
images, no download), read in raster order as a sequence of 64 pixels scaled to [0, 1]: a tiny
sequential-MNIST (Le et al. 2015, https://arxiv.org/abs/1504.00941).  Inputs (B, 64, 1),
targets (B,) in 0..9; metric: accuracy.  A fixed permutation (``split_seed``) holds out
``test_fraction`` of the images as the eval split; training batches are drawn with replacement,
evaluation walks the held-out images once in order.

Needs scikit-learn (``pip install scikit-learn``); without it building the task is a
ConfigError saying so.

Example::

    task = Digits.from_config({})
    b = task.batch("eval", 0, 32)          # inputs (32, 64, 1), targets (32,)
"""

from __future__ import annotations

import torch
from pydantic import Field

from lrnnx.errors import ConfigError

from .base import Task, TaskOptions

__all__ = ["Digits", "sklearn_available"]


def sklearn_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("sklearn") is not None


class DigitsOptions(TaskOptions):
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0


class Digits(Task):
    name = "digits"
    kind = "classifier"
    metric = "accuracy"
    Options = DigitsOptions
    suggested_spec = "s4d*2"

    def __init__(self, options, seed=0):
        super().__init__(options, seed)
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:
            raise ConfigError(f"task 'digits' needs scikit-learn, which is not importable "
                              f"({exc}); install it (pip install scikit-learn) or pick another "
                              f"task (e.g. task.name=signals).") from None
        data = load_digits()
        x = torch.tensor(data.images, dtype=torch.float32).reshape(-1, 64, 1) / 16.0
        y = torch.tensor(data.target, dtype=torch.long)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(
            options.split_seed))
        n_test = max(1, int(round(len(y) * options.test_fraction)))
        self.splits = {"eval": (x[perm[:n_test]], y[perm[:n_test]]),
                       "train": (x[perm[n_test:]], y[perm[n_test:]])}

    def model_keys(self):
        return {"num_classes": 10, "d_input": 1}

    def num_eval_batches(self, batch_size):
        return -(-len(self.splits["eval"][1]) // batch_size)

    def _batch(self, split, index, batch_size, g):
        x, y = self.splits[split]
        if split == "eval":  # one ordered pass; the last batch may be short
            rows = torch.arange(index * batch_size, min((index + 1) * batch_size, len(y)))
            if len(rows) == 0:
                rows = torch.arange(0, min(batch_size, len(y)))
        else:
            rows = torch.randint(0, len(y), (batch_size,), generator=g)
        return {"inputs": x[rows], "targets": y[rows]}
