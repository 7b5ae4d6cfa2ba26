"""Graph-parallel runs equal the single-process run: energies, forces, loss and parameter gradients.

Everything runs in float64, so the only differences are summation order: tolerance rtol 1e-8,
atol 1e-10 (float64 round-off is ~1e-16 relative; a wrong or missing cross-rank term is O(1)).
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
MODEL_KW = {"dimenetpp": dict(preset="small", cutoff=CUTOFF)}
# 14 + 15 atoms and 14 atoms: totals 29 and 43 split unevenly over 2 and 3 ranks
FRAMES_A, FRAMES_B = [0, 7], [20]


def make_batch(indices):
    ds = LmdbDataset(EMBEDDED_DATA_DIR / "train.lmdb")
    return collate_frames([ds[i] for i in indices], CUTOFF, MAX_NEIGHBORS).to(dtype=torch.float64)


def make_model(name):
    torch.manual_seed(0)
    kw = dict(MODEL_KW[name])
    model = build_model(name, kw.pop("preset"), **kw).double()
    with torch.no_grad():                         # zero-initialised output heads would give zero gradients
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def run(model, batch, gp_rank=0, gp_size=1, gp_group=None, dp_group=None):
    part = partition_graph(batch.edge_index, batch.cell_offsets, batch.num_atoms, gp_rank, gp_size)
    energy, forces = predict(model, batch, part, gp_group)
    loss, value = s2ef_loss(energy, forces, batch, Normalizer(0.5, 2.0), dp_group=dp_group)
    loss.backward()
    sync_gradients(model.parameters())
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return {"energy": energy.detach(), "forces": forces.detach(), "loss": value, "grads": grads}


def gp_worker(rank, world, name, gp_size, frames_per_dp):
    from runtime.distributed import ProcessGrid

    grid = ProcessGrid(gp_size)
    batch = make_batch(frames_per_dp[grid.dp_rank])
    out = run(make_model(name), batch, grid.gp_rank, gp_size, grid.gp_group, grid.dp_group)
    out["num_atoms"] = batch.num_atoms
    return out


def assert_same(got, ref):
    torch.testing.assert_close(got["energy"], ref["energy"], **TOL)
    torch.testing.assert_close(got["forces"], ref["forces"], **TOL)
    torch.testing.assert_close(got["loss"], ref["loss"], **TOL)
    assert got["grads"].keys() == ref["grads"].keys()
    for n in ref["grads"]:
        torch.testing.assert_close(got["grads"][n], ref["grads"][n], **TOL, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("name", sorted(MODEL_KW))
@pytest.mark.parametrize("gp_size", [2, 3])
def test_graph_parallel_equals_single_process(name, gp_size):
    frames = FRAMES_A + FRAMES_B
    ref = run(make_model(name), make_batch(frames))
    assert ref["forces"].abs().max() > 1e-3 and all(g.abs().max() > 0 for g in ref["grads"].values())
    results = run_distributed(gp_worker, gp_size, name, gp_size, [frames])
    assert results[0]["num_atoms"] % gp_size != 0
    for got in results:
        assert_same(got, ref)


@pytest.mark.parametrize("name", sorted(MODEL_KW))
def test_data_x_graph_parallel_equals_merged_batch(name):
    ref = run(make_model(name), make_batch(FRAMES_A + FRAMES_B))
    results = run_distributed(gp_worker, 4, name, 2, [FRAMES_A, FRAMES_B])
    n_a = len(FRAMES_A)
    atoms_a = results[0]["num_atoms"]
    for rank, got in enumerate(results):
        dp_rank = rank // 2
        sl_e = slice(0, n_a) if dp_rank == 0 else slice(n_a, None)
        sl_f = slice(0, atoms_a) if dp_rank == 0 else slice(atoms_a, None)
        torch.testing.assert_close(got["energy"], ref["energy"][sl_e], **TOL)
        torch.testing.assert_close(got["forces"], ref["forces"][sl_f], **TOL)
        torch.testing.assert_close(got["loss"], ref["loss"], **TOL)
        for n in ref["grads"]:
            torch.testing.assert_close(got["grads"][n], ref["grads"][n], **TOL, msg=lambda m: f"{n}: {m}")
