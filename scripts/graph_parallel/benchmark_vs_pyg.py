"""This project's DimeNet++ against PyG's ``DimeNetPlusPlus``, interleaved in one process.

    OMP_NUM_THREADS=1 python scripts/graph_parallel/benchmark_vs_pyg.py --preset base --batch_size 8

Same molecules (the first frames of the embedded EMT set), same edges and triplets (this project's
periodic radius graph and triplets: PyG's ``radius_graph`` needs pyg-lib, which pip cannot install
here, so PyG's modules are driven with periodic edge vectors as fairchem's wrapper does), same
hyperparameters and the same weights (PyG's random initialisation, mapped onto ours by
:func:`graph_parallel.convert.dimenetpp_from_state_dict`; PyG's zero-initialised output layers are
perturbed so that every weight gets a gradient).

Per round: one step of ours, then one of PyG's (order alternating by round), for
- ``train``: energy + forces (autograd, ``create_graph=True``), loss = energy MSE + force MSE,
  backward, AdamW step, zero_grad;
- ``inference``: energy + forces (``create_graph=False``), eval mode.
Reported per model and phase: ``*_throughput`` (structures/s at the median wall latency),
``*_latency_{p50,p90,p99}`` and ``*_cpu_ms`` (median CPU time of the process, less disturbed by
other jobs), ``*_peak_memory_mb`` (the process's peak RSS during that model's steps: the
high-water mark is reset before each step via /proc/self/clear_refs; both models live in the
process, so this includes the other's weights), ``*_memory_growth_mb`` (that peak minus the RSS
right before the step; in the BENCH line only: freed memory the allocator kept from the previous
step makes it 0 for whichever model reuses it, so compare peaks), and ``ratio`` = ours / PyG
(> 1 better for throughput; < 1 better for latency and memory). One ``BENCH {json}`` line at the end.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # scripts/: the shared harness
import bench_harness as harness  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base", help="this project's DimeNet++ preset (PyG gets the same sizes)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--cutoff", type=float, default=6.0)
    p.add_argument("--max_neighbors", type=int, default=50)
    p.add_argument("--molecules", action="store_true",
                   help="QM9 molecules (the SE(3) recipe's embedded sample, ~18 atoms, in a 100 A box: no "
                        "periodic neighbours) instead of the EMT slabs; use with --cutoff 5 as PyG's QM9 model")
    p.add_argument("--phase", choices=("train", "inference", "both"), default="both")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (one step of each model per round)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="also print each model's top ROWS ops per phase")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_hwm() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def s2ef_train_step(energy_forces, optimizer, batch):
    """One plain training step of any library's model: energy and force MSE, backward, optimizer step."""
    energy, forces = energy_forces()
    loss = (energy - batch.energy).pow(2).mean() + (forces - batch.forces).pow(2).sum(-1).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


CACHING_ALLOCATORS = ("tcmalloc", "jemalloc")


def caching_allocator() -> str:
    """The caching allocator preloaded into this process ("" if none). Memory one model frees stays in
    the process under it, so the peak RSS of two models' steps in one process is the larger of the two
    for both: :func:`interleaved_steps` then reports NaN peaks (the .sh wrappers use the system allocator)."""
    preload = os.environ.get("LD_PRELOAD", "")
    return next((name for name in CACHING_ALLOCATORS if name in preload), "")


def peak_memory_note() -> str:
    lib = caching_allocator()
    return (f"peak memory: not measured, {lib} is preloaded (memory one model frees stays in the process); "
            f"run with MOLRECIPES_ALLOCATOR=system (the .sh default) for it") if lib else ""


def interleaved_steps(fns, warmup: int, rounds: int):
    """Per name of the two steps in ``fns``: (wall s, CPU s) of each timed call, the peak RSS (MB) and its peak
    growth over the RSS before the call (NaN under a caching allocator, see :func:`caching_allocator`).
    One call of each per round, the order alternating by round."""
    first, second = fns
    wall, cpu = {n: [] for n in fns}, {n: [] for n in fns}
    peak, growth = {n: 0.0 for n in fns}, {n: 0.0 for n in fns}
    for r in range(warmup + rounds):
        for name in ((first, second) if r % 2 == 0 else (second, first)):
            _reset_hwm()
            before = harness.rss_mb()
            t0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            w, c = time.perf_counter() - t0, time.process_time() - c0
            if r >= warmup:
                wall[name].append(w)
                cpu[name].append(c)
                peak[name] = max(peak[name], _hwm_mb())
                growth[name] = max(growth[name], _hwm_mb() - before)
    if caching_allocator():
        peak, growth = {n: float("nan") for n in fns}, {n: float("nan") for n in fns}
    return wall, cpu, peak, growth


def qm9_frames(count: int):
    """The first ``count`` molecules of the SE(3) recipe's QM9 sample as frames in a 100 A box (targets zero)."""
    import numpy as np
    import torch

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    data = np.load(os.path.join(root, "se3_transformer", "data", "qm9_sample.npz"))
    ptr = np.concatenate([[0], np.cumsum(data["n_node"])])
    frames = []
    for m in range(count):
        pos = torch.from_numpy(data["node_pos"][ptr[m]:ptr[m + 1]]).float()
        n = pos.shape[0]
        zeros = torch.zeros(n, dtype=torch.long)
        frames.append({"pos": pos - pos.mean(0) + 50.0, "cell": 100.0 * torch.eye(3).unsqueeze(0),
                       "atomic_numbers": torch.from_numpy(data["node_attr"][ptr[m]:ptr[m + 1], 5]).long(),
                       "natoms": torch.tensor(n), "tags": zeros, "fixed": zeros,
                       "energy": torch.tensor(0.0), "forces": torch.zeros(n, 3),
                       "sid": torch.tensor(m), "fid": torch.tensor(0)})
    return frames


def build(args):
    """(batch, partition, ours, pyg, PyG's triplet indices)."""
    import torch
    from torch_geometric.nn.models import DimeNetPlusPlus

    from graph_parallel.convert import dimenetpp_from_state_dict
    from graph_parallel.data import EMBEDDED_DATA_DIR, LmdbDataset, collate_frames
    from graph_parallel.models.dimenet_pp import PRESETS
    from graph_parallel.parallel import partition_graph

    cfg = PRESETS[args.preset]
    torch.manual_seed(args.seed)
    pyg = DimeNetPlusPlus(hidden_channels=cfg.hidden_channels, out_channels=1, num_blocks=cfg.num_blocks,
                          int_emb_size=cfg.int_emb_size, basis_emb_size=cfg.basis_emb_size,
                          out_emb_channels=cfg.out_emb_channels, num_spherical=cfg.num_spherical,
                          num_radial=cfg.num_radial, cutoff=args.cutoff, envelope_exponent=cfg.envelope_exponent,
                          num_before_skip=cfg.num_before_skip, num_after_skip=cfg.num_after_skip,
                          num_output_layers=cfg.num_output_layers)
    with torch.no_grad():
        for block in pyg.output_blocks:               # zero-initialised: give every weight a gradient
            block.lin.weight.normal_(0, 0.01)
    ours = dimenetpp_from_state_dict(pyg.state_dict(), cutoff=args.cutoff, envelope_exponent=cfg.envelope_exponent)
    if args.molecules:
        frames = qm9_frames(args.batch_size)
    else:
        data = LmdbDataset(EMBEDDED_DATA_DIR / "train.lmdb")
        frames = [data[(9 * i) % len(data)] for i in range(args.batch_size)]
    batch = collate_frames(frames, args.cutoff, args.max_neighbors)
    part = partition_graph(batch.edge_index, batch.cell_offsets, batch.num_atoms, 0, 1, "incoming")
    return batch, part, ours, pyg


def pyg_energy(model, pos, batch, part):
    """PyG DimeNetPlusPlus.forward on the given periodic edges and triplets, energy per structure [B]."""
    import torch

    j, i = batch.edge_index                                       # edge j -> i
    shift = torch.einsum("ei,eij->ej", batch.cell_offsets.to(pos.dtype), batch.cell.to(pos.dtype)[batch.batch[i]])
    vec = pos[j] + shift - pos[i]                                 # pos_j - pos_i (imaged)
    dist = vec.norm(dim=-1)
    idx_kj, idx_ji = part.id_kj, part.id_ji_local                 # one rank: local = global
    pos_ji, pos_kj = vec[idx_ji], vec[idx_kj]
    a = (pos_ji * pos_kj).sum(dim=-1)
    b = torch.cross(pos_ji, pos_kj, dim=1).norm(dim=-1)
    angle = torch.atan2(b, a)                                     # as PyG's forward
    rbf, sbf = model.rbf(dist), model.sbf(dist, angle, idx_kj)
    x = model.emb(batch.atomic_numbers, rbf, i, j)
    p = model.output_blocks[0](x, rbf, i, num_nodes=pos.size(0))
    for interaction, output in zip(model.interaction_blocks, model.output_blocks[1:]):
        x = interaction(x, rbf, sbf, idx_kj, idx_ji)
        p = p + output(x, rbf, i, num_nodes=pos.size(0))
    return torch.zeros(batch.num_structures, dtype=p.dtype).index_add_(0, batch.batch, p.squeeze(-1))


def steps(args, batch, part, ours, pyg, phase):
    import torch
    from graph_parallel.models import predict

    def energy_forces(name, create_graph):
        if name == "ours":
            return predict(ours, batch, part, None, compute_forces=True, create_graph=create_graph)
        pos = batch.pos.detach().requires_grad_()
        with torch.enable_grad():
            energy = pyg_energy(pyg, pos, batch, part)
            (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
        return energy, -grad

    out = {}
    for name, model in (("ours", ours), ("pyg", pyg)):
        if phase == "inference":
            model.eval()
            out[name] = lambda n=name: [t.detach() for t in energy_forces(n, False)]
            continue
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        out[name] = lambda n=name, opt=opt: s2ef_train_step(lambda: energy_forces(n, True), opt, batch)
    return out


def run(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    batch, part, ours, pyg = build(args)
    figures = {"batch_size": args.batch_size, "edges": int(batch.edge_index.shape[1]), "triplets": int(part.id_kj.numel())}
    # same weights, same graph: the two energies agree (to float32 round-off and the float32-computed
    # Bessel constants of PyG; see tests/graph_parallel/test_convert.py for the float64 check)
    with torch.no_grad():
        e_ours = ours(batch.pos, batch, part)[0]
        e_pyg = pyg_energy(pyg, batch.pos, batch, part)
    figures["energy_max_rel_diff"] = float((e_ours - e_pyg).abs().max() / e_pyg.abs().max().clamp(min=1e-12))
    # inference first: memory the allocator keeps after the (larger) training steps would otherwise
    # put a floor under the inference peaks
    for phase in (("inference", "train") if args.phase == "both" else (args.phase,)):
        fns = steps(args, batch, part, ours, pyg, phase)
        wall, cpu, peak, growth = interleaved_steps(fns, args.warmup, args.rounds)
        for name in fns:
            med = statistics.median(wall[name])
            figures.update({f"{name}_{phase}_throughput": args.batch_size / med,
                            f"{name}_{phase}_latency_p50": med * 1e3,
                            f"{name}_{phase}_latency_p90": harness.percentile(wall[name], 0.9) * 1e3,
                            f"{name}_{phase}_latency_p99": harness.percentile(wall[name], 0.99) * 1e3,
                            f"{name}_{phase}_cpu_ms": statistics.median(cpu[name]) * 1e3,
                            f"{name}_{phase}_peak_memory_mb": peak[name],
                            f"{name}_{phase}_memory_growth_mb": growth[name]})
        paired = [p / o for o, p in zip(cpu["ours"], cpu["pyg"])]
        figures.update({f"ratio_{phase}_throughput": figures[f"ours_{phase}_throughput"] / figures[f"pyg_{phase}_throughput"],
                        f"ratio_{phase}_cpu_speedup": figures[f"pyg_{phase}_cpu_ms"] / figures[f"ours_{phase}_cpu_ms"],
                        f"ratio_{phase}_cpu_speedup_paired": statistics.median(paired),
                        f"ratio_{phase}_peak_memory": figures[f"ours_{phase}_peak_memory_mb"]
                        / max(figures[f"pyg_{phase}_peak_memory_mb"], 1e-9)})
        if args.profile:
            for name in fns:
                prof, _ = harness.profile_steps(lambda i, f=fns[name]: f(), 0, 1)
                print(f"\n{name}: top ops of one {phase} step")
                harness.print_profile(prof, 1, args.profile, "range | share | ms/step | calls/step", digits=1)
    return figures


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    figures = run(args)
    print(f"DimeNet++ {args.preset}, batch {args.batch_size} of {'QM9 molecules' if args.molecules else 'EMT slabs'} ({figures['edges']} edges, {figures['triplets']} triplets), "
          f"{args.rounds} interleaved rounds after {args.warmup} warm-up, {args.threads} thread(s); "
          f"energies ours vs PyG: max relative difference {figures['energy_max_rel_diff']:.1e}")
    note = peak_memory_note()
    if note:
        print(note)
    print("| phase | figure | ours | PyG | ours/PyG |\n|---|---|---|---|---|")
    for phase in ("train", "inference"):
        if f"ours_{phase}_cpu_ms" not in figures:
            continue
        for fig in ("throughput", "latency_p50", "latency_p90", "latency_p99", "cpu_ms", "peak_memory_mb"):
            o, p = figures[f"ours_{phase}_{fig}"], figures[f"pyg_{phase}_{fig}"]
            print(f"| {phase} | {fig} | {o:.4g} | {p:.4g} | {o / p if p else float('nan'):.3f} |")
        print(f"| {phase} | speed-up on CPU time (PyG/ours, paired median) | | | "
              f"{figures[f'ratio_{phase}_cpu_speedup_paired']:.3f} |")
    import graph_parallel
    figures["source"] = os.path.dirname(os.path.abspath(graph_parallel.__file__))
    print("BENCH " + json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
