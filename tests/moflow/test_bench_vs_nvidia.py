"""scripts/moflow/benchmark_vs_nvidia.py and bench_nvidia.py: NVIDIA's MoFlow against ours, interleaved,
under a load generator. NVIDIA's code is not on PyPI: these run where MOLRECIPES_NVIDIA_MOFLOW names
the PyTorch/DrugDiscovery/MoFlow folder of a DeepLearningExamples checkout."""
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts", "moflow"))
import benchmark_vs_nvidia  # noqa: E402

NVIDIA = os.environ.get("MOLRECIPES_NVIDIA_MOFLOW", "")
needs_nvidia = pytest.mark.skipif(not os.path.isfile(os.path.join(NVIDIA, "moflow", "model", "model.py")),
                                  reason="set MOLRECIPES_NVIDIA_MOFLOW to DeepLearningExamples' PyTorch/DrugDiscovery/MoFlow")


@pytest.mark.parametrize("kind", ["matmul", "stream"])
def test_load_generator_runs_busy_on_the_cpu_it_is_pinned_to(kind):
    load = benchmark_vs_nvidia.start_load(kind, 0)
    try:
        time.sleep(3)
        assert load.poll() is None
        assert os.sched_getaffinity(load.pid) == {0}
        with open(f"/proc/{load.pid}/stat") as f:
            utime_ticks = int(f.read().rsplit(")", 1)[1].split()[11])
        assert utime_ticks > 0
    finally:
        load.kill()
        load.wait()
    assert benchmark_vs_nvidia.start_load("none", None) is None


def test_both_commands_get_the_same_bench_flags():
    cmds = benchmark_vs_nvidia.commands("/nv", ["--steps", "2"])
    assert cmds["nvidia"][-4:] == ["--nvidia_dir", "/nv", "--steps", "2"]
    assert cmds["ours"][-4:] == ["--phase", "train", "--steps", "2"]


@needs_nvidia
def test_interleaved_comparison_under_load(tmp_path):
    out = tmp_path / "vs.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "moflow", "benchmark_vs_nvidia.py"),
                    "--nvidia_dir", NVIDIA, "--rounds", "1", "--load", "matmul", "--json", str(out), "--",
                    "--batch_size", "4", "--steps", "1", "--warmup", "1"], check=True, stdout=subprocess.DEVNULL)
    record = json.loads(out.read_text())
    assert [(r["round"], r["tree"]) for r in record["runs"]] == [(0, "baseline"), (0, "working")]
    nvidia, ours = (r["figures"] for r in record["runs"])
    # the same model sizes: NVIDIA's full-row graph coupling counts more FLOPs than ours, never fewer
    assert nvidia["train_gflop_per_step"] > ours["train_gflop_per_step"] > 0
    assert record["summary"]["train_cpu_ms"]["ratio"] > 0


def test_load_processes_start_that_many_generators_and_stop_them(monkeypatch):
    started = []

    class FakeLoad:
        killed = False

        def kill(self):
            self.killed = True

        def wait(self):
            pass

    monkeypatch.setattr(benchmark_vs_nvidia, "start_load", lambda kind, cpu: started.append(FakeLoad()) or started[-1])
    monkeypatch.setattr(benchmark_vs_nvidia, "run_one",
                        lambda cmd, cpu, tree: {"train_cpu_ms": 3.0 if "bench_nvidia.py" in cmd[1] else 2.0})
    lines = []
    record = benchmark_vs_nvidia.compare("/nv", [], 2, "matmul", False, log=lines.append, load_processes=2)
    assert len(started) == 2 and all(load.killed for load in started)
    assert record["load_processes"] == 2 and len(record["runs"]) == 4
    assert "speed-up (CPU time per step, NVIDIA / ours): 1.50x" in lines[-1] and "load matmul x2" in lines[-1]
