"""The parameterization protocol of the diagonal SSM layer (``ssm``), and shared init helpers.

A *parameterization* owns the learnable parameters of a diagonal state-space model and says how
they map to the matrices of

    continuous:  h'(t) = A h(t) + B x(t)          discrete:  h_t = A_bar_t h_{t-1} + B_bar_t x_t
                 y(t)  = Re(C h(t)) (+ D x(t))               y_t = s * Re(C h_t) + D x_t

(``D`` is owned by the layer; ``s = 2`` for conjugate-symmetric parameterizations, else 1).

Protocol (subclass :class:`SSMParameterization`, itself a ``lrnnx.Parameterization``)
-------------------------------------------------------------------------------------
* constructor ``(d_model: int, d_state: int, complex: bool | None = None, **options)``;
  ``complex=None`` picks the family's default.  Options are typed (validated like layer options)
  and can be given in specs: ``ssm(param=lru_ring(r_min=0.9))``.
* class attributes

  - ``structure``: ``"siso"`` -- every channel h has its own ``d_state`` states (S4D, Mamba);
    ``"mimo"`` -- one state vector of ``P = d_state`` states shared by all channels (S5, LRU).
  - ``discrete``: True when ``A`` already is the discrete transition ``A_bar`` (LRU's lambda);
    the layer's discretizer is then not used.
  - ``selective``: True when ``dt``, ``B``, ``C`` depend on the input (Mamba's S6);
    ``forward`` then takes ``x``.
* instance attributes ``d_model``, ``d_state`` and ``complex`` (the dtype kind of A/B/C and
  therefore of the recurrent state).
* ``forward(x=None) -> SSMParams`` with these shapes (H = d_model, N = P = d_state):

  =============  ==============  ==============  ==============  =====================
  structure      A               B               C               dt
  =============  ==============  ==============  ==============  =====================
  siso           (H, N)          (H, N)          (H, N)          (H,) or (H, N)
  mimo           (P,)            (P, H)          (H, P)          (P,)
  selective      (H, N)          (Bt, L, N)      (Bt, L, N)      (Bt, L, H)
  =============  ==============  ==============  ==============  =====================

  ``dt`` is a real positive step size (None when ``discrete``); ``x`` is (Bt, L, H) for a
  selective parameterization and ignored otherwise.  Real parameterizations return real
  tensors; complex ones may mix (e.g. a real ``dt``).

Storage conventions of the built-ins (not part of the protocol, but recommended): complex
parameters are stored as real tensors with a trailing dim of 2 (``torch.view_as_real``) so
``Module.to(dtype)``, optimizers and weight decay see plain real tensors; the real part of a
continuous ``A`` is stored as ``log(-Re A)`` so ``Re A < 0`` (stability) holds for any value of
the parameter.

Example (a third-party parameterization: a learned real decay per channel and state)::

    class Decay(SSMParameterization):
        name = "my_decay"
        structure = "siso"
        default_complex = False

        def __init__(self, d_model: int, d_state: int, complex: bool | None = None):
            super().__init__(d_model, d_state, complex)
            self.log_neg_a = nn.Parameter(torch.zeros(d_model, d_state))
            self.B = nn.Parameter(torch.ones(d_model, d_state))
            self.C = nn.Parameter(torch.randn(d_model, d_state))
            self.log_dt = nn.Parameter(torch.full((d_model,), math.log(0.1)))

        def forward(self, x=None):
            return SSMParams(A=-self.log_neg_a.exp(), B=self.B, C=self.C, dt=self.log_dt.exp())

    lrnnx.register("parameterization", Decay)
    layer = lrnnx.build_layer("ssm(param=my_decay, disc=bilinear)", d_model=16)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

import lrnnx
from lrnnx.errors import ConfigError

STRUCTURES = ("siso", "mimo")


@dataclass
class SSMParams:
    """What a parameterization's ``forward`` returns (shapes: see the module docstring).

    Attributes:
        A: continuous diagonal state matrix (or ``A_bar`` when the parameterization is
            ``discrete``); real or complex.
        B: input matrix (SISO (H, N), MIMO (P, H), selective (Bt, L, N)).
        C: output matrix (SISO (H, N), MIMO (H, P), selective (Bt, L, N)).
        dt: real positive step sizes (SISO (H,) or (H, N), MIMO (P,), selective (Bt, L, H));
            None for a discrete parameterization.
        gamma: optional real input normalization multiplying ``B_bar`` (LRU's gamma, (P,)),
            broadcastable to the state shape.
        log_A: discrete parameterizations only: the exponent with ``A = exp(log_A)``.  Event
            streams need ``A ** t = exp(t * log_A)`` for a non-unit gap ``t``; without ``log_A``
            the principal logarithm of ``A`` is used (which wraps phases beyond pi).
        conj_sym: the parameters keep one state of every complex-conjugate pair of a real
            system; the output is then ``2 Re(C h)``.
    """

    A: Tensor
    B: Tensor
    C: Tensor
    dt: Tensor | None = None
    gamma: Tensor | None = None
    log_A: Tensor | None = None
    conj_sym: bool = False


class SSMParameterization(lrnnx.Parameterization):
    """Base class of the built-in parameterizations (see the module docstring for the protocol).

    Subclasses set ``name``, ``structure``, ``discrete``, ``selective``, ``default_complex``,
    call ``super().__init__(d_model, d_state, complex)`` and implement ``forward``.
    """

    structure: ClassVar[str] = "siso"
    discrete: ClassVar[bool] = False
    selective: ClassVar[bool] = False
    default_complex: ClassVar[bool] = True

    def __init__(self, d_model: int, d_state: int, complex: bool | None = None) -> None:
        super().__init__()
        where = f"parameterization {self.name!r}"
        for opt, v in (("d_model", d_model), ("d_state", d_state)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{where}: {opt} must be a positive int, got {v!r}.")
        if self.structure not in STRUCTURES:
            raise TypeError(f"{type(self).__name__}.structure must be one of {STRUCTURES}, "
                            f"got {self.structure!r}")
        self.d_model, self.d_state = d_model, d_state
        self.complex = self.default_complex if complex is None else bool(complex)

    def forward(self, x: Tensor | None = None) -> SSMParams:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, complex={self.complex}"


# ------------------------------------------------------------------------------ init helpers

def check_positive(where: str, **values: float) -> None:
    """ConfigError unless every value is a finite number > 0."""
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v <= 0:
            raise ConfigError(f"{where}: option {k!r} must be a positive number, got {v!r}.")


def check_dt_range(where: str, dt_min: float, dt_max: float) -> None:
    check_positive(where, dt_min=dt_min, dt_max=dt_max)
    if dt_min > dt_max:
        raise ConfigError(f"{where}: dt_min={dt_min} must be <= dt_max={dt_max}; swap them.")


def log_uniform_dt(n: int, dt_min: float, dt_max: float) -> Tensor:
    """``log dt ~ U[log dt_min, log dt_max]`` (S4/S4D/S5 step-size init), shape (n,)."""
    u = torch.rand(n)
    return u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)


def complex_param(z: Tensor) -> torch.nn.Parameter:
    """Store a complex tensor as a real (..., 2) parameter (see ``as_complex``)."""
    return torch.nn.Parameter(torch.view_as_real(z.to(torch.complex64)).clone())


def as_complex(p: Tensor) -> Tensor:
    """The complex view of a real (..., 2) parameter; differentiable."""
    return torch.view_as_complex(p if p.stride(-1) == 1 else p.contiguous())


def lecun_normal(*shape: int, fan_in: int) -> Tensor:
    """LeCun normal init: a normal truncated at 2 sigma, rescaled to variance ``1 / fan_in``.

    (JAX's ``lecun_normal``, used by S5: std = sqrt(1/fan_in) / 0.8796 before truncation.)
    """
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    t = torch.empty(*shape)
    torch.nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)
    return t
