"""Built-in plugin: residual blocks ``prenorm`` and ``prenorm_mlp`` wrapping a mixer layer.

Pre-norm residual (Xiong et al. 2020, "On Layer Normalization in the Transformer
Architecture", https://arxiv.org/abs/2002.04745)::

    prenorm:      y = x + mixer(norm(x))
    prenorm_mlp:  h = x + mixer(norm(x));  y = h + mlp(norm2(h))

The block state is the mixer's state (the norms and the MLP are position-wise and stateless), so
``block.init_state`` / ``forward(..., state=, return_state=)`` / ``step`` follow the Layer API
and pass ``state``, ``timesteps`` and ``cu_seqlens`` straight to the mixer.

Example::

    mixer = lrnnx.build_layer("attn", d_model=64)
    block = PreNormMLP(64, mixer, norm="rms", mlp_expand=4.0)
    y = block(torch.randn(2, 10, 64))
"""

from __future__ import annotations

from typing import Literal

import torch

import lrnnx
from lrnnx.registry import inputs
from lrnnx.registry.interfaces import Layer

from .mlp import GatedMLP
from .norms import make_norm

#: mixer capabilities a block keeps: the norms are real-valued, so "complex" input is not
#: supported by a block even when its mixer supports it
_BLOCK_CAPABILITIES = frozenset({"step", "varlen", "timesteps", "bidirectional"})


class PreNorm(lrnnx.Block):
    """``y = x + mixer(norm(x))``.

    Options: ``d_model``; ``mixer`` (a built ``lrnnx.Layer`` of width d_model); ``norm``
    ("rms" | "layer"); ``eps`` of the norm.
    Shapes: x (B, L, d_model) -> (B, L, d_model); step: x_t (B, d_model) -> (B, d_model).
    ``capabilities`` are the mixer's (minus "complex").
    """

    name = "prenorm"

    def __init__(self, d_model: int, mixer: Layer, norm: Literal["rms", "layer"] = "rms",
                 eps: float = 1e-5):
        super().__init__()
        mixer_d = getattr(mixer, "d_model", d_model)
        if mixer_d != d_model:
            raise lrnnx.ConfigError(
                f"block {self.name!r}: mixer {mixer.name!r} has d_model={mixer_d} but the block "
                f"has d_model={d_model}; build both with the same width.")
        self.d_model = d_model
        self.mixer = mixer
        self.norm = make_norm(norm, d_model, eps)

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(self.mixer.capabilities) & _BLOCK_CAPABILITIES

    def init_state(self, batch_size: int, device=None, dtype=None):
        return self.mixer.init_state(batch_size, device=device, dtype=dtype)

    def _post(self, h: torch.Tensor) -> torch.Tensor:
        """What follows the mixer residual (identity here; the MLP sub-block in prenorm_mlp)."""
        return h

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        # validate against the mixer first so a bad x is reported before the norm touches it
        inputs.check_x(self.mixer, x)
        out = self.mixer(self.norm(x), state=state, return_state=return_state,
                         timesteps=timesteps, cu_seqlens=cu_seqlens)
        h, new_state = out if return_state else (out, None)
        y = self._post(x + h)
        return (y, new_state) if return_state else y

    def step(self, x_t, state, timesteps=None):
        inputs._require(self.mixer, "step", "step()")
        inputs.check_x(self.mixer, x_t, arg="x_t", step=True)
        # only forward timesteps when given: a mixer without the capability may not accept it
        kw = {} if timesteps is None else {"timesteps": timesteps}
        h, state = self.mixer.step(self.norm(x_t), state, **kw)
        return self._post(x_t + h), state


class PreNormMLP(PreNorm):
    """``h = x + mixer(norm(x)); y = h + mlp(norm2(h))`` (a transformer-style block).

    Extra options: ``mlp_expand`` (hidden width factor of the gated MLP, see ``mlp``) and
    ``mlp_activation`` ("silu" | "gelu").  Named ``mlp_*`` so a model-wide global such as
    ``expand=2`` (meant for e.g. Mamba layers) does not silently resize the block's MLP.
    """

    name = "prenorm_mlp"

    def __init__(self, d_model: int, mixer: Layer, norm: Literal["rms", "layer"] = "rms",
                 eps: float = 1e-5, mlp_expand: float = 8 / 3,
                 mlp_activation: Literal["silu", "gelu"] = "silu"):
        super().__init__(d_model, mixer, norm=norm, eps=eps)
        self.norm2 = make_norm(norm, d_model, eps)
        try:
            self.mlp = GatedMLP(d_model, expand=mlp_expand, activation=mlp_activation)
        except lrnnx.ConfigError as exc:  # name the block's options, not the inner layer's
            raise lrnnx.ConfigError(f"block {self.name!r}: bad mlp_expand={mlp_expand!r} or "
                                    f"mlp_activation={mlp_activation!r}: {exc}") from exc

    def _post(self, h: torch.Tensor) -> torch.Tensor:
        # _mix is the MLP's math without input checks: it serves both (B, L, d) and step's
        # (B, d), and x was validated on entry to the block
        return h + self.mlp._mix(self.norm2(h))


@lrnnx.hookimpl
def register_blocks(register):
    register(PreNorm)
    register(PreNormMLP)
