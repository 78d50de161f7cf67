"""Built-in plugin ``lrnnx_recurrent``: gated linear recurrences.

=========  ==========================================================================  ========
layer      model                                                                       paper
=========  ==========================================================================  ========
rglru      Real-Gated Linear Recurrent Unit (bare, width d_model)                      2402.19427
hawk       Griffin/Hawk recurrent block: GeLU gate x (conv1d -> RG-LRU), out linear    2402.19427
s7         S7: selective, stably reparameterized diagonal SSM                          2410.03464
mingru     minGRU                                                                      2410.01201
minlstm    minLSTM                                                                     2410.01201
=========  ==========================================================================  ========

All run their recurrence through :func:`lrnnx.ops.diag_scan` (option ``scan`` picks the
backend), decode with ``step`` and accept packed varlen input.  Griffin is ``hawk`` mixed with
local attention in a spec, e.g. ``lrnnx.build_model("hawk*2 + attn(window=1024)", d_model=512)``.
The layer modules are imported when the registry asks for them, not at package import.
"""

from __future__ import annotations

import lrnnx


@lrnnx.hookimpl
def register_layers(register):
    from .minrnn import MinGRU, MinLSTM
    from .rglru import RGLRU, Hawk
    from .s7 import S7

    for cls in (RGLRU, Hawk, S7, MinGRU, MinLSTM):
        register(cls)
