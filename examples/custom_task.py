"""Add your own task: subclass :class:`lrnnx.train.Task`, register it in ``TASKS``, train.

The task below is *running parity*: the inputs are random bits, the target at each position is
the parity (XOR) of all bits so far.  A linear recurrence cannot compute XOR of a long prefix
(it is not linear over the reals), attention needs many heads for it, so it is a small
diagnostic of what a stack of layers can express (Merrill et al. 2024,
https://arxiv.org/abs/2404.08819).  What a task provides:

* ``Options``: a pydantic model of its options (unknown keys are errors);
* ``kind`` ("lm" or "classifier"), ``metric`` ("accuracy" or "bpc"), ``model_keys()``;
* ``_batch(split, index, batch_size, g)``: a dict of CPU tensors drawn from the generator
  ``g`` only (it is seeded from the run's seed, the split and the batch index, which makes
  batches identical across processes and resumes).

    python examples/custom_task.py --spec "s4d(d_state=16)*2" --steps 300
"""

from __future__ import annotations

import argparse

import torch
from pydantic import Field

from lrnnx.train import TASKS, Task, train
from lrnnx.train.tasks import TaskOptions


class ParityOptions(TaskOptions):
    seq_len: int = Field(32, ge=1)


class RunningParity(Task):
    name = "running_parity"
    kind = "lm"
    metric = "accuracy"
    Options = ParityOptions

    def model_keys(self):
        return {"vocab_size": 2}

    def _batch(self, split, index, batch_size, g):
        bits = torch.randint(0, 2, (batch_size, self.options.seq_len), generator=g)
        return {"inputs": bits, "targets": bits.cumsum(dim=1) % 2}


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="s4d(d_state=16) + attn")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tests)")
    args = p.parse_args(argv)
    TASKS[RunningParity.name] = RunningParity
    size = ["task.seq_len=8", "model.d_model=16", "trainer.batch_size=8",
            "trainer.eval_batches=1"] if args.tiny else ["model.d_model=64"]
    result = train(None, ["task.name=running_parity", f"model.spec={args.spec}",
                          f"trainer.max_steps={args.steps}", "trainer.save=false",
                          *size], quiet=args.tiny)
    print(f"running parity accuracy {result.eval['accuracy']:.3f}")
    return result.eval["accuracy"]


if __name__ == "__main__":
    main()
