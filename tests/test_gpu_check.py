"""scripts/gpu_check.sh --dry_run: the GPU check's plumbing runs on CPU and writes its summary table."""
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_a_summary(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry_run", "--skip_tests",
                           "--out", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "summary.json").read_text())
    ran = [r for r in rows if r["status"] == "ok"]
    assert not [r for r in rows if r["status"] == "failed"]
    assert {(r["recipe"], r["phase"]) for r in ran if r["throughput"]} == {
        ("moflow", "train"), ("moflow", "inference"), ("se3_transformer", "train"),
        ("se3_transformer", "inference"), ("graph_parallel", "train")}
    assert all(r["throughput"] > 0 and r["latency_p50_ms"] > 0 for r in ran if r["phase"] in ("train", "inference"))
    table = (tmp_path / "summary.md").read_text()
    assert "4,524 molecules/s" in table and "9,710 molecules/s" in table  # NVIDIA's A100 figures beside ours
    assert "amp+cuda_graphs" in table and "gp_size 2" in table
    listed = {(r["recipe"], r["phase"], r["variant"]) for r in rows}
    for recipe in ("moflow", "se3_transformer", "graph_parallel"):      # every row issue 15 asks for is listed
        assert {(recipe, "resume", "fp32"), (recipe, "resume", "check"), (recipe, "evaluate", "fp32"),
                (recipe, "predict", "fp32"), (recipe, "sync debug", "check")} <= listed
    assert {("all", "amp vs fp32", "check"), ("moflow", "graphed vs eager", "check"),
            ("moflow", "graphed training", "check"), ("graph_parallel", "train", "fp32 gemnet_t"),
            ("graph_parallel", "train", "amp gemnet_t"), ("graph_parallel", "one rank raises", "check"),
            ("graph_parallel", "2 ranks, 1 GPU", "gp_size 2 gemnet_dt")} <= listed
    ran = {(r["recipe"], r["phase"], r["variant"]) for r in rows if r["status"] == "ok"}
    assert {(recipe, phase, variant) for recipe in ("moflow", "se3_transformer", "graph_parallel")
            for phase, variant in (("resume", "fp32"), ("resume", "check"), ("evaluate", "fp32"),
                                   ("predict", "fp32"))} <= ran             # their CPU plumbing runs here


def test_quick_and_share_gpu_plans():
    """--quick: 3 warm-up + 10 timed steps and one --compile row; the two-rank rows run only with --share_gpu."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from gpu_check import plan

    quick = plan("/tmp/out", dry=False, gpus=1, quick=True).rows
    compiles = [r for r in quick if "compile" in r.variant]
    assert len(compiles) > 1 and [r.status for r in compiles].count("pending") == 1
    bench = [r for r in quick if "--benchmark" in r.command and r.status == "pending"]
    assert bench and all("--benchmark_warmup 3 --benchmark_steps 10" in r.command for r in bench)
    shared = [r for r in quick if "MOLRECIPES_SHARE_GPU=1" in r.command]
    assert len(shared) == 6 and all(r.note == "opt-in: --share_gpu" for r in shared)
    assert all(r.status == "pending" for r in plan("/tmp/out", False, 1, share_gpu=True).rows
               if "MOLRECIPES_SHARE_GPU=1" in r.command)
