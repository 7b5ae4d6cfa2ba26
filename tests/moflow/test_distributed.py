"""Two gloo processes train MoFlow with DDP and end with identical weights."""
import torch

from moflow import preprocess, train
from runtime.testing import run_distributed


def _train_rank(rank, world_size, data_dir, run_dir):
    """Each rank's weights after training (only rank 0 saves a checkpoint, so the loop phase is watched)."""
    trained = {}
    run_loop = train.run_loop

    def watched(config, env, data, model, *rest):
        trained["model"] = model
        return run_loop(config, env, data, model, *rest)

    train.run_loop = watched                                  # train_main looks the phase up on the module
    train.main(["--data_dir", data_dir, "--log_dir", run_dir, "--save_ckpt_path", f"{run_dir}/checkpoint.pt",
                "--epochs", "1", "--batch_size", "8", "--val_samples", "0", "--silent", "--b_n_flow", "2",
                "--b_hidden_ch", "8", "--b_n_squeeze", "6", "--a_n_flow", "3", "--a_hidden_gnn", "8",
                "--a_hidden_lin", "8", "--log_interval", "1"])
    return {k: v.clone() for k, v in trained["model"].state_dict().items()}


def test_ddp_two_processes_stay_in_sync(tmp_path):
    data_dir = tmp_path / "data"
    preprocess.main(["--dataset", "sample", "--data_dir", str(data_dir), "--max_molecules", "400",
                     "--max_atoms", "18", "--max_nodes", "18", "--valid_fraction", "0.2"])
    states = run_distributed(_train_rank, 2, str(data_dir), str(tmp_path / "run"))
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    for key, value in states[0].items():
        if key.endswith("num_batches_tracked") or "running_" in key:
            continue  # BatchNorm statistics are per rank, as in any DDP run without SyncBatchNorm
        torch.testing.assert_close(value, states[1][key], msg=f"{key} differs between ranks")
    assert states[0]["ln_var"].item() != 0.0


def _initialised_rank(rank, world_size, data_dir, batch_size):
    from moflow.data.dataset import MoleculeCache

    args = train.build_parser().parse_args(["--data_dir", data_dir, *TINY])
    cache = MoleculeCache(data_dir, "sample")
    config = train.model_config_from_args(args, cache)
    model = train.initialised_model(config, cache.subset("train"), 7, batch_size, world_size, torch.device("cpu"))
    return {k: v.clone() for k, v in model.state_dict().items()}


TINY = ["--b_n_flow", "2", "--b_hidden_ch", "8", "--b_n_squeeze", "6", "--a_n_flow", "3", "--a_hidden_gnn", "8",
        "--a_hidden_lin", "8"]


def test_ranks_start_from_the_single_process_model(tmp_path):
    """Issue: each rank seeded seed + rank before building the model, and ActNorm averaged the
    statistics of different networks. Now every rank equals one process on the same global batch."""
    data_dir = tmp_path / "data"
    preprocess.main(["--dataset", "sample", "--data_dir", str(data_dir), "--max_molecules", "400",
                     "--max_atoms", "18", "--max_nodes", "18", "--valid_fraction", "0.2"])
    ranks = run_distributed(_initialised_rank, 2, str(data_dir), 8)
    single = _initialised_rank(0, 1, str(data_dir), 16)
    for rank_state in ranks:
        for key, value in single.items():
            assert torch.equal(value, rank_state[key]), key
    assert any(k.endswith("log_scale") and v.abs().sum() > 0 for k, v in single.items())
