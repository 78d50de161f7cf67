"""``lrnnx.bench``: benchmarks of lrnnx's scans and layers, for users and for the GPU report.

Two entry points:

* ``lrnnx bench ops|SPEC [...]`` (:mod:`.cli`): time ``diag_scan`` / ``selective_scan`` or any
  layer/model spec, forward and forward+backward, per scan backend, over sequence lengths, on CPU
  (``time.perf_counter``) or GPU (CUDA events); rich table, JSON, PNG plot.
* ``python benchmarks/gpu_scan.py [--quick] [--only PATTERN] [--out DIR]`` (:mod:`.suite`): issue
  #6's table -- lrnnx vs accelerated_scan, fla (hgrn) and mamba_ssm on one GPU, with ratios to the
  reference peer, % of device-to-device copy bandwidth (:mod:`.workloads` has the byte model),
  targets and pass/fail; writes ``results.json`` and ``RESULTS-gpu.md``.

Modules: :mod:`.timing` (median of repeats after warm-up, L2-defeating input rotation, copy
bandwidth), :mod:`.workloads` (the table, byte models, inputs), :mod:`.impls` (lrnnx and peer
adapters), :mod:`.peers` (import-guarded peers), :mod:`.suite` (the GPU run), :mod:`.report`.

``import lrnnx.bench`` does not import torch (the CLI imports it here for ``add_commands``).

Example::

    >>> from lrnnx.bench import measure            # doctest: +SKIP
    >>> measure(lambda x: x.cumsum(1), [torch.randn(8, 4096)], "cpu").ms
"""
from __future__ import annotations

import importlib

from .cli import add_commands

_LAZY = {
    "measure": "timing", "Measurement": "timing", "copy_bandwidth": "timing",
    "n_copies": "timing", "Workload": "workloads",
    "ideal_bytes": "workloads", "SuiteOptions": "suite", "run_suite": "suite",
    "run_bench": "cli",
}

__all__ = ["add_commands", *_LAZY]


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'lrnnx.bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value
