"""Shared command-line vocabulary: one spelling per concept in every recipe (see runtime/vocabulary.py).

- :class:`ArgumentParser` reports bad flags as :class:`~runtime.errors.ConfigError` (one ``error:``
  line, exit code 2, through :func:`runtime.errors.run_main`) and prints defaults once in ``--help``.
- Boolean flags accept ``--flag``, ``--flag true`` and ``--flag false`` (NVIDIA's recipes pass
  ``--amp true``), see :func:`add_bool`.
- :func:`add_common_args` adds the shared groups; ``kind="train"`` adds the training and optimizer
  groups, ``kind="eval"`` (evaluate / predict / generate) leaves them out.
- Flags of NVIDIA's recipes are aliases of the shared ones; our own renamed flags and NVIDIA flags
  with no matching feature are refused with a message naming the replacement (:func:`add_refused`).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, List, Optional, Sequence, Set

from runtime.errors import ConfigError
from runtime.optim import OPTIMIZERS

TRUE = ("1", "true", "yes", "y", "on", "t")
FALSE = ("0", "false", "no", "n", "off", "f")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` once, and not at all for None/False defaults or help that names its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.option_strings == []:
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with errors raised as ConfigError and the shared help formatter."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # `--epoch 1` must not silently mean `--epochs 1`
        super().__init__(*args, **kwargs)
        self._checks: List[Callable] = []

    def add_check(self, check: Callable) -> None:
        """Run ``check(args, given)`` after parsing; ``given`` holds the dests set on the command line."""
        self._checks.append(check)

    def parse_args(self, args=None, namespace=None):
        argv = sys.argv[1:] if args is None else [str(a) for a in args]
        parsed = super().parse_args(argv, namespace)
        given = self.given(argv)
        if hasattr(parsed, "device") and hasattr(parsed, "amp"):
            check_common_flags(parsed, given)
        for check in self._checks:
            check(parsed, given)
        return parsed

    def given(self, argv: Sequence[str]) -> Set[str]:
        """The dests of the options that appear in ``argv`` (exact spellings: abbreviations are off)."""
        tokens = {t.split("=", 1)[0] for t in argv if t.startswith("-")}
        return {a.dest for a in self._actions if tokens.intersection(a.option_strings)}

    def error(self, message: str):  # argparse calls this for every parse error
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def str2bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_bool(group, *flags: str, default: Optional[bool] = False, help: str = "", dest: Optional[str] = None) -> None:
    """A boolean flag: ``--flag`` (true), ``--flag true|false``. ``default=None``: unset unless given
    (the help then says what unset means)."""
    shown = "" if default is None else f" (default: {str(default).lower()})"
    kwargs = dict(type=str2bool, nargs="?", const=True, default=default, metavar="BOOL", help=help + shown)
    if dest:
        kwargs["dest"] = dest
    group.add_argument(*flags, **kwargs)


class _Refuse(argparse.Action):
    def __init__(self, option_strings, dest, reason: str = "", **kwargs):
        self.reason = reason
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs="?", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None):
        raise ConfigError(f"{option_string} is not supported: {self.reason}")


def add_refused(parser: argparse.ArgumentParser, flag: str, reason: str) -> None:
    """A hidden flag that fails with ``reason`` (which names the replacement, if any)."""
    parser.add_argument(flag, action=_Refuse, reason=reason)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1) (betas, momentum, decays)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


DEFAULTS = dict(batch_size=32, epochs=10, learning_rate=1e-3, weight_decay=0.0, optimizer="adam", seed=0,
                num_workers=None, gradient_clip=None, accumulate_grad_batches=1, eval_interval=1, ckpt_interval=1,
                ckpt_steps=0, keep_last=3, data_dir="data", log_dir="results", save_ckpt_path=None,
                load_ckpt_path=None, log_interval=10, wandb_project="molrecipes", benchmark_warmup=10,
                benchmark_steps=50, max_steps=None, max_minutes=None, beta1=0.9, beta2=0.999, momentum=None,
                dist_timeout=10.0, dllogger_name="log.json")

# Our own flags that were renamed: refused with the new spelling (one vocabulary, see vocabulary.py).
RENAMED = {"--log_every": "--log_interval", "--max_time_min": "--max_minutes", "--config": "--preset",
           "--source": "--dataset"}


def add_common_args(parser: argparse.ArgumentParser, kind: str = "train", **defaults: Any) -> argparse.ArgumentParser:
    """Add the shared groups to ``parser``; keyword arguments override their defaults.

    ``kind="train"`` adds everything; ``kind="eval"`` (evaluate, predict, generate) leaves out the
    training-only flags (optimizer, schedule, limits, checkpoint cadence).
    """
    if kind not in ("train", "eval"):
        raise ValueError(f"kind must be 'train' or 'eval', got {kind!r}")
    unknown = set(defaults) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"add_common_args got unknown defaults: {sorted(unknown)}")
    d = {**DEFAULTS, **defaults}
    train = kind == "train"

    paths = parser.add_argument_group("paths")
    paths.add_argument("--data_dir", default=d["data_dir"], help="dataset directory (raw files and caches)")
    paths.add_argument("--log_dir", "--results_dir", dest="log_dir", default=d["log_dir"],
                       help="directory for the DLLogger log (log.json), W&B and TensorBoard files")
    paths.add_argument("--dllogger_name", "--log_path", dest="dllogger_name", default=d["dllogger_name"],
                       help="the DLLogger JSON-lines log: a file name inside --log_dir, or a path")
    paths.add_argument("--load_ckpt_path", default=d["load_ckpt_path"],
                       help="resume from this checkpoint" if train else
                       f"checkpoint to use (default: LOG_DIR/{CHECKPOINT_NAME}; it carries its own config)")
    if train:
        paths.add_argument("--save_ckpt_path", default=d["save_ckpt_path"],
                           help=f"write checkpoints to this file (default: LOG_DIR/{CHECKPOINT_NAME}; '' disables "
                                "saving)")
        paths.add_argument("--ckpt_interval", "--save_epochs", dest="ckpt_interval", type=int,
                           default=d["ckpt_interval"], help="save a checkpoint every N epochs (<= 0: only at the end)")
        paths.add_argument("--ckpt_steps", type=non_negative_int, default=d["ckpt_steps"],
                           help="also save every N optimizer steps, mid-epoch (0: off)")
        paths.add_argument("--keep_last", type=non_negative_int, default=d["keep_last"],
                           help="keep the newest N numbered checkpoints beside --save_ckpt_path (0: none)")

    data = parser.add_argument_group("data loading")
    data.add_argument("--batch_size", type=positive_int, default=d["batch_size"], help="batch size per process")
    data.add_argument("--num_workers", type=non_negative_int, default=d["num_workers"],
                      help="DataLoader worker processes (default: 4 per GPU on CUDA, 0 on CPU)")
    data.add_argument("--seed", type=int, default=d["seed"], help="random seed")

    if train:
        tr = parser.add_argument_group("training")
        tr.add_argument("--epochs", type=positive_int, default=d["epochs"], help="number of training epochs")
        tr.add_argument("--max_steps", "--steps", dest="max_steps", type=positive_int, default=d["max_steps"],
                        help="stop (and save) after this many optimizer steps in total")
        tr.add_argument("--max_minutes", type=positive_float, default=d["max_minutes"],
                        help="stop (and save) after this many minutes of training")
        tr.add_argument("--learning_rate", "--lr", dest="learning_rate", type=positive_float,
                        default=d["learning_rate"], help="base learning rate")
        tr.add_argument("--weight_decay", type=non_negative_float, default=d["weight_decay"], help="weight decay")
        tr.add_argument("--optimizer", choices=OPTIMIZERS, default=d["optimizer"], help="optimizer")
        tr.add_argument("--beta1", type=fraction, default=d["beta1"], help="Adam/LAMB beta1")
        tr.add_argument("--beta2", type=fraction, default=d["beta2"], help="Adam/LAMB beta2")
        tr.add_argument("--momentum", type=fraction, default=d["momentum"],
                        help="SGD momentum (0.9 if unset); for adam/adamw/lamb it sets beta1, as NVIDIA's SE(3) "
                             "recipe does")
        tr.add_argument("--gradient_clip", "--clip", dest="gradient_clip", type=float, default=d["gradient_clip"],
                        help="clip the global gradient norm to this value (off when unset or <= 0)")
        tr.add_argument("--accumulate_grad_batches", type=positive_int, default=d["accumulate_grad_batches"],
                        help="accumulate gradients over N batches per optimizer step")
        tr.add_argument("--eval_interval", "--eval_epochs", dest="eval_interval", type=int,
                        default=d["eval_interval"], help="evaluate every N epochs (<= 0: only at the end)")
        add_bool(tr, "--finetune", help="with --load_ckpt_path: load only the weights (new optimizer, schedule "
                                        "and position) and allow a different task or dataset")

    prec = parser.add_argument_group("precision")
    add_bool(prec, "--amp", help="mixed precision: bf16 autocast on CPU; fp16 + GradScaler on CUDA (bf16 for "
                                 "graph_parallel force training, see its README)")
    prec.add_argument("--amp_dtype", choices=("fp16", "bf16"), default=None,
                      help="autocast dtype (default: fp16 on CUDA, bf16 on CPU)")
    add_bool(prec, "--tf32", default=None,
             help="TF32 matmuls on Ampere+ GPUs: true/false sets both the matmul and cuDNN switches; unset "
                  "leaves PyTorch's own defaults")

    perf = parser.add_argument_group("performance")
    perf.add_argument("--device", choices=DEVICES, default="auto",
                      help="where to run: auto = the process's CUDA device (LOCAL_RANK) when CUDA is visible, "
                           "else the CPU")
    add_bool(perf, "--cuda_graphs", "--cuda_graph", dest="cuda_graphs", help="capture steps in CUDA graphs (CUDA only)")
    add_bool(perf, "--compile", "--jit", dest="compile",
             help="torch.compile the model (NVIDIA's --jit, TorchScript there, means this here)")
    perf.add_argument("--gpu_affinity", choices=("none", "socket", "single", "single_unique", "socket_unique"),
                      default="socket_unique" if train else "none",
                      help="pin each local rank to the CPU cores of its GPU's NUMA node (NVML; no-op without GPUs)")
    perf.add_argument("--dist_timeout", type=positive_float, default=d["dist_timeout"],
                      help="minutes a collective may wait for a peer before the run fails with a message")

    log = parser.add_argument_group("logging")
    add_bool(log, "--wandb", help="log to Weights & Biases (offline without WANDB_API_KEY)")
    log.add_argument("--wandb_project", default=d["wandb_project"], help="W&B project name")
    add_bool(log, "--tensorboard", help="also write TensorBoard event files")
    add_bool(log, "--progress", default=None,
             help="progress bars (default: only when stderr is a terminal; otherwise one log line per interval)")
    add_bool(log, "--silent", help="benchmarks: no progress bars and no per-step stdout lines (the log file "
                                   "still gets every metric)")
    if train:
        log.add_argument("--log_interval", type=positive_int, default=d["log_interval"],
                         help="log training metrics every N optimizer steps")

    bench = parser.add_argument_group("benchmark")
    add_bool(bench, "--benchmark", help="measure throughput and latency instead of a full run")
    bench.add_argument("--benchmark_warmup", type=non_negative_int, default=d["benchmark_warmup"],
                       help="steps excluded from timing")
    bench.add_argument("--benchmark_steps", type=positive_int, default=d["benchmark_steps"], help="timed steps")

    for old, new in RENAMED.items():
        if not any(old in a.option_strings for a in parser._actions):
            add_refused(parser, old, f"it was renamed {new}")
    add_refused(parser, "--verbosity", "use --silent (benchmarks) or --progress; every metric goes to the log")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # torchrun sets LOCAL_RANK
    return parser


CHECKPOINT_NAME = "checkpoint.pt"


def checkpoint_to_save(args) -> str:
    """Where training writes checkpoints: ``--save_ckpt_path``, by default ``LOG_DIR/checkpoint.pt``;
    ``''`` (none) under ``--benchmark`` or when given as ``''``."""
    if getattr(args, "benchmark", False):
        return ""
    if args.save_ckpt_path is None:
        return os.path.join(args.log_dir, CHECKPOINT_NAME)
    return args.save_ckpt_path


def checkpoint_to_load(args) -> str:
    """The checkpoint evaluate / predict read: ``--load_ckpt_path``, by default the one training wrote
    with the same ``--log_dir``."""
    return args.load_ckpt_path or os.path.join(args.log_dir, CHECKPOINT_NAME)


def prediction_path(output: Optional[str], log_dir: str, split: str, formats: Sequence[str]) -> str:
    """Where predict writes: ``--output``, by default ``LOG_DIR/predictions_<split>.<formats[0]>``; the
    format follows the suffix, and a suffix the recipe cannot write is a ConfigError."""
    path = output or os.path.join(log_dir, f"predictions_{split}.{formats[0]}")
    if not any(path.endswith("." + f) for f in formats):
        raise ConfigError(f"--output {path}: this recipe writes " + " or ".join("." + f for f in formats)
                          + "; name the file with one of those suffixes")
    return path


def evaluation_summary(checkpoint: str, split: Optional[str], size: int, model, world_size: int) -> dict:
    """The summary fields every evaluate and predict logs beside its metrics: ``checkpoint``,
    ``<split>_size`` (items evaluated; left out for generated samples, which have no split: MoFlow
    logs ``num_samples``), ``parameters`` and ``world_size``."""
    sizes = {f"{split}_size": int(size)} if split else {}
    return {"checkpoint": checkpoint, **sizes, "parameters": sum(p.numel() for p in model.parameters()),
            "world_size": int(world_size)}


DEVICES = ("auto", "cpu", "cuda")


def device_type(choice: str) -> str:
    """``--device`` as ``"cpu"`` or ``"cuda"``; ``cuda`` without a visible CUDA device is a ConfigError."""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible (check CUDA_VISIBLE_DEVICES), or use --device cpu")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def note(message: str) -> None:
    """One line on stderr about a flag that has no effect (main process only)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"note: {message}", file=sys.stderr, flush=True)


def refuse_unused(flag: str, why: str) -> None:
    """A path flag that was given but would not be used is an error, never silently ignored."""
    raise ConfigError(f"{flag} is not used {why}; drop it")


def check_common_flags(args, given: Set[str]) -> None:
    """The shared flags, checked at parse time (before any data or model is loaded): fp16 autocast
    on CPU is refused; ``--amp_dtype`` without ``--amp`` and ``--tf32`` on CPU are ignored, with one
    line saying so; ``--finetune`` needs a checkpoint; a checkpoint path under ``--benchmark`` (which
    saves nothing) is refused."""
    if getattr(args, "finetune", False) and not args.load_ckpt_path:
        raise ConfigError("--finetune needs --load_ckpt_path (the checkpoint whose weights to start from)")
    if getattr(args, "benchmark", False) and getattr(args, "save_ckpt_path", None) and "save_ckpt_path" in given:
        refuse_unused("--save_ckpt_path", "with --benchmark (benchmarks write no checkpoint)")
    kind = device_type(args.device)
    if args.amp_dtype is not None and not args.amp:
        note(f"--amp_dtype {args.amp_dtype} is ignored without --amp")
    elif args.amp and args.amp_dtype == "fp16" and kind == "cpu":
        raise ConfigError("--amp_dtype fp16 needs CUDA: fp16 autocast is not supported on CPU; use --amp_dtype "
                          "bf16 (the CPU default)")
    if args.tf32 is not None and kind == "cpu":
        note("--tf32 is ignored on CPU (TF32 is a CUDA matmul mode)")


def resolve_num_workers(value: Optional[int], device) -> int:
    """``--num_workers`` default: 4 per process on CUDA (overlaps collate with GPU work), 0 on CPU
    (workers would compete with the compute threads for the same cores)."""
    if value is not None:
        return value
    import torch

    from runtime.affinity import cores_per_rank

    if torch.device(device).type != "cuda":
        return 0
    per_rank = cores_per_rank()                   # --gpu_affinity pinned this rank: its cores are its own
    if per_rank is None:                          # unpinned: the local ranks share the allowed cores
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        per_rank = cpus / max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(4, int(per_rank) - 1))


def optimizer_betas(args) -> tuple:
    """(beta1, beta2) from --beta1/--beta2, with NVIDIA's ``--momentum`` as beta1 for Adam-family optimizers."""
    beta1 = args.beta1
    if getattr(args, "momentum", None) is not None and args.optimizer != "sgd":
        beta1 = args.momentum
    return beta1, args.beta2


def sgd_momentum(args) -> float:
    return 0.9 if getattr(args, "momentum", None) is None else args.momentum
