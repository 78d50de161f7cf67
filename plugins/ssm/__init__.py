"""Built-in plugin: diagonal state-space layers.

* ``ssm`` (:class:`SSM`): the generic layer = parameterization x discretizer x scan backend.
* ``lru`` (:class:`LRU`): Linear Recurrent Unit, Orvieto et al. 2023.
* ``s4d`` (:class:`S4D`): diagonal S4, Gu et al. 2022.

The parameterizations and discretizers they compose live in the plugins
``lrnnx_plugins.parameterizations`` and ``lrnnx_plugins.discretizers``.
"""

from __future__ import annotations

import lrnnx

from .lru import LRU
from .s4d import S4D
from .ssm import SSM

__all__ = ["SSM", "LRU", "S4D"]


@lrnnx.hookimpl
def register_layers(register):
    for cls in (SSM, LRU, S4D):
        register(cls)
