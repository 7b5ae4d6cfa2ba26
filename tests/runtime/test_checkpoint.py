"""Checkpoints: atomic write, resume equals an uninterrupted run, clear errors on bad files."""
import os

import pytest
import torch
from torch import nn

from runtime.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from runtime.optim import make_optimizer, make_scheduler
from runtime.precision import Precision


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 1))
    opt = make_optimizer("adamw", model.parameters(), lr=1e-2, weight_decay=1e-2)
    sched = make_scheduler("step", opt, warmup_steps=2, step_size=2, gamma=0.5)
    return model, opt, sched, Precision(amp=False, device="cpu")


def _step(model, opt, sched, prec, step):
    torch.manual_seed(100 + step)  # reseeded from the position, as runtime.loop does: no RNG state to restore
    x = torch.randn(8, 4)
    with prec.autocast():
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
    opt.zero_grad()
    prec.backward(loss)
    prec.step(opt, clip_norm=1.0)
    sched.step()
    return loss.item()


def test_resume_gives_same_next_losses_as_uninterrupted(tmp_path):
    model, opt, sched, prec = _setup()
    for step in range(3):
        _step(model, opt, sched, prec, step)
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, model, opt, sched, prec, epoch=1, step=3, extra={"best": 0.5})
    expected = [_step(model, opt, sched, prec, step) for step in range(3, 6)]

    model2, opt2, sched2, prec2 = _setup()
    meta = load_checkpoint(path, model2, opt2, sched2, prec2)
    assert meta == {"epoch": 1, "batch": 0, "step": 3, "meta": {}, "extra": {"best": 0.5},
                    "position": {"epoch": 1, "batch": 0, "step": 3}}
    resumed = [_step(model2, opt2, sched2, prec2, step) for step in range(3, 6)]
    assert resumed == expected
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_truncated_checkpoint_raises_clear_error(tmp_path):
    model, opt, sched, prec = _setup()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(str(path), model, opt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(str(path), model)


def test_corrupt_checkpoint_message_gives_the_cause_whole(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(str(path))
    message = str(info.value)
    assert message.endswith(")") and "corrupt or truncated" in message, message
    assert "weights_only" not in message and "Unsupported operand" in message, message  # the cause, not advice


def test_missing_and_foreign_and_mismatched_checkpoints(tmp_path):
    model, *_ = _setup()
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(str(tmp_path / "nope.pt"), model)
    foreign = tmp_path / "foreign.pt"
    torch.save(model.state_dict(), foreign)
    with pytest.raises(CheckpointError, match="not a molrecipes checkpoint"):
        load_checkpoint(str(foreign), model)
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, model)
    with pytest.raises(CheckpointError, match="shape differences"):
        load_checkpoint(path, nn.Sequential(nn.Linear(4, 8), nn.Dropout(), nn.ReLU(), nn.Linear(8, 1)))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(path, nn.Sequential(nn.Linear(4, 16), nn.Dropout(), nn.ReLU(), nn.Linear(16, 1), nn.Linear(1, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(path, model, optimizer=opt)


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, *_ = _setup()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(str(path), model, step=1)
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(str(path), model, step=2)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"], "a temporary file was left behind"


def test_keep_last_prunes_numbered_copies(tmp_path):
    model, *_ = _setup()
    path = str(tmp_path / "model.pt")
    for step in range(5):
        save_checkpoint(path, model, step=step, keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["model.pt", "model_step000000003.pt", "model_step000000004.pt"]
    assert load_checkpoint(path, model)["step"] == 4


def test_checkpoint_identity_mismatch_names_both_sides(tmp_path):
    model, *_ = _setup()
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, model, meta={"recipe": "se3_transformer", "task": "homo"})
    assert load_checkpoint(path, model, expect={"recipe": "se3_transformer", "task": "homo"})["meta"]["task"] == "homo"
    with pytest.raises(CheckpointError, match=r"task: checkpoint has 'homo', this run has 'lumo'"):
        load_checkpoint(path, model, expect={"recipe": "se3_transformer", "task": "lumo"})
    with pytest.raises(CheckpointError, match=r"recipe: checkpoint has 'se3_transformer', this run has 'moflow'"):
        load_checkpoint(path, model, expect={"recipe": "moflow"})


class _Payload:
    """Unpickling this runs ``os.system`` (the classic malicious pickle)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    model, *_ = _setup()
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    state = {"format": "molrecipes-checkpoint-v2", "meta": {}, "model": model.state_dict(),
             "position": {"epoch": 0, "batch": 0, "step": 0}, "extra": {"x": _Payload(marker)}}
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="refused: it carries pickled objects.*posix.system|system"):
        load_checkpoint(str(path), model)
    assert not marker.exists(), "unpickling ran code"


def test_checkpoint_holds_only_plain_data(tmp_path):
    """Everything a save writes loads under weights_only=True."""
    model, opt, sched, prec = _setup()
    _step(model, opt, sched, prec, 0)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(str(path), model, opt, sched, prec, epoch=2, batch=5, step=7, extra={"ema": None},
                    meta={"recipe": "x"})
    state = torch.load(path, weights_only=True)
    assert state["position"] == {"epoch": 2, "batch": 5, "step": 7}


_SAVE_SCRIPT = """
import sys, torch
from torch import nn
from runtime.checkpoint import save_checkpoint
torch.manual_seed(int(sys.argv[2]))
model = nn.Linear(64, 64)
save_checkpoint(sys.argv[1], model, step=int(sys.argv[2]), keep_last=2)
"""


@pytest.mark.parametrize("point", ["write:opened", "write:partial", "write:before_fsync", "write:before_rename",
                                   "write:renamed", "checkpoint:saved"])
def test_sigkill_during_save_keeps_a_loadable_checkpoint(tmp_path, point):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    path = tmp_path / "ckpt.pt"

    def save(step):  # in this process: the fault hook is off without the environment variable
        torch.manual_seed(step)
        save_checkpoint(str(path), nn.Linear(64, 64), step=step, keep_last=2)

    save(1)
    env = dict(os.environ, PYTHONPATH=str(root), MOLRECIPES_KILL_AT=point)
    killed = subprocess.run([sys.executable, "-c", _SAVE_SCRIPT, str(path), "2"], env=env, cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = torch.load(path, weights_only=True)        # the file under the checkpoint's name still loads
    assert state["position"]["step"] in (1, 2)          # old, or new once the rename happened
    if point.startswith("write:") and point != "write:renamed":
        assert state["position"]["step"] == 1
    save(3)
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert leftovers == [], f"stale temporary files survived the next save: {leftovers}"
    assert torch.load(path, weights_only=True)["position"]["step"] == 3


def test_config_differences_word_every_recipes_refusal():
    from runtime.checkpoint import config_differences

    saved, wanted = {"layers": 2, "norm": True, "width": 8}, {"layers": 3, "norm": True, "heads": 4}
    assert config_differences(saved, wanted) == ["heads: checkpoint has None, this run has 4",
                                                 "layers: checkpoint has 2, this run has 3",
                                                 "width: checkpoint has 8, this run has None"]
    assert config_differences(saved, wanted, keys=["layers"], describe=str) == ["layers: checkpoint has 2, this run "
                                                                                "has 3"]
