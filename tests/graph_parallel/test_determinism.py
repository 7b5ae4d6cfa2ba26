"""Repeated CPU steps are bit-identical with 2 threads: the premise of exact resume.

Advanced-indexing gathers (``x[idx]``) backpropagate through ``index_put_(accumulate=True)``, which
PyTorch documents as nondeterministic on CPU tensors when several threads run it; the models gather
with ``index_select`` (backward ``index_add_``), which is deterministic on CPU. This reproduced on
GemNet-T before the change (forces and 71 gradients differed run to run).
"""
import pytest
import torch

from graph_parallel.data import EMBEDDED_DATA_DIR, LmdbDataset, collate_frames
from graph_parallel.models import build_model, predict
from graph_parallel.parallel import partition_graph


@pytest.mark.parametrize("name", ["dimenetpp", "gemnet_t", "gemnet_dt"])
def test_energy_forces_and_gradients_repeat_bit_for_bit(name):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        model = build_model(name, "small", cutoff=4.5)
        ds = LmdbDataset(EMBEDDED_DATA_DIR / "train.lmdb")
        batch = collate_frames([ds[i] for i in range(0, 72, 9)], 4.5, 20, symmetric=model.symmetric_graph)
        part = partition_graph(batch.edge_index, batch.cell_offsets, batch.num_atoms, 0, 1, model.triplet_kind)
        runs = []
        for _ in range(2):
            model.zero_grad()
            energy, forces = predict(model, batch, part, None)
            (energy.sum() + forces.pow(2).sum()).backward()
            runs.append([energy.detach(), forces.detach()] + [p.grad.clone() for p in model.parameters()])
        for other in runs[1:]:
            assert all(torch.equal(a, b) for a, b in zip(runs[0], other))
    finally:
        torch.set_num_threads(threads)
