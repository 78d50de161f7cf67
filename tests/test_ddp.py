"""Distributed training on CPU: ``torchrun --nproc_per_node 2 -m lrnnx train`` with gloo (DDP
and FSDP2) gives the single-process loss curve on the same global batch, and rank 0 writes one
checkpoint (full tensors, gathered from the shards under FSDP2) that a single process resumes
from on the same curve.

Tolerance: fp32, relative 1e-5.  The runs are not bit-identical because each rank sums its own
half of the batch and the gradients are then averaged over ranks (another summation order);
measured differences are ~1e-7 relative.  Eval batches of one sequence leave rank 1 with an
empty shard, which must still join the (sharded) forward without being scored.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist

from lrnnx.train import load_checkpoint, train
from lrnnx.train.logging import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["task.vocab_size=16", "task.seq_len=16", "task.num_kv_pairs=2",
        "model.spec=s4d(d_state=4) + attn", "model.d_model=16", "trainer.batch_size=6",
        "trainer.max_steps=4", "trainer.log_every=1", "trainer.eval_every=2",
        "trainer.eval_batches=3", "trainer.eval_batch_size=1", "optim.warmup_steps=2",
        "trainer.progress=false", "trainer.plot=false", "trainer.num_threads=1",
        "trainer.device=cpu", "trainer.checkpoint_every=2"]

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out_dir, extra) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    shim = os.path.join(ROOT, "plugins_shim")
    paths = [ROOT] + ([shim] if os.path.isdir(shim) else []) + \
        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1", COLUMNS="200")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "lrnnx", "train", *BASE, *extra, f"trainer.out_dir={out_dir}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                          cwd=str(out_dir.parent))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _curve(records):
    return [(r["step"], r["split"], r["loss"]) for r in records]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    res = train(None, BASE + [f"trainer.out_dir={out}"], quiet=True)
    return out, read_metrics(str(out / "metrics.jsonl")), res


def _same_curve(multi, single_recs):
    a, b = _curve(multi), _curve(single_recs)
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for (step, split, la), (_, _, lb) in zip(a, b):
        assert abs(la - lb) <= 1e-5 * abs(lb), (step, split, la, lb)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, single, strategy):
    s_out, s_recs, s_res = single
    out = tmp_path / "run"
    proc = _torchrun(out, [f"trainer.strategy={strategy}"])
    assert proc.stdout.count("training summary") == 1              # rank 0 alone reports
    assert "2 processes" in proc.stdout
    _same_curve(read_metrics(str(out / "metrics.jsonl")), s_recs)
    assert sorted(os.listdir(out / "checkpoints")) == ["step_000002", "step_000004"]
    multi_ck, single_ck = load_checkpoint(str(out)), load_checkpoint(str(s_out))
    assert multi_ck.trainer_state["world_size"] == 2
    for name, t in single_ck.weights.items():
        assert (multi_ck.weights[name] - t).abs().max() <= 1e-5 * max(t.abs().max(), 1e-3)
    for pname, st in single_ck.optimizer_state()["state"].items():
        other = multi_ck.optimizer_state()["state"][pname]
        assert float(other["step"]) == float(st["step"]) == 4.0
    # the (gathered, unsharded) checkpoint of step 2 resumes in one process on the same curve
    resumed = train(None, [f"trainer.out_dir={tmp_path / 'resumed'}", "trainer.strategy=auto"],
                    resume=str(out / "checkpoints" / "step_000002"), quiet=True)
    _same_curve(resumed.history, [r for r in s_recs if r["step"] > 2])
