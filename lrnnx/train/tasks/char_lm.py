"""Character-level language modelling on local text files (no download).

The corpus is the bytes of ``paths`` (files, directories searched recursively for
``pattern``, or glob patterns), in sorted order, truncated to ``max_bytes``; by default the
Python standard library's own sources (``sysconfig.get_paths()["stdlib"]``, falling back to the
folder of ``os.__file__``; site-packages excluded), which every Python install has.  The last
``eval_fraction`` of the bytes is the eval split.  A batch is ``batch_size`` windows of
``seq_len + 1`` bytes at random offsets: inputs are the first ``seq_len`` bytes, targets the
next-byte shifts, every position scored.

Tokens are bytes (vocab 256), so any text and any prompt encodes, and no vocabulary has to be
stored with a checkpoint.  Metric: bits per character,
:math:`\\text{bpc} = \\frac{1}{N \\ln 2}\\sum_t -\\ln p(x_{t+1} \\mid x_{\\le t})` (a character
is a byte; the stdlib sources are ASCII but for a few bytes).

Example::

    task = CharLM.from_config({"paths": ["README.md"], "seq_len": 64})
    b = task.batch("train", 0, 4)          # inputs (4, 64) byte ids, targets (4, 64)
"""

from __future__ import annotations

import glob
import os
import sysconfig

import torch
from pydantic import Field

from lrnnx.errors import ConfigError

from .base import Task, TaskOptions

__all__ = ["CharLM", "default_corpus_dir"]

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def default_corpus_dir() -> str:
    """Folder of the Python standard library sources."""
    path = sysconfig.get_paths().get("stdlib")
    if path and os.path.isdir(path):
        return path
    return os.path.dirname(os.__file__)


class CharLMOptions(TaskOptions):
    paths: list[str] | None = Field(None, description="files, folders or globs; None: stdlib")
    pattern: str = Field("*.py", description="file pattern inside folders")
    max_bytes: int = Field(2_000_000, gt=0)
    seq_len: int = Field(128, ge=1)
    eval_fraction: float = Field(0.05, gt=0, lt=1)


class CharLM(Task):
    name = "char_lm"
    kind = "lm"
    metric = "bpc"
    higher_is_better = False
    Options = CharLMOptions
    suggested_spec = "s4d*2 + attn"

    def __init__(self, options, seed=0):
        super().__init__(options, seed)
        self.files = self._files()
        data = self._read(self.files)
        n_eval = max(int(len(data) * options.eval_fraction), options.seq_len + 1)
        if len(data) - n_eval < options.seq_len + 1:
            raise ConfigError(f"task 'char_lm': the corpus has {len(data):,} bytes, too few for "
                              f"train and eval windows of seq_len + 1 = {options.seq_len + 1} "
                              f"bytes each; add text (task.paths) or lower task.seq_len.")
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self.splits = {"train": buf[:-n_eval], "eval": buf[-n_eval:]}

    def _files(self) -> list[str]:
        o = self.options
        roots = o.paths if o.paths is not None else [default_corpus_dir()]
        files: list[str] = []
        for root in roots:
            root = os.path.expanduser(root)
            if os.path.isfile(root):
                files.append(root)
            elif os.path.isdir(root):
                for dirpath, dirnames, filenames in os.walk(root):
                    dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
                    files.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                                 if glob.fnmatch.fnmatch(f, o.pattern))
            else:
                matched = sorted(p for p in glob.glob(root, recursive=True) if os.path.isfile(p))
                if not matched:
                    raise ConfigError(f"task 'char_lm': path {root!r} is no file, folder or glob "
                                      f"that matches a file; fix task.paths (or drop it to use "
                                      f"the Python standard library sources).")
                files.extend(matched)
        if not files:
            raise ConfigError(f"task 'char_lm': no file matching {o.pattern!r} under "
                              f"{roots!r}; fix task.paths or task.pattern.")
        return files

    def _read(self, files: list[str]) -> bytes:
        chunks, total = [], 0
        for path in files:
            with open(path, "rb") as fh:
                chunk = fh.read(self.options.max_bytes - total)
            chunks.append(chunk)
            total += len(chunk)
            if total >= self.options.max_bytes:
                break
        return b"".join(chunks)

    def model_keys(self):
        return {"vocab_size": 256}

    def _batch(self, split, index, batch_size, g):
        data, L = self.splits[split], self.options.seq_len
        offsets = torch.randint(0, len(data) - L, (batch_size,), generator=g)
        windows = data[offsets[:, None] + torch.arange(L + 1)].long()
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:].contiguous()}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def describe(self) -> str:
        n = sum(len(s) for s in self.splits.values())
        where = "stdlib" if self.options.paths is None else f"{len(self.files)} files"
        return f"char_lm({where}, {n:,} bytes, seq_len={self.options.seq_len})"
