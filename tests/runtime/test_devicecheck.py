"""The stand-in device: it computes what the CPU computes, refuses mixing, and sees every host sync."""
import pytest
import torch

from runtime.devicecheck import DEVICE, DeviceCheck, DeviceMixingError, DeviceTensor, expected_sync


def kinds(check):
    return [(s.kind, s.expected) for s in check.syncs]


def test_a_training_step_computes_the_cpu_numbers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 1))
    x = torch.randn(5, 4)

    def step(model, x):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        x = x.clone().requires_grad_(True)
        energy = model(x).sum()
        (grad,) = torch.autograd.grad(energy, x, create_graph=True)     # forces: a double backward
        (energy + grad.pow(2).sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return [p.detach() for p in model.parameters()]

    import copy
    expected = step(copy.deepcopy(model), x)
    with DeviceCheck() as check:
        moved = copy.deepcopy(model).to(DEVICE)
        assert all(isinstance(p, DeviceTensor) and p.device == DEVICE for p in moved.parameters())
        got = step(moved, x.to(DEVICE, non_blocking=True))
        got = [p.cpu() for p in got]
    for a, b in zip(expected, got):
        assert torch.equal(a, b)
    assert [s.kind for s in check.syncs[-len(got):]] == ["read"] * len(got)     # the .cpu() copies


def test_mixing_a_host_tensor_with_a_device_tensor_raises():
    with DeviceCheck():
        x = torch.arange(6.0).to(DEVICE)
        with pytest.raises(DeviceMixingError, match="index_select.*shape \\(2,\\)"):
            x.index_select(0, torch.tensor([0, 2]))
        with pytest.raises(DeviceMixingError):
            x + torch.ones(6)
        assert torch.equal((x * torch.tensor(2.0)).cpu(), torch.arange(6.0) * 2)   # a 0-dim host scalar is fine
        assert torch.equal(x.index_select(0, torch.tensor([0, 2], device=x.device)).cpu(), torch.tensor([0.0, 2.0]))


def test_every_kind_of_host_read_is_seen():
    with DeviceCheck() as check:
        x = torch.arange(-3.0, 3.0).to(DEVICE, non_blocking=True)
        assert check.syncs == []
        reads = [lambda: x.sum().item(), lambda: float(x.max()), lambda: int(x.argmax()), lambda: bool((x > 0).any()),
                 lambda: x.tolist(), lambda: x.cpu(), lambda: x[x > 0], lambda: x.nonzero(),
                 lambda: torch.unique(x), lambda: torch.zeros(6).copy_(x), lambda: x.long().clamp(min=0).bincount()]
        for k, read in enumerate(reads, start=1):
            read()
            assert len(check.syncs) == k, f"read {k} was not seen"
        assert {s.kind for s in check.syncs} == {"read"}
        assert check.syncs[0].where == "outside the repository"     # "where" names recipe code, never a test
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()


def test_blocking_copies_to_the_device_are_seen_and_non_blocking_ones_are_not():
    with DeviceCheck() as check:
        torch.ones(3).to(DEVICE, non_blocking=True)
        torch.zeros(3, device=DEVICE)                     # a factory on the device copies nothing
        assert check.syncs == []
        torch.ones(3).to(DEVICE)
        torch.tensor(2.0, device=DEVICE)
        torch.zeros(3, device=DEVICE).copy_(torch.ones(3))
        x = torch.arange(4.0).to(DEVICE, non_blocking=True)
        x[torch.tensor([0, 1])]                           # CUDA copies a host index, synchronously
    assert [s.kind for s in check.syncs] == ["blocking copy"] * 4


def test_expected_syncs_are_labelled_and_not_unexpected():
    with DeviceCheck() as check:
        x = torch.ones(2).to(DEVICE, non_blocking=True)
        with expected_sync("log step"):
            float(x.sum())
        float(x.sum())
    assert kinds(check) == [("read", "log step"), ("read", None)]
    assert len(check.unexpected()) == 1 and "(expected: log step)" in check.report()


def test_generators_and_randomness_on_the_device_match_the_host():
    with DeviceCheck():
        g = torch.Generator(device=DEVICE).manual_seed(3)
        drawn = torch.randn(4, generator=g, device=DEVICE)
        assert isinstance(drawn, DeviceTensor)
        drawn = drawn.cpu()
    assert torch.equal(drawn, torch.randn(4, generator=torch.Generator().manual_seed(3)))


def test_the_check_leaves_nothing_behind():
    import runtime.distributed as rd

    before = (torch.tensor, torch.as_tensor, torch.Generator, rd._ENV)
    with DeviceCheck():
        assert rd.get_device() == DEVICE
    assert (torch.tensor, torch.as_tensor, torch.Generator, rd._ENV) == before


def test_sync_debug_is_a_no_op_off_cuda(monkeypatch):
    from runtime.devicecheck import cuda_sync_debug

    monkeypatch.setenv("MOLRECIPES_SYNC_DEBUG", "error")
    with cuda_sync_debug("cpu"):
        assert float(torch.ones(2).sum()) == 2.0


@pytest.mark.cuda
def test_cuda_sync_debug_raises_outside_expected_blocks(monkeypatch):
    from runtime.callbacks import synchronize
    from runtime.devicecheck import cuda_sync_debug

    monkeypatch.setenv("MOLRECIPES_SYNC_DEBUG", "error")
    x = torch.ones(3, device="cuda")
    with cuda_sync_debug("cuda"):
        with expected_sync("log step"):
            assert float(x.sum()) == 3.0
        with pytest.raises(RuntimeError, match="synchroniz"):
            float(x.sum())
        synchronize("cuda")                       # the benchmark meter's sync is an expected one
    assert torch.cuda.get_sync_debug_mode() == 0 and float(x.sum()) == 3.0
