"""Penalised logP, the ascent rules, the reference's constrained scoring, and the optimisation CLI."""
import math

import pytest
import torch
from torch import nn

from moflow import optimize, preprocess, train
from moflow.data.dataset import MoleculeCache
from runtime.errors import ConfigError

TINY = ["--b_n_flow", "2", "--b_hidden_ch", "16", "--b_n_squeeze", "6", "--b_conv_lu", "1",
        "--a_n_flow", "4", "--a_hidden_gnn", "8", "--a_hidden_lin", "8", "--batch_size", "23",
        "--silent", "--num_workers", "0", "--val_samples", "0"]  # batch: the 23 training molecules


def test_penalized_logp_matches_the_reference():
    # values printed in calvin-zcx/moflow optimize_property.py (load_property_csv docstring)
    assert optimize.penalized_logp("CC(C)(C)c1ccc2occ(CC(=O)Nc3ccccc3F)c2c1") == pytest.approx(3.1399057, abs=1e-5)
    assert optimize.penalized_logp("C[C@@H]1CC(Nc2cncc(-c3nncn3C)c2)C[C@@H](C)C1") == pytest.approx(0.1723864, abs=1e-5)
    # unstandardised: logP - SA - (largest ring - 6); a 12-ring costs 6
    ring12 = "C1CCCCCCCCCCC1"
    from rdkit import Chem
    from rdkit.Chem import Crippen
    mol = Chem.MolFromSmiles(ring12)
    assert optimize.long_cycle_penalty(mol) == 6
    assert optimize.penalized_logp(ring12, normalized=False) == pytest.approx(
        Crippen.MolLogP(mol) - optimize._sa_score(mol) - 6)
    assert math.isnan(optimize.penalized_logp("not a smiles"))


def test_similarity_is_tanimoto_of_morgan_counts():
    assert optimize.similarity("CCO", "OCC") == 1.0
    s = optimize.similarity("CCCC", "CCCCCC")
    assert 0.0 < s < 1.0 and s == optimize.similarity("CCCCCC", "CCCC")


def test_ascent_rules_and_batched_starts():
    torch.manual_seed(0)
    reg = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    prop = lambda z: reg(z).squeeze(-1)  # noqa: E731
    z0 = torch.randn(3, 6)
    path = optimize.ascend(prop, z0, steps=4, step_size=0.01, rule="sign")
    assert path.shape == (5, 3, 6)
    torch.testing.assert_close((path[1:] - path[:-1]).abs(), torch.full((4, 3, 6), 0.01))  # sign steps
    with torch.no_grad():
        assert (prop(path[1:]) > prop(path[:-1])).all()
    # a batch of starts moves each start exactly as alone
    for rule in optimize.STEP_RULES:
        batched = optimize.ascend(prop, z0, steps=3, step_size=0.5, rule=rule)
        for k in range(3):
            torch.testing.assert_close(batched[:, k], optimize.ascend(prop, z0[k], steps=3, step_size=0.5, rule=rule))
    step = optimize.ascend(prop, z0[0], steps=1, step_size=0.5, rule="normalized")
    assert float((step[1] - step[0]).norm()) == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        optimize.ascend(prop, z0, steps=1, step_size=0.1, rule="adam")


def test_constrained_scoring_follows_the_reference():
    values = {"S": 1.0, "A": 3.0, "B": 2.0, "C": 0.5}
    sims = {"A": 0.1, "B": 0.5, "C": 0.9}

    class Scores:
        def value(self, s):
            return values[s]

        def similarity(self, a, b):
            return sims[b]

    # the start itself, invalid points and repeats are not candidates
    rows = optimize.best_per_threshold("S", 1.0, [None, "S", "A", "A", "B", "C", None], [0.0, 0.4, 0.6, 0.95],
                                       Scores())
    assert [r["best"] for r in rows] == ["A", "B", "C", ""]
    assert [r["success"] for r in rows] == [1, 1, 0, 0]  # C is worse than the start; nothing reaches 0.95
    assert rows[0]["improvement"] == 2.0 and rows[1]["similarity"] == 0.5
    assert rows[2]["improvement"] == -0.5 and math.isnan(rows[3]["improvement"])

    summary = optimize.summarize(rows + [dict(rows[0], improvement=4.0, similarity=0.3)], [0.0, 0.6])
    assert summary[0]["starts"] == 2 and summary[0]["successes"] == 2 and summary[0]["success_rate"] == 100.0
    assert summary[0]["improvement_mean"] == 3.0 and summary[0]["improvement_std"] == pytest.approx(math.sqrt(2))
    assert summary[1]["success_rate"] == 0.0 and math.isnan(summary[1]["improvement_mean"])
    assert "| 0.0 | 100.0 % (2/2) | 3.00 ± 1.41 |" in optimize.format_summary(summary, "plogp")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("moflow_opt")
    preprocess.main(["--dataset", "sample", "--data_dir", str(d), "--max_molecules", "200",
                     "--max_atoms", "18", "--max_nodes", "18", "--valid_fraction", "0.1"])
    train.main(["--data_dir", str(d), "--log_dir", str(d / "run"), "--save_ckpt_path",
                str(d / "run" / "checkpoint.pt"), "--epochs", "1", *TINY])
    return d


def _tsv(path):
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def test_constrained_plogp_cli(trained, tmp_path, capsys):
    out = tmp_path / "plogp.tsv"
    optimize.main(["--load_ckpt_path", str(trained / "run" / "checkpoint.pt"), "--property", "plogp",
                   "--similarity_thresholds", "0.0", "0.4", "--num_start", "3", "--steps", "5", "--step_size", "0.2",
                   "--num_train", "60", "--fit_epochs", "5", "--output", str(out)])
    printed = capsys.readouterr().out
    assert "| similarity >= | success |" in printed
    rows = _tsv(out)
    assert len(rows) == 6 and [float(r["threshold"]) for r in rows] == [0.0, 0.4] * 3
    assert any(r["best"] for r in rows)  # the path leaves the start molecule
    # the starts are the lowest-plogp training molecules, scored in the form the model encodes
    cache = MoleculeCache(str(trained), "sample")
    pool = sorted(optimize.penalized_logp(s) for s in cache.subset("train").decoded_smiles() if s)
    starts = [float(r["start_plogp"]) for r in rows[::2]]
    assert starts == pytest.approx(pool[:3], abs=1e-3)
    for r in rows:
        if r["best"]:
            assert float(r["best_plogp"]) == pytest.approx(optimize.penalized_logp(r["best"]), abs=1e-3)
            assert float(r["similarity"]) >= float(r["threshold"]) and r["best"] != r["start"]
            assert float(r["improvement"]) == pytest.approx(float(r["best_plogp"]) - float(r["start_plogp"]),
                                                            abs=1e-3)
        assert r["success"] == str(int(bool(r["best"]) and float(r["improvement"]) >= 0))
    summary = _tsv(tmp_path / "plogp_summary.tsv")
    assert [int(s["starts"]) for s in summary] == [3, 3]
    for s, d in zip(summary, ("0.0", "0.4")):
        ok = [r for r in rows if r["threshold"].startswith(d) and r["success"] == "1"]
        assert int(s["successes"]) == len(ok)
        assert float(s["success_rate"]) == pytest.approx(100 * len(ok) / 3, abs=1e-3)
    # bad flag values fail before any work
    with pytest.raises(ConfigError, match="similarity_thresholds"):
        optimize.main(["--load_ckpt_path", str(trained / "run" / "checkpoint.pt"), "--similarity_thresholds", "1.5"])
