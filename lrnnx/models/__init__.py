"""Model containers built by :func:`lrnnx.build_model`: ``Backbone`` and ``LM``."""

from __future__ import annotations

from .backbone import LM, Backbone

__all__ = ["Backbone", "LM"]
