"""A byte-level language model on local text, then sampling from its checkpoint.

Trains on the Python standard library sources by default (or ``--text`` files / folders),
reports bits per character, reloads the safetensors checkpoint and samples a continuation of
``--prompt`` with ``model.generate`` (parallel prefill, then one recurrent step per byte).

    python examples/char_lm_generate.py --steps 2000 --prompt "def main("
    python examples/char_lm_generate.py --text my_notes/ --pattern "*.md"
"""

from __future__ import annotations

import argparse

import torch

from lrnnx.train import load_for_inference, train


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", nargs="*", default=None, help="files or folders (default: stdlib)")
    p.add_argument("--pattern", default="*.py")
    p.add_argument("--spec", default="s4d(d_state=32)*2 + attn")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--prompt", default="def ")
    p.add_argument("--out", default="runs/example-char-lm")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tests)")
    args = p.parse_args(argv)
    ov = ["task.name=char_lm", f"task.pattern='{args.pattern}'", f"model.spec={args.spec}",
          f"trainer.max_steps={args.steps}", f"trainer.out_dir={args.out}"]
    if args.text:
        ov.append("task.paths=[" + ",".join(repr(t) for t in args.text) + "]")
    if args.tiny:
        ov += ["task.max_bytes=20000", "task.seq_len=16", "model.d_model=16",
               "trainer.batch_size=4", "trainer.eval_batches=1", "trainer.progress=false",
               "trainer.plot=false"]
    else:
        ov += ["model.d_model=128", "trainer.batch_size=32"]
    result = train(None, ov, quiet=args.tiny)
    print(f"eval bits per character: {result.eval['bpc']:.3f}")
    cfg, task, model, _ = load_for_inference(result.checkpoint, device="cpu")
    ids = torch.tensor([task.encode(args.prompt)])
    out = model.generate(ids, 16 if args.tiny else 200, temperature=0.8, top_k=40,
                         generator=torch.Generator().manual_seed(0))
    text = task.decode(out[0].tolist())
    print(text)
    return text


if __name__ == "__main__":
    main()
