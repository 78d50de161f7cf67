"""Built-in plugin: linear time-invariant (LTI) state-space layers with two compute modes.

==========  ===========================================  ======================================
name        paper                                        module
==========  ===========================================  ======================================
s4          Gu, Goel & Re 2022 (S4), DPLR + HiPPO         :mod:`lrnnx_plugins.lti.s4`
s5          Smith et al. 2023 (S5)                        :mod:`lrnnx_plugins.lti.s5`
centaurus   Centaurus                                     :mod:`lrnnx_plugins.lti.centaurus`
linoss      Rusch & Rus 2025 (LinOSS)                     :mod:`lrnnx_plugins.lti.linoss`
==========  ===========================================  ======================================

(``s4d`` and ``lru`` live in :mod:`lrnnx_plugins.ssm` and share this plugin's convolution
mode, :mod:`lrnnx_plugins.lti.conv`.)  Every layer takes ``mode="scan" | "conv" | "auto"``.

The layer modules are imported inside the hook, so ``import lrnnx_plugins.lti.conv`` stays
cheap; a module of the table that is not part of this installation (its file is absent) is
skipped -- a module that exists but fails to import raises, so the registry reports it.
"""

from __future__ import annotations

import importlib
import importlib.util

import lrnnx

#: submodules that define layers; each registers the ``lrnnx.Layer`` subclasses it defines
#: (``cls.__module__`` is the submodule) with a non-empty ``name``, in definition order
LAYER_MODULES = ("s4", "s5", "centaurus", "linoss")


def layer_classes(module) -> list[type]:
    """The layer classes a submodule defines (not those it imports)."""
    return [obj for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, lrnnx.Layer)
            and obj.__module__ == module.__name__ and getattr(obj, "name", "")
            and not obj.__name__.startswith("_")]


@lrnnx.hookimpl
def register_layers(register):
    for mod in LAYER_MODULES:
        if importlib.util.find_spec(f"{__name__}.{mod}") is None:
            continue
        for cls in layer_classes(importlib.import_module(f".{mod}", __name__)):
            register(cls)
