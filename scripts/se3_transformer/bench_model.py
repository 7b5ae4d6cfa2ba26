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
import os
import sys

# The repository of this file, searched after PYTHONPATH: runtime.compare points PYTHONPATH at the
# tree under test, which then wins; run directly, this checkout is measured.
sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # scripts/: the shared harness
import bench_harness as harness  # noqa: E402

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


def run_phase(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    step, batch = build(args)
    wall, cpu, before = harness.timed(step, args.warmup, args.steps)
    peak = harness.peak_rss_mb()
    p, seconds, cpu = args.phase, harness.median(wall), harness.median(cpu)
    flops = harness.measure_flops(p, step, range(args.warmup, args.warmup + args.steps),
                                  harness.cpu_seconds_per_thread(cpu))
    import se3_transformer
    return {"source": os.path.dirname(os.path.abspath(se3_transformer.__file__)),
            f"{p}_throughput": batch / seconds, f"{p}_latency_ms": seconds * 1e3,
            f"{p}_cpu_ms": cpu * 1e3,
            f"{p}_peak_memory_mb": peak, f"{p}_memory_growth_mb": peak - before, **flops}


def profile_phase(args) -> None:
    """torch.profiler over ``--steps`` steps: top ops by self time, then the model's layer classes."""
    import torch

    import se3_transformer.model.basis as basis
    import se3_transformer.model.layers.attention as attention
    import se3_transformer.model.layers.convolution as convolution
    import se3_transformer.model.layers.linear as linear
    import se3_transformer.model.layers.norm as norm
    import se3_transformer.model.layers.pooling as pooling

    for mod in (attention, convolution, linear, norm, pooling):
        for obj in list(vars(mod).values()):
            if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__ == mod.__name__:
                if "forward" in vars(obj):
                    harness.label(obj, "forward", f"{obj.__name__}.forward")
    for name in ("compute_basis", "fuse_basis", "get_basis"):
        if hasattr(basis, name):
            harness.label(basis, name, f"basis.{name}")
    torch.set_num_threads(args.threads)
    step, _ = build(args)
    prof, wall = harness.profile_steps(step, args.warmup, args.steps)
    print(f"### {args.preset} {args.phase}: {wall * 1e3:.1f} ms per step under the profiler "
          f"({args.steps} steps, {args.threads} thread(s))")
    harness.print_profile(prof, args.steps, args.profile_rows,
                          "layer / function (forward only) | total CPU share (incl. children) | ms/step | calls/step")


def main(argv=None) -> int:
    return harness.main(__file__, parse_args(argv), argv, ("train", "inference"), run_phase, profile_phase)


if __name__ == "__main__":
    sys.exit(main())
