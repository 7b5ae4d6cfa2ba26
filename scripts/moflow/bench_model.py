"""Model-level MoFlow benchmark: training step and reverse pass, one ``BENCH {json}`` line.

    OMP_NUM_THREADS=1 python scripts/moflow/bench_model.py --preset qm9
    python -m runtime.compare --baseline 11b8e8f -- python scripts/moflow/bench_model.py --preset qm9

What is timed (warm-up steps excluded, the median of the timed steps reported, as wall time
(``*_latency_ms``, ``*_throughput`` = batch / latency) and as this process's CPU time (``*_cpu_ms``)):
- ``train``: one training step as ``moflow.train`` runs it: loss = MoFlowObjective (dequantised
  forward + NLL), backward, gradient clipping to norm 1, Adam step, zero_grad. Batch 128.
- ``reverse``: ``MoFlow.reverse`` of a fresh latent (temperature 0.6) in eval mode. Batch 1000.

Each phase runs in its own child process, so its peak resident set size (``*_peak_memory_mb``) is
its own; ``*_memory_growth_mb`` is that peak minus the RSS right before the first warm-up step
(what the steps themselves add on top of the model, optimizer and inputs).

Only APIs that are unchanged since revision 11b8e8f are used (``make_model_config``, ``MoFlow``,
``MoFlowObjective``, ``initialize_actnorm``, ``MoFlow.reverse`` / ``sample_latent`` / ``nll``),
and torch's own Adam, so comparing revisions with :mod:`runtime.compare` measures model code only.
Inputs are molecules from a preprocessed cache (``--data_dir`` holding ``<dataset>_kekulized.npz``)
or, without one, random one-hot graphs of the preset's shape (timing does not depend on content).
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="qm9", help="model preset (qm9, zinc250k, small)")
    p.add_argument("--phase", choices=("train", "reverse", "both"), default="both")
    p.add_argument("--batch_size", type=int, default=128, help="training batch")
    p.add_argument("--reverse_batch_size", type=int, default=1000, help="reverse-pass batch")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--steps", type=int, default=15, help="timed steps (the median is reported)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (and OMP_NUM_THREADS)")
    p.add_argument("--data_dir", default=None, help="directory with <dataset>_kekulized.npz (default: random graphs)")
    p.add_argument("--dataset", default=None, help="cache name in --data_dir (default: the preset)")
    p.add_argument("--compile", action="store_true", help="torch.compile the objective and the reverse pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true",
                   help="print torch.profiler tables for the phase(s) instead of the BENCH line")
    p.add_argument("--profile_rows", type=int, default=15, help="rows per profiler table")
    return p.parse_args(argv)


def molecules(args, config, n: int):
    """(atoms one-hot [n, N, A], adjacency one-hot [n, 4, N, N]) float32: the first n of a cache, or random."""
    import numpy as np
    import torch

    nodes, atom_ch, bond_ch = config.max_nodes, config.num_atom_channels, config.num_bond_channels
    if args.data_dir:
        path = os.path.join(args.data_dir, f"{args.dataset or args.preset}_kekulized.npz")
        with np.load(path) as z:
            atoms, bonds = z["atoms"][:n], z["bonds"][:n]
        reps = -(-n // len(atoms))
        atoms, bonds = np.tile(atoms, (reps, 1))[:n], np.tile(bonds, (reps, 1, 1))[:n]
        atoms, bonds = torch.from_numpy(atoms.astype(np.int64)), torch.from_numpy(bonds.astype(np.int64))
    else:
        g = torch.Generator().manual_seed(args.seed)
        atoms = torch.randint(0, atom_ch, (n, nodes), generator=g)
        upper = torch.triu(torch.randint(0, bond_ch, (n, nodes, nodes), generator=g), 1)
        bonds = upper + upper.transpose(1, 2) + torch.diag_embed(torch.full((n, nodes), bond_ch - 1))
    x = torch.nn.functional.one_hot(atoms, atom_ch).float()
    adj = torch.nn.functional.one_hot(bonds, bond_ch).permute(0, 3, 1, 2).float().contiguous()
    return x, adj


def build(args):
    import torch
    from moflow.config import make_model_config
    from moflow.model import MoFlow, initialize_actnorm

    torch.manual_seed(args.seed)
    config = make_model_config(args.preset)
    model = MoFlow(config)
    x, adj = molecules(args, config, args.batch_size)
    initialize_actnorm(model, adj, x)
    return model, x, adj


def train_step_fn(args, model):
    import torch
    from moflow.model import MoFlowObjective

    objective = MoFlowObjective(model).train()
    if args.compile:
        objective = torch.compile(objective)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.99))

    def step(x, adj):
        loss, _, _ = objective(adj, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss
    return step


def reverse_fn(args, model):
    import torch

    model.eval()
    reverse = torch.compile(model.reverse) if args.compile else model.reverse
    generator = torch.Generator().manual_seed(args.seed)

    def step():
        with torch.no_grad():
            return reverse(model.sample_latent(args.reverse_batch_size, 0.6, generator=generator))
    return step


def phase_step(args):
    """(step function taking a step number, molecules per step) for ``args.phase``."""
    model, x, adj = build(args)
    if args.phase == "train":
        train_step = train_step_fn(args, model)

        def step(i):
            return train_step(x, adj)
        return step, args.batch_size
    reverse = reverse_fn(args, model)

    def step(i):
        return reverse()
    return step, args.reverse_batch_size


def run_phase(args, build=phase_step) -> dict:
    """The BENCH figures of ``args.phase``; ``build(args)`` gives (step function, molecules per step)."""
    import torch
    torch.set_num_threads(args.threads)
    step, batch = build(args)
    wall, cpu, before = harness.timed(step, args.warmup, args.steps)
    peak = harness.peak_rss_mb()
    p, seconds, cpu = args.phase, harness.median(wall), harness.median(cpu)
    flops = harness.measure_flops(p, step, [0], harness.cpu_seconds_per_thread(cpu))  # the same batch every step
    import moflow
    return {"source": os.path.dirname(os.path.abspath(moflow.__file__)),
            f"{p}_throughput": batch / seconds, f"{p}_latency_ms": seconds * 1e3,
            f"{p}_cpu_ms": cpu * 1e3,
            f"{p}_peak_memory_mb": peak, f"{p}_memory_growth_mb": peak - before, **flops}


def profile_phase(args) -> None:
    """torch.profiler over ``--steps`` steps: top ops by self time, then the model's layer classes."""
    import torch

    import moflow.model.glow as glow
    import moflow.model.layers as layers

    for mod in (layers, glow):
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__ == mod.__name__:
                for name in ("forward", "reverse"):
                    if name in vars(obj):
                        harness.label(obj, name, f"{obj.__name__}.{name}")
    torch.set_num_threads(args.threads)
    step, _ = phase_step(args)
    prof, wall = harness.profile_steps(step, args.warmup, args.steps)
    print(f"### {args.preset} {args.phase}: {wall * 1e3:.1f} ms per step under the profiler "
          f"({args.steps} steps, {args.threads} thread(s))")
    harness.print_profile(prof, args.steps, args.profile_rows,
                          "layer method | total CPU share (incl. children) | ms/step | calls/step")


def main(argv=None) -> int:
    return harness.main(__file__, parse_args(argv), argv, ("train", "reverse"), run_phase, profile_phase)


if __name__ == "__main__":
    sys.exit(main())
