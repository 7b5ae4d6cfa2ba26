"""Every recipe's train, evaluate and predict on the stand-in device of :mod:`runtime.devicecheck`.

Two kinds of GPU fault fail here on a CPU:
- device mixing: a host tensor meeting a device tensor raises (as CUDA does);
- host syncs: after the first (warm-up) optimizer step, no host read or blocking copy may happen
  outside the loop's log steps, checkpoints and evaluation results (``expected_sync``). For
  evaluate and predict, no sync may repeat per batch: a run over twice the batches may not sync
  more often at any line (caches only make the second run sync less).
"""
from collections import Counter

import pytest

from runtime.devicecheck import DeviceCheck

from tests.graph_parallel.gp_helpers import tiny_dataset, train_args as gp_train_args

MOFLOW_TINY = ["--b_n_flow", "2", "--b_hidden_ch", "16", "--b_n_squeeze", "6", "--b_conv_lu", "1", "--a_n_flow", "4",
               "--a_hidden_gnn", "8", "--a_hidden_lin", "8", "--silent", "--num_workers", "0"]
SE3_TINY = ["--num_layers", "1", "--num_degrees", "2", "--num_channels", "8", "--num_heads", "2",
            "--num_molecules", "40", "--silent", "--num_workers", "0"]


def checked_training(main, argv):
    """Run a training ``main`` on the stand-in device; fail on any sync after the first step."""
    with DeviceCheck() as check, check.track_steps() as marks:
        main(argv)
    assert len(marks) >= 3, f"only {len(marks)} optimizer steps ran"
    late = check.unexpected(since=marks[0])
    assert not late, "host syncs inside training steps or evaluation:\n" + check.report(late)
    return check


def per_line(main, argv):
    with DeviceCheck() as check:
        main(argv)
    return Counter(s.where for s in check.unexpected())


def assert_no_per_batch_sync(main, argv, few: list, many: list):
    """``few`` / ``many``: flags giving k and 2k batches; no line may sync more often with 2k."""
    first, second = per_line(main, argv + few), per_line(main, argv + many)
    grown = {line: (first[line], n) for line, n in second.items() if n > first[line]}
    assert not grown, f"syncs that repeat per batch (line: count with k, with 2k batches): {grown}"


@pytest.fixture(scope="module")
def moflow_run(tmp_path_factory):
    from moflow import preprocess, train

    data = tmp_path_factory.mktemp("moflow_data")
    preprocess.main(["--dataset", "sample", "--data_dir", str(data), "--max_molecules", "300", "--max_atoms", "18",
                     "--max_nodes", "18", "--valid_fraction", "0.3"])
    run = tmp_path_factory.mktemp("moflow_run")
    checked_training(train.main, ["--data_dir", str(data), "--log_dir", str(run), "--batch_size", "8",
                                  "--max_steps", "4", "--log_interval", "2", "--val_samples", "8", *MOFLOW_TINY])
    return data, run


def test_moflow_train_evaluate_predict_on_the_device(moflow_run):
    from moflow import evaluate, generate

    data, run = moflow_run
    ckpt = str(run / "checkpoint.pt")
    assert_no_per_batch_sync(evaluate.main, ["--load_ckpt_path", ckpt, "--log_dir", str(run / "eval"), "--silent",
                                             "--num_samples", "8", "--num_molecules", "16"],
                             ["--batch_size", "8"], ["--batch_size", "4"])
    # sampling reads every generated batch back for RDKit (marked expected); nothing else may repeat
    assert_no_per_batch_sync(generate.main, ["--load_ckpt_path", ckpt, "--log_dir", str(run / "gen"), "--silent",
                                             "--num_samples", "8", "--output", str(run / "gen" / "m.smi")],
                             ["--batch_size", "8"], ["--batch_size", "4"])


def test_se3_train_evaluate_predict_on_the_device(tmp_path):
    from se3_transformer import evaluate, predict, train

    ckpt = str(tmp_path / "model.pt")
    checked_training(train.main, SE3_TINY + ["--batch_size", "8", "--log_dir", str(tmp_path), "--save_ckpt_path", ckpt,
                                             "--max_steps", "4", "--log_interval", "2"])
    common = ["--load_ckpt_path", ckpt, "--split", "val", "--silent", "--num_workers", "0"]
    assert_no_per_batch_sync(evaluate.main, common + ["--log_dir", str(tmp_path / "e")],
                             ["--batch_size", "4"], ["--batch_size", "2"])
    assert_no_per_batch_sync(predict.main, common + ["--log_dir", str(tmp_path / "p")],
                             ["--batch_size", "4"], ["--batch_size", "2"])


@pytest.mark.parametrize("model", ["dimenetpp", "gemnet_t"])
def test_graph_parallel_train_evaluate_predict_on_the_device(model, tmp_path):
    """GemNet-T covers the scale-factor fit (fault: a host partition indexing device tensors), the
    EMA, the S2EF loss and metrics (the in-loop evaluation); evaluate and predict share one code path
    for every model, so DimeNet++ alone runs them (GemNet is the slower model here)."""
    from graph_parallel import evaluate, predict, train

    data = tiny_dataset(tmp_path / "data", train=list(range(0, 72, 9)), val=[0, 9, 18, 27])
    out = tmp_path / "run"
    checked_training(train.main, gp_train_args(data, out, "--model", model, "--batch_size", "2", "--max_steps", "3",
                                               "--log_interval", "2", "--num_workers", "0"))
    if model != "dimenetpp":
        return
    common = ["--load_ckpt_path", str(out / "model.pt"), "--dataset", str(data), "--silent", "--num_workers", "0"]
    assert_no_per_batch_sync(evaluate.main, common + ["--log_dir", str(tmp_path / "e")],
                             ["--batch_size", "2"], ["--batch_size", "1"])
    assert_no_per_batch_sync(predict.main, common + ["--log_dir", str(tmp_path / "p")],
                             ["--batch_size", "2"], ["--batch_size", "1"])
