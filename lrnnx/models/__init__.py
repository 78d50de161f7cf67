"""Model containers and architectures.

* :class:`Backbone`: residual blocks + final norm ((B, L, d) -> (B, L, d));
  :func:`lrnnx.build_model` without ``vocab_size``.
* :class:`LM` (= :class:`LRNNLM`): embedding -> backbone -> tied head, with ``generate``;
  :func:`lrnnx.build_model` with ``vocab_size``.
* :class:`Classifier` (:func:`build_classifier`): hierarchical, length- and event-aware sequence
  classifier with pooling between stages.
* :class:`UNet` (:func:`build_unet`): causal U-Net for waveform-to-waveform mapping.

All are buildable from configs with ``model.kind`` (:func:`lrnnx.build_model_from_config`).
"""

from __future__ import annotations

from .backbone import Backbone
from .classifier import Classifier, build_classifier, pool_sequence
from .lm import LM, LRNNLM
from .unet import UNet, build_unet

__all__ = ["Backbone", "LM", "LRNNLM", "Classifier", "build_classifier", "pool_sequence",
           "UNet", "build_unet"]
