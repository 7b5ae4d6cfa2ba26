"""scripts/bench_harness.py: FLOPs per step, achieved rate and fraction of the device's peak."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import bench_harness as harness  # noqa: E402


def test_flops_of_a_known_matmul_and_a_linear_training_step():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert harness.count_flops(lambda i: a @ b) == 2 * 8 * 16 * 4
    assert harness.count_flops(lambda i: a[: 4 * (i + 1)] @ b, [0, 1]) == 2 * 6 * 16 * 4  # mean over steps
    layer = torch.nn.Linear(16, 4, bias=False)
    # forward, then the input gradient and the weight gradient: three matmuls of the same size
    assert harness.count_flops(lambda i: layer(a.requires_grad_()).sum().backward()) == 3 * 2 * 8 * 16 * 4


def test_flop_figures_arithmetic():
    figures = harness.flop_figures("train", 3e9, 0.5, peak_gflops=24.0)
    assert figures == {"train_gflop_per_step": 3.0, "train_gflops": 6.0, "train_peak_fraction": 0.25,
                       "peak_gflops": 24.0}
    assert harness.flop_figures("inference", 1e9, 2.0, None) == {"inference_gflop_per_step": 1.0,
                                                                  "inference_gflops": 0.5}


@pytest.mark.parametrize("name,precision,tflops", [
    ("NVIDIA A100-SXM4-80GB", "tf32", 156.0), ("NVIDIA A100-PCIE-40GB", "bf16", 312.0),
    ("NVIDIA H100 80GB HBM3", "fp32", 67.0), ("NVIDIA H100 80GB HBM3", "bf16", 989.5),
    ("NVIDIA H100 PCIe", "tf32", 378.0), ("NVIDIA H200", "tf32", 494.5)])
def test_gpu_peaks_are_the_dense_datasheet_figures(name, precision, tflops):
    assert harness.gpu_peak_gflops(name, precision) == tflops * 1e3
    assert harness.gpu_peak_gflops("Tesla T4", precision) is None


def test_cpu_peak_is_measured_once_per_run(monkeypatch):
    monkeypatch.delenv(harness.PEAK_ENV, raising=False)
    calls = []
    monkeypatch.setattr(harness, "cpu_peak_gflops", lambda: calls.append(1) or 12.5)
    assert harness.device_peak_gflops() == 12.5 and harness.device_peak_gflops() == 12.5
    assert calls == [1] and os.environ[harness.PEAK_ENV] == "12.5"


def test_cpu_peak_microbenchmark_counts_its_matmuls(monkeypatch):
    times = iter([0.0, 0.5, 1.0, 1.25])  # two timed matmuls of 0.5 s and 0.25 s: the best counts
    monkeypatch.setattr(harness.time, "process_time", lambda: next(times))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # CPU seconds per thread: 0.125 s
    assert harness.cpu_peak_gflops(size=64, repeats=2) == pytest.approx(2 * 64 ** 3 / 0.125 / 1e9)
    assert harness.cpu_seconds_per_thread(3.0) == 1.5


def test_flops_of_forces_taken_with_autograd_grad():
    """The graph_parallel steps take forces with torch.autograd.grad inside the counted step (through
    nn.Modules, where FlopCounterMode's own module tracker fails)."""
    layer = torch.nn.Linear(3, 5, bias=False)

    def energy_and_forces(i):
        pos = torch.randn(4, 3, requires_grad=True)
        energy = layer(pos).sum()                                          # 2 * 4 * 3 * 5
        (grad,) = torch.autograd.grad(energy, pos)                         # grad @ weight: the same size
        return grad
    assert harness.count_flops(energy_and_forces) == 2 * (2 * 4 * 3 * 5)
