"""Hook specifications of the lrnnx plugin system (pluggy project ``"lrnnx"``).

A plugin is a module (or object) exposed under the ``lrnnx`` entry-point group that implements any
of these hooks with the ``lrnnx.hookimpl`` marker.  Each hook receives one ``register`` callback;
calling it adds a component to the registry, attributed to the plugin and its distribution.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "lrnnx"
ENTRY_POINT_GROUP = "lrnnx"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_layers(register):
    """Register sequence-mixing layers: ``register(LayerSubclass)``."""


@hookspec
def register_parameterizations(register):
    """Register SSM parameterizations: ``register(ParameterizationSubclass)``."""


@hookspec
def register_discretizers(register):
    """Register discretizers: ``register(discretizer_instance_or_class)``."""


@hookspec
def register_scan_backends(register):
    """Register scan backends: ``register(ScanBackendSubclass_or_instance)``."""


@hookspec
def register_blocks(register):
    """Register residual blocks wrapping a mixer: ``register(BlockSubclass)``."""


#: registry kind -> name of the hook that fills it
HOOK_FOR_KIND = {
    "layer": "register_layers",
    "parameterization": "register_parameterizations",
    "discretizer": "register_discretizers",
    "scan_backend": "register_scan_backends",
    "block": "register_blocks",
}
KINDS = tuple(HOOK_FOR_KIND)
