"""Built-in plugin: parameterizations of the diagonal SSM layer (``ssm``).

=============  =========  ========  ==========  ==========================================
name           structure  discrete  selective   paper
=============  =========  ========  ==========  ==========================================
s4d_lin        siso       no        no          Gu et al. 2022 (S4D), A_n = -1/2 + i pi n
s4d_inv        siso       no        no          Gu et al. 2022 (S4D), inverse-law imag parts
s4d_real       siso       no        no          Gu et al. 2022 (S4D), A_n = -(n + 1), real
hippo_n        mimo       no        no          Smith et al. 2023 (S5), diagonalized HiPPO-N
lru_ring       mimo       yes       no          Orvieto et al. 2023 (LRU), ring init
selective      siso       no        yes         Gu & Dao 2023 (Mamba), input-dependent
=============  =========  ========  ==========  ==========================================

The protocol every parameterization follows (constructor, class attributes, what ``forward``
returns and with which shapes) is documented in :mod:`lrnnx_plugins.parameterizations.base`;
:class:`SSMParams` and :class:`SSMParameterization` are exported here for plugin authors.
"""

from __future__ import annotations

import lrnnx

from .base import SSMParameterization, SSMParams
from .hippo import HippoN, hippo_legs, hippo_n_eig
from .lru import LRURing
from .s4d import S4DInv, S4DLin, S4DReal
from .selective import Selective

__all__ = ["SSMParams", "SSMParameterization", "S4DLin", "S4DInv", "S4DReal", "HippoN",
           "LRURing", "Selective", "hippo_legs", "hippo_n_eig", "PARAMETERIZATIONS"]

PARAMETERIZATIONS = (S4DLin, S4DInv, S4DReal, HippoN, LRURing, Selective)


@lrnnx.hookimpl
def register_parameterizations(register):
    for cls in PARAMETERIZATIONS:
        register(cls)
