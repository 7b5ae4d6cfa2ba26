"""The training loop driver shared by every recipe: the recipe says *what* a step is, the loop *when*.

A recipe keeps its training step in its own package and hands the loop plain functions:
``forward_backward(batch, loss_scale, position) -> {"loss": tensor, ...}`` (detached scalars),
``optimizer_step(position) -> {...} or None``, and optionally ``evaluate(epoch, scheduled) -> {"val_...": float}``
(``scheduled`` is False for the extra evaluation when a run stops early: per-evaluation schedules
such as ReduceLROnPlateau must then not step, or a resumed run would diverge),
``end_epoch(position)`` (per-epoch schedules), ``save(position)`` and ``no_sync()`` (DDP).
The ``position`` a callback receives is the run's position when it is called, so a recipe keeps
no step counter of its own: ``forward_backward`` gets the batch's index in ``position.batch``,
``optimizer_step`` gets ``position.step`` = the optimizer steps taken before this one, and
``end_epoch`` gets the epoch's end (``position.batch`` = the batches of ``position.epoch``).

=================  =================================================================================
concern            rule
=================  =================================================================================
position           ``Position(epoch, batch, step)``: batches of ``epoch`` consumed, optimizer steps
                   taken. A resumed run starts there; the sampler skips the consumed batches
                   without loading them (:class:`runtime.data.EpochSampler`).
randomness         before every batch all RNGs are reseeded from (seed, rank, epoch, batch), so a
                   step draws the same numbers whether or not the run was interrupted.
accumulation       an optimizer step after every ``accumulate`` batches and at the end of an epoch;
                   DDP's all-reduce only on the last batch of a step (``no_sync`` on the others).
non-finite loss    counted on the device every batch (no host sync); checked at log steps, before
                   every checkpoint and at epoch ends: :class:`~runtime.errors.NonFiniteError`.
logging            every ``log_interval`` optimizer steps: the means of the step metrics over the
                   interval, averaged over ranks (one all-reduce), ``lr`` and ``train_throughput``.
limits             ``max_steps`` (optimizer steps in total) and ``max_minutes`` (checked at log
                   steps and epoch ends, agreed by all ranks) stop the run: save, evaluate.
checkpoints        every ``ckpt_steps`` optimizer steps (mid-epoch), every ``ckpt_interval``
                   epochs, and when the run ends or stops; only at optimizer-step boundaries.
evaluation         every ``eval_interval`` epochs and when the run ends or stops.
sync debug         ``MOLRECIPES_SYNC_DEBUG=error`` on CUDA: every step after the first runs under
                   ``torch.cuda.set_sync_debug_mode``; the intended syncs are ``expected_sync`` blocks.
benchmark          with a :class:`~runtime.callbacks.PerformanceMeter`: time each optimizer step
                   (device-synchronised), no evaluation, no checkpoints, stop after
                   warm-up + timed steps, cycling epochs as needed.
=================  =================================================================================
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ContextManager, Dict, Mapping, Optional, Tuple

import torch

from runtime.devicecheck import cuda_sync_debug, expected_sync
from runtime.distributed import all_reduce_mean, all_reduce_sum, barrier, get_device, get_world_size, is_initialized
from runtime.errors import ConfigError, NonFiniteError
from runtime.progress import progress
from runtime.seed import seed_step


@dataclass(frozen=True)
class Position:
    """Where a run is: ``batch`` batches of ``epoch`` consumed, ``step`` optimizer steps taken.

    ``sums`` carries the running metric sums of the interrupted log interval and epoch, so a resumed
    run logs the same interval and epoch means as an uninterrupted one. Store ``to_dict()`` in the
    checkpoint (``save_checkpoint(position=...)``) and rebuild with ``from_dict``.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    sums: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step, "sums": dict(self.sums)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Position":
        return cls(int(d["epoch"]), int(d.get("batch", 0)), int(d["step"]), dict(d.get("sums") or {}))


@dataclass
class LoopConfig:
    epochs: int
    max_steps: Optional[int] = None
    max_minutes: Optional[float] = None
    accumulate: int = 1
    log_interval: int = 10
    eval_interval: int = 1
    ckpt_interval: int = 1
    ckpt_steps: int = 0
    seed: int = 0
    seed_rank: int = 0            # data-parallel rank (graph-parallel ranks of one group share it)
    replicas: int = 1             # data-parallel size: items per step = batch items * replicas
    progress: Optional[bool] = None
    benchmark_steps: int = 0      # with a meter: timed steps after its warm-up

    @classmethod
    def from_args(cls, args, seed_rank: int = 0, replicas: int = 1) -> "LoopConfig":
        """The loop settings of the shared flags (``runtime.cli.add_common_args(kind="train")``)."""
        return cls(epochs=args.epochs, max_steps=args.max_steps, max_minutes=args.max_minutes,
                   accumulate=args.accumulate_grad_batches, log_interval=args.log_interval,
                   eval_interval=args.eval_interval, ckpt_interval=args.ckpt_interval, ckpt_steps=args.ckpt_steps,
                   seed=args.seed, seed_rank=seed_rank, replicas=replicas,
                   progress=False if args.silent else args.progress, benchmark_steps=args.benchmark_steps)


class _Running:
    """Device-side sums of the step metrics since the last read (no host sync until read)."""

    def __init__(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, values: Dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
        self.count += 1

    @expected_sync("metric sums for a checkpoint")
    def state(self) -> Dict[str, Any]:
        """Host copy of the sums (for a checkpoint)."""
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "count": self.count}

    def load(self, state: Optional[Mapping[str, Any]], device=None) -> None:
        if state:
            self.sums = {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in state["sums"].items()}
            self.count = int(state["count"])

    @expected_sync("metric means for the log")
    def means(self) -> Dict[str, float]:
        """Means over the batches since the last read, averaged over ranks; resets the sums."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        stacked = torch.stack([self.sums[n] / max(self.count, 1) for n in names])
        values = all_reduce_mean(stacked).tolist()
        self.sums, self.count = {}, 0
        return dict(zip(names, values))


class TrainLoop:
    def __init__(self, config: LoopConfig, loader, sampler, logger, *,
                 forward_backward: Callable[[object, float, Position], Dict[str, torch.Tensor]],
                 optimizer_step: Callable[[Position], Optional[Dict[str, torch.Tensor]]],
                 batch_items: Callable[[object], int],
                 lr: Callable[[], float],
                 evaluate: Optional[Callable[[int, bool], Dict[str, float]]] = None,
                 end_epoch: Optional[Callable[[Position], None]] = None,
                 save: Optional[Callable[[Position], None]] = None,
                 no_sync: Optional[Callable[[], ContextManager]] = None,
                 meter=None):
        self.config, self.loader, self.sampler, self.logger = config, loader, sampler, logger
        self.forward_backward, self.optimizer_step = forward_backward, optimizer_step
        self.batch_items, self.lr = batch_items, lr
        self.evaluate, self.end_epoch, self.save, self.no_sync = evaluate, end_epoch, save, no_sync
        self.meter = meter
        self._nonfinite: Optional[torch.Tensor] = None
        self._checked_step = 0

    # -- checks ----------------------------------------------------------------------------------
    def _count_nonfinite(self, loss: torch.Tensor) -> None:
        bad = (~torch.isfinite(loss.detach())).sum()
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite + bad

    @expected_sync("non-finite check")
    def _check_finite(self, position: Position) -> None:
        """One host sync: raise if any loss since the last check was NaN or infinite."""
        if self._nonfinite is not None:
            count = int(all_reduce_sum(self._nonfinite.clone()).item())       # an exact integer sum
            self._nonfinite = None
            if count:
                raise NonFiniteError(
                    f"the training loss was NaN or infinite in {count} batch(es) between optimizer steps "
                    f"{self._checked_step} and {position.step} (epoch {position.epoch}); no checkpoint was "
                    "written after that. Lower --learning_rate, set --gradient_clip, or check the data")
        self._checked_step = position.step

    def _out_of_time(self, started: float) -> bool:
        """Agreed by every rank (the slowest clock decides), so all ranks stop at the same step."""
        if self.config.max_minutes is None:
            return False
        late = torch.tensor([1.0 if (time.time() - started) / 60.0 >= self.config.max_minutes else 0.0])
        if is_initialized() and get_world_size() > 1:
            late = all_reduce_mean(late) * get_world_size()
        return bool(late.item() > 0)

    @expected_sync("checkpoint")
    def _save(self, position: Position, interval: "_Running", epoch: "_Running", interval_items: int) -> None:
        self._check_finite(position)
        if self.save is not None:
            sums = {"interval": interval.state(), "epoch": epoch.state(), "interval_items": interval_items} \
                if position.batch else {"interval": interval.state(), "interval_items": interval_items}
            self.save(replace(position, sums=sums))
            barrier()

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, position: Position = Position()) -> Dict[str, float]:
        """Train from ``position`` until the epochs, ``max_steps``, ``max_minutes`` or the benchmark end.

        Returns the last epoch's train metrics and the last evaluation's metrics, plus ``epochs``,
        ``steps``, ``minutes``, ``stop_reason`` and ``position``.
        """
        with contextlib.ExitStack() as stack:        # leaves CUDA's sync debug mode however the run ends
            run = self._start(position, stack)
            result: Dict[str, float] = {}
            while run.stop_reason is None and (run.pos.epoch < self.config.epochs or self.meter is not None):
                epoch_sums, batches_in_epoch = self._train_epoch(run)
                if self.meter is not None:           # benchmark: cycle epochs, nothing at their ends
                    if run.stop_reason is None:
                        run.pos = Position(run.pos.epoch + 1, 0, run.pos.step)
                    continue
                result.update(self._close_epoch(run, epoch_sums, batches_in_epoch))
            return self._finish(run, result)

    def _start(self, position: Position, stack: contextlib.ExitStack) -> "_Run":
        """The run's state at ``position``, with the interrupted log interval's sums restored."""
        now = time.time()
        self._checked_step = position.step
        interval = _Running()
        interval.load(position.sums.get("interval"))
        run = _Run(start=position, pos=position, stack=stack, started=now, last_log_time=now, interval=interval,
                   interval_items=int(position.sums.get("interval_items", 0)),
                   resumed_epoch_sums=position.sums.get("epoch"))
        if self.config.max_steps is not None and position.step >= self.config.max_steps:
            run.stop_reason = "max_steps"
        return run

    def _train_epoch(self, run: "_Run") -> Tuple["_Running", int]:
        """Train on the epoch's remaining batches until it ends or the run stops.

        Returns the epoch's metric sums and its number of batches."""
        cfg, benchmark = self.config, self.meter is not None
        epoch_sums = _Running()
        if run.resumed_epoch_sums and run.pos.batch:
            epoch_sums.load(run.resumed_epoch_sums)
        run.resumed_epoch_sums = None
        self.sampler.set_epoch(run.pos.epoch, skip=run.pos.batch * self.loader.batch_size)
        batches_in_epoch = run.pos.batch + len(self.loader)
        if batches_in_epoch == 0:
            raise ConfigError("the training data yields no batch: lower --batch_size or use more data")
        step_items, step_started = 0, False
        for batch in progress(self.loader, desc=f"epoch {run.pos.epoch}", total=len(self.loader),
                              enabled=cfg.progress):
            seed_step(cfg.seed, cfg.seed_rank, run.pos.epoch, run.pos.batch)
            last_of_epoch = run.pos.batch + 1 == batches_in_epoch
            boundary = (run.pos.batch + 1) % cfg.accumulate == 0 or last_of_epoch
            if benchmark and not step_started:
                self.meter.start()
                step_started = True
            step_items += self._train_batch(run, batch, epoch_sums, boundary)
            if not boundary:
                continue
            step_out = self._optimizer_step(run)
            if benchmark:
                self.meter.stop(step_items)
                step_started, step_items = False, 0
                run.timed += 1
                if run.timed >= self.meter.warmup_steps + cfg.benchmark_steps:
                    run.stop_reason = "benchmark"
                    break
                continue
            self._after_step(run, step_out, epoch_sums, last_of_epoch)
            if run.stop_reason is not None:
                break
        return epoch_sums, batches_in_epoch

    def _train_batch(self, run: "_Run", batch, epoch_sums: "_Running", boundary: bool) -> int:
        """Forward and backward one batch (DDP all-reduces only at a step ``boundary``); returns its items."""
        cfg = self.config
        sync = self.no_sync() if (self.no_sync is not None and not boundary) else contextlib.nullcontext()
        with sync:
            out = self.forward_backward(batch, 1.0 / cfg.accumulate, run.pos)
        self._count_nonfinite(out["loss"])
        run.interval.add(out)
        epoch_sums.add(out)
        items = self.batch_items(batch) * cfg.replicas
        run.interval_items += items
        run.pos = replace(run.pos, batch=run.pos.batch + 1)
        return items

    def _optimizer_step(self, run: "_Run") -> Dict[str, torch.Tensor]:
        """One optimizer step; sync debugging starts after the run's first (warm-up) step."""
        step_out = self.optimizer_step(run.pos) or {}
        run.pos = replace(run.pos, step=run.pos.step + 1)
        if run.pos.step == run.start.step + 1:
            run.stack.enter_context(cuda_sync_debug(get_device()))
        return step_out

    def _after_step(self, run: "_Run", step_out: Dict[str, torch.Tensor], epoch_sums: "_Running",
                    last_of_epoch: bool) -> None:
        """Log when due, check the limits and, unless the run stops here, save a mid-epoch checkpoint."""
        cfg = self.config
        if run.pos.step % cfg.log_interval == 0:
            self._log_interval(run, step_out)
        if cfg.max_steps is not None and run.pos.step >= cfg.max_steps:
            run.stop_reason = "max_steps"
        if run.stop_reason is None and cfg.ckpt_steps and run.pos.step % cfg.ckpt_steps == 0 \
                and not last_of_epoch:
            self._save(run.pos, run.interval, epoch_sums, run.interval_items)

    def _log_interval(self, run: "_Run", step_out: Dict[str, torch.Tensor]) -> None:
        """Log the interval's means, the step's metrics, ``lr`` and throughput; then check the time limit."""
        self._check_finite(run.pos)
        now = time.time()
        data = {f"train_{k}": v for k, v in run.interval.means().items()}
        with expected_sync("step metrics for the log"):
            data.update({k: float(v) for k, v in step_out.items()})
        data["lr"] = self.lr()
        data["train_throughput"] = run.interval_items / max(now - run.last_log_time, 1e-9)
        self.logger.log((run.pos.epoch, run.pos.step), data)
        run.last_log_time, run.interval_items = now, 0
        if self._out_of_time(run.started):
            run.stop_reason = "max_minutes"

    def _close_epoch(self, run: "_Run", epoch_sums: "_Running", batches_in_epoch: int) -> Dict[str, float]:
        """After the epoch's batches or a stop among them: end the epoch if it is complete, then
        evaluate, log and save as due. Returns the logged epoch metrics."""
        cfg = self.config
        epoch_done = run.pos.batch >= batches_in_epoch
        # a mid-epoch stop logs no partial epoch mean: the sums travel in the checkpoint instead
        metrics = {f"train_{k}": v for k, v in epoch_sums.means().items()} if epoch_done else {}
        if epoch_done:
            self._check_finite(run.pos)
            if self.end_epoch is not None:
                self.end_epoch(run.pos)
            run.pos = Position(run.pos.epoch + 1, 0, run.pos.step)
            if run.stop_reason is None and self._out_of_time(run.started):
                run.stop_reason = "max_minutes"
        pos = run.pos
        epoch = pos.epoch - 1 if epoch_done else pos.epoch
        finishing = run.stop_reason is not None or pos.epoch >= cfg.epochs
        due_eval = epoch_done and cfg.eval_interval > 0 and pos.epoch % cfg.eval_interval == 0
        if self.evaluate is not None and (due_eval or finishing):
            metrics.update(self.evaluate(epoch, due_eval))
        if metrics:
            self.logger.log((epoch,), metrics)
        due_save = epoch_done and ((cfg.ckpt_interval > 0 and pos.epoch % cfg.ckpt_interval == 0)
                                   or (cfg.ckpt_steps > 0 and pos.step % cfg.ckpt_steps == 0))
        if due_save or finishing:
            self._save(pos, run.interval, epoch_sums, run.interval_items)
        return metrics

    def _finish(self, run: "_Run", result: Dict[str, Any]) -> Dict[str, Any]:
        """Log the benchmark and the run's summary; return it with the metrics and the position."""
        summary = {"epochs": run.pos.epoch, "steps": run.pos.step, "minutes": (time.time() - run.started) / 60.0,
                   "stop_reason": run.stop_reason or "epochs"}
        if self.meter is not None:
            self.meter.log(self.logger, prefix="train")
        self.logger.log((), summary)
        result.update(summary)
        result["position"] = run.pos
        return result


@dataclass
class _Run:
    """The mutable state of one :meth:`TrainLoop.run`."""

    start: Position                          # where the run began
    pos: Position                            # where it is now
    stack: contextlib.ExitStack              # holds the sync debug mode until the run ends
    started: float                           # time.time() at the start (max_minutes)
    last_log_time: float                     # throughput of the log interval
    interval: _Running                       # metric sums of the log interval
    interval_items: int                      # items of the log interval
    resumed_epoch_sums: Optional[Mapping[str, Any]] = None   # the interrupted epoch's sums, until loaded
    stop_reason: Optional[str] = None
    timed: int = 0                           # benchmark: optimizer steps timed (warm-up included)
