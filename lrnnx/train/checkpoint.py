"""Checkpoints that load without unpickling: safetensors + YAML + JSON.

A checkpoint is a folder ``<run>/checkpoints/step_<N>/`` holding

* ``model.safetensors``: the full (unsharded) model weights by parameter name; a tied tensor
  (LM head = embedding) is stored once, its other names in the metadata ``aliases``;
* ``optimizer.safetensors``: the optimizer state tensors as ``"<param name>/<key>"`` (AdamW:
  ``step``, ``exp_avg``, ``exp_avg_sq``), the param groups (hyper-parameters, member names) as
  JSON in the metadata;
* ``config.yaml``: the resolved training config, the model spec expanded to its layer list
  (:func:`lrnnx.registry.spec.spec_to_config`), so the checkpoint rebuilds its model by itself;
* ``trainer_state.json``: step, seed, world size, versions, last metrics and the torch RNG
  states (base64), which a resumed run restores.

Reading uses ``safetensors.torch.load_file``, ``OmegaConf.load`` (a YAML safe loader) and
``json`` only: a ``.pt`` / ``.bin`` / ``.pkl`` file is never opened, since unpickling runs
arbitrary code (:func:`resolve_checkpoint` refuses such paths with a ConfigError).  Model and
optimizer states go through ``torch.distributed.checkpoint.state_dict``, which gathers full
tensors from DDP and FSDP2-sharded models alike; every rank calls :func:`save_checkpoint`,
rank 0 writes.

Example::

    path = save_checkpoint(run_dir / "checkpoints", step, model, optimizer, config, state)
    ckpt = load_checkpoint(path)            # Checkpoint(path, config, trainer_state, weights)
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from lrnnx.errors import ConfigError

__all__ = ["save_checkpoint", "load_checkpoint", "resolve_checkpoint", "Checkpoint",
           "restore_training_state", "rng_state", "set_rng_state", "PICKLE_SUFFIXES"]

MODEL_FILE, OPTIM_FILE = "model.safetensors", "optimizer.safetensors"
CONFIG_FILE, STATE_FILE = "config.yaml", "trainer_state.json"
#: weight files in pickle formats, which are refused (never opened)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar", ".npy", ".npz")
FORMAT = "lrnnx-train-1"


def _require_safetensors():
    try:
        import safetensors.torch  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"checkpoints need the safetensors package ({exc}); install it: "
                          f"pip install safetensors") from None
    return safetensors


def _sd_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


# ------------------------------------------------------------------------------- RNG state

def rng_state() -> dict[str, str]:
    """The torch CPU (and CUDA) RNG states, base64 for JSON."""
    out = {"cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return out


def set_rng_state(state: dict[str, str]) -> None:
    def tensor(text):
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    if "cpu" in state:
        torch.set_rng_state(tensor(state["cpu"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensor(state["cuda"]))


# ------------------------------------------------------------------------------- saving

def _dedupe(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors stored once: shared storage (tied weights) becomes an alias of its first name."""
    out, aliases, first = {}, {}, {}
    for name, t in sd.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
               tuple(t.stride()), t.dtype) if t.numel() else None
        if key is not None and key in first:
            aliases[name] = first[key]
            continue
        if key is not None:
            first[key] = name
        out[name] = t.detach().contiguous()
    return out, aliases


def _flatten_optimizer(osd: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors, scalars = {}, {}
    for pname, st in osd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pname}/{k}"] = v.detach().contiguous()
            else:
                scalars[f"{pname}/{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in osd["param_groups"]]
    meta = {"format": FORMAT, "param_groups": json.dumps(groups), "scalars": json.dumps(scalars)}
    return tensors, meta


def save_checkpoint(directory: str, step: int, model, optimizer, config: dict,
                    trainer_state: dict, rank: int = 0) -> str:
    """Write ``directory/step_<step>/`` (see the module doc); returns its path.

    Every rank must call it (gathering sharded states is a collective); rank 0 writes.  Files
    are written to a temporary folder first and renamed, so a crash leaves no half checkpoint.
    """
    st = _require_safetensors()
    from omegaconf import OmegaConf
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, \
        get_optimizer_state_dict

    msd = get_model_state_dict(model, options=_sd_options(cpu_offload=True))
    osd = get_optimizer_state_dict(model, optimizer, options=_sd_options(cpu_offload=True)) \
        if optimizer is not None else None
    path = os.path.join(directory, f"step_{step:06d}")
    if rank != 0:
        return path
    tmp = path + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    weights, aliases = _dedupe(msd)
    st.torch.save_file(weights, os.path.join(tmp, MODEL_FILE),
                       metadata={"format": FORMAT, "aliases": json.dumps(aliases)})
    if osd is not None:
        tensors, meta = _flatten_optimizer(osd)
        st.torch.save_file(tensors, os.path.join(tmp, OPTIM_FILE), metadata=meta)
    OmegaConf.save(OmegaConf.create(config), os.path.join(tmp, CONFIG_FILE))
    with open(os.path.join(tmp, STATE_FILE), "w") as fh:
        json.dump({**trainer_state, "step": step, "format": FORMAT}, fh, indent=1)
    if os.path.isdir(path):
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------- loading

def _refuse(path: str, what: str) -> ConfigError:
    kinds = ", ".join(PICKLE_SUFFIXES[:5])
    return ConfigError(f"refusing to load {path!r}: {what}. lrnnx checkpoints store weights "
                       f"as safetensors ({MODEL_FILE}); pickle-based files ({kinds}, ...) "
                       f"can execute arbitrary code when loaded, so they are never "
                       f"opened. Convert trusted weights yourself (torch.load(..., "
                       f"weights_only=True) then safetensors.torch.save_file) if you must.")


def resolve_checkpoint(path: str) -> str:
    """The checkpoint folder for ``path``: a checkpoint folder, its ``model.safetensors``, or
    a run folder (its latest ``checkpoints/step_*``).  Pickle files are refused."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"checkpoint {path!r} does not exist; pass a run folder "
                          f"(runs/<name>), a checkpoint folder (runs/<name>/checkpoints/"
                          f"step_N) or its {MODEL_FILE}.")
    if os.path.isfile(path):
        if path.endswith(".safetensors"):
            return resolve_checkpoint(os.path.dirname(path) or ".")
        if path.lower().endswith(PICKLE_SUFFIXES):
            raise _refuse(path, "it is a pickle-format file")
        raise _refuse(path, "it is not a safetensors file or checkpoint folder")
    if os.path.isfile(os.path.join(path, MODEL_FILE)):
        return path
    ckdir = os.path.join(path, "checkpoints")
    if os.path.isdir(ckdir):
        steps = sorted(d for d in os.listdir(ckdir) if d.startswith("step_")
                       and not d.endswith(".tmp")
                       and os.path.isfile(os.path.join(ckdir, d, MODEL_FILE)))
        if steps:
            return os.path.join(ckdir, steps[-1])
    pickles = sorted(f for f in os.listdir(path) if f.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise _refuse(os.path.join(path, pickles[0]), f"the folder has no {MODEL_FILE}, only "
                      f"pickle-format weights ({', '.join(pickles)})")
    raise ConfigError(f"{path!r} is no checkpoint: it has no {MODEL_FILE} and no "
                      f"checkpoints/step_*/ inside.")


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``config`` (dict), ``trainer_state`` (dict), ``weights`` (full
    state dict, aliases restored) and the folder ``path``; optimizer state is read lazily."""

    path: str
    config: dict
    trainer_state: dict
    weights: dict[str, torch.Tensor] = field(repr=False)

    def optimizer_state(self) -> dict | None:
        """The optimizer state dict (FQN-keyed) or None when the checkpoint has none."""
        file = os.path.join(self.path, OPTIM_FILE)
        if not os.path.isfile(file):
            return None
        st = _require_safetensors()
        tensors = st.torch.load_file(file)
        with st.safe_open(file, framework="pt") as fh:
            meta = fh.metadata() or {}
        state: dict[str, dict[str, Any]] = {}
        for key, t in tensors.items():
            pname, k = key.rsplit("/", 1)
            state.setdefault(pname, {})[k] = t
        for key, v in json.loads(meta.get("scalars", "{}")).items():
            pname, k = key.rsplit("/", 1)
            state.setdefault(pname, {})[k] = v
        groups = json.loads(meta["param_groups"])
        for g in groups:
            if isinstance(g.get("betas"), list):
                g["betas"] = tuple(g["betas"])
        return {"state": state, "param_groups": groups}


def load_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint (see :func:`resolve_checkpoint` for the accepted paths)."""
    st = _require_safetensors()
    from omegaconf import OmegaConf

    path = resolve_checkpoint(path)
    file = os.path.join(path, MODEL_FILE)
    try:
        weights = st.torch.load_file(file)
        with st.safe_open(file, framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ConfigError(f"cannot read {file!r}: {exc}") from exc
    for alias, name in json.loads(meta.get("aliases", "{}")).items():
        weights[alias] = weights[name]
    for name in (CONFIG_FILE, STATE_FILE):
        if not os.path.isfile(os.path.join(path, name)):
            raise ConfigError(f"checkpoint {path!r} lacks {name}; it was not written by "
                              f"lrnnx train (or was copied partially).")
    config = OmegaConf.to_container(OmegaConf.load(os.path.join(path, CONFIG_FILE)))
    with open(os.path.join(path, STATE_FILE)) as fh:
        state = json.load(fh)
    return Checkpoint(path, config, state, weights)


def load_weights(model, weights: dict[str, torch.Tensor]) -> None:
    """Load full ``weights`` into ``model`` (plain, DDP or FSDP2-sharded), strictly."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    try:
        set_model_state_dict(model, weights, options=_sd_options(strict=True))
    except RuntimeError as exc:
        raise ConfigError(f"the checkpoint's weights do not fit the model built from its "
                          f"config: {exc}") from exc


def restore_training_state(ckpt: Checkpoint, model, optimizer) -> int:
    """Weights, optimizer state and RNG of ``ckpt`` into a freshly built run; returns the
    step to continue after."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    load_weights(model, ckpt.weights)
    osd = ckpt.optimizer_state()
    if osd is None:
        raise ConfigError(f"checkpoint {ckpt.path!r} has no {OPTIM_FILE}, so training cannot "
                          f"resume from it (evaluate and generate still work).")
    set_optimizer_state_dict(model, optimizer, osd, options=_sd_options())
    set_rng_state(ckpt.trainer_state.get("rng", {}))
    return int(ckpt.trainer_state["step"])
