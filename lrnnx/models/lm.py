"""``LM`` (alias ``LRNNLM``): token embedding -> residual blocks -> norm -> LM head.

Built by ``lrnnx.build_model(spec, d_model, vocab_size=V)`` from any mix of registered layers
(LRNN layers, ``attn``, ``mlp``).  ``generate`` decodes autoregressively: one parallel prefill
(``forward(..., return_state=True)`` gives every layer's state, attention's KV cache included),
then one recurrent ``step`` per new token, replayed from a CUDA graph on GPUs (see
:mod:`lrnnx.generation`).

Example::

    lm = lrnnx.build_model("s4d*2 + attn + mlp", d_model=64, vocab_size=1000).eval()
    logits = lm(torch.randint(0, 1000, (2, 16)))               # (2, 16, 1000)
    ids = lm.generate(torch.randint(0, 1000, (2, 5)), 20, temperature=0)   # (2, 25) greedy
"""

from __future__ import annotations

import torch
from torch import nn

from lrnnx.errors import InputError, InputTypeError
from lrnnx.registry.inputs import _values_checkable

from .backbone import Backbone, ModelState, _SpecInfo

__all__ = ["LM", "LRNNLM"]


class LM(_SpecInfo, nn.Module):
    """Language model: token embedding -> Backbone -> LM head (tied to the embedding by default).

    ``forward(input_ids (B, L) integer, ...) -> logits (B, L, vocab_size)``;
    ``step(token_ids (B,), state) -> (logits (B, vocab_size), state)``; the state is the
    backbone's.  ``generate(input_ids, max_new_tokens, ...)`` decodes (prefill + steps, CUDA
    graph on GPUs).  Embeddings are initialised N(0, 0.02) (GPT-2), which keeps tied logits
    small.
    """

    def __init__(self, backbone: Backbone, vocab_size: int, tie_embeddings: bool = True):
        super().__init__()
        self.vocab_size = vocab_size
        self.d_model = backbone.d_model
        self.embedding = nn.Embedding(vocab_size, self.d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.backbone = backbone
        self.head = nn.Linear(self.d_model, vocab_size, bias=False)
        self.tie_embeddings = tie_embeddings
        if tie_embeddings:
            self.head.weight = self.embedding.weight
        self._config = None

    @property
    def spec(self) -> str | None:
        return self.backbone.spec

    @property
    def layers(self) -> list[str]:
        return self.backbone.layers

    @property
    def capabilities(self) -> frozenset[str]:
        return self.backbone.capabilities

    def init_state(self, batch_size: int, device=None, dtype=None) -> ModelState:
        w = self.embedding.weight
        return self.backbone.init_state(batch_size, device=device or w.device,
                                        dtype=dtype or w.dtype)

    def _check_ids(self, ids, arg: str, rank: int) -> None:
        want = "(B, L)" if rank == 2 else "(B,)"
        if not isinstance(ids, torch.Tensor):
            raise InputTypeError(f"LM: {arg} must be an integer torch.Tensor of shape {want}, "
                                 f"got {type(ids).__name__}.")
        if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise InputTypeError(f"LM: {arg} must hold integer token ids, got dtype "
                                 f"{ids.dtype}; use {arg}.long() (or call model.backbone on "
                                 f"float features).")
        if ids.dim() != rank:
            raise InputError(f"LM: {arg} must have shape {want}, got {tuple(ids.shape)}.")
        if ids.numel() and _values_checkable(ids):
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.vocab_size:
                raise InputError(f"LM: {arg} must be in [0, vocab_size={self.vocab_size}), "
                                 f"got values in [{lo}, {hi}].")

    def forward(self, input_ids, state=None, return_state=False, timesteps=None,
                cu_seqlens=None):
        self._check_ids(input_ids, "input_ids", 2)
        out = self.backbone(self.embedding(input_ids), state=state, return_state=return_state,
                            timesteps=timesteps, cu_seqlens=cu_seqlens)
        if return_state:
            return self.head(out[0]), out[1]
        return self.head(out)

    def step(self, token_ids, state, timesteps=None):
        self._check_ids(token_ids, "token_ids", 1)
        h, state = self.backbone.step(self.embedding(token_ids), state, timesteps=timesteps)
        return self.head(h), state

    def generate(self, input_ids, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 eos_token_id: int | None = None, cuda_graph: bool | str = "auto",
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Autoregressive decoding: (B, L) prompt ids -> (B, L + max_new_tokens) ids.

        ``temperature=0`` is greedy; ``top_k`` / ``top_p`` (nucleus) filter the distribution
        before sampling with ``generator``; after ``eos_token_id`` a sequence keeps emitting it;
        ``cuda_graph`` ("auto" | True | False) replays the decode step from a CUDA graph.  See
        :func:`lrnnx.generation.generate` for the full contract.
        """
        from lrnnx.generation.generate import generate

        return generate(self, input_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, eos_token_id=eos_token_id, cuda_graph=cuda_graph,
                        generator=generator)


#: the LM under the name used in the docs of the model kinds (``model.kind: lm``)
LRNNLM = LM
