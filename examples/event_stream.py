"""Event streams: the time between events through ``timesteps``, against the same gaps given
as an input feature.

Each stream observes a sinusoid at Poisson event times; the class is its frequency, so the
model must integrate real time.  With ``timesteps`` a time-aware layer (capability
"timesteps": ``s4d``, ``ssm``, ``lru``, ...) discretises each step with its own gap,
:math:`\\bar A_i = \\exp(\\Delta_i\\,dt\\,A)`, exactly the continuous-time system sampled at the
event times; as a feature the gaps are one more input channel the layer must learn to use.

    python examples/event_stream.py --steps 400
"""

from __future__ import annotations

import argparse
import os

from lrnnx.train import train

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                      "event_stream.yaml")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tests)")
    args = p.parse_args(argv)
    base = ["task.name=event_stream", "model.spec=null",
            "model.stages=[s4d(d_state=16), s4d(d_state=16)]", "model.pool_factor=4",
            f"trainer.max_steps={args.steps}", "trainer.save=false", "trainer.progress=false"]
    if args.tiny:
        base += ["task.min_events=4", "task.max_events=8", "model.d_model=8",
                 "model.pool_factor=2", "trainer.batch_size=4", "trainer.eval_batches=1"]
    out = {}
    for label, extra in (("timesteps", []), ("dt as feature", ["task.dt_as_feature=true"])):
        res = train(CONFIG if os.path.isfile(CONFIG) else None, base + extra, quiet=True)
        out[label] = res.eval["accuracy"]
        print(f"{label:>14}: eval accuracy {res.eval['accuracy']:.3f}")
    return out


if __name__ == "__main__":
    main()
