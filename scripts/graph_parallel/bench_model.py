"""Model-level graph_parallel benchmark: training step and inference, one ``BENCH {json}`` line.

    OMP_NUM_THREADS=1 python scripts/graph_parallel/bench_model.py --model dimenetpp --preset base --batch_size 8
    python -m runtime.compare --baseline 11b8e8f -- python scripts/graph_parallel/bench_model.py --batch_size 8

What is timed (warm-up steps excluded; median, p90 of the timed steps, as wall time
(``*_latency_ms``, ``*_latency_p90``, ``*_throughput`` = structures / median latency) and as this
process's CPU time (``*_cpu_ms``)), one process, gp_size 1:
- ``train``: energy + conservative forces (``predict`` with ``create_graph=True``), loss = energy MSE
  + force MSE, backward, AdamW step, zero_grad;
- ``inference``: energy + forces (``create_graph=False``) in eval mode.
The batch (the first ``--batch_size`` frames of the embedded EMT set, radius graph with
``--cutoff`` / ``--max_neighbors``) and its partition are built once, outside the timed steps (in
training they are built by the DataLoader workers); ``partition_ms`` reports the partition
(triplet construction) time. Each phase runs in its own child process, so ``*_peak_memory_mb``
(peak RSS) is its own; ``*_memory_growth_mb`` subtracts the RSS before the first warm-up step.

Only APIs that exist unchanged at revision 11b8e8f are used (``build_model``, ``predict``,
``collate_frames``, ``partition_graph``, ``LmdbDataset``, ``EMBEDDED_DATA_DIR``), so comparing
revisions with :mod:`runtime.compare` measures model code only.
``--profile`` prints torch.profiler tables (ops, and the model's modules by class) instead.
"""
import argparse
import os
import sys
import time

# The repository of this file, searched after PYTHONPATH: runtime.compare points PYTHONPATH at the
# tree under test, which then wins; run directly, this checkout is measured.
sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # scripts/: the shared harness
import bench_harness as harness  # noqa: E402

PHASES = ("train", "inference")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dimenetpp", choices=("dimenetpp", "gemnet_t", "gemnet_dt"))
    p.add_argument("--preset", default="base")
    p.add_argument("--phase", choices=PHASES + ("both",), default="both")
    p.add_argument("--batch_size", type=int, default=8, help="structures per step")
    p.add_argument("--cutoff", type=float, default=6.0)
    p.add_argument("--max_neighbors", type=int, default=50)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (and OMP_NUM_THREADS)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="print torch.profiler tables instead of the BENCH line")
    p.add_argument("--profile_rows", type=int, default=15, help="rows per profiler table")
    return p.parse_args(argv)


def build(args):
    """(model, batch, partition, partition seconds)."""
    import torch
    from graph_parallel.data import EMBEDDED_DATA_DIR, LmdbDataset, collate_frames
    from graph_parallel.models import build_model
    from graph_parallel.parallel import partition_graph

    torch.manual_seed(args.seed)
    model = build_model(args.model, args.preset, cutoff=args.cutoff)
    data = LmdbDataset(EMBEDDED_DATA_DIR / "train.lmdb")
    frames = [data[(9 * i) % len(data)] for i in range(args.batch_size)]     # different systems
    batch = collate_frames(frames, args.cutoff, args.max_neighbors, symmetric=getattr(model, "symmetric_graph", False))
    t0 = time.perf_counter()
    part = partition_graph(batch.edge_index, batch.cell_offsets, batch.num_atoms, 0, 1, model.triplet_kind)
    return model, batch, part, time.perf_counter() - t0


def step_fn(args, model, batch, part, phase: str):
    import torch
    from graph_parallel.models import predict

    net = torch.compile(model) if args.compile else model
    if phase == "inference":
        model.eval()

        def infer():
            energy, forces = predict(net, batch, part, None, compute_forces=True, create_graph=False)
            return energy.detach(), forces.detach()
        return infer
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train():
        energy, forces = predict(net, batch, part, None, compute_forces=True, create_graph=True)
        loss = (energy - batch.energy).pow(2).mean() + (forces - batch.forces).pow(2).sum(-1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return train


def run_phase(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    model, batch, part, part_s = build(args)
    step = step_fn(args, model, batch, part, args.phase)
    wall, cpu, before = harness.timed(lambda i: step(), args.warmup, args.steps)
    peak = harness.peak_rss_mb()
    p, med = args.phase, harness.median(wall)
    flops = harness.measure_flops(p, lambda i: step(), [0],  # the same batch every step
                                  harness.cpu_seconds_per_thread(harness.median(cpu)))
    import graph_parallel
    return {"source": os.path.dirname(os.path.abspath(graph_parallel.__file__)),
            f"{p}_throughput": args.batch_size / med, f"{p}_latency_ms": med * 1e3,
            f"{p}_latency_p90": harness.percentile(wall, 0.9) * 1e3, f"{p}_cpu_ms": harness.median(cpu) * 1e3,
            f"{p}_peak_memory_mb": peak, f"{p}_memory_growth_mb": peak - before,
            "partition_ms": part_s * 1e3, "edges": int(batch.edge_index.shape[1]),
            "triplets": int(len(part.id_kj) if part.id_kj is not None else len(part.id3_ca_local)), **flops}


def profile_phase(args) -> None:
    """torch.profiler over ``--steps`` steps: top ops by self time, then the model's modules by class."""
    import torch

    torch.set_num_threads(args.threads)
    model, batch, part, part_s = build(args)
    for cls in {type(m) for m in model.modules() if type(m).__module__.startswith("graph_parallel")}:
        harness.label(cls, "forward", f"{cls.__name__}.forward")
    step = step_fn(args, model, batch, part, args.phase)
    prof, wall = harness.profile_steps(lambda i: step(), args.warmup, args.steps)
    print(f"### {args.model}/{args.preset} {args.phase}, batch {args.batch_size}: {wall * 1e3:.1f} ms per step "
          f"under the profiler ({args.steps} steps); partition (triplets) {part_s * 1e3:.1f} ms; "
          f"{batch.edge_index.shape[1]} edges")
    harness.print_profile(prof, args.steps, args.profile_rows,
                          "module forward (incl. children; backward not included) | CPU share | ms/step | calls/step",
                          digits=1)


def main(argv=None) -> int:
    return harness.main(__file__, parse_args(argv), argv, PHASES, run_phase, profile_phase)


if __name__ == "__main__":
    sys.exit(main())
