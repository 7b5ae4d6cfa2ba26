"""Differentiable collectives and graph partitioning, against single-process references (gloo, CPU)."""
import pytest
import torch

from graph_parallel.parallel import all_reduce, even_split, gather, partition_graph, reduce_scatter, split
from runtime.testing import run_distributed


def _data(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def collectives_worker(rank, world, sizes):
    import torch.distributed as dist

    group = dist.group.WORLD
    n, out = sum(sizes), {}
    start = sum(sizes[:rank])
    own = slice(start, start + sizes[rank])
    full = _data(0, n, 3)

    # gather: forward = concatenation; backward = sum over ranks of each rank's upstream grad, own chunk
    x = full[own].clone().requires_grad_()
    y = gather(x, sizes, group)
    (y * _data(100 + rank, n, 3)).sum().backward()
    out["gather"] = (y.detach(), x.grad)

    # reduce_scatter: forward = own chunk of the sum; backward = all-gather
    z = _data(10 + rank, n, 3).requires_grad_()
    r = reduce_scatter(z, sizes, group)
    (r * _data(200 + rank, n, 3)[own]).sum().backward()
    out["reduce_scatter"] = (r.detach(), z.grad)

    # all_reduce: forward = sum; backward = sum of the ranks' grads
    z = _data(10 + rank, n, 3).requires_grad_()
    a = all_reduce(z, group)
    (a * _data(300 + rank, n, 3)).sum().backward()
    out["all_reduce"] = (a.detach(), z.grad)

    # split: forward = own chunk; backward = zeros outside it
    z = _data(10 + rank, n, 3).requires_grad_()
    s = split(z, sizes, group)
    (s * _data(400 + rank, n, 3)[own]).sum().backward()
    out["split"] = (s.detach(), z.grad)

    # double backward through gather (its backward, reduce-scatter, is differentiated again)
    x = full[own].clone().requires_grad_()
    y = gather(x, sizes, group)
    (g,) = torch.autograd.grad((y ** 2 * _data(100 + rank, n, 3)).sum(), x, create_graph=True)
    (g ** 2).sum().backward()
    out["double"] = (g.detach(), x.grad)
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("sizes", [(4, 3), (3, 2, 2), (1, 0, 6)])
def test_collectives_forward_backward(sizes):
    world, n = len(sizes), sum(sizes)
    results = run_distributed(collectives_worker, world, sizes)
    full = _data(0, n, 3)
    starts = [sum(sizes[:r]) for r in range(world)]
    owns = [slice(s, s + k) for s, k in zip(starts, sizes)]
    w = {k: [_data(k + r, n, 3) for r in range(world)] for k in (100, 200, 300, 400)}
    z = [_data(10 + r, n, 3) for r in range(world)]
    total_z = sum(z)
    for r, res in enumerate(results):
        y, gx = res["gather"]
        torch.testing.assert_close(y, full)
        torch.testing.assert_close(gx, sum(w[100])[owns[r]])
        val, gz = res["reduce_scatter"]
        torch.testing.assert_close(val, total_z[owns[r]])
        torch.testing.assert_close(gz, torch.cat([w[200][q][owns[q]] for q in range(world)]))
        val, gz = res["all_reduce"]
        torch.testing.assert_close(val, total_z)
        torch.testing.assert_close(gz, sum(w[300]))
        val, gz = res["split"]
        torch.testing.assert_close(val, z[r][owns[r]])
        expected = torch.zeros(n, 3, dtype=torch.float64)
        expected[owns[r]] = w[400][r][owns[r]]
        torch.testing.assert_close(gz, expected)
        # objective sum_r sum(g_r^2) with g_r = 2 x_r S_r, S = sum of the ranks' weights
        s_own, x = sum(w[100])[owns[r]], full[owns[r]]
        g, gx = res["double"]
        torch.testing.assert_close(g, 2 * x * s_own)
        torch.testing.assert_close(gx, 8 * x * s_own ** 2)


def test_even_split_never_leaves_a_rank_empty():
    assert even_split(7, 3) == [3, 2, 2]
    assert even_split(3, 3) == [1, 1, 1]
    with pytest.raises(ValueError, match="empty"):
        even_split(2, 3)


def _toy_graph():
    from graph_parallel.data import radius_graph_pbc

    pos = _data(5, 7, 3).float() * 1.2
    edge_index, offsets = radius_graph_pbc(pos, torch.eye(3) * 4.0, cutoff=3.0, max_neighbors=50)
    return edge_index, offsets


def test_partition_covers_every_edge_and_triplet_once():
    edge_index, offsets = _toy_graph()
    full = partition_graph(edge_index, offsets, 7, 0, 1)
    ref = set(zip(full.id_kj.tolist(), full.id_ji_local.tolist()))
    assert len(ref) == full.id_kj.numel() > 0
    # triplets: k->j feeds j->i, never the reverse image of j->i
    src, tgt = edge_index
    kj, ji = full.id_kj, full.id_ji_local
    assert torch.all(tgt[kj] == src[ji])
    assert not torch.any((src[kj] == tgt[ji]) & (offsets[kj] == -offsets[ji]).all(1))
    for size in (2, 3):
        parts = [partition_graph(edge_index, offsets, 7, r, size) for r in range(size)]
        assert [p.num_local_atoms for p in parts] == even_split(7, size)
        assert sum(p.num_local_edges for p in parts) == edge_index.shape[1]
        got = set()
        for p in parts:
            assert torch.all((tgt[p.edges] >= p.atom_start) & (tgt[p.edges] < p.atom_end))
            got |= set(zip(p.id_kj.tolist(), (p.id_ji_local + p.edge_start).tolist()))
        assert got == ref


def test_shared_target_partition_and_reverse_edges():
    from graph_parallel.data import radius_graph_pbc
    from graph_parallel.parallel import reverse_edges

    pos = _data(6, 7, 3).float() * 1.2
    edge_index, offsets = radius_graph_pbc(pos, torch.eye(3) * 4.0, cutoff=3.0, max_neighbors=50, symmetric=True)
    src, tgt = edge_index
    full = partition_graph(edge_index, offsets, 7, 0, 1, triplets="shared_target")
    ba, ca = full.id3_ba_local, full.id3_ca_local
    assert torch.all(tgt[ba] == tgt[ca]) and torch.all(ba != ca)
    # every ordered pair of distinct edges into the same atom, exactly once
    expected = sum(int(n) * (int(n) - 1) for n in torch.bincount(tgt, minlength=7))
    assert len(set(zip(ba.tolist(), ca.tolist()))) == ba.numel() == expected
    swap = reverse_edges(edge_index, offsets, torch.arange(edge_index.shape[1]))
    assert torch.equal(swap[swap], torch.arange(edge_index.shape[1]))
    assert torch.equal(src[swap], tgt) and torch.equal(offsets[swap], -offsets)
    for size in (2, 3):
        got = set()
        for r in range(size):
            p = partition_graph(edge_index, offsets, 7, r, size, triplets="shared_target")
            assert torch.equal(p.id_swap, swap[p.edges])
            # ragged positions enumerate each edge's triplets 0..k-1
            for e in p.id3_ca_local.unique():
                assert sorted(p.id3_ragged[p.id3_ca_local == e].tolist()) == list(range(int((p.id3_ca_local == e).sum())))
            got |= set(zip((p.id3_ba_local + p.edge_start).tolist(), (p.id3_ca_local + p.edge_start).tolist()))
        assert got == set(zip(ba.tolist(), ca.tolist()))
    with pytest.raises(ValueError, match="reverse"):
        plain, plain_off = radius_graph_pbc(pos, torch.eye(3) * 4.0, cutoff=3.0, max_neighbors=2)
        partition_graph(plain, plain_off, 7, 0, 1, triplets="shared_target")


def test_partition_rejects_unsorted_edges():
    edge_index, offsets = _toy_graph()
    with pytest.raises(ValueError, match="sorted"):
        partition_graph(edge_index.flip(1), offsets.flip(0), 7, 0, 2)
    with pytest.raises(ValueError, match="empty"):
        partition_graph(edge_index, offsets, 7, 0, 8)
