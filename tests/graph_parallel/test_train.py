"""graph_parallel.train: a short run lowers the loss; flags, data and checkpoints are checked before the first
step; resume refuses another model, architecture or dataset; --finetune and --scale_file; benchmark mode."""
import pytest
import torch

from graph_parallel import train
from graph_parallel.checkpoints import write_model_checkpoint
from graph_parallel.models import build_model, save_scale_file, scale_factors_by_name
from runtime.errors import CheckpointError, ConfigError, DataError, MissingFileError, run_main
from tests.graph_parallel.gp_helpers import records, step_losses, tiny_dataset, train_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    """A DimeNet++ small checkpoint after 2 steps."""
    out = tmp_path_factory.mktemp("ckpt")
    train.main(train_args(data, out, "--epochs", "1", "--max_steps", "2"))
    return out / "model.pt"


@pytest.mark.parametrize("model", ["dimenetpp", "gemnet_t", "gemnet_dt"])
def test_short_training_lowers_loss(model, tmp_path):
    frames = list(range(0, 48, 6))                # the first frame of 8 relaxations
    overfit = tiny_dataset(tmp_path / "data", frames, frames, "train")     # validation = the training frames
    result = train.main(train_args(overfit, tmp_path, "--model", model, "--epochs", "12", "--eval_interval", "12",
                                   "--warmup_steps", "0", "--ema_decay", "0", "--gradient_clip", "100"))
    first = step_losses(tmp_path)[1]              # the loss of the initial weights
    assert result["steps"] == 24 and result["val_loss"] < 0.7 * first, (first, result["val_loss"])


def test_refused_flags(tmp_path, data, checkpoint):
    cases = [(["--evaluate"], "graph_parallel.evaluate"), (["--cuda_graphs"], "--cuda_graphs is not supported"),
             (["--compile"], "--compile is not supported"), (["--gp_size", "3"], "--gp_size 3 must divide"),
             (["--preset", "huge"], "invalid choice: 'huge'"), (["--finetune"], "--finetune needs --load_ckpt_path"),
             (["--scale_file", "s.json"], "--scale_file applies to GemNet"),
             (["--model", "gemnet_t", "--scale_file", "s.json", "--load_ckpt_path", checkpoint], "carries its scale"),
             (["--train_path", "x"], "use --dataset DIR"), (["--ema_decay", "1"], "--ema_decay must lie")]
    for flags, message in cases:
        with pytest.raises(ConfigError, match=message):
            train.main(train_args(data, tmp_path, *flags))


def test_run_main_reports_one_error_line(tmp_path, data, capsys):
    assert run_main(train.main, train_args(data, tmp_path, "--cuda_graphs")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --cuda_graphs is not supported")


def test_outputs_and_data_are_checked_before_training(tmp_path, data):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="--log_dir: cannot write"):
        train.main(train_args(data, blocker / "logs"))
    with pytest.raises(ConfigError, match="--save_ckpt_path: cannot write"):
        train.main(train_args(data, tmp_path, "--save_ckpt_path", blocker / "sub" / "model.pt"))
    missing = tmp_path / "no_such_data"
    with pytest.raises(MissingFileError, match="no_such_data"):
        train.main(train_args(missing, tmp_path / "out", "--data_dir", tmp_path / "cache"))
    assert not missing.exists() and not (tmp_path / "cache").exists()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "train.lmdb").write_bytes(b"\0" * 100 + b"not an lmdb" * 500)
    with pytest.raises(DataError, match="train.lmdb"):
        train.main(train_args(damaged, tmp_path / "out2"))
    assert not list((tmp_path / "out2").glob("*.pt"))


def test_resume_refuses_another_model_architecture_or_dataset(tmp_path, data, checkpoint):
    resume = ["--load_ckpt_path", checkpoint, "--epochs", "2"]
    with pytest.raises(CheckpointError, match="model: checkpoint has 'dimenetpp', this run has 'gemnet_t'"):
        train.main(train_args(data, tmp_path, *resume, "--model", "gemnet_t"))
    with pytest.raises(CheckpointError, match="another architecture: .*hidden_channels: checkpoint has 32, this run "
                                              "has 192"):
        train.main(train_args(data, tmp_path, *resume, "--preset", "base"))
    with pytest.raises(CheckpointError, match="dataset: checkpoint has 'data.*', this run has 'emt_small'"):
        train.main(train_args("emt_small", tmp_path, *resume))
    with pytest.raises(CheckpointError, match="mid-epoch .* --batch_size 4 on 1"):
        train.main(train_args(data, tmp_path, *resume, "--batch_size", "2"))


def test_finetune_from_a_converted_checkpoint_keeps_its_architecture(tmp_path, data):
    model = build_model("dimenetpp", "small", cutoff=4.5, num_blocks=1)         # no preset has this config
    converted = tmp_path / "converted.pt"
    write_model_checkpoint(str(converted), model, "dimenetpp", {"mean": 0.0, "std": 1.0}, 4.5, 20, source="test")
    with pytest.raises(ConfigError, match="num_blocks: checkpoint has 1, this run has 2"):
        train.main(train_args(data, tmp_path, "--finetune", "--load_ckpt_path", converted))
    args = [a for a in train_args(data, tmp_path, "--finetune", "--load_ckpt_path", converted, "--max_steps", "2")
            if a != "small"]
    args.remove("--preset")
    result = train.main(args)
    assert result["steps"] == 2                   # a new position and schedule
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["meta"]["config"] == model.config_dict() and saved["meta"]["dataset"] == data.name
    assert saved["extra"]["normalizer"]["std"] != 1.0          # fitted anew on this dataset


def test_scale_file_sets_the_gemnet_factors(tmp_path, data):
    model = build_model("gemnet_t", "small", cutoff=4.5)
    for k, factor in enumerate(scale_factors_by_name(model).values()):
        factor.scale.fill_(0.5 + 0.25 * k)
    save_scale_file(model, tmp_path / "scales.json")
    train.main(train_args(data, tmp_path, "--model", "gemnet_t", "--scale_file", tmp_path / "scales.json",
                          "--max_steps", "1"))
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["extra"]["scale_factors"].startswith("file ")
    for key, value in model.state_dict().items():
        if key.endswith(".scale"):
            assert torch.equal(saved["model"][key], value), key


def test_benchmark_mode(tmp_path, data):
    args = train_args(data, tmp_path, "--benchmark", "--benchmark_warmup", "1", "--benchmark_steps", "2")
    at = args.index("--save_ckpt_path")
    result = train.main(args[:at] + args[at + 2:])            # a benchmark writes no checkpoint: no path to give
    assert result["stop_reason"] == "benchmark" and result["steps"] == 3 and result["timed_steps"] == 2
    assert result["throughput"] > 0
    assert len(result["peak_memory_mb_per_rank"]) == 1 and not (tmp_path / "checkpoint.pt").exists()
    logged = {k for r in records(tmp_path) for k in r["data"]}
    assert {"train_throughput", "train_latency_p90", "peak_memory_mb"} <= logged
