"""Built-in plugin: the ``attn`` layer, causal multi-head softmax attention with a KV cache.

Vaswani et al. 2017, https://arxiv.org/abs/1706.03762; rotary position embedding (RoPE):
Su et al. 2021, https://arxiv.org/abs/2104.09864; sliding-window attention: Beltagy et al. 2020,
https://arxiv.org/abs/2004.05150.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import lrnnx
from lrnnx.errors import ConfigError, InputError, InputTypeError

ROPE_BASE = 10000.0


def rotary_embed(x: torch.Tensor, positions: torch.Tensor, base: float = ROPE_BASE) -> torch.Tensor:
    """Rotate ``x`` (B, H, L, hd) by RoPE angles of ``positions`` ((B, L) or (L,), integer).

    Half-split convention (GPT-NeoX): channel pairs are (i, i + hd/2), rotated by
    ``positions * base**(-2i/hd)``.  Angles are computed in fp32 (fp64 for fp64 input) so
    long positions keep their precision under bf16/fp16 inputs.
    """
    hd = x.shape[-1]
    ftype = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(0, hd, 2, device=x.device, dtype=ftype) / hd)
    ang = positions.to(ftype)[..., None] * inv_freq            # (..., L, hd/2)
    if ang.dim() == 3:                                          # (B, L, hd/2) -> (B, 1, L, hd/2)
        ang = ang[:, None]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x.to(ftype).chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)


def causal_mask(q_idx: torch.Tensor, k_idx: torch.Tensor, window: int | None,
                q_seg: torch.Tensor | None = None, k_seg: torch.Tensor | None = None):
    """Boolean (Lq, Lk) mask, True where query at index ``q_idx`` may attend to key ``k_idx``.

    Causal (``k <= q``), optionally within a sliding window (``k > q - window``: the query and
    its ``window - 1`` predecessors) and within the same packed sequence (``q_seg == k_seg``).
    """
    q, k = q_idx[:, None], k_idx[None, :]
    allowed = k <= q
    if window is not None:
        allowed = allowed & (k > q - window)
    if q_seg is not None:
        allowed = allowed & (q_seg[:, None] == k_seg[None, :])
    return allowed


class Attention(lrnnx.Layer):
    r"""Causal multi-head attention (``torch.nn.functional.scaled_dot_product_attention``).

    For each head h with :math:`q_i = W_q^h x_i`, :math:`k_j = W_k^h x_j`, :math:`v_j = W_v^h x_j`
    (rotated by RoPE at their positions when ``rotary``):

    .. math::

        o_i^h = \sum_{j \in S(i)} \operatorname{softmax}_j\!\Big(\frac{q_i^\top k_j}
                {\sqrt{d_h}}\Big)\, v_j, \qquad y_i = W_o [o_i^1; \dots; o_i^H]

    with :math:`S(i) = \{j \le i\}`, or :math:`\{i - w < j \le i\}` with ``window = w`` (each
    query sees at most ``w`` keys, itself included).

    Options: ``n_heads`` (default 4); ``head_dim`` (default ``d_model // n_heads``, which then
    must divide evenly; set it explicitly to use any width, the heads are projected back to
    d_model); ``rotary`` (RoPE, base 10000, half-split; needs an even head_dim); ``window``;
    ``bias`` (of the projections); ``dropout`` (on attention weights, training only).

    State (KV cache): ``{"k": (B, H, n, hd), "v": (B, H, n, hd), "pos": (B,) int64}``; ``k`` is
    stored already rotated, ``pos`` is the number of tokens seen (next RoPE position).  The
    cache grows by one key per token; with ``window = w`` it keeps only the last ``w - 1`` keys
    (all the next token can see besides itself), so its size is bounded.
    ``forward(x, state=s, return_state=True)`` attends over cache + new keys (prefill, then
    continue); ``step`` is that with L = 1, so step-by-step equals ``forward`` (in eval mode).

    Varlen: ``cu_seqlens`` packs sequences along L (B = 1); attention is block-diagonal causal
    and RoPE positions restart at 0 in each sequence.  A packed call cannot take or return a KV
    cache (per-sequence caches have different lengths): run those sequences as a batch instead.

    Shapes: x (B, L, d_model) -> y (B, L, d_model); step: x_t (B, d_model) -> y_t (B, d_model).

    Example::

        attn = lrnnx.build_layer("attn(n_heads=4, window=128)", d_model=64).eval()
        y, st = attn(torch.randn(2, 10, 64), return_state=True)   # prefill
        y_t, st = attn.step(torch.randn(2, 64), st)                # continue
    """

    name = "attn"
    capabilities = frozenset({"step", "varlen"})

    def __init__(self, d_model: int, n_heads: int = 4, head_dim: int | None = None,
                 rotary: bool = True, window: int | None = None, bias: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        where = "layer 'attn'"
        if d_model <= 0:
            raise ConfigError(f"{where}: d_model must be a positive int, got {d_model}.")
        if n_heads <= 0:
            raise ConfigError(f"{where}: option 'n_heads' must be >= 1, got {n_heads}.")
        if head_dim is None:
            if d_model % n_heads:
                raise ConfigError(
                    f"{where}: d_model={d_model} is not divisible by n_heads={n_heads}; choose "
                    f"n_heads dividing d_model, or set head_dim explicitly.")
            head_dim = d_model // n_heads
        elif head_dim <= 0:
            raise ConfigError(f"{where}: option 'head_dim' must be >= 1, got {head_dim}.")
        if rotary and head_dim % 2:
            raise ConfigError(f"{where}: rotary embeddings need an even head_dim, got "
                              f"{head_dim}; change n_heads/head_dim or set rotary=False.")
        if window is not None and window <= 0:
            raise ConfigError(f"{where}: option 'window' must be >= 1 (keys seen per query, "
                              f"itself included) or None, got {window}.")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"{where}: option 'dropout' must be in [0, 1), got {dropout}.")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, head_dim
        self.rotary, self.window, self.dropout = rotary, window, dropout
        inner = n_heads * head_dim
        self.qkv = nn.Linear(d_model, 3 * inner, bias=bias)
        self.out = nn.Linear(inner, d_model, bias=bias)

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device=None, dtype=None):
        w = self.qkv.weight
        device = w.device if device is None else device
        dtype = w.dtype if dtype is None else dtype
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device,
                            dtype=dtype)
        return {"k": empty, "v": empty.clone(),
                "pos": torch.zeros(batch_size, device=device, dtype=torch.long)}

    def _check_cache(self, state, B: int, dtype: torch.dtype, device: torch.device) -> None:
        where = "layer 'attn'"
        missing = {"k", "v", "pos"} - set(state)
        if missing:
            raise InputError(f"{where}: state is missing {sorted(missing)}; pass the dict from "
                             f"init_state() or forward(..., return_state=True).")
        k, v, pos = state["k"], state["v"], state["pos"]
        want = (B, self.n_heads, "n", self.head_dim)
        for key, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[0] != B or \
                    t.shape[1] != self.n_heads or t.shape[3] != self.head_dim:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise InputError(f"{where}: state[{key!r}] must have shape {want} "
                                 f"(batch, heads, cached tokens, head_dim), got {got}; build it "
                                 f"with init_state({B}).")
            if t.dtype != dtype or t.device != device:
                # compare with the projected keys' dtype, which autocast may change
                raise InputTypeError(f"{where}: state[{key!r}] is {t.dtype} on {t.device} but "
                                     f"the keys are {dtype} on {device}; build the state with "
                                     f"init_state(B, device=x.device, dtype=x.dtype).")
        if k.shape[2] != v.shape[2]:
            raise InputError(f"{where}: state['k'] caches {k.shape[2]} tokens but state['v'] "
                             f"{v.shape[2]}; the cache is corrupted.")
        if not isinstance(pos, torch.Tensor) or tuple(pos.shape) != (B,) or \
                pos.dtype != torch.long or pos.device != device:
            got = (f"{tuple(pos.shape)} {pos.dtype} on {pos.device}"
                   if isinstance(pos, torch.Tensor) else type(pos).__name__)
            raise InputError(f"{where}: state['pos'] must be an int64 tensor of shape ({B},) "
                             f"on {device}, got {got}.")

    # ------------------------------------------------------------------ compute
    def _attend(self, x, state, return_state, cu_seqlens=None):
        B, L, _ = x.shape
        H, hd = self.n_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, L, 3, H, hd).permute(2, 0, 3, 1, 4)   # 3 x (B, H, L, hd)
        dev = x.device
        mask, causal = None, False
        if cu_seqlens is not None:
            idx = torch.arange(L, device=dev)
            seg = torch.searchsorted(cu_seqlens[1:].to(dev, torch.long), idx, right=True)
            positions = idx - cu_seqlens.to(dev, torch.long)[seg]      # restart per sequence
            mask = causal_mask(idx, idx, self.window, seg, seg)
            pos0 = n_past = None
        else:
            if state is not None:
                self._check_cache(state, B, k.dtype, dev)
                pos0, past_k, past_v = state["pos"], state["k"], state["v"]
            else:
                pos0 = torch.zeros(B, device=dev, dtype=torch.long)
                past_k = past_v = None
            n_past = 0 if past_k is None else past_k.shape[2]
            positions = pos0[:, None] + torch.arange(L, device=dev)   # (B, L)
        if self.rotary:
            q, k = rotary_embed(q, positions), rotary_embed(k, positions)
        if cu_seqlens is None:
            if n_past:
                k = torch.cat((past_k, k), dim=2)
                v = torch.cat((past_v, v), dim=2)
            if n_past == 0 and self.window is None:
                causal = True                       # plain causal: let SDPA pick a fast kernel
            else:
                mask = causal_mask(torch.arange(n_past, n_past + L, device=dev),
                                   torch.arange(n_past + L, device=dev), self.window)
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0)
        y = self.out(o.transpose(1, 2).reshape(B, L, H * hd))
        if not return_state:
            return y
        n = k.shape[2]
        keep = n if self.window is None else min(n, self.window - 1)
        new_state = {"k": k[:, :, n - keep:], "v": v[:, :, n - keep:], "pos": pos0 + L}
        return y, new_state

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        if cu_seqlens is not None and (state is not None or return_state):
            raise InputError(
                "layer 'attn': a packed varlen call (cu_seqlens) cannot take or return a KV "
                "cache, since per-sequence caches differ in length; drop state/return_state, or "
                "pad the sequences into a batch (B, L, d) to continue them with step().")
        return self._attend(x, state, return_state, cu_seqlens)

    def step(self, x_t, state):
        y, state = self._attend(x_t[:, None], state, True)
        return y[:, 0], state

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
                f"rotary={self.rotary}, window={self.window}")


@lrnnx.hookimpl
def register_layers(register):
    register(Attention)
