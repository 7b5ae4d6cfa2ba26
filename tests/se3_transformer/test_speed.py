"""Speed paths give the same function: reverse-edge sharing, and the benchmark harness runs.

Reverse-edge sharing applies only when every edge has a reverse twin with the same edge features
(molecules); the other model tests use random per-direction features, so they run the unshared path.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from e3nn import o3

from runtime.graph import GraphBatch
from se3_transformer.model import FuseLevel
from se3_transformer.model.transformer import edge_scalars, reverse_edge_order
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
    scalars = edge_scalars(batch, batch.rel_pos())
    perm = reverse_edge_order(batch.edge_index, scalars)
    half = batch.num_edges // 2
    ordered = batch.edge_index[:, perm]
    assert torch.equal(ordered[:, :half], ordered[:, half:].flip(0))
    assert torch.equal(torch.sort(perm).values, torch.arange(batch.num_edges))
    unpaired = random_batch()  # per-direction random features
    assert reverse_edge_order(unpaired.edge_index, edge_scalars(unpaired, unpaired.rel_pos())) is None
    assert reverse_edge_order(batch.edge_index[:, 1:], scalars[1:]) is None  # an edge without its twin


@pytest.mark.parametrize("level,low_memory,pad", [(FuseLevel.NONE, False, False), (FuseLevel.NONE, False, True),
                                                  (FuseLevel.PARTIAL, False, False), (FuseLevel.FULL, False, True),
                                                  (FuseLevel.NONE, True, False)])
def test_shared_reverse_edges_equal_unshared_values_and_gradients(level, low_memory, pad):
    batch = symmetric_batch()
    shared = tiny_model(fuse_level=level, low_memory=low_memory, use_pad_trick=pad)
    plain = tiny_model(fuse_level=level, low_memory=low_memory, use_pad_trick=pad, share_reverse_edges=False)
    plain.load_state_dict(shared.state_dict())
    out_shared, out_plain = shared(batch), plain(batch)
    assert torch.allclose(out_shared, out_plain, atol=ATOL64)
    out_shared.sum().backward()
    out_plain.sum().backward()
    for (name, p), q in zip(shared.named_parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-9), name


def test_shared_reverse_edges_keep_invariance():
    batch = symmetric_batch()
    model = tiny_model()
    torch.manual_seed(3)
    rotation = o3.rand_matrix(dtype=torch.float64)
    with torch.no_grad():
        out = model(batch)
        out_moved = model(moved(batch, rotation, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)))
    assert torch.allclose(out, out_moved, atol=ATOL64)


def test_bench_model_smoke():
    """The benchmark harness runs a tiny configuration and prints its BENCH line."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts/se3_transformer/bench_model.py"),
                          "--preset", "small", "--num_layers", "1", "--batch_size", "4", "--warmup", "0",
                          "--steps", "1", "--precompute_bases", "--phase", "train"],
                         stdout=subprocess.PIPE, text=True, check=True, timeout=120).stdout
    line = [x for x in out.splitlines() if x.startswith("BENCH ")][-1]
    figures = json.loads(line[len("BENCH "):])
    assert figures["train_throughput"] > 0 and figures["train_peak_memory_mb"] > 0


def test_precomputed_bases_memory_estimate_is_printed_and_exact():
    from se3_transformer.data.qm9 import basis_bytes_per_edge, load_qm9, precompute_bases
    arrays = load_qm9("sample").subset(np.arange(20))
    messages = []
    bases = precompute_bases(arrays, 2, report=messages.append)
    actual = sum(v.numel() * v.element_size() for v in bases.values())
    assert actual == int(arrays.n_edge.sum()) * basis_bytes_per_edge(2)
    assert len(messages) == 1 and f"{int(arrays.n_edge.sum()):,} edges" in messages[0]
