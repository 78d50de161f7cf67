"""One step of the diagonal recurrence (recurrent decoding)."""
from __future__ import annotations

from torch import Tensor


def diag_step(a_t: Tensor, b_t: Tensor, h: Tensor) -> Tensor:
    """``h_new = a_t * h + b_t`` (elementwise, broadcasting).

    The single formula of the recurrence; the reference scan loops over it.
    """
    return a_t * h + b_t
