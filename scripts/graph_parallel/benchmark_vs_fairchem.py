"""This project's GemNet-T / GemNet-dT against fairchem-core 1.x's ``GemNetT``, interleaved in one process.

    OMP_NUM_THREADS=1 /tmp/fcvenv/bin/python scripts/graph_parallel/benchmark_vs_fairchem.py --batch_size 8

Runs in the venv of ``benchmark_vs_fairchem.sh`` (fairchem-core 1.10 with the pure-PyTorch
torch_scatter/torch_sparse stand-ins of tests/graph_parallel/fairchem_shims.py). Same structures
(embedded EMT frames, cells rounded to float32-exact values as fairchem computes image offsets in
float32), same edges (fairchem gets the periodic radius graph and makes its own one-sided symmetric
graph and triplets; ours gets :func:`graph_parallel.models.model_graph` of the converted model, the
same selection), same hyperparameters and the same weights (fairchem's initialisation, scale factors
set to fixed values, mapped by :func:`graph_parallel.convert.gemnet_from_fairchem`).

Per round: one training step of ours, then one of fairchem's (order alternating by round): energy +
forces (conservative: autograd with ``create_graph=True``; dT: the direct force head), loss = energy
MSE + force MSE, backward, AdamW step, zero_grad. Reported per model: ``*_cpu_ms`` (median CPU time
of the process per step), ``*_wall_ms`` (median), ``*_peak_memory_mb`` (the process's peak RSS
during that model's steps, high-water mark reset before each step via /proc/self/clear_refs; both
models live in the process, so it includes the other's weights; NaN under a preloaded caching allocator,
which keeps the memory either model frees), and the paired median speed-up
fairchem/ours in CPU time. ``--profile`` adds each model's top ops. One ``BENCH {json}`` line.
"""
import argparse
import json
import os
import statistics
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(ROOT)
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # scripts/: the shared harness
import bench_harness as harness  # noqa: E402
sys.path.append(os.path.dirname(os.path.abspath(__file__)))
# the rounds, the peak RSS and the training step, as for PyG
from benchmark_vs_pyg import interleaved_steps, peak_memory_note, s2ef_train_step  # noqa: E402

SIZES = {   # the OC20 GemNet-T/dT sizes (= our "base" preset) and a tiny one for smoke runs
    "base": dict(num_spherical=7, num_radial=128, num_blocks=3, emb_size_atom=512, emb_size_edge=512,
                 emb_size_trip=64, emb_size_rbf=16, emb_size_cbf=16, emb_size_bil_trip=64, num_before_skip=1,
                 num_after_skip=2, num_concat=1, num_atom=3),
    "small": dict(num_spherical=7, num_radial=16, num_blocks=2, emb_size_atom=16, emb_size_edge=16,
                  emb_size_trip=8, emb_size_rbf=8, emb_size_cbf=6, emb_size_bil_trip=10, num_before_skip=1,
                  num_after_skip=2, num_concat=1, num_atom=2),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("gemnet_t", "gemnet_dt"), default="gemnet_t")
    p.add_argument("--preset", choices=tuple(SIZES), default="base")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--cutoff", type=float, default=6.0)
    p.add_argument("--max_neighbors", type=int, default=50)
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (one step of each model per round)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", type=int, default=0, metavar="ROWS", help="also print each model's top ROWS ops")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def fairchem_gemnet(args):
    from tests.graph_parallel.fairchem_shims import shim_modules

    sys.modules.update(shim_modules())
    from fairchem.core.models.gemnet.gemnet import GemNetT

    import torch
    torch.manual_seed(args.seed)
    model = GemNetT(**SIZES[args.preset], direct_forces=args.model == "gemnet_dt", cutoff=args.cutoff,
                    otf_graph=False)           # edges given (its max_neighbors is only for its own graph)
    with torch.no_grad():                              # as a fitted scale file would (0 = unfitted in fairchem)
        for k, (_, p) in enumerate(sorted((n, p) for n, p in model.named_parameters() if n.endswith("scale_factor"))):
            p.fill_(0.6 + 0.1 * k)
    return model


def build(args):
    """(fairchem's data, its model, our batch, partition, our model)."""
    import torch
    from graph_parallel.convert import gemnet_from_fairchem
    from graph_parallel.data import EMBEDDED_DATA_DIR, LmdbDataset, radius_graph_pbc
    from graph_parallel.data.batch import S2EFBatch
    from graph_parallel.models import model_graph
    from graph_parallel.parallel import partition_graph

    theirs = fairchem_gemnet(args)
    ours = gemnet_from_fairchem(theirs.state_dict(), cutoff=args.cutoff)
    ds = LmdbDataset(EMBEDDED_DATA_DIR / "train.lmdb")
    frames = [ds[(9 * i) % len(ds)] for i in range(args.batch_size)]
    items = [(f["atomic_numbers"].long(), f["pos"].float(), (f["cell"].reshape(3, 3).double() * 256).round().float()
              / 256, f["energy"].float().reshape(()), f["forces"].float()) for f in frames]
    theirs_edges, ours_edges, start = [], [], 0
    for z, pos, cell, *_ in items:
        for out, graph in ((theirs_edges, radius_graph_pbc), (ours_edges, lambda *a: model_graph(ours, *a))):
            e, o = graph(pos, cell, args.cutoff, args.max_neighbors)
            out.append((e + start, o.float()))
        start += len(z)
    natoms = torch.tensor([len(z) for z, *_ in items])
    common = dict(pos=torch.cat([it[1] for it in items]), cell=torch.stack([it[2] for it in items]),
                  atomic_numbers=torch.cat([it[0] for it in items]), natoms=natoms,
                  batch=torch.repeat_interleave(torch.arange(len(items)), natoms))
    data = types.SimpleNamespace(**common, edge_index=torch.cat([e for e, _ in theirs_edges], 1),
                                 cell_offsets=torch.cat([o for _, o in theirs_edges]),
                                 neighbors=torch.tensor([e.shape[1] for e, _ in theirs_edges]))
    n = common["pos"].shape[0]
    zeros = torch.zeros(n, dtype=torch.long)
    batch = S2EFBatch(**common, tags=zeros, fixed=zeros, energy=torch.stack([it[3] for it in items]),
                      forces=torch.cat([it[4] for it in items]), sid=torch.zeros(len(items)),
                      fid=torch.zeros(len(items)), edge_index=torch.cat([e for e, _ in ours_edges], 1),
                      cell_offsets=torch.cat([o for _, o in ours_edges]))
    part = partition_graph(batch.edge_index, batch.cell_offsets, batch.num_atoms, 0, 1, ours.triplet_kind)
    return data, theirs, batch, part, ours


def train_steps(data, theirs, batch, part, ours):
    """name -> one training step (energy + forces, MSE losses, backward, AdamW, zero_grad)."""
    import torch
    from graph_parallel.models import predict

    def ours_ef():
        return predict(ours, batch, part, None, compute_forces=True, create_graph=True)

    def theirs_ef():
        data.pos = batch.pos.detach().clone()          # fairchem sets requires_grad on data.pos itself
        out = theirs(data)
        return out["energy"].reshape(-1), out["forces"]

    steps = {}
    for name, model, ef in (("ours", ours, ours_ef), ("fairchem", theirs, theirs_ef)):
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        steps[name] = lambda ef=ef, opt=opt: s2ef_train_step(ef, opt, batch)
    return steps


def run(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    data, theirs, batch, part, ours = build(args)
    figures = {"model": args.model, "preset": args.preset, "batch_size": args.batch_size,
               "atoms": int(batch.pos.shape[0]), "edges": int(batch.edge_index.shape[1]),
               "triplets": int(part.id3_ragged.numel()) if hasattr(part, "id3_ragged") else None}
    with torch.no_grad() if args.model == "gemnet_dt" else torch.enable_grad():   # same weights and graph: agree
        from graph_parallel.models import predict
        e_ours = predict(ours, batch, part, None, compute_forces=False)[0].detach()
        data.pos = batch.pos.detach().clone()
        e_theirs = theirs(data)["energy"].reshape(-1).detach()
    figures["energy_max_rel_diff"] = float((e_ours - e_theirs).abs().max() / e_theirs.abs().max().clamp(min=1e-12))
    fns = train_steps(data, theirs, batch, part, ours)
    wall, cpu, peak, _ = interleaved_steps(fns, args.warmup, args.rounds)
    for name in fns:
        figures.update({f"{name}_cpu_ms": statistics.median(cpu[name]) * 1e3,
                        f"{name}_wall_ms": statistics.median(wall[name]) * 1e3,
                        f"{name}_peak_memory_mb": peak[name]})
    figures["cpu_speedup_paired"] = statistics.median(t / o for o, t in zip(cpu["ours"], cpu["fairchem"]))
    figures["peak_memory_ratio"] = figures["ours_peak_memory_mb"] / max(figures["fairchem_peak_memory_mb"], 1e-9)
    if args.profile:
        for name in fns:
            prof, _ = harness.profile_steps(lambda i, f=fns[name]: f(), 0, 1)
            print(f"\n{name}: top ops of one training step")
            harness.print_profile(prof, 1, args.profile, "range | share | ms/step | calls/step", digits=1)
    return figures


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    figures = run(args)
    name = {"gemnet_t": "GemNet-T", "gemnet_dt": "GemNet-dT"}[args.model]
    print(f"{name} {args.preset}, batch {args.batch_size} of EMT slabs ({figures['atoms']} atoms, {figures['edges']} "
          f"edges), train with forces, {args.rounds} interleaved rounds after {args.warmup} warm-up, "
          f"{args.threads} thread(s); energies ours vs fairchem: max relative difference "
          f"{figures['energy_max_rel_diff']:.1e}")
    note = peak_memory_note()
    if note:
        print(note)
    print("| figure | ours | fairchem | ours/fairchem |\n|---|---|---|---|")
    for fig in ("cpu_ms", "wall_ms", "peak_memory_mb"):
        o, t = figures[f"ours_{fig}"], figures[f"fairchem_{fig}"]
        print(f"| {fig} | {o:.4g} | {t:.4g} | {o / t if t else float('nan'):.3f} |")
    print(f"| speed-up on CPU time (fairchem/ours, paired median) | | | {figures['cpu_speedup_paired']:.3f} |")
    import graph_parallel
    figures["source"] = os.path.dirname(os.path.abspath(graph_parallel.__file__))
    print("BENCH " + json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
