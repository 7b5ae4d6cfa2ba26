"""graph_parallel.evaluate and graph_parallel.predict from a training checkpoint (gp_size 1, in-process),
and param_counts --help."""
import numpy as np
import pytest

from graph_parallel import evaluate, param_counts, predict, train
from graph_parallel.checkpoints import write_model_checkpoint
from graph_parallel.data import LmdbDataset
from graph_parallel.models import build_model
from runtime.errors import ConfigError, MissingFileError
from tests.graph_parallel.gp_helpers import records, tiny_dataset, train_args

BASELINES = ("val_energy_mae_baseline_mean", "val_energy_mae_baseline_linref", "val_forces_mae_baseline_zero")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = tiny_dataset(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("train")
    result = train.main(train_args(data, out, "--epochs", "1"))
    return data, out / "model.pt", result


def test_evaluate_reports_the_metrics_beside_the_baselines(tmp_path, trained, capsys):
    data, ckpt, train_result = trained
    result = evaluate.main(["--load_ckpt_path", str(ckpt), "--dataset", str(data), "--log_dir", str(tmp_path),
                            "--silent"])
    assert result["val_size"] == 4
    for key in ("val_energy_mae", "val_forces_mae", "val_forces_cos", "val_efwt", "val_loss") + BASELINES:
        assert key in result and np.isfinite(result[key])
        assert result[key] == pytest.approx(train_result[key], rel=1e-6), key     # the EMA weights, as in training
    table = capsys.readouterr().out
    assert "energy MAE (eV)" in table and "forces MAE (eV/A)" in table and "linref" in table
    logged = [r["data"] for r in records(tmp_path, "evaluate_log.json") if r["step"] == []]
    assert any("val_energy_mae_baseline_linref" in d for d in logged)
    raw = evaluate.main(["--load_ckpt_path", str(ckpt), "--dataset", str(data), "--log_dir", str(tmp_path),
                         "--use_ema", "false", "--split", "train", "--silent"])
    assert raw["train_size"] == 16 and raw["train_energy_mae"] != result["val_energy_mae"]


def test_predict_writes_energies_and_forces_in_dataset_order(tmp_path, trained):
    data, ckpt, _ = trained
    out = tmp_path / "pred.npz"
    result = predict.main(["--load_ckpt_path", str(ckpt), "--dataset", str(data), "--log_dir", str(tmp_path),
                           "--output", str(out), "--batch_size", "3", "--silent"])
    assert result["val_size"] == 4
    arrays = np.load(out)
    assert set(arrays.files) == set(predict.KEYS)
    val = LmdbDataset(data / "val.lmdb")
    assert arrays["index"].tolist() == [0, 1, 2, 3]
    assert arrays["sid"].tolist() == [val.raw(i)["sid"] for i in range(4)]
    assert arrays["forces"].shape == (int(arrays["natoms"].sum()), 3)
    np.testing.assert_allclose(arrays["forces_target"][:arrays["natoms"][0]], val.raw(0)["forces"], rtol=1e-6)
    metrics = evaluate.main(["--load_ckpt_path", str(ckpt), "--dataset", str(data), "--log_dir", str(tmp_path),
                             "--silent"])
    mae = np.abs(arrays["energy"] - arrays["energy_target"]).mean()
    assert mae == pytest.approx(metrics["val_energy_mae"], rel=1e-5)
    with pytest.raises(ConfigError, match=r"\.npz"):
        predict.main(["--load_ckpt_path", str(ckpt), "--output", str(tmp_path / "p.csv")])


def test_converted_checkpoints_evaluate_on_a_named_dataset(tmp_path):
    model = build_model("dimenetpp", "small", cutoff=4.5)
    ckpt = tmp_path / "converted.pt"
    write_model_checkpoint(str(ckpt), model, "dimenetpp", {"mean": 0.0, "std": 1.0}, 4.5, 20)
    result = evaluate.main(["--load_ckpt_path", str(ckpt), "--log_dir", str(tmp_path), "--silent"])   # emt_small
    assert result["val_size"] == 36 and result["val_energy_mae_baseline_mean"] == pytest.approx(1.0531, abs=1e-4)
    with pytest.raises(MissingFileError, match="nowhere"):
        evaluate.main(["--load_ckpt_path", str(ckpt), "--dataset", "nowhere", "--data_dir", str(tmp_path)])
    with pytest.raises(MissingFileError, match=f"checkpoint not found: {tmp_path / 'checkpoint.pt'}"):
        evaluate.main(["--log_dir", str(tmp_path)])   # the default: LOG_DIR/checkpoint.pt


def test_param_counts_help_prints_and_does_not_run(capsys):
    with pytest.raises(SystemExit) as exit_info:
        param_counts.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "usage:" in out and "parameters" not in out.split("usage:")[0]
    rows = param_counts.main(["--model", "dimenetpp", "--preset", "small"])
    assert rows == [("dimenetpp", "small", 41606)]


def test_fairchem_gemnet_edges_agree_through_evaluate_predict_and_the_calculator(tmp_path):
    """A converted (one_sided) GemNet with truncating max_neighbors: the collater builds the calculator's graph."""
    import torch
    from ase import Atoms

    from graph_parallel.calculator import GraphParallelCalculator
    from graph_parallel.data import Collater
    from graph_parallel.models import model_graph

    cutoff, max_neighbors = 4.5, 8
    data = tiny_dataset(tmp_path / "data", train=[0, 9], val=[0, 9, 18])
    torch.manual_seed(0)
    model = build_model("gemnet_t", "small", cutoff=cutoff, symmetric_edges="one_sided")
    ckpt = tmp_path / "fairchem.pt"
    write_model_checkpoint(str(ckpt), model, "gemnet_t", {"mean": -1.0, "std": 2.0}, cutoff, max_neighbors,
                           source="converted from fairchem gemnet_t")
    val = LmdbDataset(data / "val.lmdb")
    batch = Collater(cutoff, max_neighbors, "one_sided")([val[0]])
    frame = val[0]
    edges, offsets = model_graph(model, frame["pos"].double(), frame["cell"].double(), cutoff, max_neighbors)
    assert torch.equal(batch.edge_index, edges) and torch.equal(batch.cell_offsets, offsets.float())
    union = Collater(cutoff, max_neighbors, True)([val[0]])
    assert union.edge_index.shape[1] > edges.shape[1]                 # truncation bites: the graphs differ

    def predicted(*flags):
        out = tmp_path / f"pred{len(flags)}.npz"
        predict.main(["--load_ckpt_path", str(ckpt), "--dataset", str(data), "--log_dir", str(tmp_path),
                      "--output", str(out), "--silent", *flags])
        return np.load(out)

    arrays = predicted()
    calc = GraphParallelCalculator(str(ckpt))
    start = 0
    for i in range(len(val)):
        record = val.raw(i)
        atoms = Atoms(numbers=record["atomic_numbers"], positions=record["pos"], cell=record["cell"].reshape(3, 3),
                      pbc=True)
        atoms.calc = calc
        n = len(atoms)
        assert arrays["energy"][i] == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
        np.testing.assert_allclose(arrays["forces"][start:start + n], atoms.get_forces(), atol=1e-4)
        start += n
    metrics = evaluate.main(["--load_ckpt_path", str(ckpt), "--dataset", str(data), "--log_dir", str(tmp_path),
                             "--silent"])
    mae = np.abs(arrays["energy"] - arrays["energy_target"]).mean()
    assert metrics["val_energy_mae"] == pytest.approx(mae, rel=1e-5)
    union_arrays = predicted("--symmetric_edges", "union")            # asked for: this project's graph
    assert np.abs(union_arrays["energy"] - arrays["energy"]).max() > 1e-3
    union_calc = GraphParallelCalculator(str(ckpt), symmetric_edges="union")
    atoms.calc = union_calc
    assert union_arrays["energy"][-1] == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
    with pytest.raises(ConfigError, match="applies to GemNet"):
        dimenet = tmp_path / "dimenet.pt"
        write_model_checkpoint(str(dimenet), build_model("dimenetpp", "small", cutoff=cutoff), "dimenetpp",
                               {"mean": 0.0, "std": 1.0}, cutoff, max_neighbors)
        evaluate.main(["--load_ckpt_path", str(dimenet), "--dataset", str(data), "--log_dir", str(tmp_path),
                       "--symmetric_edges", "one_sided"])
