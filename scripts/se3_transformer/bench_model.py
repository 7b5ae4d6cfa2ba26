"""Model-level SE(3)-Transformer benchmark: training step and inference, one ``BENCH {json}`` line.

    OMP_NUM_THREADS=1 python scripts/se3_transformer/bench_model.py --preset nvidia --batch_size 32
    python -m runtime.compare --baseline 11b8e8f -- python scripts/se3_transformer/bench_model.py --preset nvidia

What is timed (warm-up steps excluded, the median of the timed steps reported, as wall time
(``*_latency_ms``, ``*_throughput`` = molecules / latency) and as this process's CPU time (``*_cpu_ms``)):
- ``train``: one training step as ``se3_transformer.train`` runs it on CPU: collate the batch (which
  gathers the cached bases with ``--precompute_bases``), forward, L1 loss on the standardised
  target, backward, AdamW step (lr 0.002, weight decay 0.1), zero_grad.
- ``inference``: collate + forward in eval mode under ``torch.no_grad``.
Batches are consecutive molecules of a seeded permutation of the embedded 1,000-molecule QM9
sample (~18 atoms, ~37 directed edges each), cycled, so every step sees other molecules.

Each phase runs in its own child process, so its peak resident set size (``*_peak_memory_mb``) is
its own; ``*_memory_growth_mb`` is that peak minus the RSS right before the first warm-up step.

Only APIs present since revision 11b8e8f are used (``SE3TransformerPooled``, ``load_qm9`` with a
positional dataset name, ``QM9GraphDataset.collate``, ``precompute_bases``). Feature detection:
``collate`` returns ``(graph, basis)`` at 11b8e8f and a ``MoleculeBatch`` (``.graph``, ``.basis``)
since; both are accepted. Architecture presets are spelled out here (11b8e8f had no ``PRESETS``).
``--profile`` prints torch.profiler tables (ops, and the model's layers by class) instead.
"""
import argparse
import json
import os
import subprocess
import sys
import time

# The repository of this file, searched after PYTHONPATH: runtime.compare points PYTHONPATH at the
# tree under test, which then wins; run directly, this checkout is measured.
sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

PRESETS = {  # NVIDIA's QM9 model and the CPU-sized one (same values as se3_transformer.engine.PRESETS)
    "nvidia": dict(num_layers=7, num_heads=8, channels_div=2, num_degrees=4, num_channels=32, pooling="max",
                   norm=True, use_layer_norm=True),
    "small": dict(num_layers=4, num_heads=4, channels_div=2, num_degrees=3, num_channels=16, pooling="max",
                  norm=True, use_layer_norm=True),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=tuple(PRESETS), default="nvidia")
    p.add_argument("--num_layers", type=int, default=None, help="override the preset's layer count")
    p.add_argument("--phase", choices=("train", "inference", "both"), default="both")
    p.add_argument("--batch_size", type=int, default=32, help="training batch (molecules)")
    p.add_argument("--inference_batch_size", type=int, default=None, help="inference batch (default: --batch_size)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (and OMP_NUM_THREADS)")
    p.add_argument("--fuse_level", choices=("none", "partial", "full"), default="none",
                   help="TFN kernel fusion (none = what --fuse_level auto picks on CPU)")
    p.add_argument("--low_memory", action="store_true")
    p.add_argument("--precompute_bases", action="store_true", help="bases of all edges computed once, gathered per batch")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true",
                   help="print torch.profiler tables for the phase(s) instead of the BENCH line")
    p.add_argument("--profile_rows", type=int, default=15, help="rows per profiler table")
    return p.parse_args(argv)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def build(args):
    """(model, optimizer or None, step function taking a step number) for ``args.phase``."""
    import numpy as np
    import torch
    from se3_transformer.data import qm9
    from se3_transformer.model import FuseLevel, SE3TransformerPooled

    torch.manual_seed(args.seed)
    config = dict(PRESETS[args.preset])
    if args.num_layers:
        config["num_layers"] = args.num_layers
    model = SE3TransformerPooled(node_dim=qm9.NODE_FEATURE_DIM, edge_dim=qm9.EDGE_FEATURE_DIM,
                                 fuse_level={"none": FuseLevel.NONE, "partial": FuseLevel.PARTIAL,
                                             "full": FuseLevel.FULL}[args.fuse_level],
                                 low_memory=args.low_memory, **config)
    arrays = qm9.load_qm9("sample")
    bases = qm9.precompute_bases(arrays, model.transformer.max_degree) if args.precompute_bases else None
    ids = np.random.default_rng(args.seed).permutation(len(arrays))
    dataset = qm9.QM9GraphDataset(arrays, ids, "homo", bases)
    targets = dataset.split_targets if hasattr(dataset, "split_targets") else dataset.targets[dataset.ids]
    mean, std = float(np.mean(targets)), float(np.std(targets))
    batch_size = args.batch_size if args.phase == "train" else (args.inference_batch_size or args.batch_size)
    num_batches = len(ids) // batch_size

    def collate(step: int):
        out = dataset.collate(ids[(step % num_batches) * batch_size:][:batch_size])
        return out if isinstance(out, tuple) else (out.graph, out.basis)

    net = torch.compile(model) if args.compile else model
    if args.phase == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.002, weight_decay=0.1)

        def step(i: int):
            graph, basis = collate(i)
            loss = torch.nn.functional.l1_loss(net(graph, basis).float(), (graph.y - mean) / std)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss
    else:
        model.eval()

        def step(i: int):
            graph, basis = collate(i)
            with torch.no_grad():
                return net(graph, basis)
    return step, batch_size


def timed(step, warmup: int, steps: int):
    """Median wall and CPU seconds per call over ``steps`` calls after ``warmup`` untimed ones, and the
    RSS before warm-up. CPU time (this process, all its threads) is less disturbed than wall time by
    other jobs on a shared machine; with one thread it is the work itself."""
    import statistics
    before = rss_mb()
    wall, cpu = [], []
    for i in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step(i)
        if i >= warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu), before


def run_phase(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    step, batch = build(args)
    seconds, cpu, before = timed(step, args.warmup, args.steps)
    peak = peak_rss_mb()
    p = args.phase
    import se3_transformer
    return {"source": os.path.dirname(os.path.abspath(se3_transformer.__file__)),
            f"{p}_throughput": batch / seconds, f"{p}_latency_ms": seconds * 1e3,
            f"{p}_cpu_ms": cpu * 1e3,
            f"{p}_peak_memory_mb": peak, f"{p}_memory_growth_mb": peak - before}


def profile_phase(args) -> None:
    """torch.profiler over ``--steps`` steps: top ops by self time, then the model's layer classes."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    import se3_transformer.model.basis as basis
    import se3_transformer.model.layers.attention as attention
    import se3_transformer.model.layers.convolution as convolution
    import se3_transformer.model.layers.linear as linear
    import se3_transformer.model.layers.norm as norm
    import se3_transformer.model.layers.pooling as pooling

    def labelled(owner, name, label):
        fn = getattr(owner, name)

        def wrapper(*a, **k):
            with record_function(f"## {label}"):
                return fn(*a, **k)
        setattr(owner, name, wrapper)

    for mod in (attention, convolution, linear, norm, pooling):
        for obj in list(vars(mod).values()):
            if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__ == mod.__name__:
                if "forward" in vars(obj):
                    labelled(obj, "forward", f"{obj.__name__}.forward")
    for name in ("compute_basis", "fuse_basis", "get_basis"):
        if hasattr(basis, name):
            labelled(basis, name, f"basis.{name}")
    torch.set_num_threads(args.threads)
    step, _ = build(args)
    for i in range(args.warmup):
        step(i)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for i in range(args.steps):
            step(args.warmup + i)
        wall = (time.perf_counter() - t0) / args.steps
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"### {args.preset} {args.phase}: {wall * 1e3:.1f} ms per step under the profiler "
          f"({args.steps} steps, {args.threads} thread(s))")
    ops = sorted((e for e in events if not e.key.startswith("## ")), key=lambda e: -e.self_cpu_time_total)
    print("| op | self CPU share | self ms/step | calls/step |\n|---|---|---|---|")
    for e in ops[:args.profile_rows]:
        print(f"| `{e.key}` | {100 * e.self_cpu_time_total / total:.1f} % | "
              f"{e.self_cpu_time_total / 1e3 / args.steps:.2f} | {e.count // args.steps} |")
    mods = sorted((e for e in events if e.key.startswith("## ")), key=lambda e: -e.cpu_time_total)
    print("\n| layer / function (forward only) | total CPU share (incl. children) | ms/step | calls/step |\n"
          "|---|---|---|---|")
    for e in mods[:args.profile_rows]:
        print(f"| `{e.key[3:]}` | {100 * e.cpu_time_total / total:.1f} % | "
              f"{e.cpu_time_total / 1e3 / args.steps:.2f} | {e.count // args.steps} |")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.phase != "both":
        if args.profile:
            profile_phase(args)
        else:
            print("BENCH " + json.dumps(run_phase(args)), flush=True)
        return 0
    # both phases, each in its own process so each peak memory is its own
    figures = {}
    argv = list(sys.argv[1:] if argv is None else argv)
    for phase in ("train", "inference"):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--phase", phase],
                             stdout=subprocess.PIPE, text=True, check=True).stdout
        if args.profile:
            print(out, flush=True)
            continue
        lines = [line for line in out.splitlines() if line.startswith("BENCH ")]
        figures.update(json.loads(lines[-1][len("BENCH "):]))
    if not args.profile:
        print("BENCH " + json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
