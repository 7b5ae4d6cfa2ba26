"""The shape of every recipe's ``train.py``: eight phases, in one order, on one frozen config.

:func:`train_main` runs them; a recipe's ``train.py`` defines the seven functions of the middle
column and ``main(argv) = train_main(<the module>, argv)``.

=========  ========================================================  ===========================================
phase      ``train.py`` function                                      contract
=========  ========================================================  ===========================================
parse      ``parse_args(argv) -> Namespace``                          every flag checked (ranges, devices, unused
                                                                      paths): a bad one is one ``error:`` line and
                                                                      exit 2, before any process group, data or
                                                                      model. Then the process group starts
                                                                      (:func:`runtime.distributed.init_distributed`).
config     ``build_config(args, env) -> RecipeConfig``                a frozen dataclass built once from the flags
                                                                      (frozen too: :class:`Flags`) and the
                                                                      checkpoint to resume or fine-tune from,
                                                                      whose identity is checked here; never
                                                                      changed after. The output locations are
                                                                      then checked (``runtime.io``).
data       ``load_data(config, env) -> data``                         splits opened and checked, batch size
                                                                      against the split, statistics, loaders
model      ``build_model(config, data, env) -> nn.Module``            on its device; a new run's initialisation
                                                                      (MoFlow's ActNorm, GemNet's scale factors)
optimizer  ``build_optimizer(config, model, env) -> Optimization``    optimizer, schedule, precision
resume     ``resume(config, model, optimization, env) -> Position``   the checkpoint's state (weights only under
                                                                      ``--finetune``), the mid-epoch guard; an
                                                                      EMA of the weights starts from the weights
                                                                      the run starts with
loop       ``run_loop(config, env, data, model, optimization,         :class:`runtime.loop.TrainLoop` with the
           position, logger) -> dict``                                recipe's step; returns the summary
finish     (here)                                                     the logger closed and the process group
                                                                      shut down, in ``finally``
=========  ========================================================  ===========================================

The logger opens between resume and loop (appending to the log of the run being resumed).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Dict, List, Optional

PHASES = ("parse_args", "build_config", "load_data", "build_model", "build_optimizer", "resume", "run_loop")


class Flags(argparse.Namespace):
    """The parsed flags, read-only: a recipe that writes to them after the config is built fails loudly."""

    def __init__(self, args: argparse.Namespace):
        super().__init__()
        for name, value in vars(args).items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"the flags are frozen once the config is built: cannot set {name!r}; resolve it "
                             "into the recipe's config instead")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"the flags are frozen once the config is built: cannot delete {name!r}")


@dataclass(frozen=True, kw_only=True)
class RecipeConfig:
    """What every recipe's config holds; each recipe's ``TrainConfig`` adds its resolved fields."""
    flags: Flags                     # the command line, frozen
    recipe: str                      # "moflow", "se3_transformer", "graph_parallel"
    run_name: str                    # the logger's run name (W&B, TensorBoard)
    save_path: str                   # where checkpoints go ('' under --benchmark)
    checkpoint: Optional[Dict[str, Any]] = field(default=None, repr=False, compare=False)  # read from --load_ckpt_path
    meta: Dict[str, Any] = field(default_factory=dict)  # the checkpoint identity this run writes (and resumes)

    @property
    def resuming(self) -> bool:
        """A checkpoint continues (model, optimizer, position); ``--finetune`` takes its weights only."""
        return self.checkpoint is not None and not self.flags.finetune

    @property
    def checkpoint_extra(self) -> Dict[str, Any]:
        return (self.checkpoint or {}).get("extra") or {}


@dataclass
class Optimization:
    """What the optimizer phase builds: the optimizer, its schedule and the precision policy (autocast
    and loss scaling); the resume phase adds the EMA of the weights where the recipe keeps one."""
    optimizer: Any
    scheduler: Any = None
    precision: Any = None
    ema: Any = None


def train_main(recipe: ModuleType, argv: Optional[List[str]] = None) -> dict:
    """Run ``recipe``'s phases in order (see the module table); returns the loop's summary."""
    from runtime.distributed import init_distributed, is_main_process, shutdown
    from runtime.io import check_output_locations
    from runtime.logging import logger_from_args
    from runtime.precision import set_tf32

    args = recipe.parse_args(argv)
    env = init_distributed(timeout_minutes=args.dist_timeout, gpu_affinity=args.gpu_affinity, device=args.device)
    try:
        if args.tf32 is not None:
            set_tf32(args.tf32)
        config = recipe.build_config(Flags(args), env)
        if is_main_process():
            check_output_locations(config.flags.log_dir, config.save_path)
        data = recipe.load_data(config, env)
        model = recipe.build_model(config, data, env)
        optimization = recipe.build_optimizer(config, model, env)
        position = recipe.resume(config, model, optimization, env)
        logger = logger_from_args(config.flags, config.recipe, run_name=config.run_name, append=config.resuming)
        try:
            return recipe.run_loop(config, env, data, model, optimization, position, logger)
        finally:
            logger.close()
    finally:
        shutdown()
