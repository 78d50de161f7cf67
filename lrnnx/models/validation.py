"""Small option checks shared by the model architectures (ConfigError naming model + option)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from lrnnx.errors import ConfigError, close_matches

__all__ = ["check_positive_int", "check_choice"]


def check_positive_int(where: str, name: str, value: Any) -> None:
    """ConfigError unless ``value`` is an int >= 1 (bools are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{where}: {name} must be a positive int, got {value!r}.")


def check_choice(where: str, name: str, value: Any, choices: Sequence[str]) -> None:
    """ConfigError unless ``value`` is one of ``choices`` (with a did-you-mean)."""
    if value not in choices:
        sugg = close_matches(str(value), choices)
        did = f" Did you mean {sugg[0]!r}?" if sugg else ""
        raise ConfigError(f"{where}: {name} must be one of {', '.join(choices)}, got "
                          f"{value!r}.{did}")
