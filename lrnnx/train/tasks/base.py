"""What every training task provides, and the loss / metric shared by all of them.

A task is a deterministic batch generator plus what the trainer needs to build and score a
model for it:

* ``kind``: ``"lm"`` (token ids (B, L) -> logits (B, L, V), targets (B, L) with ``IGNORE`` at
  unscored positions) or ``"classifier"`` (inputs (B, L[, d]) -> logits (B, C), targets (B,)).
* ``model_keys()``: what the task fixes in the model section (``vocab_size``, or
  ``num_classes`` + ``d_input``/``vocab_size``).
* ``batch(split, index, batch_size)``: the ``index``-th global batch of ``split`` ("train" or
  "eval") as a dict of CPU tensors: ``inputs``, ``targets`` and optionally ``lengths`` (B,) and
  ``timesteps`` (B, L).  It depends only on (task options, ``seed``, split, index, batch_size):
  the same batch comes back in every process and after a resume, which is what makes data
  sharding (:func:`shard`) and resumed runs exact.
* ``metric``: ``"accuracy"`` (fraction of scored positions whose argmax is the target) or
  ``"bpc"`` (bits per character = summed cross-entropy / scored positions / ln 2).

Loss: cross-entropy summed over the scored positions of the local shard, divided by
``count_global / world_size`` where ``count_global`` is the number of scored positions in the
*global* batch.  DDP averages gradients over ranks, so the update equals the one of the mean
loss over the global batch, whatever the shard sizes.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, ClassVar

import pydantic
import torch
import torch.nn.functional as F

from lrnnx.errors import ConfigError, InputError, close_matches

__all__ = ["Task", "TaskOptions", "IGNORE", "make_generator", "shard", "forward_model",
           "loss_and_stats", "metric_value", "STAT_KEYS"]

IGNORE = -100  #: target id of unscored positions (torch's cross_entropy ignore_index default)
SPLITS = ("train", "eval")
STAT_KEYS = ("loss_sum", "count", "correct")


class TaskOptions(pydantic.BaseModel):
    """Base of each task's options (unknown keys are errors)."""

    model_config = pydantic.ConfigDict(extra="forbid")


def make_generator(seed: int, split: str, index: int) -> torch.Generator:
    """A CPU generator seeded from (seed, split, index) through BLAKE2b, so neighbouring seeds
    and indices give unrelated streams."""
    digest = hashlib.blake2b(f"lrnnx/{seed}/{split}/{index}".encode(), digest_size=8).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return g


def shard(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """Rows of the global ``batch`` that ``rank`` of ``world`` processes trains on (contiguous
    chunks, sizes differing by at most one, as ``torch.tensor_split``)."""
    if world == 1:
        return batch
    return {k: torch.tensor_split(v, world, dim=0)[rank] for k, v in batch.items()}


class Task:
    """Base class of the built-in tasks (see the module doc)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "lm"
    metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    #: a spec that suits the task, used by the example config (the model section decides)
    suggested_spec: ClassVar[str] = "s4d(d_state=16) + attn"

    def __init__(self, options: TaskOptions, seed: int = 0):
        self.options = options
        self.seed = seed

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_config(cls, params: dict[str, Any], seed: int = 0) -> Task:
        """The task from the ``task`` section (without ``name``); unknown keys are errors."""
        try:
            options = cls.Options.model_validate(params)
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            accepted = list(cls.Options.model_fields)
            if err["type"] == "extra_forbidden":
                sugg = close_matches(key, accepted)
                did = f" Did you mean {' or '.join(repr(s) for s in sugg)}?" if sugg else ""
                raise ConfigError(f"task {cls.name!r}: unknown option {key!r}.{did} Options: "
                                  f"{', '.join(accepted)}.") from None
            raise ConfigError(f"task {cls.name!r}: option {key!r}: {err['msg']} (got "
                              f"{err.get('input')!r}).") from None
        return cls(options, seed=seed)

    def model_keys(self) -> dict[str, Any]:
        """Keys this task sets in the model section (vocab_size, num_classes, d_input...)."""
        raise NotImplementedError

    # -- data -----------------------------------------------------------------------------
    def batch(self, split: str, index: int, batch_size: int) -> dict[str, torch.Tensor]:
        self._check_split(split)
        return self._batch(split, index, batch_size, make_generator(self.seed, split, index))

    def _batch(self, split: str, index: int, batch_size: int,
               g: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def num_eval_batches(self, batch_size: int) -> int | None:
        """Batches in one full pass over a finite eval set; None for generated data (the
        trainer then evaluates ``trainer.eval_batches`` batches)."""
        return None

    def tokens_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        """Input tokens (time steps) in ``batch``, for tokens/s."""
        if "lengths" in batch:
            return int(batch["lengths"].sum())
        return int(batch["inputs"].shape[0] * batch["inputs"].shape[1])

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise InputError(f"task {self.name!r}: split must be one of {SPLITS}, got "
                             f"{split!r}.")

    # -- text I/O of LM tasks (lrnnx generate) --------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Prompt text -> token ids.  Default: whitespace-separated integers."""
        vocab = self.model_keys().get("vocab_size")
        try:
            ids = [int(t) for t in text.replace(",", " ").split()]
        except ValueError:
            raise InputError(f"task {self.name!r}: a prompt is token ids separated by spaces "
                             f"(e.g. '3 70 5 90 3'), got {text!r}.") from None
        bad = [i for i in ids if not 0 <= i < (vocab or 0)]
        if bad:
            raise InputError(f"task {self.name!r}: token ids must be in [0, {vocab}), got "
                             f"{bad[0]}.")
        return ids

    def decode(self, ids: list[int]) -> str:
        return " ".join(str(i) for i in ids)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items()
                         if not isinstance(v, (list, tuple)) or len(v) < 6)
        return f"{self.name}({opts})"


# ---------------------------------------------------------------------------- loss/metric

def forward_model(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of ``model`` on ``batch``: ``lengths`` / ``timesteps`` go along when present."""
    extra = {k: batch[k] for k in ("lengths", "timesteps") if k in batch}
    return model(batch["inputs"], **extra)


def loss_and_stats(logits: torch.Tensor, targets: torch.Tensor, normalizer: float):
    """(loss for backward, detached sums) of ``logits`` against ``targets``.

    ``logits``: (B, L, V) with targets (B, L), or (B, C) with targets (B,); ``IGNORE`` targets
    are not scored.  The loss is the summed cross-entropy / ``normalizer`` (computed in fp32);
    the sums are ``loss_sum``, ``count`` (scored positions) and ``correct`` (argmax hits) as a
    float64 tensor of shape (3,), ready for an all-reduce.
    """
    flat = logits.reshape(-1, logits.shape[-1]).float()
    tgt = targets.reshape(-1)
    ce = F.cross_entropy(flat, tgt, ignore_index=IGNORE, reduction="sum")
    with torch.no_grad():
        scored = tgt != IGNORE
        correct = ((flat.argmax(-1) == tgt) & scored).sum()
        stats = torch.stack([ce.detach().double(), scored.sum().double(), correct.double()])
    return ce / normalizer, stats


def metric_value(metric: str, stats: torch.Tensor | list[float]) -> float:
    """The task metric from summed stats (see :data:`STAT_KEYS`)."""
    loss_sum, count, correct = (float(v) for v in stats)
    if count == 0:
        return float("nan")
    if metric == "accuracy":
        return correct / count
    if metric == "bpc":
        return loss_sum / count / math.log(2)
    raise ConfigError(f"unknown metric {metric!r}; expected 'accuracy' or 'bpc'.")
