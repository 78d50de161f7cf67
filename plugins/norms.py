"""Normalization layers used by the residual blocks and the model backbone.

Not a plugin (it registers nothing): a small helper module shared by ``blocks`` and
``lrnnx.models``.

* ``"rms"``: RMSNorm (Zhang & Sennrich 2019, https://arxiv.org/abs/1910.07467)
  ``y = x / sqrt(mean(x**2, -1) + eps) * weight``.
* ``"layer"``: LayerNorm (Ba et al. 2016, https://arxiv.org/abs/1607.06450)
  ``y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias``.

Both normalize over the last dim, so they accept (B, L, d_model) and (B, d_model) alike.

Example::

    norm = make_norm("rms", 64, eps=1e-5)
    y = norm(torch.randn(2, 10, 64))
"""

from __future__ import annotations

from torch import nn

from lrnnx.errors import ConfigError, close_matches

NORM_KINDS = ("rms", "layer")


def make_norm(kind: str, d_model: int, eps: float = 1e-5) -> nn.Module:
    """A normalization module over the last dim of size ``d_model``.

    ``kind`` is ``"rms"`` (``torch.nn.RMSNorm``, in torch since 2.4, which lrnnx requires) or
    ``"layer"`` (``torch.nn.LayerNorm``).  Raises ConfigError for any other kind or a
    non-positive ``d_model`` / ``eps``.
    """
    if kind not in NORM_KINDS:
        sugg = close_matches(str(kind), NORM_KINDS)
        did = f" Did you mean {sugg[0]!r}?" if sugg else ""
        raise ConfigError(f"unknown norm {kind!r}; expected one of {', '.join(NORM_KINDS)}.{did}")
    if not isinstance(d_model, int) or d_model <= 0:
        raise ConfigError(f"norm {kind!r}: d_model must be a positive int, got {d_model!r}.")
    if not eps > 0:
        raise ConfigError(f"norm {kind!r}: eps must be > 0, got {eps!r}; use e.g. 1e-5.")
    if kind == "rms":
        return nn.RMSNorm(d_model, eps=eps)
    return nn.LayerNorm(d_model, eps=eps)
