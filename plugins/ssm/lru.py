"""The ``lru`` layer: Linear Recurrent Unit (Orvieto et al. 2023) on the generic ``ssm`` layer."""

from __future__ import annotations

import math
from typing import Literal

from lrnnx.registry.spec import Component

from .ssm import SSM


class LRU(SSM):
    r"""Linear Recurrent Unit: Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for
    Long Sequences", https://arxiv.org/abs/2303.06349.

    .. math::

        h_t = \operatorname{diag}(\lambda)\, h_{t-1} + \gamma \odot (B x_t), \qquad
        y_t = \mathrm{Re}(C h_t) + D \odot x_t, \qquad
        \lambda = \exp(-e^{\nu} + i\, e^{\theta})

    = ``ssm(param=lru_ring(r_min, r_max, max_phase), d_state)``: a MIMO state of ``d_state``
    complex modes shared by the channels, already discrete (no discretizer), with the ring init
    ``|lambda| ~ U`` on ``[r_min, r_max]``, phase in ``[0, max_phase]``, the normalization
    ``gamma = sqrt(1 - |lambda|^2)`` and Glorot-scaled complex ``B`` (P, H), ``C`` (H, P)
    (details: :mod:`lrnnx_plugins.parameterizations.lru`).  The paper's nonlinear MLP / GLU
    after the recurrence is not part of the layer: stack it with blocks (``lru + mlp``).

    Options (defaults: the paper's appendix code): ``d_state`` (P, default 256; the paper tunes
    it per task), ``r_min`` 0, ``r_max`` 1, ``max_phase`` 2 pi (long-range tasks use e.g.
    ``r_min=0.9, r_max=0.999, max_phase=pi/10``), ``complex`` (True; False gives a real
    LRU with lambda in [r_min, r_max]), ``scan``, ``bidirectional`` (see ``ssm``), ``mode``:
    ``"scan"`` (the recurrence), ``"conv"`` (the LTI system as a convolution: ``u = gamma B x``
    is convolved per mode with ``lambda^l`` by FFT and read out, ``y = Re(C h)``; memory like a
    scan, :mod:`lrnnx_plugins.lti.conv`) or ``"auto"`` (default: the scan, which measured
    faster than the conv at every length on CPU; ``timesteps`` always scan).

    State: ``{"h": (B, d_state)}`` complex.  Event streams: a gap of t steps decays the state
    by ``lambda ** t`` (``timesteps``).

    Shapes: x (B, L, d_model) -> y (B, L, d_model); step: x_t (B, d_model) -> y_t (B, d_model).

    Example::

        lru = lrnnx.build_layer("lru(d_state=64, r_min=0.9, r_max=0.999)", d_model=32)
        y = lru(torch.randn(2, 100, 32))
    """

    name = "lru"
    test_kwargs = {"d_state": 4}

    def __init__(self, d_model: int, d_state: int = 256, r_min: float = 0.0, r_max: float = 1.0,
                 max_phase: float = 2 * math.pi, complex: bool = True, scan: str = "auto",
                 bidirectional: bool = False,
                 mode: Literal["scan", "conv", "auto"] = "auto"):
        param = Component("lru_ring", (("complex", complex), ("r_min", r_min),
                                       ("r_max", r_max), ("max_phase", max_phase)))
        # disc is not used: lru_ring is discrete
        super().__init__(d_model, d_state, param=param, disc="zoh", scan=scan,
                         bidirectional=bidirectional, mode=mode)
        self.r_min, self.r_max, self.max_phase = r_min, r_max, max_phase

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, r_min={self.r_min}, "
                f"r_max={self.r_max}, max_phase={self.max_phase:.4g}, scan={self.scan!r}, "
                f"mode={self.mode!r}, bidirectional={self.bidirectional}")
