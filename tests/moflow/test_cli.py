"""End-to-end CLI: preprocess -> train -> resume -> generate -> evaluate, on a tiny model."""
import json

import pytest
import torch

from moflow import evaluate, generate, preprocess, train
from moflow.generate import load_trained_model
from runtime.checkpoint import CheckpointError, read_checkpoint
from runtime.logging import read_dllogger

TINY = ["--b_n_flow", "2", "--b_hidden_ch", "16", "--b_n_squeeze", "6", "--b_conv_lu", "1",
        "--a_n_flow", "4", "--a_hidden_gnn", "8", "--a_hidden_lin", "8", "--batch_size", "16",
        "--silent", "--num_workers", "0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("moflow_data")
    preprocess.main(["--dataset", "sample", "--data_dir", str(d), "--max_molecules", "600",
                     "--max_atoms", "18", "--max_nodes", "18", "--valid_fraction", "0.2"])
    return str(d)


def _train(data_dir, run_dir, *extra, device="cpu"):
    """Train; the trained model as its last checkpoint holds it (None under --benchmark)."""
    ckpt = run_dir / "checkpoint.pt"
    train.main(["--data_dir", data_dir, "--log_dir", str(run_dir), "--save_ckpt_path", str(ckpt),
                "--log_interval", "1", *TINY, *extra])
    return load_trained_model(str(ckpt), device)[0] if "--benchmark" not in extra else None


def test_train_resume_generate_evaluate(data_dir, tmp_path):
    run = tmp_path / "run"
    _train(data_dir, run, "--epochs", "1", "--val_samples", "8")
    ckpt = read_checkpoint(str(run / "checkpoint.pt"))
    assert ckpt["position"]["epoch"] == 1 and ckpt["position"]["step"] == 2
    assert ckpt["meta"]["config"]["b_hidden_ch"] == [16] and ckpt["meta"]["recipe"] == "moflow"

    model = _train(data_dir, run, "--epochs", "2", "--load_ckpt_path", str(run / "checkpoint.pt"),
                   "--val_samples", "8")
    ckpt = read_checkpoint(str(run / "checkpoint.pt"))
    assert ckpt["position"]["epoch"] == 2 and ckpt["position"]["step"] == 4
    assert model.ln_var.item() != 0.0  # the prior variance is learned
    records = read_dllogger(str(run / "log.json"))
    losses = [r["data"]["train_loss"] for r in records if r["type"] == "LOG" and len(r.get("step", [])) == 2]
    assert len(losses) == 4 and all(map(lambda v: v == v, losses))

    out = tmp_path / "gen"
    generate.main(["--load_ckpt_path", str(run / "checkpoint.pt"), "--log_dir", str(out), "--num_samples", "12",
                   "--output", str(out / "mols.smi"), "--png", str(out / "grid.png"), "--silent"])
    smiles = (out / "mols.smi").read_text().split()
    assert 0 < len(smiles) <= 12
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    evaluate.main(["--load_ckpt_path", str(run / "checkpoint.pt"), "--log_dir", str(out), "--num_samples", "16",
                   "--num_molecules", "20", "--output", str(out / "metrics.json"), "--silent"])
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("validity", "validity_without_correction", "uniqueness", "novelty", "nuv"):
        assert 0.0 <= metrics[key] <= 100.0
    assert metrics["val_reconstruction"] == 100.0  # the flow is exactly invertible
    assert metrics["val_loss"] > 0


def test_mid_epoch_resume_with_another_batch_size_is_refused(data_dir, tmp_path):
    """The consumed batches of a mid-epoch checkpoint are skipped by count: MoFlow refuses another
    batch size there, as the other recipes do (runtime.checkpoint.check_mid_epoch_resume)."""
    _train(data_dir, tmp_path, "--epochs", "3", "--max_steps", "3", "--val_samples", "0", "--val_molecules", "0")
    with pytest.raises(CheckpointError, match="mid-epoch .* --batch_size 16 on 1 .*this run has --batch_size 8"):
        _train(data_dir, tmp_path, "--epochs", "3", "--batch_size", "8", "--load_ckpt_path",
               str(tmp_path / "checkpoint.pt"))


@pytest.mark.parametrize("stop", [["--epochs", "1"], ["--max_steps", "3"]])  # epoch end; mid-epoch
def test_resume_matches_uninterrupted_training(data_dir, tmp_path, stop):
    common = ["--val_samples", "4", "--val_molecules", "8", "--seed", "3"]
    straight = _train(data_dir, tmp_path / "a", "--epochs", "3", *common)
    _train(data_dir, tmp_path / "b", *(stop if "--epochs" in stop else ["--epochs", "3", *stop]), *common)
    ckpt = read_checkpoint(str(tmp_path / "b" / "checkpoint.pt"))
    if "--max_steps" in stop:
        position = ckpt["position"]
        assert (position["epoch"], position["batch"], position["step"]) == (1, 1, 3)  # stopped mid-epoch
    # the optimizer state covers every parameter, the prior log-variance included
    n_params = len(list(straight.parameters()))
    assert len(ckpt["optimizer"]["param_groups"][0]["params"]) == n_params
    assert len(ckpt["optimizer"]["state"]) == n_params
    resumed = _train(data_dir, tmp_path / "b", "--epochs", "3", "--load_ckpt_path",
                     str(tmp_path / "b" / "checkpoint.pt"), *common)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), f"{name} differs after resume"
    log_a, log_b = (read_dllogger(str(tmp_path / d / "log.json")) for d in "ab")
    steps = lambda log: {tuple(r["step"]): r["data"]["train_loss"] for r in log if len(r.get("step", [])) == 2}
    assert steps(log_a) == steps(log_b)  # every step's loss, before and after the interruption


def test_bad_inputs_fail_clearly(data_dir, tmp_path):
    from runtime.checkpoint import save_checkpoint
    from runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a CUDA device"):
        _train(data_dir, tmp_path, "--epochs", "1", "--cuda_graphs")
    with pytest.raises(FileNotFoundError, match="moflow.preprocess"):
        _train(str(tmp_path / "nowhere"), tmp_path, "--epochs", "1")
    assert not (tmp_path / "nowhere").exists()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        _train(data_dir, tmp_path, "--epochs", "1", "--load_ckpt_path", str(bad))
    with pytest.raises(CheckpointError):
        generate.main(["--load_ckpt_path", str(bad), "--log_dir", str(tmp_path)])
    foreign = tmp_path / "gp.pt"  # another recipe's checkpoint
    save_checkpoint(str(foreign), torch.nn.Linear(2, 2), meta={"recipe": "graph_parallel", "model": "dimenetpp"})
    with pytest.raises(CheckpointError, match="recipe: checkpoint has 'graph_parallel', this run has 'moflow'"):
        _train(data_dir, tmp_path, "--epochs", "1", "--load_ckpt_path", str(foreign))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="--save_ckpt_path: cannot write"):  # found before any training
        _train(data_dir, tmp_path, "--epochs", "1", "--save_ckpt_path", str(blocker / "sub" / "m.pt"))


def test_resume_refuses_other_architecture_flags(data_dir, tmp_path):
    _train(data_dir, tmp_path, "--epochs", "1", "--val_samples", "0")
    with pytest.raises(CheckpointError, match="b_n_flow: checkpoint has 2, this run has 3"):
        _train(data_dir, tmp_path, "--epochs", "2", "--load_ckpt_path", str(tmp_path / "checkpoint.pt"),
               "--b_n_flow", "3")


def test_benchmark_mode_reports_throughput(data_dir, tmp_path, capsys):
    # 2 steps per epoch: the benchmark runs on across epochs until warm-up + timed steps are done
    _train(data_dir, tmp_path, "--epochs", "1", "--benchmark", "--benchmark_warmup", "2",
           "--benchmark_steps", "3", "--val_samples", "0", "--save_ckpt_path", "")
    records = read_dllogger(str(tmp_path / "log.json"))
    summary = [r["data"] for r in records if r["type"] == "LOG" and "train_throughput" in r["data"]]
    assert summary and summary[0]["train_throughput"] > 0 and summary[0]["train_steps"] == 3
    assert not (tmp_path / "checkpoint.pt").exists()


def test_interpolation_endpoints_are_the_inputs(data_dir, tmp_path):
    from moflow.interpolate import interpolate

    model = _train(data_dir, tmp_path, "--epochs", "1", "--val_samples", "0").eval()
    atomic_nums = [6, 7, 8, 9, 15, 16, 17, 35, 53]
    path = interpolate(model, "CCOc1ccccc1", "CC(=O)NCC#N", 5, atomic_nums)
    assert len(path) == 5
    assert path[0] == "CCOc1ccccc1" and path[-1] == "CC(=O)NCC#N"


def test_gradient_accumulation_steps_optimizer_every_k_batches(data_dir, tmp_path):
    _train(data_dir, tmp_path, "--epochs", "2", "--accumulate_grad_batches", "2", "--val_samples", "0")
    ckpt = read_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert ckpt["position"]["step"] == 2  # optimizer steps: 2 epochs x 2 batches / 2
    adam_steps = {float(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert adam_steps == {2.0}  # one optimizer step per two batches


def test_qed_optimisation_cli(data_dir, tmp_path):
    from moflow import optimize

    _train(data_dir, tmp_path, "--epochs", "1", "--val_samples", "0")
    # gradient ascent really ascends the regressor
    z = torch.randn(64, 5)
    reg = optimize.fit_property_model(z, z[:, 0] - z[:, 1], epochs=300, lr=1e-2)
    path = optimize.ascend(reg, torch.zeros(5), steps=5, step_size=0.5)
    with torch.no_grad():
        pred = reg(path)
    assert (pred[1:] > pred[:-1]).all()
    out = tmp_path / "qed.tsv"
    optimize.main(["--load_ckpt_path", str(tmp_path / "checkpoint.pt"), "--num_train", "40", "--fit_epochs", "5",
                   "--num_start", "2", "--steps", "2", "--output", str(out)])
    rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    assert len(rows) == 2
    for start, start_qed, best, best_qed, sim in rows:
        assert abs(optimize.qed(best) - float(best_qed)) < 1e-3
        assert float(best_qed) >= float(start_qed) - 1e-3  # the start itself is on the path
        assert 0.0 <= float(sim) <= 1.0


@pytest.mark.cuda
def test_cuda_streams_graphs_and_fp16_train(data_dir, tmp_path):
    """The GPU-only path: two streams, channels-last Glow, fp16 + GradScaler, CUDA graph capture."""
    run = tmp_path / "cuda"
    model = _train(data_dir, run, "--epochs", "2", "--amp", "--cuda_graphs", "--cuda_graph_warmup", "2",
                   "--val_samples", "8", device="cuda")
    assert next(model.parameters()).is_cuda
    records = read_dllogger(str(run / "log.json"))
    assert not any("no CUDA graph was captured" in str(r.get("data", {}).get("stop_reason", "")) for r in records)
    losses = [r["data"]["train_loss"] for r in records if r["type"] == "LOG" and "train_loss" in r.get("data", {})]
    assert losses and all(isinstance(v, float) and v == v for v in losses)
    assert read_checkpoint(str(run / "checkpoint.pt"))["precision"].get("scaler")
