"""One shape: every recipe runs train -> evaluate -> predict with the same flags from a working
directory other than the one it trained in, and leaves the same files, summary fields and metric
meanings (runtime.cli: checkpoint_to_save / checkpoint_to_load, prediction_path, evaluation_summary)."""
import os

import pytest

from runtime.logging import read_dllogger
from tests.graph_parallel.gp_helpers import tiny_dataset
from tests.se3_transformer.helpers import TINY as SE3_TINY
from tests.test_vocabulary import MOFLOW_TINY

SUMMARY = ("checkpoint", "val_size", "parameters", "world_size")


def _moflow(tmp_path):
    from moflow import evaluate, predict, preprocess, train

    data = str(tmp_path / "data")
    preprocess.main(["--dataset", "sample", "--data_dir", data, "--max_molecules", "400", "--max_atoms", "18",
                     "--max_nodes", "18", "--valid_fraction", "0.2"])
    flags = ["--data_dir", data, *MOFLOW_TINY, "--val_samples", "4", "--val_molecules", "4"]
    return (train, evaluate, predict), flags, ["--num_samples", "4", "--num_molecules", "4", "--silent"], \
        ["--num_samples", "4", "--silent"], "samples.smi"


def _se3(tmp_path):
    from se3_transformer import evaluate, predict, train

    return (train, evaluate, predict), list(SE3_TINY), ["--silent"], ["--silent"], "val.csv"


def _graph_parallel(tmp_path):
    from graph_parallel import evaluate, predict, train

    tiny_dataset(tmp_path / "train_cwd" / "gp_data")
    return (train, evaluate, predict), ["--dataset", "gp_data", "--preset", "small", "--cutoff", "4.5",
                                        "--max_neighbors", "20", "--batch_size", "4", "--silent",
                                        "--warmup_steps", "2"], ["--silent"], ["--silent"], "val.npz"


@pytest.mark.parametrize("setup", [_moflow, _se3, _graph_parallel], ids=["moflow", "se3_transformer", "graph_parallel"])
def test_train_evaluate_predict_from_another_directory(tmp_path, monkeypatch, setup):
    (train, evaluate, predict), train_flags, eval_flags, predict_flags, predictions = setup(tmp_path)
    out = str(tmp_path / "out")
    (tmp_path / "train_cwd").mkdir(exist_ok=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "train_cwd")
    trained = train.main([*train_flags, "--log_dir", out, "--epochs", "1", "--max_steps", "2", "--log_interval", "1"])
    assert trained["steps"] == 2
    monkeypatch.chdir(tmp_path / "elsewhere")  # relative dataset paths must not matter any more
    scores = evaluate.main(["--log_dir", out, "--split", "val", *eval_flags])
    written = predict.main(["--log_dir", out, "--split", "val", *predict_flags] if "samples" not in predictions
                           else ["--log_dir", out, *predict_flags])

    files = os.listdir(out)
    numbered = [f for f in files if f.startswith("checkpoint_step")]  # --keep_last 3, the same in every recipe
    assert numbered == ["checkpoint_step000000002.pt"], files
    assert sorted(set(files) - set(numbered)) == sorted(
        ["log.json", "checkpoint.pt", "evaluate_log.json", "predict_log.json", f"predictions_{predictions}"]
        + (["predictions_samples.png", "metrics_val.json"] if "samples" in predictions else []))
    assert written["output"] == os.path.join(out, f"predictions_{predictions}")
    checkpoint = os.path.join(out, "checkpoint.pt")
    for result, log in ((scores, "evaluate_log.json"), (written, "predict_log.json")):
        logged = {k: v for r in read_dllogger(os.path.join(out, log)) if r["type"] == "LOG"
                  and r.get("step") != "PARAMETER" for k, v in r["data"].items()}
        size = "num_samples" if result is written and "samples" in predictions else "val_size"  # no split
        for name in ("checkpoint", size, "parameters", "world_size"):
            assert name in result and name in logged, (log, name)
        assert result["checkpoint"] == checkpoint and result["world_size"] == 1
        assert result["parameters"] > 0 and result[size] > 0
    assert scores["val_loss"] > 0 and scores["val_size"] >= 1  # <split>_loss: the training loss, on that split


TRAIN_MODULES = ("moflow.train", "se3_transformer.train", "graph_parallel.train")


@pytest.mark.parametrize("name", TRAIN_MODULES)
def test_train_py_has_the_phases_of_runtime_recipe(name):
    """Every train.py defines the same phase functions (runtime.recipe.PHASES), in that order in the
    file, and its main is runtime.recipe.train_main over them."""
    import ast
    import importlib
    import inspect

    from runtime.recipe import PHASES

    module = importlib.import_module(name)
    tree = ast.parse(inspect.getsource(module))
    defined = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert [d for d in defined if d in PHASES] == list(PHASES), defined
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    calls = [n.func.id for n in ast.walk(main) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert calls == ["train_main"], calls
    config_class = inspect.signature(module.build_config).return_annotation
    assert "TrainConfig" in str(config_class)
    assert module.TrainConfig.__dataclass_params__.frozen


@pytest.mark.parametrize("path", ["moflow/train.py", "se3_transformer/train.py", "graph_parallel/train.py",
                                  "se3_transformer/engine.py", "graph_parallel/engine.py", "runtime/recipe.py"])
def test_no_recipe_writes_to_its_parsed_flags(path):
    """The flags are read, never written: no ``args.x = ...``, ``setattr(args, ...)`` or
    ``args.__dict__`` in the training code (the config holds what is resolved)."""
    import ast

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tree = ast.parse(open(os.path.join(root, path)).read())
    names = {"args", "flags"}
    writes = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        writes += [ast.unparse(t) for t in targets if isinstance(t, ast.Attribute)
                   and isinstance(t.value, ast.Name) and t.value.id in names]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" \
                and isinstance(node.args[0], ast.Name) and node.args[0].id in names:
            writes.append(ast.unparse(node))
        if isinstance(node, ast.Attribute) and node.attr == "__dict__" and isinstance(node.value, ast.Name) \
                and node.value.id in names:
            writes.append(ast.unparse(node))
    assert writes == [], f"{path} writes to its flags: {writes}"
