"""Our MoFlow training step against NVIDIA's, interleaved (NVIDIA, ours, NVIDIA, ours, ...), optionally
under a reproducible load on the other core.

    python scripts/moflow/benchmark_vs_nvidia.py --nvidia_dir /tmp/nv/PyTorch/DrugDiscovery/MoFlow \\
        --rounds 4 --load matmul -- --preset qm9 --batch_size 128 --steps 8

Each run is one process (``bench_nvidia.py`` for theirs, ``bench_model.py --phase train`` for ours; the
arguments after ``--`` go to both). ``--load`` starts a load generator for the whole comparison:
``matmul`` (one thread of float32 1024x1024 matmuls: compute and cache), ``stream`` (one thread copying
a 256 MB tensor: memory bandwidth) or ``none``; ``--load_processes N`` starts N of them. ``--pin`` puts
the benchmark on CPU 0 and the load on CPU 1 (else the scheduler shares both cores). Printed: per figure
the medians, ``ratio`` = ours / theirs and ``paired`` (median of per-round ratios), as ``runtime.compare``
does; for times a ratio below 1 means ours is faster (``speed-up`` = 1 / ratio of CPU time).
"""
import argparse
import json
import os
import subprocess
import sys
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LOADS = {
    "none": None,
    "matmul": "import torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024)\nc = torch.empty_like(a)\n"
              "while True:\n    torch.mm(a, a, out=c)",
    "stream": "import torch\ntorch.set_num_threads(1)\na = torch.randn(64 * 2 ** 20)\nb = torch.empty_like(a)\n"
              "while True:\n    b.copy_(a)",
}


def start_load(kind: str, cpu: Optional[int]) -> Optional[subprocess.Popen]:
    """The load generator process (None for ``none``), pinned to ``cpu`` when given."""
    if LOADS[kind] is None:
        return None
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", LOADS[kind]], env=env,
                            preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None)


def commands(nvidia_dir: str, bench_args: List[str]) -> dict:
    return {"nvidia": [sys.executable, os.path.join(HERE, "bench_nvidia.py"), "--nvidia_dir", nvidia_dir, *bench_args],
            "ours": [sys.executable, os.path.join(HERE, "bench_model.py"), "--phase", "train", *bench_args]}


def run_one(command: List[str], cpu: Optional[int], tree: str) -> dict:
    sys.path.insert(0, ROOT)
    from runtime.compare import parse_bench

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    env.setdefault("OMP_NUM_THREADS", "1")
    out = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True,
                         preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None)
    return parse_bench(out.stdout, tree)


def compare(nvidia_dir: str, bench_args: List[str], rounds: int, load: str, pin: bool, log=print,
            load_processes: int = 1) -> dict:
    """Interleaved runs; the ``runtime.compare`` summary with NVIDIA as the baseline and ours as working."""
    from runtime.compare import format_table, summarise

    runs, cmds = [], commands(nvidia_dir, bench_args)
    loaders = [start_load(load, 1 if pin else None) for _ in range(load_processes)]
    try:
        for i in range(rounds):
            for tree, label in (("baseline", "nvidia"), ("working", "ours")):
                figures = run_one(cmds[label], 0 if pin else None, ROOT if label == "ours" else nvidia_dir)
                runs.append({"round": i, "tree": tree, "figures": figures})
                log(f"round {i + 1}/{rounds} {label:6s} " + ", ".join(f"{k}={v:.4g}" for k, v in figures.items()))
    finally:
        for loader in loaders:
            if loader is not None:
                loader.kill()
                loader.wait()
    summary = summarise(runs)
    log(format_table(summary, "nvidia").replace("working", "ours"))
    cpu = summary.get("train_cpu_ms")
    if cpu:
        log(f"speed-up (CPU time per step, NVIDIA / ours): {1 / cpu['ratio']:.2f}x (paired {1 / cpu['paired']:.2f}x); "
            f"load {load}{f' x{load_processes}' if load_processes > 1 else ''}{', pinned' if pin else ''}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(OpenMP default)')}")
    return {"load": load, "load_processes": load_processes, "pin": pin, "rounds": rounds, "command": cmds,
            "runs": runs, "summary": summary}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nvidia_dir", required=True, help="PyTorch/DrugDiscovery/MoFlow of DeepLearningExamples")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--load", choices=sorted(LOADS), default="none")
    p.add_argument("--load_processes", type=int, default=1, metavar="N",
                   help="N load generators (2 on 2 cores with --threads 2: 4 busy threads, oversubscribed)")
    p.add_argument("--pin", action="store_true", help="benchmark on CPU 0, load on CPU 1")
    p.add_argument("--json", default=None, help="also write runs and summary here")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- flags for both bench scripts")
    args = p.parse_args(argv)
    bench_args = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    sys.path.insert(0, ROOT)
    if args.load_processes < 1:
        p.error("--load_processes must be at least 1")
    record = compare(args.nvidia_dir, bench_args, args.rounds, args.load, args.pin, load_processes=args.load_processes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
