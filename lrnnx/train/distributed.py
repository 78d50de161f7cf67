"""Multi-process training: process group from torchrun's environment, DDP / FSDP2 wrapping,
all-reduces of metric sums.

Run the trainer under ``torchrun --nproc_per_node N -m lrnnx.cli train CONFIG ...`` (or the
``lrnnx`` script): torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` /
``MASTER_PORT``; :func:`setup` joins the group (NCCL on CUDA, gloo on CPU).  Each rank builds
the same model from the same seed, draws the same global batch and trains on its rows
(:func:`lrnnx.train.tasks.shard`); DDP all-reduces the gradients.  ``trainer.strategy``:

* ``auto``: ``ddp`` with more than one process, ``none`` otherwise;
* ``ddp``: ``torch.nn.parallel.DistributedDataParallel`` (every rank holds all weights);
* ``fsdp``: FSDP2 ``torch.distributed.fsdp.fully_shard`` on each residual block, then on the
  whole model (weights, gradients and optimizer state sharded over ranks; for models that do
  not fit one device).

Rank 0 alone logs, plots and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lrnnx.errors import ConfigError

__all__ = ["DistInfo", "setup", "wrap_model", "unwrap", "all_reduce_sum", "barrier",
           "cleanup", "resolve_device"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"trainer.device {name!r} is not a torch device ({exc}); use auto, "
                          f"cpu or cuda.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("trainer.device is cuda but CUDA is not available; use "
                              "trainer.device=cpu (or auto).")
        if device.index is None:
            device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def setup(device_hint: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment variables (a no-op in a
    single process, or when a group already exists)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", "0")), False)
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed.")
    use_cuda = torch.cuda.is_available() and device_hint != "cpu"
    backend = "nccl" if use_cuda else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, True)


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The residual blocks of an LM / Backbone / Classifier (the FSDP2 sharding units)."""
    from lrnnx.registry.interfaces import Block

    return [m for m in model.modules() if isinstance(m, Block)]


def wrap_model(model: nn.Module, strategy: str, info: DistInfo, device: torch.device):
    """``model`` wrapped for ``strategy`` (see the module doc); the model is on ``device``."""
    if strategy == "auto":
        strategy = "ddp" if info.distributed else "none"
    if strategy == "none":
        if info.distributed:
            raise ConfigError(f"trainer.strategy=none with {info.world_size} processes would "
                              f"train {info.world_size} unsynchronized copies; use ddp or "
                              f"fsdp (or auto).")
        return model
    if not info.distributed:
        raise ConfigError(f"trainer.strategy={strategy} needs several processes: launch with "
                          f"torchrun --nproc_per_node N (or use strategy=auto).")
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if strategy == "fsdp":
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError as exc:
            raise ConfigError(f"trainer.strategy=fsdp needs FSDP2 (torch >= 2.6): {exc}") \
                from None
        for block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model
    raise ConfigError(f"unknown trainer.strategy {strategy!r}; use auto, none, ddp or fsdp.")


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards in place: nothing to unwrap)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) \
        else model


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``t`` over ranks (``t`` itself in one process).  float64 sums go through the
    wire as float64, so metric sums are exact integers where they should be."""
    if info.distributed:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Leave the process group if :func:`setup` created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
