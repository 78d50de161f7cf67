"""Train a small SSM + attention hybrid on multi-query associative recall (MQAR) from Python.

The same run as ``lrnnx train configs/mqar.yaml``: the config is the YAML file plus dotted
overrides, ``train`` returns a :class:`lrnnx.train.TrainResult` with the eval metrics, the
checkpoint folder and the per-step history.  Then the checkpoint is reloaded (safetensors,
no pickle) and asked one recall question through ``model.generate``.

    python examples/train_mqar.py                      # ~1000 steps, >= 0.9 accuracy on CPU
    python examples/train_mqar.py --spec "attn*2" --steps 3000
"""

from __future__ import annotations

import argparse
import os

import torch

from lrnnx.train import load_for_inference, train

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "mqar.yaml")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="s4d(d_state=16) + attn")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--out", default="runs/example-mqar")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tests)")
    args = p.parse_args(argv)
    overrides = [f"model.spec={args.spec}", f"trainer.max_steps={args.steps}",
                 f"trainer.out_dir={args.out}"]
    if args.tiny:
        overrides += ["task.vocab_size=16", "task.seq_len=16", "task.num_kv_pairs=2",
                      "model.d_model=16", "trainer.batch_size=8", "trainer.eval_batches=1",
                      "trainer.eval_every=0", "trainer.progress=false", "trainer.plot=false"]
    result = train(CONFIG if os.path.isfile(CONFIG) else None, overrides, quiet=args.tiny)
    print(f"eval accuracy {result.eval['accuracy']:.3f} after {result.step} steps "
          f"({result.wall_time_s:.0f} s); checkpoint {result.checkpoint}")

    # one question: keys k1 k2 with values v1 v2 in the context, then the query k1 -> v1?
    cfg, task, model, _ = load_for_inference(result.checkpoint, device="cpu")
    V = task.options.vocab_size
    k1, k2, v1, v2 = 1, 2, V // 2 + 3, V // 2 + 5
    prompt = torch.tensor([[k1, v1, k2, v2, 0, k1]])
    answer = int(model.generate(prompt, 1, temperature=0)[0, -1])
    print(f"context {k1}->{v1}, {k2}->{v2}; query {k1} -> model says {answer}")
    return {"accuracy": result.eval["accuracy"], "answer": answer, "expected": v1}


if __name__ == "__main__":
    main()
