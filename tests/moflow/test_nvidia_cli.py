"""NVIDIA's MoFlow command lines (scripts/train.sh, predict.sh, benchmark_*.sh and the README flag
list of DeepLearningExamples) run here unchanged, on a tiny model appended after them."""
import pytest

from moflow import evaluate, generate, preprocess, train
from runtime.errors import ConfigError

TINY = ["--b_n_flow", "2", "--b_hidden_ch", "16", "--b_n_squeeze", "6", "--b_conv_lu", "1", "--a_n_flow", "4",
        "--a_hidden_gnn", "8", "--a_hidden_lin", "8", "--num_workers", "0"]

# Flags exactly as NVIDIA's scripts pass them (GPU count, paths and the CUDA-only --cuda_graph aside).
NVIDIA_TRAIN = ["--learning_rate", "0.0001", "--amp"]                                 # scripts/train.sh, 1 GPU
NVIDIA_EVAL = ["--steps", "2", "--jit", "--amp"]                                        # train.sh's eval_cmd
NVIDIA_PREDICT = ["--batch_size", "8", "--jit", "--correct_validity", "--amp"]          # scripts/predict.sh
NVIDIA_BENCH_INFER = ["--batch_size", "8", "--steps", "3", "--warmup_steps", "1", "--allow_untrained",
                      "--predictions_path", "", "--jit", "false", "--amp"]              # benchmark_inference.sh
NVIDIA_BENCH_TRAIN = ["--batch_size", "8", "--steps", "3", "--eval_epochs", "-1", "--save_epochs", "-1",
                      "--amp"]                                                          # benchmark_training.sh
NVIDIA_README = ["--config_name", "small", "--log_interval", "1", "--save_epochs", "1", "--eval_epochs", "1",
                 "--beta1", "0.9", "--beta2", "0.99", "--clip", "1", "--epochs", "1", "--seed", "1",
                 "--temperature", "0.3", "--val_batch_size", "4", "--local_rank", "0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("nvidia_moflow")
    preprocess.main(["--dataset", "sample", "--data_dir", str(d), "--max_molecules", "400", "--max_atoms", "18",
                     "--max_nodes", "18", "--valid_fraction", "0.2"])
    return str(d)


def test_nvidia_training_evaluation_and_prediction_lines_run(data_dir, tmp_path):
    results = tmp_path / "results"
    common = ["--data_dir", data_dir, "--results_dir", str(results)]
    train.main(NVIDIA_TRAIN + NVIDIA_README + common + ["--batch_size", "8", "--steps", "2"] + TINY)
    ckpt = str(results / "checkpoint.pt")
    evaluate.main(NVIDIA_EVAL + ["--load_ckpt_path", ckpt, "--log_dir", str(results), "--batch_size", "4",
                                 "--num_molecules", "8", "--output", str(results / "metrics.json")])
    out = results / "predictions.smi"
    generate.main(NVIDIA_PREDICT + ["--load_ckpt_path", ckpt, "--results_dir", str(results), "--num_samples", "8",
                                    "--predictions_path", str(out), "--png", ""])
    assert out.exists()
    generate.main(NVIDIA_BENCH_INFER + ["--preset", "qm9", "--log_dir", str(tmp_path / "bench")])
    train.main(NVIDIA_BENCH_TRAIN + common + TINY + ["--epochs", "1"])


def test_cuda_only_and_missing_features_are_refused_by_name(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="--cuda_graphs needs a CUDA device"):  # scripts/train.sh on a CPU
        train.main(["--cuda_graph", "--data_dir", data_dir, "--log_dir", str(tmp_path)] + TINY)
    with pytest.raises(ConfigError, match="--warmup_steps is not supported: use --cuda_graph_warmup"):
        train.main(["--warmup_steps", "10", "--data_dir", data_dir])
    with pytest.raises(ConfigError, match="--verbosity is not supported"):
        train.main(["--verbosity", "2", "--data_dir", data_dir])
