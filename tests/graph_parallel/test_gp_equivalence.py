"""Graph-parallel runs equal the single-process run: energies, forces, loss and parameter gradients.

DimeNet++, GemNet-T and GemNet-dT run in float64, so the only differences are summation order:
tolerance rtol 1e-8, atol 1e-10 (float64 round-off is ~1e-16 relative; a wrong or missing
cross-rank term is O(1e-3) or larger). One process group per test serves all three models.
"""
import pytest
import torch

from graph_parallel.data import EMBEDDED_DATA_DIR, LmdbDataset, collate_frames
from graph_parallel.losses import Normalizer, s2ef_loss
from graph_parallel.models import build_model, predict
from graph_parallel.parallel import partition_graph, sync_gradients
from runtime.testing import run_distributed

TOL = dict(rtol=1e-8, atol=1e-10)
CUTOFF, MAX_NEIGHBORS = 4.5, 20
MODELS = ("dimenetpp", "gemnet_t", "gemnet_dt")
# 14 + 15 atoms and 14 atoms: totals 29 and 43 split unevenly over 2 and 3 ranks
FRAMES_A, FRAMES_B = [0, 7], [20]


def make_batch(indices, model):
    ds = LmdbDataset(EMBEDDED_DATA_DIR / "train.lmdb")
    return collate_frames([ds[i] for i in indices], CUTOFF, MAX_NEIGHBORS,
                          symmetric=model.symmetric_graph).to(dtype=torch.float64)


def make_model(name):
    """The same weights in every process to float64 round-off: built in float64, because the
    orthogonal init's QR differs with the thread count (float32 would differ by ~1e-7; training
    broadcasts rank 0's model for that reason)."""
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = build_model(name, "small", cutoff=CUTOFF).double()
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():                 # zero-initialised output heads would give zero gradients
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for n, b in model.named_buffers():
            if n.endswith("scale"):       # GemNet scaling factors: exercise non-trivial values
                b.fill_(0.5 + torch.rand(()).item())
    return model


def run(name, frames, gp_rank=0, gp_size=1, gp_group=None, dp_group=None):
    model = make_model(name)
    batch = make_batch(frames, model)
    part = partition_graph(batch.edge_index, batch.cell_offsets, batch.num_atoms, gp_rank, gp_size,
                           model.triplet_kind)
    energy, forces = predict(model, batch, part, gp_group)
    loss, value = s2ef_loss(energy, forces, batch, Normalizer(0.5, 2.0), dp_group=dp_group)
    loss.backward()
    sync_gradients(model.parameters())
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return {"energy": energy.detach(), "forces": forces.detach(), "loss": value, "grads": grads,
            "num_atoms": batch.num_atoms}


def gp_worker(rank, world, gp_size, frames_per_dp):
    from runtime.distributed import ProcessGrid

    grid = ProcessGrid(gp_size)
    return {name: run(name, frames_per_dp[grid.dp_rank], grid.gp_rank, gp_size, grid.gp_group, grid.dp_group)
            for name in MODELS}


def assert_close(got, ref, what):
    torch.testing.assert_close(got, ref, **TOL, msg=lambda m: f"{what}: {m}")


@pytest.mark.distributed
@pytest.mark.parametrize("gp_size", [2, 3])
def test_graph_parallel_equals_single_process(gp_size):
    frames = FRAMES_A + FRAMES_B
    refs = {name: run(name, frames) for name in MODELS}
    results = run_distributed(gp_worker, gp_size, gp_size, [frames])
    for name, ref in refs.items():
        assert ref["forces"].abs().max() > 1e-3 and all(g.abs().max() > 0 for g in ref["grads"].values()), name
        for got in (r[name] for r in results):
            assert got["num_atoms"] % gp_size != 0
            for key in ("energy", "forces", "loss"):
                assert_close(got[key], ref[key], f"{name} {key}")
            assert got["grads"].keys() == ref["grads"].keys()
            for n in ref["grads"]:
                assert_close(got["grads"][n], ref["grads"][n], f"{name} grad {n}")


@pytest.mark.distributed
def test_data_x_graph_parallel_equals_merged_batch():
    """4 processes: 2 data-parallel groups x 2 graph-parallel ranks == 1 process on both batches."""
    refs = {name: run(name, FRAMES_A + FRAMES_B) for name in MODELS}
    results = run_distributed(gp_worker, 4, 2, [FRAMES_A, FRAMES_B])
    n_a = len(FRAMES_A)
    for name, ref in refs.items():
        atoms_a = results[0][name]["num_atoms"]
        for rank, res in enumerate(results):
            got, first = res[name], rank // 2 == 0
            sl_e = slice(0, n_a) if first else slice(n_a, None)
            sl_f = slice(0, atoms_a) if first else slice(atoms_a, None)
            assert_close(got["energy"], ref["energy"][sl_e], f"{name} energy")
            assert_close(got["forces"], ref["forces"][sl_f], f"{name} forces")
            assert_close(got["loss"], ref["loss"], f"{name} loss")
            for n in ref["grads"]:
                assert_close(got["grads"][n], ref["grads"][n], f"{name} grad {n}")
