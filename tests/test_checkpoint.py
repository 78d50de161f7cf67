"""Checkpoints: safetensors + YAML + JSON round trips, exact resume, and that nothing is ever
unpickled (a malicious pickle next to or instead of the weights is refused, never run)."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
import yaml

from lrnnx.cli import main
from lrnnx.errors import ConfigError
from lrnnx.train import load_checkpoint, resolve_checkpoint, train
from lrnnx.train.checkpoint import MODEL_FILE

TINY = ["task.vocab_size=16", "task.seq_len=16", "task.num_kv_pairs=2",
        "model.spec=s4d(d_state=4)*2 + attn", "model.d_model=16", "trainer.batch_size=8",
        "trainer.log_every=1", "trainer.eval_every=0", "trainer.eval_batches=2",
        "optim.warmup_steps=2", "trainer.progress=false", "trainer.plot=false"]


def _losses(result):
    return [r["loss"] for r in result.history if r["split"] == "train"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """8 steps straight, with a checkpoint at step 4 and at the end."""
    out = tmp_path_factory.mktemp("ck") / "run"
    res = train(None, TINY + ["trainer.max_steps=8", "trainer.checkpoint_every=4",
                              f"trainer.out_dir={out}"], quiet=True)
    return out, res


def test_resume_continues_the_same_loss_curve(run, tmp_path):
    out, straight = run
    half = out / "checkpoints" / "step_000004"
    resumed = train(None, [f"trainer.out_dir={tmp_path / 'r'}"], resume=str(half), quiet=True)
    assert len(_losses(straight)) == 8 and len(_losses(resumed)) == 4
    assert _losses(resumed) == _losses(straight)[4:]              # bit-identical on CPU
    assert resumed.eval["loss"] == straight.eval["loss"]


def test_resume_into_the_run_folder_keeps_one_metrics_file(run, tmp_path):
    import shutil

    out, straight = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "checkpoints" / "step_000008")
    with open(copy / "metrics.jsonl", "a") as fh:              # a line past the resume point
        fh.write(json.dumps({"step": 7, "split": "train", "loss": -1.0}) + "\n")
    train(None, [], resume=str(copy / "checkpoints" / "step_000004"), quiet=True)
    assert (copy / "checkpoints" / "step_000008" / MODEL_FILE).is_file()
    recs = [json.loads(x) for x in open(copy / "metrics.jsonl")]
    steps = [r["step"] for r in recs if r["split"] == "train"]
    assert steps == list(range(1, 9))
    assert [r["loss"] for r in recs if r["split"] == "train"] == _losses(straight)


def test_files_and_resolved_config(run):
    out, res = run
    assert res.checkpoint == str(out / "checkpoints" / "step_000008")
    files = sorted(os.listdir(res.checkpoint))
    assert files == ["config.yaml", "model.safetensors", "optimizer.safetensors",
                     "trainer_state.json"]
    cfg = yaml.safe_load(open(os.path.join(res.checkpoint, "config.yaml")))
    assert cfg["model"]["spec"] == [{"name": "s4d", "kwargs": {"d_state": 4}},
                                    {"name": "s4d", "kwargs": {"d_state": 4}},
                                    {"name": "attn", "kwargs": {}}]
    assert cfg["model"]["vocab_size"] == 16 and cfg["trainer"]["out_dir"] == str(out)
    state = json.load(open(os.path.join(res.checkpoint, "trainer_state.json")))
    assert state["step"] == 8 and state["seed"] == 0 and "cpu" in state["rng"]
    assert state["metrics"]["accuracy"] == res.eval["accuracy"]


def test_weights_round_trip_and_tied_tensor_stored_once(run):
    from safetensors import safe_open

    from lrnnx.train.modeling import load_for_inference

    out, res = run
    with safe_open(os.path.join(res.checkpoint, MODEL_FILE), "pt") as fh:
        keys = set(fh.keys())
        meta = json.loads(fh.metadata()["aliases"])
    assert meta == {"head.weight": "embedding.weight"} and "head.weight" not in keys
    cfg, task, model, ckpt = load_for_inference(str(out))
    assert model.head.weight is model.embedding.weight               # still tied
    for name, t in model.state_dict().items():
        assert torch.equal(t, ckpt.weights[name]), name
    osd = ckpt.optimizer_state()
    assert {g["name"] for g in osd["param_groups"]} == {"decay", "no_decay", "ssm"}
    assert set(osd["state"]["embedding.weight"]) == {"step", "exp_avg", "exp_avg_sq"}


def test_evaluate_reproduces_the_final_eval(run, capsys):
    from lrnnx.train import evaluate_model
    from lrnnx.train.modeling import load_for_inference

    out, res = run
    cfg, task, model, _ = load_for_inference(str(out))
    again = evaluate_model(model, task, 8, 2, torch.device("cpu"))
    assert again["loss"] == pytest.approx(res.eval["loss"], rel=1e-6)
    assert again["accuracy"] == res.eval["accuracy"]
    assert main(["evaluate", str(out / "checkpoints" / "step_000008" / MODEL_FILE)]) == 0
    assert f"{res.eval['accuracy']:.4f}" in capsys.readouterr().out


def test_resolve_picks_the_latest_step_and_refuses_finished_runs(run):
    out, _ = run
    assert resolve_checkpoint(str(out)).endswith("step_000008")
    with pytest.raises(ConfigError, match="nothing to do; raise trainer.max_steps"):
        train(None, [], resume=str(out), quiet=True)


class _Payload:
    """Unpickling this creates a file: the proof that a pickle was executed."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def no_unpickling(monkeypatch):
    """Make every unpickling entry point fail loudly while the test runs."""
    def boom(*a, **kw):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)


def test_a_malicious_pickle_is_refused_and_never_executed(tmp_path, no_unpickling):
    sentinel = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    with open(evil / "model.pt", "wb") as fh:
        pickle.dump(_Payload(str(sentinel)), fh)
    with pytest.raises(ConfigError, match="refusing to load.*model.pt.*pickle"):
        load_checkpoint(str(evil))
    with pytest.raises(ConfigError, match="refusing to load.*pickle-format file"):
        load_checkpoint(str(evil / "model.pt"))
    assert main(["evaluate", str(evil)]) == 2
    assert main(["generate", str(evil / "model.pt"), "--prompt", "1"]) == 2
    assert main(["train", "--resume", str(evil)]) == 2
    assert not sentinel.exists()


def test_a_pickle_beside_real_weights_is_ignored(run, tmp_path, no_unpickling):
    import shutil

    out, res = run
    ck = tmp_path / "ck"
    shutil.copytree(res.checkpoint, ck)
    sentinel = tmp_path / "pwned"
    for name in ("optimizer.pt", "extra.bin", "rng.pkl"):
        with open(ck / name, "wb") as fh:
            pickle.dump(_Payload(str(sentinel)), fh)
    ckpt = load_checkpoint(str(ck))
    assert ckpt.optimizer_state() is not None and ckpt.trainer_state["step"] == 8
    assert main(["evaluate", str(ck)]) == 0
    assert not sentinel.exists()


def test_incomplete_checkpoints_are_clear_errors(run, tmp_path):
    import shutil

    out, res = run
    ck = tmp_path / "ck"
    shutil.copytree(res.checkpoint, ck)
    os.remove(ck / "config.yaml")
    with pytest.raises(ConfigError, match="lacks config.yaml"):
        load_checkpoint(str(ck))
    with pytest.raises(ConfigError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ConfigError, match="not a safetensors file"):
        load_checkpoint(str(tmp_path / "notes.txt"))
    bad = tmp_path / "bad"
    shutil.copytree(res.checkpoint, bad)
    (bad / MODEL_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="cannot read"):
        load_checkpoint(str(bad))


def test_weights_that_do_not_fit_the_config(run, tmp_path):
    import shutil

    from lrnnx.train.modeling import load_for_inference

    out, res = run
    ck = tmp_path / "ck"
    shutil.copytree(res.checkpoint, ck)
    cfg = yaml.safe_load(open(ck / "config.yaml"))
    cfg["model"]["d_model"] = 24
    yaml.safe_dump(cfg, open(ck / "config.yaml", "w"))
    with pytest.raises(ConfigError, match="do not fit the model"):
        load_for_inference(str(ck))
