"""Stop and resume: a run continued from its mid-way checkpoint repeats the same loss curve.

The data of step ``s`` depends only on (seed, s), the learning rate only on ``s``, and the
checkpoint holds weights, AdamW moments and the RNG state, so 2N steps straight and N steps +
resume for N give identical losses (on the same device and thread count).  On the command
line: ``lrnnx train --resume runs/<name>/checkpoints/step_000100 trainer.max_steps=...``.

    python examples/resume.py --steps 200
"""

from __future__ import annotations

import argparse
import os
import tempfile

from lrnnx.train import train


def main(argv=None) -> bool:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tests)")
    args = p.parse_args(argv)
    half = args.steps // 2
    size = ["task.vocab_size=16", "task.seq_len=16", "task.num_kv_pairs=2", "model.d_model=16",
            "trainer.batch_size=8"] if args.tiny else []
    common = size + [f"trainer.max_steps={args.steps}", "trainer.log_every=1",
                     "trainer.eval_every=0", "trainer.eval_batches=1", "trainer.plot=false",
                     "trainer.progress=false"]
    with tempfile.TemporaryDirectory() as tmp:
        straight = train(None, common + [f"trainer.checkpoint_every={half}",
                                         f"trainer.out_dir={os.path.join(tmp, 'a')}"],
                         quiet=True)
        ckpt = os.path.join(tmp, "a", "checkpoints", f"step_{half:06d}")
        resumed = train(None, [f"trainer.out_dir={os.path.join(tmp, 'b')}"], resume=ckpt,
                        quiet=True)
    a = [r["loss"] for r in straight.history if r["split"] == "train"][half:]
    b = [r["loss"] for r in resumed.history if r["split"] == "train"]
    same = a == b
    print(f"steps {half + 1}..{args.steps}: straight {a[-1]:.6f}, resumed {b[-1]:.6f}, "
          f"identical: {same}")
    return same


if __name__ == "__main__":
    main()
