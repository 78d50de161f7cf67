r"""``Classifier``: a hierarchical sequence classifier with pooling between stages.

Input (token ids (B, L), or real features (B, L, d_input) through a linear encoder) -> stage 1
-> pool -> stage 2 -> ... -> stage S -> pool over time -> linear head -> (B, num_classes).
Each stage is a :class:`~lrnnx.models.Backbone` built from a spec; between stages the sequence
is downsampled by ``pool_factor`` with ``pool`` = ``mean`` | ``max`` | ``stride`` (the last
element of each window, the one a causal stage has seen the whole window at), as in the
hierarchical event-stream models of Schöne et al. 2024 (Event-SSM,
https://arxiv.org/abs/2404.18508).

Length-aware: ``lengths`` (B,) marks the valid prefix of each padded row, or ``cu_seqlens``
packs the sequences along L (B = 1).  Stages whose layers all support varlen run on the packed
valid tokens (exact for any layer, bidirectional ones included); other stages run on the padded
batch, which is exact for causal layers (the padding comes after the valid tokens).  Pooling
and the head only ever see valid timesteps, so padding does not change the result.

Event-aware: ``timesteps`` (B, L) (time since the previous event) go to the layers with the
"timesteps" capability; when a window of k events is pooled into one, its timestep is the sum
over the window, :math:`\Delta'_j = \sum_{i \in \text{window } j} \Delta_i` (the time the pooled
event spans), so downstream time-aware layers keep integrating real time.

Example::

    clf = lrnnx.models.build_classifier(d_model=64, num_classes=10, d_input=2,
                                        stages=["s4d*2", "s4d*2"], pool="mean", pool_factor=4)
    logits = clf(torch.randn(8, 1000, 2), lengths=torch.randint(1, 1001, (8,)))   # (8, 10)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lrnnx.errors import ConfigError, InputError, InputTypeError
from lrnnx.registry.inputs import _values_checkable

from .backbone import Backbone
from .validation import check_choice, check_positive_int

__all__ = ["Classifier", "build_classifier", "pool_sequence", "POOLS", "HEAD_POOLS"]

POOLS = ("mean", "max", "stride")
HEAD_POOLS = ("mean", "max", "last")


def valid_mask(lengths: torch.Tensor | None, B: int, L: int, device,
               full: int | None = None) -> torch.Tensor:
    """(B, L) bool, True at t < lengths[b] (at t < ``full``, default L, when ``lengths`` is
    None)."""
    t = torch.arange(L, device=device)[None]
    if lengths is None:
        return (t < (L if full is None else full)).expand(B, L)
    return t < lengths[:, None]


def pool_sequence(x: torch.Tensor, lengths: torch.Tensor | None = None,
                  timesteps: torch.Tensor | None = None, kind: str = "mean", factor: int = 2):
    """Downsample ``x`` (B, L, d) by windows of ``factor`` steps -> (B, ceil(L/factor), d).

    Window j covers steps ``[j*factor, (j+1)*factor)`` of each row, restricted to the valid
    steps ``t < lengths[b]``: ``mean`` averages them, ``max`` takes their max, ``stride`` the
    last one.  Returns ``(y, new_lengths, new_timesteps)`` with ``new_lengths =
    ceil(lengths / factor)`` (None if ``lengths`` is None) and ``new_timesteps`` the sum of the
    valid ``timesteps`` (B, L) over each window (None if not given).  Windows past a row's end
    are zero.
    """
    B, L, d = x.shape
    n = -(-L // factor)
    pad = n * factor - L
    valid = valid_mask(lengths, B, n * factor, x.device, full=L)
    m = valid.view(B, n, factor, 1)
    xw = F.pad(x, (0, 0, 0, pad)).view(B, n, factor, d)
    count = m.sum(dim=2)                                              # (B, n, 1)
    if kind == "mean":
        y = (xw * m).sum(dim=2) / count.clamp(min=1)
    elif kind == "max":
        y = xw.masked_fill(~m, float("-inf")).amax(dim=2).masked_fill(count == 0, 0.0)
    elif kind == "stride":
        # the valid steps of a window are a prefix of it, so the last one is at count - 1
        last = (count - 1).clamp(min=0)[:, :, None, :].expand(B, n, 1, d)
        y = xw.gather(2, last)[:, :, 0] * (count > 0)
    else:
        raise ConfigError(f"pool must be one of {', '.join(POOLS)}, got {kind!r}.")
    new_lengths = None if lengths is None else -(-lengths // factor)
    new_ts = None
    if timesteps is not None:
        tw = F.pad(timesteps, (0, pad)).view(B, n, factor)
        new_ts = (tw * valid.view(B, n, factor)).sum(dim=2)
    return y, new_lengths, new_ts


class Classifier(nn.Module):
    """Encoder -> stages with pooling in between -> pooled head (see the module doc).

    ``forward(x, lengths=None, cu_seqlens=None, timesteps=None) -> logits (B, num_classes)``
    (with ``cu_seqlens``: one row per packed sequence).  Built by :func:`build_classifier`.
    """

    def __init__(self, stages: Sequence[Backbone], num_classes: int,
                 vocab_size: int | None = None, d_input: int | None = None, pool: str = "mean",
                 pool_factor: int = 2, head_pool: str = "mean"):
        super().__init__()
        if not stages:
            raise ConfigError("Classifier needs at least one stage.")
        d = stages[0].d_model
        if any(s.d_model != d for s in stages):
            raise ConfigError(f"Classifier stages must share d_model, got "
                              f"{[s.d_model for s in stages]}.")
        if (vocab_size is None) == (d_input is None):
            raise ConfigError(f"Classifier: give exactly one of vocab_size (token-id input) or "
                              f"d_input (real-valued input (B, L, d_input)), got "
                              f"vocab_size={vocab_size}, d_input={d_input}.")
        check_positive_int("Classifier", "num_classes", num_classes)
        check_positive_int("Classifier", "pool_factor", pool_factor)
        check_choice("Classifier", "pool", pool, POOLS)
        check_choice("Classifier", "head_pool", head_pool, HEAD_POOLS)
        self.d_model, self.num_classes = d, num_classes
        self.vocab_size, self.d_input = vocab_size, d_input
        self.pool, self.pool_factor, self.head_pool = pool, pool_factor, head_pool
        if vocab_size is not None:
            check_positive_int("Classifier", "vocab_size", vocab_size)
            self.encoder = nn.Embedding(vocab_size, d)
            nn.init.normal_(self.encoder.weight, std=0.02)
        else:
            check_positive_int("Classifier", "d_input", d_input)
            self.encoder = nn.Linear(d_input, d)
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(d, num_classes)
        self._config: dict | None = None

    def config(self) -> dict:
        """The plain dict that :func:`lrnnx.build_model_from_config` rebuilds this from."""
        if self._config is None:
            raise RuntimeError("this Classifier was not made by build_classifier, so it has no "
                               "config; build it with lrnnx.models.build_classifier(...).")
        return copy.deepcopy(self._config)

    # ------------------------------------------------------------------ inputs
    def _check_x(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"Classifier: x must be a torch.Tensor, got "
                                 f"{type(x).__name__}.")
        if self.vocab_size is not None:
            if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool or x.dim() != 2:
                raise InputError(f"Classifier: x must be integer token ids (B, L) (this "
                                 f"classifier has vocab_size={self.vocab_size}), got "
                                 f"{x.dtype} {tuple(x.shape)}.")
            if x.numel() and _values_checkable(x) and (int(x.min()) < 0 or
                                                       int(x.max()) >= self.vocab_size):
                raise InputError(f"Classifier: token ids must be in [0, {self.vocab_size}), got "
                                 f"values in [{int(x.min())}, {int(x.max())}].")
        elif not x.is_floating_point() or x.dim() != 3 or x.shape[-1] != self.d_input:
            raise InputError(f"Classifier: x must be a float tensor (B, L, d_input="
                             f"{self.d_input}), got {x.dtype} {tuple(x.shape)}.")

    def _check_lengths(self, lengths, B: int, L: int) -> None:
        if not isinstance(lengths, torch.Tensor) or lengths.dtype not in (torch.int32,
                                                                            torch.int64):
            raise InputTypeError(f"Classifier: lengths must be an int64 tensor (B,), got "
                                 f"{getattr(lengths, 'dtype', type(lengths).__name__)}.")
        if tuple(lengths.shape) != (B,):
            raise InputError(f"Classifier: lengths must have shape ({B},), got "
                             f"{tuple(lengths.shape)}.")
        if _values_checkable(lengths) and B and (int(lengths.min()) < 1 or
                                                 int(lengths.max()) > L):
            raise InputError(f"Classifier: lengths must be in [1, L={L}] (a sequence needs at "
                             f"least one step), got values in [{int(lengths.min())}, "
                             f"{int(lengths.max())}].")

    @staticmethod
    def _unpack(t: torch.Tensor | None, lens: list[int]):
        """Packed (1, T, ...) -> padded (n, max(lens), ...)."""
        if t is None:
            return None
        return nn.utils.rnn.pad_sequence(list(torch.split(t[0], lens)), batch_first=True)

    # ------------------------------------------------------------------ compute
    def _run_stage(self, stage: Backbone, h, lengths, ts):
        ts = ts if "timesteps" in stage.capabilities else None
        if lengths is None:
            return stage(h, timesteps=ts)
        mask = valid_mask(lengths, h.shape[0], h.shape[1], h.device)
        if "varlen" in stage.capabilities:
            cu = F.pad(lengths.to(torch.long).cumsum(0), (1, 0))
            y = stage(h[mask][None], timesteps=None if ts is None else ts[mask][None],
                      cu_seqlens=cu)
            return h.new_zeros(h.shape).masked_scatter(mask[..., None], y[0])
        return stage(h, timesteps=ts) * mask[..., None]  # exact for causal stages

    def _head_pool(self, h, lengths):
        B, L, _ = h.shape
        if lengths is None:
            lengths = torch.full((B,), L, dtype=torch.long, device=h.device)
        m = valid_mask(lengths, B, L, h.device)[..., None]
        if self.head_pool == "mean":
            return (h * m).sum(dim=1) / lengths[:, None].to(h.dtype)
        if self.head_pool == "max":
            return h.masked_fill(~m, float("-inf")).amax(dim=1)
        idx = (lengths - 1)[:, None, None].expand(B, 1, h.shape[-1])
        return h.gather(1, idx)[:, 0]

    def forward(self, x, lengths=None, cu_seqlens=None, timesteps=None):
        self._check_x(x)
        if timesteps is not None:
            if not any("timesteps" in s.capabilities for s in self.stages):
                raise InputError("Classifier: no stage takes timesteps (no layer has the "
                                 "'timesteps' capability); drop them or add such a layer.")
            if not isinstance(timesteps, torch.Tensor) or timesteps.shape != x.shape[:2]:
                raise InputError(f"Classifier: timesteps must be a tensor of shape "
                                 f"{tuple(x.shape[:2])} (B, L), got "
                                 f"{getattr(timesteps, 'shape', type(timesteps).__name__)}.")
        if cu_seqlens is not None:
            if lengths is not None:
                raise InputError("Classifier: pass either lengths (padded batch) or cu_seqlens "
                                 "(packed batch), not both.")
            if x.shape[0] != 1:
                raise InputError(f"Classifier: packed input (cu_seqlens) needs B = 1, got "
                                 f"B={x.shape[0]}; concatenate the sequences along L.")
            if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype not in (
                    torch.int32, torch.int64) or cu_seqlens.dim() != 1:
                raise InputTypeError(f"Classifier: cu_seqlens must be a 1-D int64 tensor "
                                     f"[0, l1, l1+l2, ..., L], got {cu_seqlens!r}.")
            bounds = cu_seqlens.tolist()
            if bounds[0] != 0 or bounds[-1] != x.shape[1] or \
                    any(b <= a for a, b in zip(bounds, bounds[1:])):
                raise InputError(f"Classifier: cu_seqlens must rise strictly from 0 to "
                                 f"L={x.shape[1]} (no empty sequence), got {bounds}.")
            lens = [b - a for a, b in zip(bounds, bounds[1:])]
            x, timesteps = self._unpack(x, lens), self._unpack(timesteps, lens)
            lengths = torch.tensor(lens, dtype=torch.long, device=x.device)
        if lengths is not None:
            self._check_lengths(lengths, x.shape[0], x.shape[1])
            lengths = lengths.to(device=x.device, dtype=torch.long)
        h = self.encoder(x)
        for i, stage in enumerate(self.stages):
            h = self._run_stage(stage, h, lengths, timesteps)
            if i < len(self.stages) - 1:
                h, lengths, timesteps = pool_sequence(h, lengths, timesteps, self.pool,
                                                      self.pool_factor)
        return self.head(self._head_pool(h, lengths))


def build_classifier(d_model: int, num_classes: int, stages: Sequence[Any] | None = None,
                     spec: Any = None, pool_every: int | None = None,
                     vocab_size: int | None = None, d_input: int | None = None,
                     pool: str = "mean", pool_factor: int = 2, head_pool: str = "mean",
                     block: str = "prenorm", **globals: Any) -> Classifier:
    """Build a :class:`Classifier` from spec strings.

    Stages: ``stages`` (a list of specs, one per stage) or ``spec`` split every ``pool_every``
    layers (one stage when ``pool_every`` is None).  ``block`` and ``globals`` are as in
    :func:`lrnnx.build_model` (a global must be accepted by some layer, block or final norm).
    """
    from lrnnx.build import _prepared, build_backbones
    from lrnnx.registry.spec import Spec, format_spec

    if (stages is None) == (spec is None):
        raise ConfigError("build_classifier: give either stages (a list of specs, one per "
                          "stage) or spec (split into stages with pool_every), not both/none.")
    if stages is not None:
        if isinstance(stages, str) or not isinstance(stages, Sequence) or not stages:
            raise ConfigError(f"build_classifier: stages must be a non-empty list of specs, got "
                              f"{stages!r}; for one spec use spec=... (with pool_every).")
        if pool_every is not None:
            raise ConfigError("build_classifier: pool_every splits spec; with stages the "
                              "stages are already given, so drop pool_every.")
        stage_specs = list(stages)
    else:
        _, _, comps = _prepared(spec)  # checks names with carets on the whole spec
        if pool_every is None:
            pool_every = len(comps)
        check_positive_int("build_classifier", "pool_every", pool_every)
        stage_specs = [format_spec(Spec(tuple(comps[i:i + pool_every])))
                       for i in range(0, len(comps), pool_every)]
    check_positive_int("build_classifier", "d_model", d_model)
    backbones, block_text = build_backbones(stage_specs, [d_model] * len(stage_specs), block,
                                            **globals)
    model = Classifier(backbones, num_classes, vocab_size=vocab_size, d_input=d_input,
                       pool=pool, pool_factor=pool_factor, head_pool=head_pool)
    cfg: dict[str, Any] = {"kind": "classifier", "stages": [b.spec for b in backbones],
                           "d_model": d_model, "num_classes": num_classes}
    cfg.update({"vocab_size": vocab_size} if vocab_size is not None else {"d_input": d_input})
    cfg.update(pool=pool, pool_factor=pool_factor, head_pool=head_pool, block=block_text)
    cfg.update(globals)
    model._config = {"model": cfg}
    return model
