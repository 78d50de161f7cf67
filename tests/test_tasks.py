"""The built-in training tasks: shapes, determinism, sharding, and that each generator encodes
its task (the target is computable from the inputs by the rule the task states)."""

from __future__ import annotations

import math

import pytest
import torch

from lrnnx.errors import ConfigError, InputError
from lrnnx.train.tasks import IGNORE, TASKS, make_task, metric_value, shard
from lrnnx.train.tasks.base import loss_and_stats, make_generator
from lrnnx.train.tasks.digits import sklearn_available

SMALL = {
    "mqar": {"vocab_size": 32, "seq_len": 24, "num_kv_pairs": 4},
    "selective_copy": {"vocab_size": 10, "seq_len": 20, "num_tokens": 5},
    "induction": {"vocab_size": 10, "seq_len": 20},
    "char_lm": {"max_bytes": 50_000, "seq_len": 32},
    "signals": {"seq_len": 32},
    "digits": {},
    "event_stream": {"min_events": 8, "max_events": 16},
}


def _task(name, seed=0, **kw):
    if name == "digits" and not sklearn_available():
        pytest.skip("scikit-learn is not installed (optional dependency of the digits task)")
    return make_task({"name": name, **SMALL[name], **kw}, seed=seed)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_batches_are_deterministic_and_well_formed(name):
    task = _task(name)
    a, b = task.batch("train", 3, 6), _task(name).batch("train", 3, 6)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    other = task.batch("train", 4, 6)
    assert not torch.equal(a["inputs"], other["inputs"])        # another index, another batch
    assert not torch.equal(a["inputs"], _task(name, seed=1).batch("train", 3, 6)["inputs"])
    x, y = a["inputs"], a["targets"]
    assert x.shape[0] == y.shape[0] == 6
    keys = task.model_keys()
    if task.kind == "lm":
        assert x.dtype == y.dtype == torch.long and x.shape == y.shape
        assert 0 <= int(x.min()) and int(x.max()) < keys["vocab_size"]
        scored = y[y != IGNORE]
        assert scored.numel() > 0 and int(scored.max()) < keys["vocab_size"]
    else:
        assert x.is_floating_point() and x.shape[-1] == keys["d_input"]
        assert y.shape == (6,) and 0 <= int(y.min()) and int(y.max()) < keys["num_classes"]
    ev = task.batch("eval", 0, 6)
    assert not torch.equal(ev["inputs"][:, :4], x[:, :4]) or name == "digits"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_shards_partition_the_global_batch(name):
    batch = _task(name).batch("train", 1, 7)
    for world in (1, 2, 3):
        parts = [shard(batch, r, world) for r in range(world)]
        for k in batch:
            assert torch.equal(torch.cat([p[k] for p in parts]), batch[k])


def test_mqar_targets_are_the_values_of_the_queried_keys():
    task = _task("mqar")
    b = task.batch("train", 0, 16)
    n = task.options.num_kv_pairs
    for x, y in zip(b["inputs"], b["targets"]):
        pairs = dict(zip(x[:2 * n:2].tolist(), x[1:2 * n:2].tolist()))
        assert len(pairs) == n and all(k < 16 <= v for k, v in pairs.items())
        pos = (y != IGNORE).nonzero()[:, 0]
        assert len(pos) == n and (pos >= 2 * n).all() and ((pos - 2 * n) % 2 == 0).all()
        assert sorted(x[pos].tolist()) == sorted(pairs)            # every key queried once
        assert all(pairs[int(x[p])] == int(y[p]) for p in pos)
        assert int((x[2 * n:] != 0).sum()) == n                     # only queries after context


def test_selective_copy_targets_are_the_data_tokens_in_order():
    task = _task("selective_copy")
    b = task.batch("train", 0, 16)
    L, n = task.options.seq_len, task.options.num_tokens
    for x, y in zip(b["inputs"], b["targets"]):
        data = x[:L][x[:L] != 0]
        assert len(data) == n and (data >= 2).all()
        assert (x[L:] == 1).all()
        assert torch.equal(y[L:], data) and (y[:L] == IGNORE).all()


def test_induction_target_follows_the_first_trigger():
    task = _task("induction")
    b = task.batch("train", 0, 32)
    for x, y in zip(b["inputs"], b["targets"]):
        trig = (x == 0).nonzero()[:, 0].tolist()
        assert len(trig) == 2 and trig[1] == len(x) - 1 and trig[0] <= len(x) - 3
        assert int(y[-1]) == int(x[trig[0] + 1]) and (y[:-1] == IGNORE).all()


def test_char_lm_reads_bytes_and_shifts_targets(tmp_path):
    text = "hello lrnnx " * 200
    (tmp_path / "a.txt").write_text(text)
    task = make_task({"name": "char_lm", "paths": [str(tmp_path)], "pattern": "*.txt",
                      "seq_len": 16, "eval_fraction": 0.1})
    b = task.batch("train", 0, 4)
    assert torch.equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    assert task.decode(b["inputs"][0].tolist()) in text * 2
    assert task.encode("hé") == list("hé".encode())
    assert task.describe().startswith("char_lm(1 files")
    with pytest.raises(ConfigError, match="no file, folder or glob"):
        make_task({"name": "char_lm", "paths": [str(tmp_path / "missing*.txt")]})
    with pytest.raises(ConfigError, match="too few"):
        make_task({"name": "char_lm", "paths": [str(tmp_path)], "pattern": "*.txt",
                   "seq_len": 5000})


def test_char_lm_default_corpus_is_the_stdlib():
    import os

    task = _task("char_lm")
    assert any(f.endswith(os.sep + "os.py") for f in task.files) or len(task.files) > 10
    assert not any("site-packages" in f for f in task.files)


def test_signals_classes_are_distinguishable_shapes():
    task = _task("signals", noise_std=0.0)
    b = task.batch("train", 0, 64)
    x, y = b["inputs"][..., 0], b["targets"]
    square = x[y == 1]
    # a square wave takes two values per row (+-amplitude)
    assert all(len(torch.unique(r.abs().round(decimals=4))) == 1 for r in square)


def test_event_stream_has_positive_timesteps_and_lengths():
    task = _task("event_stream")
    b = task.batch("train", 0, 32)
    ts, lens, x = b["timesteps"], b["lengths"], b["inputs"]
    assert ts.shape == x.shape[:2] and (ts > 0).all()
    assert int(lens.min()) >= 8 and int(lens.max()) <= 16
    for row, n in zip(x[..., 0], lens):
        assert (row[n:] == 0).all()
    freq = task.frequencies()
    assert math.isclose(float(freq[0]), 0.02, rel_tol=1e-6)
    assert math.isclose(float(freq[-1]), 0.3, rel_tol=1e-5)
    feat = _task("event_stream", dt_as_feature=True).batch("train", 0, 4)
    assert "timesteps" not in feat and feat["inputs"].shape[-1] == 2


def test_digits_eval_is_one_ordered_pass():
    task = _task("digits")
    n = len(task.splits["eval"][1])
    nb = task.num_eval_batches(100)
    rows = sum(task.batch("eval", i, 100)["targets"].shape[0] for i in range(nb))
    assert rows == n and task.model_keys() == {"num_classes": 10, "d_input": 1}


def test_digits_without_sklearn_is_a_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_sklearn(name, *a, **kw):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ConfigError, match="needs scikit-learn"):
        make_task({"name": "digits"})


@pytest.mark.parametrize("section, match", [
    ({"name": "mqr"}, "Did you mean 'mqar'"),
    ({"name": "mqar", "num_kv_pair": 3}, "Did you mean 'num_kv_pairs'"),
    ({"name": "mqar", "num_kv_pairs": 40, "vocab_size": 32}, "needs vocab_size >= 82"),
    ({"name": "mqar", "seq_len": 20, "num_kv_pairs": 8}, "needs seq_len >= 32"),
    ({"name": "selective_copy", "num_tokens": 9, "seq_len": 4}, "do not fit"),
    ({"name": "signals", "classes": ["sine", "sqare"]}, "distinct waveforms"),
    ({"name": "event_stream", "min_events": 9, "max_events": 3}, "max_events=3 < min_events"),
])
def test_bad_task_options_are_config_errors(section, match):
    with pytest.raises(ConfigError, match=match):
        make_task(section)


def test_bad_split_and_prompt():
    task = _task("mqar")
    with pytest.raises(InputError, match="split must be one of"):
        task.batch("test", 0, 2)
    with pytest.raises(InputError, match="token ids separated by spaces"):
        task.encode("hello")
    with pytest.raises(InputError, match=r"in \[0, 32\)"):
        task.encode("3 40")
    assert task.encode("3, 17 5") == [3, 17, 5] and task.decode([3, 4]) == "3 4"


def test_generators_differ_by_split_and_index():
    draws = {(s, i): int(torch.randint(0, 2**62, (1,), generator=make_generator(0, s, i)))
             for s in ("train", "eval") for i in range(3)}
    assert len(set(draws.values())) == len(draws)


def test_loss_and_stats_on_tokens_and_classes():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]])
    targets = torch.tensor([[0, 0, IGNORE]])
    loss, stats = loss_and_stats(logits, targets, normalizer=2.0)
    ce = -torch.log_softmax(logits[0, :2], -1)[[0, 1], [0, 0]].sum()
    assert torch.allclose(loss, ce / 2)
    assert stats.tolist() == pytest.approx([float(ce), 2.0, 1.0])
    assert metric_value("accuracy", stats) == 0.5
    assert metric_value("bpc", stats) == pytest.approx(float(ce) / 2 / math.log(2))
    _, s2 = loss_and_stats(torch.tensor([[0.0, 5.0], [5.0, 0.0]]), torch.tensor([1, 1]), 1.0)
    assert s2[1:].tolist() == [2.0, 1.0]
