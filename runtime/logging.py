"""DLLogger-compatible logging: JSON lines to a file, readable lines to stdout, optional W&B and
TensorBoard. Only rank 0 writes; on other ranks the logger is silent.

Rules:
- With ``recipe`` set, every metric name must be in :mod:`runtime.vocabulary`; its METADATA record
  (unit, format) is written the first time the metric is logged, unless the recipe declared it.
- A new run moves an existing ``log.json`` aside (``log.<time>.json``); a resumed run appends.
- ``silent`` drops the per-step stdout lines (steps ``(epoch, iteration)``) only; epoch, evaluation
  and summary lines are still printed, and the file always receives everything.

File format (one record per line, as NVIDIA's DLLogger JSONStreamBackend writes it)::

    DLLL {"timestamp": "1700000000.123", "datetime": "2026-11-23 12:00:00.123456",
          "elapsedtime": 1.5, "type": "LOG", "step": [0, 10], "data": {"loss": 0.5}}
    DLLL {"timestamp": ..., "datetime": ..., "elapsedtime": ..., "type": "METADATA",
          "metric": "loss", "metadata": {"unit": null, "format": ":.4f"}}
"""
from __future__ import annotations

import datetime
import json
import math
import numbers
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence, Union

from runtime import vocabulary
from runtime.io import fault_point
from runtime.distributed import is_main_process

Step = Union[int, Sequence[int], str]
PREFIX = "DLLL "


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Infinity literals
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _step_list(step: Step):
    if isinstance(step, str):
        return step
    if isinstance(step, numbers.Integral):
        return [int(step)]
    return [int(s) if isinstance(s, numbers.Integral) else s for s in step]


def _format_step(step: Step) -> str:
    if isinstance(step, str):
        return step
    steps = _step_list(step)
    if not steps:
        return "summary"
    names = ["epoch", "iter", "sub"]
    return " ".join(f"{names[i] if i < len(names) else 'step'}: {s}" for i, s in enumerate(steps))


def _format_value(value: Any, fmt: Optional[str]) -> str:
    if fmt and isinstance(value, numbers.Number):
        try:
            return ("{" + fmt + "}").format(value)
        except (ValueError, TypeError):
            pass
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


class Logger:
    """Fan-out logger. Construct with :func:`setup_logger`."""

    def __init__(self, json_path: Optional[str], stdout: bool, wandb_run=None, tb_writer=None, active: bool = True,
                 recipe: Optional[str] = None, silent: bool = False):
        self.active = active
        self.recipe = recipe
        self.silent = silent
        self.start = time.time()
        self.metadata: Dict[str, dict] = {}
        self._last_step = 0
        self._file = None
        self.json_path = json_path
        if active and json_path:
            os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
            self._file = open(json_path, "a", buffering=1, encoding="utf-8")
        self.stdout = stdout and active
        self.wandb_run = wandb_run
        self.tb_writer = tb_writer

    def _record(self, kind: str, **fields) -> None:
        now = time.time()
        record = {"timestamp": f"{now:.3f}", "datetime": datetime.datetime.fromtimestamp(now).isoformat(sep=" "),
                  "elapsedtime": round(now - self.start, 6), "type": kind}
        record.update(fields)
        if self._file is not None:
            self._file.write(PREFIX + json.dumps(_jsonable(record)) + "\n")

    def log_metadata(self, name: str, meta: Dict[str, Any]) -> None:
        """Declare a metric's unit/format (DLLogger METADATA record)."""
        if not self.active:
            return
        self.metadata[name] = dict(meta)
        self._record("METADATA", metric=name, metadata=dict(meta))

    def log(self, step: Step, data: Dict[str, Any]) -> None:
        """Log metrics at ``step``: an int, a tuple like (epoch, iteration), or () for a summary."""
        if not self.active:
            return
        data = {k: _jsonable(v) for k, v in data.items()}
        if self.recipe is not None:
            for key in data:
                if key not in self.metadata:
                    unit, fmt = vocabulary.metric_spec(self.recipe, key)
                    self.log_metadata(key, {"unit": unit, "format": fmt})
        self._record("LOG", step=_step_list(step), data=data)
        per_step = not isinstance(step, str) and len(_step_list(step)) >= 2
        if self.stdout and not (self.silent and per_step):
            parts = [f"{k}: {_format_value(v, self.metadata.get(k, {}).get('format'))}"
                     + (f" {self.metadata[k]['unit']}" if self.metadata.get(k, {}).get("unit") else "")
                     for k, v in data.items()]
            stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
            print(f"DLL {stamp} - {_format_step(step)} | " + " | ".join(parts), file=sys.stdout, flush=True)
        numeric = {k: v for k, v in data.items() if isinstance(v, numbers.Number) and not isinstance(v, bool)}
        global_step = self._global_step(step)
        if global_step is not None:
            # W&B rejects steps that go backwards: keep the largest step seen so far.
            global_step = self._last_step = max(global_step, self._last_step)
        if self.wandb_run is not None and numeric:
            self.wandb_run.log(numeric, **({"step": global_step} if global_step is not None else {}))
        if self.tb_writer is not None:
            for k, v in numeric.items():
                self.tb_writer.add_scalar(k, v, global_step if global_step is not None else 0)

    @staticmethod
    def _global_step(step: Step) -> Optional[int]:
        steps = _step_list(step)
        if isinstance(steps, str) or not steps:
            return None
        return int(steps[-1]) if isinstance(steps[-1], int) else None

    def log_params(self, params: Dict[str, Any]) -> None:
        """Log hyperparameters (a PARAMETER record, and the W&B config)."""
        if not self.active:
            return
        params = _jsonable(dict(params))
        self._record("LOG", step="PARAMETER", data=params)
        if self.wandb_run is not None:
            self.wandb_run.config.update(params, allow_val_change=True)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self.tb_writer is not None:
            self.tb_writer.flush()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None


def _set_aside(path: str) -> Optional[str]:
    """Rename an existing log to ``<stem>.<YYYYmmdd-HHMMSS>[.N]<ext>`` (its last write time)."""
    if not os.path.exists(path):
        return None
    stem, ext = os.path.splitext(path)
    stamp = datetime.datetime.fromtimestamp(os.path.getmtime(path)).strftime("%Y%m%d-%H%M%S")
    target, n = f"{stem}.{stamp}{ext}", 1
    while os.path.exists(target):
        target, n = f"{stem}.{stamp}.{n}{ext}", n + 1
    os.replace(path, target)
    return target


def setup_logger(log_dir: Optional[str] = None, json_name: str = "log.json", wandb: bool = False,
                 wandb_project: str = "molrecipes", tensorboard: bool = False, silent: bool = False,
                 run_name: Optional[str] = None, recipe: Optional[str] = None, append: bool = False,
                 stdout: bool = True) -> Logger:
    """Build the rank-0 logger. W&B runs offline unless ``WANDB_API_KEY`` is set (never needs network).

    ``append=False`` (a new run) moves an existing log aside; ``append=True`` (a resumed run) appends.
    """
    fault_point("logger")
    if not is_main_process():
        return Logger(None, stdout=False, active=False, recipe=recipe)
    json_name = json_name or "log.json"
    if os.path.dirname(json_name):  # a path (NVIDIA's --log_path), not a name inside log_dir
        json_path = json_name
    else:
        json_path = os.path.join(log_dir, json_name) if log_dir else None
    if json_path and not append:
        _set_aside(json_path)
    wandb_run = None
    if wandb:
        import wandb as wandb_lib

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        wandb_run = wandb_lib.init(project=wandb_project, name=run_name, dir=log_dir or ".", mode=mode,
                                   reinit="finish_previous")
    tb_writer = None
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        tb_writer = SummaryWriter(log_dir=os.path.join(log_dir or ".", "tensorboard"))
    return Logger(json_path, stdout=stdout, wandb_run=wandb_run, tb_writer=tb_writer, recipe=recipe, silent=silent)


def read_dllogger(path: str):
    """Parse a DLLogger JSON-lines file into a list of dicts (lines without the prefix are skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith(PREFIX):
                records.append(json.loads(line[len(PREFIX):]))
    return records
