"""Model containers: ``Backbone`` (a stack of residual blocks + final norm); ``LM`` is in lm.py.

Built by :func:`lrnnx.build_model` from a spec string; both follow the layer call convention
(``forward(x, state=None, return_state=False, timesteps=None, cu_seqlens=None)``, ``step``,
``init_state``) with a model state that is a ``list`` holding one layer-state dict per block.

Example::

    model = lrnnx.build_model("attn*2 + mlp", d_model=64, vocab_size=1000)
    logits = model(torch.randint(0, 1000, (2, 16)))          # (2, 16, 1000)
    logits, st = model(ids, return_state=True)                # prefill
    next_logits, st = model.step(ids[:, -1], st)              # generate
    same = lrnnx.build_model_from_config(model.config())      # round trip
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

from lrnnx.errors import InputError

from lrnnx_plugins.norms import make_norm

ModelState = list  # list[dict[str, torch.Tensor]], one entry per block


class _SpecInfo:
    """``spec`` (canonical spec text), ``layers`` (expanded per-layer specs) and ``config()``.

    ``build_model`` fills ``_config`` with the plain dict that rebuilds the model.
    """

    spec: str | None
    layers: list[str]
    _config: dict | None

    def config(self) -> dict:
        """A plain dict that :func:`lrnnx.build_model_from_config` turns into this architecture
        (weights are not included: use ``state_dict``)."""
        if self._config is None:
            raise RuntimeError(f"this {type(self).__name__} was not made by lrnnx.build_model, "
                               f"so it has no config; build it with lrnnx.build_model(spec, ...).")
        return copy.deepcopy(self._config)


class Backbone(_SpecInfo, nn.Module):
    """Blocks applied in order, then a final norm: (B, L, d_model) -> (B, L, d_model).

    ``state`` is a list with one state dict per block (``init_state`` builds it).  ``timesteps``
    go to the blocks whose mixer lists the "timesteps" capability (others are time-invariant or
    position-based and do not take them; an error if no block does); ``cu_seqlens`` goes to all
    blocks.  ``capabilities``: "step"/"varlen"/"bidirectional" if every block has it,
    "timesteps" if any block has it.
    """

    def __init__(self, blocks: Sequence[nn.Module], d_model: int, norm: str = "rms",
                 eps: float = 1e-5):
        super().__init__()
        if not blocks:
            raise ValueError("Backbone needs at least one block")
        self.d_model = d_model
        self.blocks = nn.ModuleList(blocks)
        self.norm = make_norm(norm, d_model, eps)
        self.spec, self.layers, self._config = None, [], None

    @property
    def capabilities(self) -> frozenset[str]:
        caps = [frozenset(b.capabilities) for b in self.blocks]
        every = frozenset.intersection(*caps) - {"timesteps"}
        return every | (frozenset({"timesteps"}) & frozenset.union(*caps))

    def init_state(self, batch_size: int, device=None, dtype=None) -> ModelState:
        return [b.init_state(batch_size, device=device, dtype=dtype) for b in self.blocks]

    def _states(self, state) -> list:
        if state is None:
            return [None] * len(self.blocks)
        if not isinstance(state, (list, tuple)) or len(state) != len(self.blocks):
            got = (f"a {type(state).__name__} of length {len(state)}"
                   if isinstance(state, (list, tuple)) else type(state).__name__)
            raise InputError(f"model state must be a list with one state dict per block "
                             f"({len(self.blocks)}), got {got}; use model.init_state(B) or "
                             f"forward(..., return_state=True).")
        return list(state)

    def _timesteps_for(self, block, timesteps):
        if timesteps is None or "timesteps" in block.capabilities:
            return timesteps
        return None

    def _check_timesteps(self, timesteps) -> None:
        if timesteps is not None and "timesteps" not in self.capabilities:
            raise InputError(f"model {self.spec or ''!r}: no layer takes timesteps (none has the "
                             f"'timesteps' capability); drop timesteps or add a layer that "
                             f"supports them (see `lrnnx list layers`).")

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        states = self._states(state)
        self._check_timesteps(timesteps)
        new_states = []
        for blk, st in zip(self.blocks, states):
            out = blk(x, state=st, return_state=return_state,
                      timesteps=self._timesteps_for(blk, timesteps), cu_seqlens=cu_seqlens)
            if return_state:
                x, st = out
                new_states.append(st)
            else:
                x = out
        y = self.norm(x)
        return (y, new_states) if return_state else y

    def step(self, x_t, state, timesteps=None):
        if state is None:
            raise InputError("model.step() needs a state; start from model.init_state(B) or "
                             "forward(..., return_state=True).")
        states = self._states(state)
        self._check_timesteps(timesteps)
        new_states = []
        for blk, st in zip(self.blocks, states):
            ts = self._timesteps_for(blk, timesteps)
            x_t, st = blk.step(x_t, st) if ts is None else blk.step(x_t, st, timesteps=ts)
            new_states.append(st)
        return self.norm(x_t), new_states


# LM lived here first; keep ``lrnnx.models.backbone.LM`` importable (imported last: lm.py
# imports Backbone from this module)
from .lm import LM  # noqa: E402
