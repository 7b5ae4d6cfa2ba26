"""Learning curves from DLLogger logs: ``python -m runtime.plot LOG_DIR [LOG_DIR ...] [--output curves.png]``.

Reads ``log.json`` of each run (a directory, or the JSON file itself) and draws one panel per
metric: ``train_loss`` and ``val_loss`` share the "loss" panel, ``val_mae`` and ``test_mae`` the "mae"
panel, and so on; a trivial baseline (``val_mae_baseline_mean``) is a dashed line in its metric's
panel. The x axis is the optimizer step; each run is one colour, so several runs overlay for
comparison. Per-step records ``(epoch, step)`` are plotted at their step; per-epoch records
``(epoch,)`` at the last step logged in that epoch. A train metric logged per step is drawn from
those records only (its per-epoch mean would duplicate them). Writes a PNG.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

from runtime.errors import ConfigError, DataError, MissingFileError, run_main
from runtime.logging import read_dllogger

SKIP = {"epochs", "steps", "minutes", "stop_reason", "parameters", "world_size", "gp_size", "dp_size",
        "checkpoint", "resumed_from", "task", "num_samples", "temperature"}
Series = Dict[str, List[Tuple[float, float]]]


def log_path(path: str) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "log.json")
    if not os.path.isfile(path):
        raise MissingFileError(f"no DLLogger log at {path}")
    return path


def read_series(path: str) -> Tuple[Series, Dict[str, Optional[str]]]:
    """Metric name -> [(step, value)], and metric name -> unit, from one DLLogger log."""
    try:
        records = read_dllogger(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not a DLLogger JSON-lines log ({err})") from None
    series: Series = defaultdict(list)
    epoch_series: Series = defaultdict(list)
    units: Dict[str, Optional[str]] = {}
    last_step_of_epoch: Dict[int, int] = {}
    for record in records:
        if record.get("type") == "METADATA":
            units[record["metric"]] = (record.get("metadata") or {}).get("unit")
            continue
        step = record.get("step")
        if not isinstance(step, list) or not step:
            continue
        per_step = len(step) >= 2
        if per_step:
            x = float(step[-1])
            last_step_of_epoch[int(step[0])] = int(step[-1])
        else:
            x = float(last_step_of_epoch.get(int(step[0]), step[0]))
        for name, value in (record.get("data") or {}).items():
            if name in SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(float(value)):
                (series if per_step else epoch_series)[name].append((x, float(value)))
    for name, points in epoch_series.items():
        if name not in series:  # per-epoch values only where no per-step values exist
            series[name] = points
    return dict(series), units


SPLIT_STYLE = {"train": "-", "val": "--", "test": ":", "": "-"}


def _panel(name: str) -> Tuple[str, str, Optional[str]]:
    """(panel, split, baseline) of a metric name: val_energy_mae_baseline_mean -> (energy_mae, val, mean)."""
    baseline = None
    if "_baseline_" in name:
        name, baseline = name.split("_baseline_", 1)
    for split in ("train", "val", "test"):
        if name.startswith(split + "_") and name not in ("train_throughput",):
            return name[len(split) + 1:], split, baseline
    return name, "", baseline


def plot_runs(paths: Sequence[str], output: str, labels: Optional[Sequence[str]] = None) -> str:
    """Draw every metric of every run into ``output`` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for i, path in enumerate(paths):
        file = log_path(path)
        label = labels[i] if labels else os.path.basename(os.path.dirname(os.path.abspath(file)))
        runs.append((label, *read_series(file)))
    panels: Dict[str, list] = defaultdict(list)
    for r, (label, series, units) in enumerate(runs):
        for name, points in series.items():
            panel, split, baseline = _panel(name)
            panels[panel].append((r, label, split, baseline, sorted(points), units.get(name)))
    if not panels:
        raise DataError(f"no numeric metrics to plot in {', '.join(map(str, paths))}")
    order = sorted(panels, key=lambda n: (0 if n == "loss" else 2 if n in ("lr", "grad_norm") or "throughput" in n
                                          else 1, n))
    cols = min(3, len(order))
    rows = math.ceil(len(order) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, panel in zip(axes.flat, order):
        unit = next((u for *_, u in panels[panel] if u), None)
        for r, label, split, baseline, points, _ in panels[panel]:
            xs, ys = zip(*points)
            colour = colours[r % len(colours)]
            name = f"{label}: " if len(runs) > 1 else ""
            if baseline:
                ax.axhline(ys[-1], color=colour, linestyle=(0, (2, 3)), linewidth=1,
                           label=f"{name}{split} baseline ({baseline})")
                continue
            ax.plot(xs, ys, color=colour, linestyle=SPLIT_STYLE[split], marker="o" if len(points) < 30 else None,
                    markersize=3, label=f"{name}{split or panel}")
        ax.set_title(panel + (f" [{unit}]" if unit else ""), fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(order):]:
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", help="run directories (holding log.json) or DLLogger JSON files")
    p.add_argument("--output", default=None, help="PNG to write (default: curves.png in the first run's directory)")
    p.add_argument("--labels", nargs="+", default=None, help="legend label of each run")
    args = p.parse_args(argv)
    if args.labels and len(args.labels) != len(args.logs):
        raise ConfigError(f"--labels got {len(args.labels)} names for {len(args.logs)} runs")
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(log_path(args.logs[0]))), "curves.png")
    print(f"wrote {plot_runs(args.logs, output, args.labels)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
