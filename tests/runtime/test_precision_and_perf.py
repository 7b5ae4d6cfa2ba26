"""AMP policy, CUDA-graph refusal on CPU, torch.compile switch, throughput meter."""
import pytest
import torch
from torch import nn

from runtime.callbacks import PerformanceMeter, peak_memory_mb
from runtime.compile import maybe_compile
from runtime.cuda_graphs import capture_inference, materialize_grads, require_cuda_graphs
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
    from runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="--cuda_graphs needs a CUDA device"):
        require_cuda_graphs("cpu")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        capture_inference(lambda x: x * 2, (torch.ones(2),))


class _GraphedAnalogue(torch.autograd.Function):
    """CPU analogue of a make_graphed_callables backward: gradients are views of one static buffer
    that the next "replay" overwrites."""

    static = torch.zeros(3)

    @staticmethod
    def forward(ctx, w, x):
        ctx.save_for_backward(x)
        return (w * x).sum()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        _GraphedAnalogue.static.copy_(grad * x)
        return _GraphedAnalogue.static.detach(), None


def test_graphed_gradient_accumulation_aliasing_and_its_fix():
    w = nn.Parameter(torch.ones(3))
    x1, x2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])
    _GraphedAnalogue.apply(w, x1).backward()
    _GraphedAnalogue.apply(w, x2).backward()
    assert torch.equal(w.grad, 2 * x2)  # the silent error: p.grad aliased the static buffer
    w.grad = None
    materialize_grads([w])  # the fix used while graphed with --accumulate_grad_batches > 1
    _GraphedAnalogue.apply(w, x1).backward()
    _GraphedAnalogue.apply(w, x2).backward()
    assert torch.equal(w.grad, x1 + x2)


@pytest.mark.cuda
def test_cuda_graph_inference_capture_replays():
    model = nn.Linear(4, 2).cuda().eval()
    x = torch.randn(8, 4, device="cuda")
    graphed = capture_inference(model, (x,))
    for _ in range(3):
        new = torch.randn(8, 4, device="cuda")
        torch.testing.assert_close(graphed(new), model(new))


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
