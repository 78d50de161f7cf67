"""Built-in plugin: the discretizers ``zoh``, ``bilinear``, ``euler``, ``mamba`` and ``dirac``.

A discretizer turns the continuous diagonal system ``h'(t) = A h(t) + B u(t)`` into the
recurrence ``h_t = A_bar h_{t-1} + B_bar u_t`` for a step size ``dt``.  Each one here is a thin,
registered name for ONE formula of :func:`lrnnx.ops.discretize` (which every scan backend and the
single-step decoders also call), so a layer, a backend and a decoder can never disagree on the
math.  With ``x = dt * A`` (elementwise):

=========  ===========================  =================================  ==================
name       A_bar                        B_scale (B_bar = B_scale * B)      reference
=========  ===========================  =================================  ==================
zoh        exp(x)                       (A_bar - 1) / A  (-> dt as A -> 0)  S4, S4D, S5
bilinear   (1 + x/2) / (1 - x/2)        dt / (1 - x/2)                     S4 (Tustin), S5
euler      exp(x)                       dt                                 (= mamba)
mamba      exp(x)                       dt                                 Mamba (S6)
dirac      exp(x)                       1                                  event streams
=========  ===========================  =================================  ==================

References: Gu et al. 2022 (S4, https://arxiv.org/abs/2111.00396) and Gu et al. 2022 (S4D,
https://arxiv.org/abs/2206.11893) for zoh/bilinear; Gu & Dao 2023 (Mamba,
https://arxiv.org/abs/2312.00752) for the ``exp`` transition with the first-order input scale;
``dirac`` treats each input as an impulse (integrated without the ``dt`` factor), as in
event-based S5 (Schöne et al. 2024, https://arxiv.org/abs/2404.18508).

Event / asynchronous streams: the layer calls a discretizer with ``dt_eff = dt * timesteps``
(:func:`lrnnx.ops.effective_dt`), so a token that arrives after twice the usual gap decays the
state twice as much; the discretizers themselves are step-size agnostic.

Example::

    >>> disc = lrnnx.get_discretizer("bilinear")
    >>> A_bar, B_scale = disc(torch.tensor([-0.5]), torch.tensor([0.1]))
    >>> A_bar                                         # (1 - 0.025) / (1 + 0.025)
    tensor([0.9512])
"""

from __future__ import annotations

from typing import ClassVar

import torch

import lrnnx
from lrnnx.errors import InputError, InputTypeError


class KernelDiscretizer(lrnnx.Discretizer):
    """A discretizer that is one method of :func:`lrnnx.ops.discretize`.

    ``method`` names that formula; the SSM layer also hands it to
    :func:`lrnnx.ops.selective_scan` (``discretization=method``) so the fused selective path
    discretizes exactly as this object does.  Third-party discretizers need no ``method``: the
    layer then calls them and runs the generic diagonal scan.
    """

    method: ClassVar[str] = ""

    def __call__(self, A: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A_bar, B_scale)`` of the broadcast shape of ``A`` and ``dt``.

        Args:
            A: continuous diagonal state matrix, real or complex (Re A < 0 for stability).
            dt: real positive step sizes, broadcastable against ``A``.
        """
        where = f"discretizer {self.name!r}"
        for arg, t in (("A", A), ("dt", dt)):
            if not isinstance(t, torch.Tensor):
                raise InputTypeError(f"{where}: {arg} must be a torch.Tensor, got "
                                     f"{type(t).__name__}; convert it with torch.as_tensor.")
        if dt.is_complex() or not dt.is_floating_point():
            raise InputTypeError(f"{where}: dt must be a real floating-point tensor, got dtype "
                                 f"{dt.dtype}; pass the (positive) step sizes as floats.")
        if not (A.is_floating_point() or A.is_complex()):
            raise InputTypeError(f"{where}: A must be a floating-point or complex tensor, got "
                                 f"dtype {A.dtype}; convert it with A.float().")
        try:
            torch.broadcast_shapes(A.shape, dt.shape)
        except RuntimeError:
            raise InputError(f"{where}: A of shape {tuple(A.shape)} and dt of shape "
                             f"{tuple(dt.shape)} do not broadcast; give dt one value per "
                             f"channel (e.g. dt[:, None] against A of shape (H, N)).") from None
        return lrnnx.ops.discretize(self.method, A, dt)

    def __repr__(self) -> str:
        return f"<discretizer {self.name}>"


class ZOH(KernelDiscretizer):
    """Zero-order hold: the input is constant over each step (exact for piecewise-constant u).

    ``A_bar = exp(dt A)``, ``B_bar = (exp(dt A) - 1) / A * B`` (-> ``dt B`` as ``A -> 0``,
    evaluated without cancellation).  S4/S4D/S5 default.
    """

    name = "zoh"
    method = "zoh"


class Bilinear(KernelDiscretizer):
    """Bilinear (Tustin / trapezoidal) transform, A-stable and frequency-warping.

    ``A_bar = (1 + dt A / 2) / (1 - dt A / 2)``, ``B_bar = dt / (1 - dt A / 2) * B``.
    """

    name = "bilinear"
    method = "bilinear"


class Euler(KernelDiscretizer):
    """Exponential Euler: exact decay, first-order input (``A_bar = exp(dt A)``, ``B_bar = dt B``).

    Kept as its own name for configs that think of it as Euler; the formula is Mamba's.
    """

    name = "euler"
    method = "euler"


class Mamba(KernelDiscretizer):
    """Mamba's simplified ZOH: ``A_bar = exp(dt A)``, ``B_bar = dt B`` (Gu & Dao 2023).

    ZOH for the transition, a first-order (Euler) input term, as in Mamba's reference kernels.
    """

    name = "mamba"
    method = "mamba"


class Dirac(KernelDiscretizer):
    """Impulse input: ``A_bar = exp(dt A)``, ``B_bar = B`` (inputs are events, not rates)."""

    name = "dirac"
    method = "dirac"


#: every built-in discretizer instance, by name
DISCRETIZERS: dict[str, KernelDiscretizer] = {
    d.name: d for d in (ZOH(), Bilinear(), Euler(), Mamba(), Dirac())
}


@lrnnx.hookimpl
def register_discretizers(register):
    for disc in DISCRETIZERS.values():
        register(disc)
