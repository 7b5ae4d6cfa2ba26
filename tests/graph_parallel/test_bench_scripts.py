"""The DimeNet++ triplet sum against its gather-multiply-scatter definition, the GemNet partition's
kmax, smoke runs of the benchmark scripts at a tiny size (figures printed, none asserted), and the fairchem
benchmark's skip path."""
import json
import os
import subprocess
import sys

import torch

from graph_parallel.data import EMBEDDED_DATA_DIR, LmdbDataset, collate_frames
from graph_parallel.models.dimenet_pp import triplet_sum
from graph_parallel.parallel import partition_graph
from runtime.graph import scatter_sum
from tests.graph_parallel.gp_helpers import ROOT


def _batch(n=3, symmetric=False):
    ds = LmdbDataset(EMBEDDED_DATA_DIR / "train.lmdb")
    return collate_frames([ds[9 * i] for i in range(n)], 4.5, 20, symmetric=symmetric)


def test_triplet_sum_equals_gather_multiply_scatter_on_every_rank():
    batch = _batch()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch.edge_index.shape[1], 5, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    for size in (1, 2, 3):
        for rank in range(size):
            part = partition_graph(batch.edge_index, batch.cell_offsets, batch.num_atoms, rank, size, "incoming")
            s = torch.randn(part.id_kj.numel(), 4, generator=gen, dtype=torch.float64)
            ref = scatter_sum(x[part.id_kj] * (s @ w.t()), part.id_ji_local, part.num_local_edges)
            torch.testing.assert_close(triplet_sum(x, s, w, part), ref, rtol=1e-12, atol=1e-12)
            assert (part.kj_edges is None) == (size == 1)
            if size > 1:
                assert torch.equal(part.kj_edges[part.id_kj_compact], part.id_kj)


def test_gemnet_partition_carries_kmax_as_an_int():
    batch = _batch(symmetric=True)
    part = partition_graph(batch.edge_index, batch.cell_offsets, batch.num_atoms, 0, 2, "shared_target")
    assert isinstance(part.kmax, int) and part.kmax == int(part.id3_ragged.max()) + 1


def _run(script, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "graph_parallel" / script), *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("BENCH ")][-1]
    return json.loads(line[len("BENCH "):])


def test_bench_model_smoke():
    figures = _run("bench_model.py", "--model", "gemnet_t", "--preset", "small", "--batch_size", "1", "--cutoff", "4",
                   "--max_neighbors", "8", "--warmup", "0", "--steps", "1")
    for phase in ("train", "inference"):
        assert figures[f"{phase}_throughput"] > 0 and figures[f"{phase}_peak_memory_mb"] > 0
        assert figures[f"{phase}_gflop_per_step"] > 0 and figures[f"{phase}_peak_fraction"] > 0
    assert figures["source"].startswith(str(ROOT))


def test_benchmark_vs_pyg_smoke():
    figures = _run("benchmark_vs_pyg.py", "--preset", "small", "--batch_size", "1", "--cutoff", "4",
                   "--max_neighbors", "8", "--warmup", "0", "--rounds", "1")
    assert figures["energy_max_rel_diff"] < 1e-4          # same weights, edges and triplets
    assert figures["ratio_train_throughput"] > 0 and figures["ratio_inference_throughput"] > 0


def test_in_process_comparisons_report_no_peak_memory_under_a_caching_allocator(monkeypatch):
    """Under tcmalloc or jemalloc the memory one model frees stays in the process, so both models
    would show the same peak: the comparison reports NaN and says why, and the .sh wrappers
    default to the system allocator."""
    sys.path.insert(0, str(ROOT / "scripts" / "graph_parallel"))
    sys.path.insert(0, str(ROOT / "scripts"))
    import benchmark_vs_pyg

    fns = {"a": lambda: torch.ones(1000).sum(), "b": lambda: torch.ones(2000).sum()}
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    _, _, peak, growth = benchmark_vs_pyg.interleaved_steps(fns, 0, 2)
    assert all(v != v for v in [*peak.values(), *growth.values()])
    assert "tcmalloc is preloaded" in benchmark_vs_pyg.peak_memory_note()
    monkeypatch.setenv("LD_PRELOAD", "")
    _, _, peak, _ = benchmark_vs_pyg.interleaved_steps(fns, 0, 2)
    assert all(v > 0 for v in peak.values()) and benchmark_vs_pyg.peak_memory_note() == ""
    for script in ("benchmark_vs_pyg.sh", "benchmark_vs_fairchem.sh"):
        text = (ROOT / "scripts" / "graph_parallel" / script).read_text()
        assert text.index('MOLRECIPES_ALLOCATOR="${MOLRECIPES_ALLOCATOR:-system}"') < text.index("env.sh")


def test_benchmark_vs_fairchem_skips_with_one_line_without_fairchem(tmp_path):
    """An interpreter that lacks fairchem (this one: the project's environment never gets it) -> one
    `skip:` line, exit 0, no venv made and nothing run."""
    env = dict(os.environ, FAIRCHEM_PYTHON=sys.executable, FAIRCHEM_VENV=str(tmp_path / "venv"))
    out = subprocess.run(["bash", str(ROOT / "scripts" / "graph_parallel" / "benchmark_vs_fairchem.sh")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("skip: fairchem-core<2 is not importable"), out.stdout
    assert not (tmp_path / "venv").exists()
