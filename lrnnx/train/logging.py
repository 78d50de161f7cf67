"""What a run shows and keeps: a rich progress bar, metrics as JSON lines, a PNG of the curves
and a final summary table.  Only rank 0 logs (the trainer passes ``enabled=False`` elsewhere).

``metrics.jsonl`` has one object per line: ``{"step", "split": "train", "loss", <metric>,
"lr", "grad_norm", "tokens_per_s", "elapsed_s"}`` every ``trainer.log_every`` steps (averages
over those steps) and ``{"step", "split": "eval", "loss", <metric>}`` at each evaluation.  A
resumed run drops the lines past its starting step and appends, so the file stays one curve.

``metrics.png`` (loss and metric against step, train and eval) is drawn only when matplotlib
is importable; otherwise the run says why and goes on (matplotlib is optional).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

__all__ = ["MetricsLog", "ProgressDisplay", "plot_metrics", "summary_table", "read_metrics",
           "make_console"]


def make_console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 160
    return Console(file=stream, width=width, highlight=False)


def read_metrics(path: str) -> list[dict]:
    """The records of a ``metrics.jsonl`` (an empty list when it does not exist)."""
    if not os.path.isfile(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


class MetricsLog:
    """Appends metric records to ``path`` as JSON lines (no-op when ``path`` is None)."""

    def __init__(self, path: str | None, start_step: int = 0):
        self.path = path
        if path is None:
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= start_step] \
            if start_step else []
        with open(path, "w") as fh:  # a fresh run truncates; a resumed one keeps its past
            for r in kept:
                fh.write(json.dumps(r) + "\n")

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(clean) + "\n")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


class ProgressDisplay:
    """Rich progress bar: step / total, loss, metric, tokens/s, elapsed and ETA."""

    def __init__(self, console, total: int, start: int, metric: str, enabled: bool = True,
                 description: str = "train"):
        self.enabled = enabled
        self.metric = metric
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
            TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[metric_name]} {task.fields[metric]}"),
            TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=console, transient=False,
            refresh_per_second=4)
        self.task = self.progress.add_task(description, total=total, completed=start,
                                           loss="-", metric="-", metric_name=metric, tps="-")

    def __enter__(self):
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()

    def update(self, step: int, loss: float | None = None, metric: float | None = None,
               tokens_per_s: float | None = None, description: str | None = None) -> None:
        if not self.enabled:
            return
        fields: dict[str, Any] = {"completed": step}
        if loss is not None:
            fields["loss"] = _fmt(loss)
        if metric is not None:
            fields["metric"] = _fmt(metric)
        if tokens_per_s is not None:
            fields["tps"] = f"{tokens_per_s:,.0f}"
        if description is not None:
            fields["description"] = description
        self.progress.update(self.task, **fields)


def plot_metrics(jsonl: str, png: str, metric: str) -> tuple[bool, str]:
    """Draw loss and ``metric`` curves of ``jsonl`` into ``png``; ``(written, reason)``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return False, f"matplotlib is not installed ({exc}); pip install matplotlib for the plot"
    records = read_metrics(jsonl)
    if not records:
        return False, f"no metrics in {jsonl}"
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], metric, metric)):
        for split, style in (("train", "-"), ("eval", "o-")):
            pts = [(r["step"], r[key]) for r in records
                   if r.get("split") == split and r.get(key) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, label=split, markersize=3)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True, png


def summary_table(result) -> Any:
    """A rich table of a :class:`lrnnx.train.trainer.TrainResult`."""
    from rich.table import Table

    table = Table(title="training summary", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    m = result.metric
    rows = [
        ("task", result.task), ("model", result.spec), ("parameters", f"{result.n_params:,}"),
        ("steps", f"{result.step:,} / {result.max_steps:,}"),
        ("wall time", f"{result.wall_time_s:.1f} s"),
        ("tokens/s", f"{result.tokens_per_s:,.0f}"),
        ("train loss", _fmt(result.train.get("loss"))),
        ("eval loss", _fmt(result.eval.get("loss"))),
        (f"eval {m}", _fmt(result.eval.get(m))),
        ("device", f"{result.device} ({result.precision}, {result.world_size} process"
                   f"{'es' if result.world_size > 1 else ''})"),
    ]
    if result.checkpoint:
        rows.append(("checkpoint", result.checkpoint))
    if result.out_dir:
        rows.append(("metrics", os.path.join(result.out_dir, "metrics.jsonl")))
    if result.plot:
        rows.append(("plot", result.plot))
    for k, v in rows:
        table.add_row(k, str(v))
    return table


class Timer:
    """Wall-clock seconds since start (or since ``reset``)."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0
