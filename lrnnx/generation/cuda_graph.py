"""The LM decode step over static state buffers, captured once in a CUDA graph and replayed.

A CUDA graph (https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs) records the kernels
of one decode step (embedding -> every block's ``step`` -> norm -> head) and replays them with a
single launch, which removes the per-kernel CPU overhead that dominates small-batch decoding.
Replay reads and writes fixed addresses, so the whole model state lives in static buffers:

* recurrent layers (``ssm``, ``mamba``, ...) keep fixed-shape states; the captured step copies
  each new state back into its buffer;
* attention's KV cache grows by one key per token, which a graph cannot do.  While decoding, each
  ``attn`` layer's ``step`` is swapped (on the instance, restored afterwards; the layer's code is
  untouched) for :func:`static_attention_step`: the cache is a ring of ``S`` slots,
  ``S = capacity`` (>= prompt + new tokens) or ``min(capacity, window)`` for sliding-window
  attention.  The token at position ``p`` is written to slot ``p mod S`` and ``slot_pos`` records
  which position each slot holds (-1: empty); the query attends to the slots with
  ``0 <= slot_pos`` (and ``slot_pos > p - window``).  Keys are stored already rotated (RoPE), so
  the slot order does not matter to softmax attention.

State of a static ``attn`` layer: ``{"k", "v": (B, H, S, head_dim), "slot_pos": (B, S) int64,
"pos": (B,) int64}``.  The decoder is cached per model (weakly) and reused while the batch size,
cache capacity (rounded up to a multiple of 256 tokens), state layout and parameter storage stay
the same; ``load`` resets every buffer from a new prefill state before each use.

Example::

    dec = decoder_for(lm, prefill_state, B, n_tokens=L + N, graph=True)   # capture or reuse
    logits = dec.step(tokens)                                          # (B, V), static buffer
"""

from __future__ import annotations

import contextlib
import types
import weakref

import torch
import torch.nn.functional as F

from lrnnx_plugins.attention import Attention, rotary_embed

__all__ = ["NotGraphable", "StaticDecoder", "decoder_for", "clear_graph_cache",
           "static_attention_step", "CAPACITY_MULTIPLE"]

#: attention cache capacities are rounded up to this many tokens so that calls with slightly
#: different lengths reuse one captured graph
CAPACITY_MULTIPLE = 256

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class NotGraphable(RuntimeError):
    """The model's decode step cannot run over static buffers (the reason says which block)."""


def static_attention_step(layer: Attention, x_t: torch.Tensor, state: dict):
    """``layer.step`` over a ring-buffer KV cache (see the module doc); updates k/v in place.

    x_t (B, d_model) -> (y_t (B, d_model), state with ``pos + 1``).
    """
    B = x_t.shape[0]
    H, hd = layer.n_heads, layer.head_dim
    q, k, v = (t.unsqueeze(2) for t in layer.qkv(x_t).view(B, 3, H, hd).unbind(1))  # (B,H,1,hd)
    pos = state["pos"]
    if layer.rotary:
        q, k = rotary_embed(q, pos[:, None]), rotary_embed(k, pos[:, None])
    kb, vb, slot_pos = state["k"], state["v"], state["slot_pos"]
    slot = torch.remainder(pos, kb.shape[2])
    idx = slot.view(B, 1, 1, 1).expand(B, H, 1, hd)
    kb.scatter_(2, idx, k)
    vb.scatter_(2, idx, v)
    slot_pos.scatter_(1, slot[:, None], pos[:, None])
    allowed = slot_pos >= 0
    if layer.window is not None:
        allowed = allowed & (slot_pos > pos[:, None] - layer.window)
    o = F.scaled_dot_product_attention(q, kb, vb, attn_mask=allowed[:, None, None, :],
                                       dropout_p=layer.dropout if layer.training else 0.0)
    y = layer.out(o.reshape(B, H * hd))
    return y, {"k": kb, "v": vb, "slot_pos": slot_pos, "pos": pos + 1}


@contextlib.contextmanager
def _static_attention(layers):
    """Route ``step`` of the given attention layers to :func:`static_attention_step`."""
    for m in layers:
        m.step = types.MethodType(static_attention_step, m)
    try:
        yield
    finally:
        for m in layers:
            m.__dict__.pop("step", None)


def _blocks(model):
    return list(model.backbone.blocks)


def _attention_blocks(model) -> dict[int, Attention]:
    """{block index: attn mixer}; NotGraphable if an attn layer sits anywhere else."""
    found = {i: b.mixer for i, b in enumerate(_blocks(model))
             if isinstance(getattr(b, "mixer", None), Attention)}
    mixers = {id(m) for m in found.values()}
    for name, m in model.named_modules():
        if isinstance(m, Attention) and id(m) not in mixers:
            raise NotGraphable(f"attention layer {name!r} is not the mixer of a block, so its "
                               f"KV cache cannot be made static")
    return found


def _capacity(model, n_tokens: int) -> int:
    if not _attention_blocks(model):
        return 0  # no cache grows with the length
    return -(-n_tokens // CAPACITY_MULTIPLE) * CAPACITY_MULTIPLE


def _layout(model, state, capacity: int) -> tuple:
    """Hashable description of the static buffers a prefill ``state`` needs."""
    attn = _attention_blocks(model)
    out = []
    for i, st in enumerate(state):
        if not isinstance(st, dict) or not all(isinstance(t, torch.Tensor) for t in st.values()):
            raise NotGraphable(f"block {i}: its state is not a dict of tensors")
        if i in attn:
            w = attn[i].window
            out.append(("attn", capacity if w is None else min(capacity, w), st["k"].dtype))
        else:
            out.append(tuple(sorted((k, tuple(t.shape), t.dtype) for k, t in st.items())))
    return tuple(out)


def _key(model, state, batch_size: int, capacity: int) -> tuple:
    tensors = list(model.parameters()) + list(model.buffers())
    return (_layout(model, state, capacity), batch_size, capacity, model.training,
            tuple((t.data_ptr(), t.dtype, tuple(t.shape)) for t in tensors))


class StaticDecoder:
    """The decode step of ``model`` (an LM) over static buffers, optionally as a CUDA graph.

    ``load(state)`` resets the buffers from a prefill state; ``step(tokens (B,)) -> logits
    (B, V)`` (a static buffer when ``graph``: read it before the next ``step``).  ``graph=False``
    runs the same static-buffer step eagerly (on any device; used to test the static path).
    """

    def __init__(self, model, state, batch_size: int, capacity: int, graph: bool):
        self._model = weakref.ref(model)
        self.key = _key(model, state, batch_size, capacity)
        self.attn = _attention_blocks(model)
        self.state = []
        for i, (st, lay) in enumerate(zip(state, self.key[0])):
            if i in self.attn:
                k = st["k"]
                B, H, _, hd = k.shape
                S = lay[1]
                self.state.append({"k": k.new_zeros(B, H, S, hd), "v": k.new_zeros(B, H, S, hd),
                                   "slot_pos": torch.full((B, S), -1, dtype=torch.long,
                                                          device=k.device),
                                   "pos": st["pos"].clone()})
            else:
                self.state.append({k: t.clone() for k, t in st.items()})
        self.tokens = torch.zeros(batch_size, dtype=torch.long,
                                  device=model.embedding.weight.device)
        self.graph = None
        self.logits = None
        if graph:
            self.load(state)
            self._capture()

    @property
    def model(self):
        m = self._model()
        if m is None:
            raise RuntimeError("the model of this StaticDecoder was garbage-collected")
        return m

    def load(self, state) -> None:
        """Reset every buffer to the prefill ``state`` (same layout as at construction)."""
        for i, (buf, st) in enumerate(zip(self.state, state)):
            if i in self.attn:
                k, v, pos = st["k"], st["v"], st["pos"]
                buf["k"].zero_()
                buf["v"].zero_()
                buf["slot_pos"].fill_(-1)
                buf["pos"].copy_(pos)
                n, S = k.shape[2], buf["k"].shape[2]
                if n > S:
                    raise NotGraphable(f"block {i}: the prefill cache holds {n} keys but the "
                                       f"static cache only {S}")
                if n:
                    positions = pos[:, None] - n + torch.arange(n, device=pos.device)
                    slots = torch.remainder(positions, S)
                    idx = slots[:, None, :, None].expand(k.shape)
                    buf["k"].scatter_(2, idx, k)
                    buf["v"].scatter_(2, idx, v)
                    buf["slot_pos"].scatter_(1, slots, positions)
            else:
                for key, t in st.items():
                    buf[key].copy_(t)

    def _run(self):
        """One decode step from ``self.tokens``: new states copied into the buffers."""
        model = self.model
        logits, new = model.step(self.tokens, self.state)
        storages = {t.untyped_storage().data_ptr() for st in self.state for t in st.values()}
        pending = []
        for i, (buf, st) in enumerate(zip(self.state, new)):
            if set(st) != set(buf):
                raise NotGraphable(f"block {i}: step() returned state keys {sorted(st)} but "
                                   f"the prefill state has {sorted(buf)}")
            for key, t in st.items():
                b = buf[key]
                if t is b:
                    continue
                if t.shape != b.shape or t.dtype != b.dtype:
                    raise NotGraphable(
                        f"block {i} ({type(getattr(_blocks(model)[i], 'mixer', None)).__name__})"
                        f": state[{key!r}] changes from {tuple(b.shape)} {b.dtype} to "
                        f"{tuple(t.shape)} {t.dtype} in one step, so it cannot live in a "
                        f"static buffer")
                # a new state that aliases an old buffer must be read before buffers change
                if t.untyped_storage().data_ptr() in storages:
                    t = t.clone()
                pending.append((b, t))
        for b, t in pending:
            b.copy_(t)
        return logits

    def _capture(self) -> None:
        dev = self.tokens.device
        with torch.no_grad(), _static_attention(self.attn.values()):
            side = torch.cuda.Stream(device=dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):  # warm-up (lazy inits, autotuning) off the capture
                for _ in range(2):
                    self._run()
            torch.cuda.current_stream(dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.logits = self._run()
        self.graph = graph

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after feeding ``tokens`` (B,); the state advances by one token."""
        self.tokens.copy_(tokens)
        if self.graph is not None:
            self.graph.replay()
            return self.logits
        with torch.no_grad(), _static_attention(self.attn.values()):
            return self._run()


def decoder_for(model, state, batch_size: int, n_tokens: int, graph: bool) -> StaticDecoder:
    """A :class:`StaticDecoder` loaded with prefill ``state`` for ``batch_size`` sequences of up
    to ``n_tokens`` positions.

    With ``graph`` the captured decoder is cached on ``model`` (weakly) and reused while its key
    matches; raises :class:`NotGraphable` when a block's state cannot be static.
    """
    capacity = _capacity(model, n_tokens)
    if not graph:
        dec = StaticDecoder(model, state, batch_size, capacity, graph=False)
        dec.load(state)
        return dec
    dec = _CACHE.get(model)
    if dec is None or dec.key != _key(model, state, batch_size, capacity):
        _CACHE.pop(model, None)  # free the old graph's memory pool before capturing anew
        dec = StaticDecoder(model, state, batch_size, capacity, graph=True)
        _CACHE[model] = dec
    dec.load(state)
    return dec


def clear_graph_cache(model=None) -> None:
    """Drop the captured decode graph of ``model`` (of every model when None)."""
    if model is None:
        _CACHE.clear()
    else:
        _CACHE.pop(model, None)
