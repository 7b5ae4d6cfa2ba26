"""AMP policy, CUDA-graph refusal on CPU, torch.compile switch, throughput meter."""
import pytest
import torch
from torch import nn

from runtime.callbacks import PerformanceMeter, peak_memory_mb
from runtime.compile import maybe_compile
from runtime.cuda_graphs import capture_step, require_cuda_graphs
from runtime.logging import read_dllogger, setup_logger
from runtime.precision import Precision


def test_bf16_autocast_runs_on_cpu_and_trains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    prec = Precision(amp=True, device="cpu")
    assert prec.dtype == torch.bfloat16 and prec.scaler is None
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(64, 8)
    y = x[:, :1] * 2
    losses = []
    for _ in range(30):
        with prec.autocast():
            out = model(x)
            assert out.dtype == torch.bfloat16
            loss = nn.functional.mse_loss(out.float(), y)
        opt.zero_grad()
        prec.backward(loss)
        norm = prec.step(opt, clip_norm=10.0)
        assert norm is not None and torch.isfinite(norm)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_fp32_when_amp_off_and_fp16_refused_on_cpu():
    prec = Precision(amp=False, device="cpu")
    with prec.autocast():
        assert nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="fp16 autocast is not supported on CPU"):
        Precision(amp=True, device="cpu", dtype="fp16")


@pytest.mark.cuda
def test_fp16_scaler_on_cuda():
    prec = Precision(amp=True, device="cuda")
    assert prec.dtype == torch.float16 and prec.scaler is not None
    model = nn.Linear(4, 1).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with prec.autocast():
        loss = model(torch.randn(8, 4, device="cuda")).float().pow(2).mean()
    prec.backward(loss)
    prec.step(opt)
    assert "scaler" in prec.state_dict()


def test_cuda_graphs_refuse_cleanly_on_cpu():
    with pytest.raises(RuntimeError, match="--cuda_graphs needs a CUDA device"):
        require_cuda_graphs("cpu")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        capture_step(lambda x: x * 2, (torch.ones(2),))


@pytest.mark.cuda
def test_cuda_graph_capture_replays_training_step():
    torch.manual_seed(0)
    model = nn.Linear(4, 1).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4, device="cuda"), torch.randn(8, 1, device="cuda")

    def step(xs, ys):
        opt.zero_grad(set_to_none=False)
        loss = nn.functional.mse_loss(model(xs), ys)
        loss.backward()
        opt.step()
        return loss

    graphed = capture_step(step, (x.clone(), y.clone()))
    first = graphed(x, y).item()
    for _ in range(20):
        last = graphed(x, y).item()
    assert last < first


def test_maybe_compile_switch():
    model = nn.Linear(2, 2)
    assert maybe_compile(model, enabled=False) is model
    compiled = maybe_compile(lambda t: t * 2, enabled=True, backend="eager")
    assert torch.equal(compiled(torch.ones(2)), torch.full((2,), 2.0))


def test_performance_meter_excludes_warmup_and_logs(tmp_path):
    meter = PerformanceMeter("cpu", warmup_steps=2)
    for i in range(6):
        meter.start()
        sum(range(1000 * (i + 1)))
        meter.stop(n_items=10)
    stats = meter.summary()
    assert stats["steps"] == 4
    assert stats["throughput"] > 0
    assert stats["latency_p50_ms"] <= stats["latency_p90_ms"] <= stats["latency_p99_ms"]
    logger = setup_logger(str(tmp_path), silent=True)
    meter.log(logger, prefix="inference")
    logger.close()
    summary = [r for r in read_dllogger(str(tmp_path / "log.json")) if r["type"] == "LOG"][-1]
    assert summary["step"] == [] and summary["data"]["inference_steps"] == 4
    with pytest.raises(RuntimeError, match="without start"):
        PerformanceMeter().stop(1)


def test_peak_memory_reports_process_peak_on_cpu():
    block = bytearray(64 * 2 ** 20)  # touched: the peak resident set includes these 64 MiB
    with open("/proc/self/status") as f:
        hwm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    assert peak_memory_mb("cpu") == pytest.approx(hwm_kib / 1024, rel=0.05)
    assert peak_memory_mb("cpu") > 64
    del block
