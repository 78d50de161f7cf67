"""Built-in plugin ``lrnnx_plugins.mamba``: the Mamba family of selective SSM layers.

* ``mamba``: Mamba / S6 (Gu & Dao 2023, https://arxiv.org/abs/2312.00752), :mod:`.mamba`.
* ``mamba2``: Mamba-2 (Dao & Gu 2024, https://arxiv.org/abs/2405.21060), :mod:`.mamba2`, with
  the chunked SSD algorithm in :mod:`.ssd`.

Example::

    import lrnnx, torch
    model = lrnnx.build_model("mamba*2 + mamba2(headdim=16)", d_model=64)
    y = model(torch.randn(2, 100, 64))
"""

from __future__ import annotations

import lrnnx

from .mamba import Mamba
from .mamba2 import Mamba2

__all__ = ["Mamba", "Mamba2"]


@lrnnx.hookimpl
def register_layers(register):
    register(Mamba)
    register(Mamba2)
