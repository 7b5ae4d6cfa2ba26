"""One error style at parse time: every entry point given a path flag it would not use, a value out
of range or an abbreviated flag prints one ``error:`` line and exits with code 2, before loading any
data or model (so no checkpoint or dataset needs to exist here)."""
import importlib

import pytest

from runtime.errors import run_main

TRAIN = ("moflow.train", "se3_transformer.train", "graph_parallel.train")
INFERENCE = ("moflow.evaluate", "moflow.generate", "moflow.predict", "se3_transformer.evaluate",
             "se3_transformer.predict", "graph_parallel.evaluate", "graph_parallel.predict")

UNUSED_PATH = [(m, ["--benchmark", "--save_ckpt_path", "ckpt.pt"], "--save_ckpt_path is not used") for m in TRAIN] + [
    ("se3_transformer.train", ["--dataset", "sample", "--data_dir", "/nonexistent"], "--data_dir is not used"),
    ("se3_transformer.evaluate", ["--dataset", "sample", "--data_dir", "/nonexistent"], "--data_dir is not used"),
    ("se3_transformer.predict", ["--dataset", "sample", "--data_dir", "/nonexistent"], "--data_dir is not used"),
    ("graph_parallel.train", ["--data_dir", "my_data/"], "--data_dir is not used"),
    ("graph_parallel.evaluate", ["--dataset", "emt_small", "--data_dir", "my_data/"], "--data_dir is not used"),
    ("graph_parallel.predict", ["--dataset", "emt_small", "--data_dir", "my_data/"], "--data_dir is not used"),
    ("moflow.generate", ["--data_dir", "my_data/"], "--data_dir is not used"),
    ("moflow.predict", ["--data_dir", "my_data/"], "--data_dir is not used"),
]
OUT_OF_RANGE = [(m, ["--batch_size", "0"], "expected a positive integer") for m in TRAIN + INFERENCE] + [
    (m, ["--beta1", "1.5"], "expected a number in [0, 1)") for m in TRAIN] + [
    ("moflow.generate", ["--temperature", "-1"], "expected a non-negative number"),
    ("moflow.evaluate", ["--temperature", "-1"], "expected a non-negative number"),
    ("moflow.train", ["--val_samples", "-1"], "expected a non-negative integer"),
    ("moflow.interpolate", ["--smiles", "C", "CC", "--steps", "0"], "expected a positive integer"),
    ("graph_parallel.train", ["--preset", "bogus"], "invalid choice: 'bogus'"),   # a listed choice, as elsewhere
]
ABBREVIATED = [(m, ["--batch", "8"], "unrecognized arguments: --batch") for m in TRAIN + INFERENCE] + [
    (m, ["--epoch", "1"], "unrecognized arguments: --epoch") for m in TRAIN] + [
    ("moflow.train", ["--log", "1"], "unrecognized arguments: --log 1"),   # no candidates, retired names neither
    ("moflow.interpolate", ["--smiles", "C", "CC", "--ste", "4"], "unrecognized arguments: --ste"),
]


@pytest.mark.parametrize("module, argv, message", UNUSED_PATH + OUT_OF_RANGE + ABBREVIATED,
                         ids=lambda v: " ".join(v) if isinstance(v, list) else str(v)[:40])
def test_bad_flag_is_one_error_line_and_exit_2(module, argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(module).main
    assert run_main(main, argv + ["--log_dir", str(tmp_path)] if module != "moflow.interpolate" else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # refused before anything was created


def test_device_flags_are_checked_at_parse_time(capsys):
    from runtime.cli import ArgumentParser, add_common_args

    parser = add_common_args(ArgumentParser(prog="x"))
    import torch

    if not torch.cuda.is_available():
        assert run_main(lambda argv: parser.parse_args(argv), ["--device", "cuda"]) == 2
        assert "--device cuda: no CUDA device is visible" in capsys.readouterr().err
        for argv in (["--amp", "--amp_dtype", "fp16"], ["--device", "cpu", "--amp", "--amp_dtype", "fp16"]):
            assert run_main(lambda a: parser.parse_args(a), argv) == 2
            assert "--amp_dtype fp16 needs CUDA" in capsys.readouterr().err
    args = parser.parse_args(["--device", "cpu", "--amp_dtype", "bf16", "--tf32", "true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["note: --amp_dtype bf16 is ignored without --amp", "note: --tf32 is ignored on CPU (TF32 is a "
                   "CUDA matmul mode)"] and args.device == "cpu"
