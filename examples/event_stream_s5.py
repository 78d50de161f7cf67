"""Event-stream classification with S5 driven by per-event time gaps (Event-SSM style).

Schöne et al. 2024, "Scalable Event-by-event Processing of Neuromorphic Sensory Signals With
Deep State-Space Models" (https://arxiv.org/abs/2404.18508): an asynchronous event stream is fed
to S5 one event per token, and the gap tau_k since the previous event becomes the step of that
token (``timesteps``): ``Lambda_bar_k = exp(Lambda dt tau_k)``.

The toy task: every stream has 32 events whose features (one of 4 "pixels", one-hot) are drawn
the same way in both classes; only the timing differs -- class 0 fires at a steady rate,
class 1 in bursts (the same mean gap).  Without the gaps the classes are indistinguishable,
with them S5 separates them after a few dozen Adam steps.  The script then replays one stream
event by event with ``step`` (online inference) and checks it against the parallel scan.

Run (a few seconds on a laptop CPU; ``--tiny`` is a smoke run for the tests)::

    python examples/event_stream_s5.py [--steps 40] [--tiny]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from lrnnx_plugins.lti.s5 import S5

L, FEATURES, D_MODEL = 32, 4, 16


def make_streams(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(features (n, L, 4), gaps (n, L), labels (n,)): steady vs bursty event timing."""
    labels = torch.randint(0, 2, (n,), generator=generator)
    pixels = torch.randint(0, FEATURES, (n, L), generator=generator)
    features = nn.functional.one_hot(pixels, FEATURES).float()
    steady = torch.empty(n, L).exponential_(1.0, generator=generator)      # mean gap 1
    in_burst = torch.rand(n, L, generator=generator) < 0.8                   # mean gap 1 too
    bursty = torch.where(in_burst, torch.full((n, L), 0.05), torch.full((n, L), 4.8))
    gaps = torch.where(labels[:, None] == 1, bursty, steady)
    gaps[:, 0] = 0.0  # the first event has no predecessor: the state stays at zero
    return features, gaps, labels


class EventClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.encode = nn.Linear(FEATURES, D_MODEL)
        # a small S5; dt_min/dt_max put the learned steps on the scale of the event gaps
        self.s5 = S5(D_MODEL, d_state=16, blocks=2, dt_min=0.05, dt_max=1.0)
        self.head = nn.Linear(D_MODEL, 2)

    def forward(self, features, gaps=None):
        y = self.s5(self.encode(features), timesteps=gaps)
        return self.head(torch.relu(y).mean(1))


def train(use_gaps: bool, steps: int = 40, seed: int = 0, n_test: int = 256) -> float:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = EventClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        f, gaps, labels = make_streams(32, g)
        loss = nn.functional.cross_entropy(model(f, gaps if use_gaps else None), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    f, gaps, labels = make_streams(n_test, torch.Generator().manual_seed(1234))
    with torch.no_grad():
        acc = (model(f, gaps if use_gaps else None).argmax(-1) == labels).float().mean()
    if use_gaps:
        replay_online(model, f[:2], gaps[:2])
    return float(acc)


def replay_online(model: EventClassifier, features, gaps) -> None:
    """Event-by-event inference with ``step`` reproduces the parallel forward."""
    with torch.no_grad():
        u = model.encode(features)
        y_parallel = model.s5(u, timesteps=gaps)
        state = model.s5.init_state(features.shape[0])
        outs = []
        for k in range(features.shape[1]):
            y_k, state = model.s5.step(u[:, k], state, timesteps=gaps[:, k])
            outs.append(y_k)
        err = (torch.stack(outs, 1) - y_parallel).abs().max() / y_parallel.abs().max()
    print(f"online event-by-event replay vs parallel scan: rel. error {float(err):.1e}")
    assert float(err) < 1e-5


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="Adam steps per model")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tests)")
    args = p.parse_args(argv)
    steps, n_test = (3, 32) if args.tiny else (args.steps, 256)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread hand-offs cost more than they save
    try:
        result = {"timesteps": train(True, steps, n_test=n_test),
                  "no timesteps": train(False, steps, n_test=n_test)}
    finally:
        torch.set_num_threads(threads)
    print(f"test accuracy with event timesteps:    {result['timesteps']:.3f}")
    print(f"test accuracy without timesteps:       {result['no timesteps']:.3f}  "
          f"(chance: timing is the signal)")
    return result


if __name__ == "__main__":
    main()
