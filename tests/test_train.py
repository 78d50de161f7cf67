"""``lrnnx train / evaluate / generate``: config validation, optimizer groups, schedule, the
loop's outputs (JSONL, plot, table) and the command line.  The main job (the default MQAR run,
>= 90 % in <= 5 minutes on CPU) is the slow test at the end."""

from __future__ import annotations

import json
import math
import os
import time

import pytest
import torch

import lrnnx
from lrnnx.cli import main
from lrnnx.errors import ConfigError
from lrnnx.train import SSM_PARAM_SUFFIXES, load_config, lr_factor, param_groups, train
from lrnnx.train.config import OptimSection
from lrnnx.train.logging import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["task.vocab_size=16", "task.seq_len=16", "task.num_kv_pairs=2",
        "model.spec=s4d(d_state=4) + attn", "model.d_model=16", "trainer.batch_size=8",
        "trainer.max_steps=6", "trainer.log_every=2", "trainer.eval_every=3",
        "trainer.eval_batches=1", "optim.warmup_steps=2", "trainer.progress=false"]


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")


# ----------------------------------------------------------------------------------- config

def test_defaults_are_the_mqar_hybrid():
    cfg = load_config()
    assert cfg.task.name == "mqar" and cfg.model.spec == "s4d(d_state=16) + attn"
    assert cfg.trainer.max_steps == 1000 and cfg.optim.ssm_lr == 1e-3
    same = load_config(os.path.join(ROOT, "configs", "mqar.yaml"))
    for section in ("model", "optim", "trainer"):
        assert getattr(same, section).model_dump() == getattr(cfg, section).model_dump()
    from lrnnx.train import make_task

    assert make_task(same.task).options == make_task(cfg.task).options


def test_overrides_and_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: {name: induction}\ntrainer: {max_steps: 7}\n")
    cfg = load_config(str(path), ["trainer.max_steps=9", "model.spec=mamba*2 + attn",
                                  "optim.betas=[0.8,0.9]", "model.n_heads=2"])
    assert cfg.task.name == "induction" and cfg.trainer.max_steps == 9
    assert cfg.model.spec == "mamba*2 + attn" and cfg.optim.betas == (0.8, 0.9)
    assert cfg.model.model_extra == {"n_heads": 2}


@pytest.mark.parametrize("overrides, match", [
    (["trainer.max_step=5"], r"unknown key 'trainer.max_step'.*Did you mean 'trainer.max_steps'"),
    (["optim.ssm_l=1"], r"Did you mean 'optim.ssm_lr'"),
    (["traner.max_steps=5"], r"unknown section 'traner'. Did you mean 'trainer'"),
    (["trainer.max_steps"], r"must look like section.key=value"),
    (["trainer.max_steps=-1"], r"trainer.max_steps: Input should be greater than 0"),
    (["trainer.precision=fp16"], r"trainer.precision"),
    (["trainer=3"], r"section 'trainer' must be a mapping"),
    (["task.pattern=*.py"], r"quote values with YAML syntax characters"),
])
def test_bad_config_is_a_config_error_naming_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(str(bad))
    top = tmp_path / "top.yaml"
    top.write_text("optimizer: {lr: 1}\n")
    with pytest.raises(ConfigError, match="unknown key 'optimizer'.*Did you mean 'optim'"):
        load_config(str(top))


def test_model_section_errors_reach_the_user():
    with pytest.raises(ConfigError, match="conflicts with task 'mqar'"):
        train(None, TINY + ["model.vocab_size=99"], quiet=True)
    with pytest.raises(ConfigError, match="n_head"):        # a global no layer accepts
        train(None, TINY + ["model.n_head=2"], quiet=True)
    with pytest.raises(ConfigError, match="stages is for classification tasks"):
        train(None, TINY + ["model.stages=[attn]"], quiet=True)
    with pytest.raises(lrnnx.UnknownComponentError, match="mamab"):
        train(None, TINY + ["model.spec=mamab + attn"], quiet=True)


# ------------------------------------------------------------------------------------ optim

def test_param_groups_split_ssm_dynamics_norms_and_weights():
    model = lrnnx.build_model("s4d(d_state=4) + lru(d_state=4) + attn", d_model=8,
                              vocab_size=10)
    groups = {g["name"]: g for g in param_groups(model, OptimSection(lr=1e-2, ssm_lr=1e-3,
                                                                     weight_decay=0.2))}
    names = {k: [n for n, _ in g["params"]] for k, g in groups.items()}
    last = {k: {n.rsplit(".", 1)[-1] for n in v} for k, v in names.items()}
    assert last["ssm"] == {"log_neg_A_re", "A_im", "log_dt", "nu_log", "theta_log",
                           "gamma_log"}
    assert groups["ssm"]["lr"] == 1e-3 and groups["ssm"]["weight_decay"] == 0
    assert "embedding.weight" in names["no_decay"]                    # tied with the head
    assert {"D", "weight"} <= last["no_decay"]                          # skips, norm gains
    assert all(n.endswith(("qkv.weight", "out.weight", ".B", ".C")) for n in names["decay"])
    assert groups["decay"]["weight_decay"] == 0.2 and groups["no_decay"]["weight_decay"] == 0
    every = [p for g in groups.values() for _, p in g["params"]]
    assert len(every) == len({id(p) for p in every}) == len(list(model.parameters()))
    assert {"A_log", "dt_bias", "Lambda", "log_dt"} <= set(SSM_PARAM_SUFFIXES)


def test_ssm_lr_none_means_lr():
    model = lrnnx.build_model("s4d(d_state=4)", d_model=8)
    groups = {g["name"]: g for g in param_groups(model, OptimSection(lr=5e-3, ssm_lr=None))}
    assert groups["ssm"]["lr"] == 5e-3


def test_lr_schedule_warmup_cosine_linear_constant():
    cfg = OptimSection(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(5, 110, cfg) == 0.5 and lr_factor(10, 110, cfg) == 1.0
    assert lr_factor(60, 110, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, 110, cfg) == pytest.approx(0.1)
    lin = OptimSection(warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    assert lr_factor(25, 100, lin) == pytest.approx(0.75)
    assert lr_factor(50, 100, OptimSection(warmup_steps=0, schedule="constant")) == 1.0


# ------------------------------------------------------------------------------------- loop

def test_training_lowers_the_loss_and_writes_metrics_plot_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    res = train(None, TINY + ["trainer.max_steps=40", "trainer.log_every=5",
                              "trainer.eval_every=20", "optim.lr=1e-2",
                              f"trainer.out_dir={out}"], quiet=True)
    recs = read_metrics(str(out / "metrics.jsonl"))
    train_losses = [r["loss"] for r in recs if r["split"] == "train"]
    assert len(train_losses) == 8 and train_losses[-1] < train_losses[0] - 0.3
    evals = [r for r in recs if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [20, 40] and "accuracy" in evals[-1]
    first = recs[0]
    assert {"step", "loss", "accuracy", "lr", "grad_norm", "tokens_per_s",
            "elapsed_s"} <= set(first) and first["tokens_per_s"] > 0
    assert res.eval == evals[-1]
    assert os.path.isfile(out / "metrics.png") == (res.plot is not None)
    assert res.checkpoint and os.path.isfile(os.path.join(res.checkpoint, "model.safetensors"))
    assert res.n_params == sum(p.numel() for p in lrnnx.build_model(
        "s4d(d_state=4) + attn", d_model=16, vocab_size=16).parameters())


def test_no_matplotlib_means_no_plot_and_a_reason(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_mpl(name, *a, **kw):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    from lrnnx.train.logging import plot_metrics

    ok, why = plot_metrics(str(tmp_path / "m.jsonl"), str(tmp_path / "m.png"), "accuracy")
    assert not ok and "pip install matplotlib" in why
    res = train(None, TINY + [f"trainer.out_dir={tmp_path / 'r'}", "trainer.save=false"],
                quiet=True)
    assert res.plot is None and not os.path.exists(tmp_path / "r" / "metrics.png")


def test_progress_bar_and_summary_table_are_printed(tmp_path):
    from rich.console import Console

    console = Console(record=True, width=200, force_terminal=False)
    train(None, TINY + ["trainer.progress=true", "trainer.save=false"], console=console)
    text = console.export_text()
    assert "training summary" in text and "eval accuracy" in text and "tok/s" in text
    assert "s4d(d_state=4) + attn" in text


@pytest.mark.parametrize("task, spec", [
    ("selective_copy", "attn"), ("induction", "attn"), ("signals", "s4d(d_state=4)"),
    ("event_stream", "s4d(d_state=4)"), ("char_lm", "s4d(d_state=4)"),
])
def test_every_task_trains(task, spec):
    extra = {"selective_copy": ["task.seq_len=12", "task.num_tokens=3"],
             "induction": ["task.seq_len=12"], "signals": ["task.seq_len=16"],
             "event_stream": ["task.min_events=4", "task.max_events=8",
                              "model.pool_factor=2"],
             "char_lm": ["task.max_bytes=20000", "task.seq_len=16"]}[task]
    res = train(None, [f"task.name={task}", f"model.spec={spec}", "model.d_model=8",
                       "trainer.batch_size=4", "trainer.max_steps=2", "trainer.eval_batches=1",
                       "trainer.save=false", "trainer.progress=false", *extra], quiet=True)
    metric = {"char_lm": "bpc"}.get(task, "accuracy")
    assert res.metric == metric and math.isfinite(res.eval[metric])


def test_event_stream_uses_the_timesteps_path(monkeypatch):
    """The gaps reach the layers: scaling them changes the logits of a time-aware model."""
    from lrnnx.train.modeling import build_model_for
    from lrnnx.train.tasks import forward_model, make_task

    cfg = load_config(None, ["task.name=event_stream", "task.min_events=4",
                             "task.max_events=8", "model.spec=s4d(d_state=4)",
                             "model.d_model=8"])
    task = make_task(cfg.task)
    model = build_model_for(task, cfg.model)
    b = task.batch("train", 0, 3)
    y1 = forward_model(model, b)
    y2 = forward_model(model, {**b, "timesteps": b["timesteps"] * 3})
    assert not torch.allclose(y1, y2)
    with pytest.raises(lrnnx.InputError, match="timesteps"):
        forward_model(build_model_for(task, load_config(None, [
            "model.spec=attn", "model.d_model=8"]).model), b)


def test_cpu_threads_follow_the_free_cores(monkeypatch):
    from lrnnx.train.trainer import cpu_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    for load, world, want in ((0.0, 1, 4), (1.2, 1, 3), (3.4, 1, 1), (9.0, 1, 1),
                              (0.0, 2, 2), (0.0, 8, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert cpu_threads(world) == want, (load, world)


def test_training_restores_the_thread_count():
    before = torch.get_num_threads()
    train(None, TINY + ["trainer.save=false", "trainer.num_threads=1"], quiet=True)
    assert torch.get_num_threads() == before


def test_distributed_strategies_need_several_processes():
    with pytest.raises(ConfigError, match="needs several processes"):
        train(None, TINY + ["trainer.strategy=ddp", "trainer.save=false"], quiet=True)


# -------------------------------------------------------------------------------------- cli

def test_cli_train_evaluate_generate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, f"trainer.out_dir={out}"]) == 0
    text = capsys.readouterr().out
    assert "training summary" in text and str(out) in text
    assert main(["evaluate", str(out)]) == 0
    text = capsys.readouterr().out
    assert "eval accuracy" in text and "step" in text and "6" in text
    assert main(["generate", str(out), "--prompt", "1 9 2 10 1", "--max-new-tokens", "3",
                 "--temperature", "0"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    prompt, new = line.split(" -> ")
    assert prompt == "1 9 2 10 1" and len(new.split()) == 3
    assert all(0 <= int(t) < 16 for t in new.split())


def test_cli_errors_are_red_and_exit_2(tmp_path, capsys):
    assert main(["train", *TINY, "trainer.max_stepz=3"]) == 2
    assert "Did you mean 'trainer.max_steps'" in capsys.readouterr().err
    assert main(["train", "a.yaml", "b.yaml"]) == 2
    assert "unexpected argument" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "is no checkpoint" in capsys.readouterr().err


def test_cli_generate_needs_an_lm(tmp_path, capsys):
    out = tmp_path / "clf"
    assert main(["train", "task.name=signals", "task.seq_len=8", "model.spec=s4d(d_state=4)",
                 "model.d_model=8", "trainer.batch_size=4", "trainer.max_steps=1",
                 "trainer.eval_batches=1", f"trainer.out_dir={out}", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "1"]) == 2
    assert "samples from language models" in capsys.readouterr().err


def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for cmd in ("train", "evaluate", "generate"):
        assert cmd in text


# --------------------------------------------------------------------------------- main job

@pytest.mark.slow
def test_main_job_default_mqar_hybrid_on_cpu(tmp_path):
    """``lrnnx train`` with no arguments: >= 90 % MQAR accuracy within 5 minutes on CPU."""
    t0 = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["train", "trainer.device=cpu"]) == 0
    finally:
        os.chdir(cwd)
    wall = time.perf_counter() - t0
    runs = os.listdir(tmp_path / "runs")
    recs = read_metrics(str(tmp_path / "runs" / runs[0] / "metrics.jsonl"))
    final = [r for r in recs if r["split"] == "eval"][-1]
    print(json.dumps({"wall_s": round(wall, 1), "accuracy": final["accuracy"],
                      "load": os.getloadavg()}))
    assert final["step"] == 1000 and final["accuracy"] >= 0.9
    assert wall <= 300, f"took {wall:.0f} s (load {os.getloadavg()})"
