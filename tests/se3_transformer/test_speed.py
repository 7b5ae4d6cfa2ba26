"""Speed paths give the same function: reverse-edge sharing, and the benchmark harness runs.

Reverse-edge sharing applies only to a ``PairedGraphBatch`` (every edge has a reverse twin with the
same edge features, ordered ``[A, reverse(A)]`` by ``collate``); the other model tests use plain
batches with random per-direction features, so they run the unshared path.
"""
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from e3nn import o3

from runtime.graph import GraphBatch
from se3_transformer.model import FuseLevel
from se3_transformer.model.pairing import PairedGraphBatch, pair_reverse_edges, reverse_edge_order
from tests.se3_transformer.helpers import moved, random_batch
from tests.se3_transformer.test_model import ATOL64, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def symmetric_batch(dtype=torch.float64) -> GraphBatch:
    """``random_batch`` with bond-like features: the same for both directions of an edge."""
    batch = random_batch(dtype=dtype)
    src, dst = batch.edge_index
    n = batch.num_nodes
    table = torch.randn(n, n, 4, generator=torch.Generator().manual_seed(1), dtype=dtype)
    feats = table[torch.minimum(src, dst), torch.maximum(src, dst)]
    return GraphBatch(pos=batch.pos, edge_index=batch.edge_index, batch=batch.batch, ptr=batch.ptr,
                      node_feats=batch.node_feats, edge_feats=feats)


def test_reverse_edge_order_pairs_twins_only():
    batch = symmetric_batch()
    perm = reverse_edge_order(batch.edge_index, batch.edge_feats)
    half = batch.num_edges // 2
    ordered = batch.edge_index[:, perm]
    assert torch.equal(ordered[:, :half], ordered[:, half:].flip(0))
    assert torch.equal(torch.sort(perm).values, torch.arange(batch.num_edges))
    paired, same = pair_reverse_edges(batch)
    assert isinstance(paired, PairedGraphBatch) and torch.equal(same, perm)
    assert torch.equal(paired.edge_feats[:half], paired.edge_feats[half:])
    unpaired = random_batch()  # per-direction random features
    assert reverse_edge_order(unpaired.edge_index, unpaired.edge_feats) is None
    assert pair_reverse_edges(unpaired) == (unpaired, None)
    assert reverse_edge_order(batch.edge_index[:, 1:], batch.edge_feats[1:]) is None  # an edge without its twin
    with pytest.raises(ValueError, match="even edge count"):
        PairedGraphBatch(**{**vars(paired), "edge_index": paired.edge_index[:, 1:], "edge_feats": None})


@pytest.mark.parametrize("level,low_memory,pad", [(FuseLevel.NONE, False, False), (FuseLevel.NONE, False, True),
                                                  (FuseLevel.PARTIAL, False, False), (FuseLevel.FULL, False, True),
                                                  (FuseLevel.NONE, True, False)])
def test_shared_reverse_edges_equal_unshared_values_and_gradients(level, low_memory, pad):
    batch = symmetric_batch()
    paired, _ = pair_reverse_edges(batch)
    shared = tiny_model(fuse_level=level, low_memory=low_memory, use_pad_trick=pad)
    plain = tiny_model(fuse_level=level, low_memory=low_memory, use_pad_trick=pad, share_reverse_edges=False)
    plain.load_state_dict(shared.state_dict())
    out_shared, out_plain = shared(paired), plain(batch)  # the plain model in the original edge order
    assert torch.allclose(out_shared, out_plain, atol=ATOL64)
    out_shared.sum().backward()
    out_plain.sum().backward()
    for (name, p), q in zip(shared.named_parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-9), name


def test_shared_reverse_edges_keep_invariance():
    batch, _ = pair_reverse_edges(symmetric_batch())
    model = tiny_model()
    torch.manual_seed(3)
    rotation = o3.rand_matrix(dtype=torch.float64)
    translated = moved(batch, rotation, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    with torch.no_grad():
        out = model(batch)
        out_moved = model(replace(batch, pos=translated.pos))  # still a PairedGraphBatch
    assert torch.allclose(out, out_moved, atol=ATOL64)


def sample_batches(num_molecules: int = 12, precompute: bool = False):
    """(paired batch from ``collate``, the same molecules in the data's own edge order) of the QM9 sample."""
    from se3_transformer.data.qm9 import QM9GraphDataset, load_qm9, precompute_bases
    arrays = load_qm9("sample", num_molecules=num_molecules)
    bases = precompute_bases(arrays, 2) if precompute else None
    batch = QM9GraphDataset(arrays, np.arange(num_molecules), bases=bases).collate(np.arange(num_molecules))
    plain = QM9GraphDataset(arrays, np.arange(num_molecules)).collate(np.arange(num_molecules)).graph
    perm = reverse_edge_order(plain.edge_index, plain.edge_feats)
    plain = GraphBatch(pos=plain.pos, edge_index=plain.edge_index[:, perm.argsort()], batch=plain.batch,
                       ptr=plain.ptr, node_feats=plain.node_feats, edge_feats=plain.edge_feats[perm.argsort()])
    return batch, plain


@pytest.mark.parametrize("level", [FuseLevel.NONE, FuseLevel.FULL])
def test_collated_batch_gives_the_same_output_with_and_without_sharing(level):
    batch, plain = sample_batches(precompute=True)
    assert isinstance(batch.graph, PairedGraphBatch)
    shared = tiny_model(torch.float32, fuse_level=level)
    unshared = tiny_model(torch.float32, fuse_level=level, share_reverse_edges=False)
    with torch.no_grad():
        out = shared(batch.graph, batch.basis)
        assert torch.allclose(out, unshared(batch.graph, batch.basis), atol=1e-5)
        assert torch.allclose(out, shared(plain), atol=1e-5)  # data order, bases computed in the model
        assert torch.allclose(out, shared(batch.graph), atol=1e-5)


HOST_READS = ("aten._local_scalar_dense", "aten.nonzero", "aten.equal", "aten.item")


def count_host_reads(fn) -> int:
    """How many ops of ``fn()`` (forward and backward) read tensor values on the host."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func.overloadpacket) in HOST_READS or func.name().split(".")[0] in HOST_READS:
                Counter.count += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        fn()
    return Counter.count


@pytest.mark.parametrize("level", [FuseLevel.NONE, FuseLevel.FULL])
def test_shared_step_reads_nothing_on_the_host(level):
    """A training step on a collated batch makes no host read: the pairing travels in the batch."""
    model = tiny_model(torch.float32, fuse_level=level)
    cached, _ = sample_batches(precompute=True)
    assert count_host_reads(lambda: model(cached.graph, cached.basis).sum().backward()) == 0
    # computing the bases in the model adds only its CPU-only zero-length check, shared or not
    batch, _ = sample_batches()
    unshared = tiny_model(torch.float32, fuse_level=level, share_reverse_edges=False)
    assert count_host_reads(lambda: model(batch.graph).sum().backward()) == \
        count_host_reads(lambda: unshared(batch.graph).sum().backward())


def test_bench_model_smoke():
    """The benchmark harness runs a tiny configuration and prints its BENCH line."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts/se3_transformer/bench_model.py"),
                          "--preset", "small", "--num_layers", "1", "--batch_size", "4", "--warmup", "0",
                          "--steps", "1", "--precompute_bases", "--phase", "train"],
                         stdout=subprocess.PIPE, text=True, check=True, timeout=120).stdout
    line = [x for x in out.splitlines() if x.startswith("BENCH ")][-1]
    figures = json.loads(line[len("BENCH "):])
    assert figures["train_throughput"] > 0 and figures["train_peak_memory_mb"] > 0
    assert figures["train_gflop_per_step"] > 0 and figures["peak_gflops"] > 0
    assert figures["train_gflops"] / figures["peak_gflops"] == pytest.approx(figures["train_peak_fraction"])


def test_precomputed_bases_memory_estimate_is_printed_and_exact():
    from se3_transformer.data.qm9 import basis_bytes_per_edge, load_qm9, precompute_bases
    arrays = load_qm9("sample").subset(np.arange(20))
    messages = []
    bases = precompute_bases(arrays, 2, report=messages.append)
    actual = sum(v.numel() * v.element_size() for v in bases.values())
    assert actual == int(arrays.n_edge.sum()) * basis_bytes_per_edge(2)
    assert len(messages) == 1 and f"{int(arrays.n_edge.sum()):,} edges" in messages[0]
