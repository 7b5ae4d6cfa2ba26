"""Issue 8 for SE(3): bad paths, damaged or non-finite data and unwritable outputs fail before training,
with one `error:` line naming the file and the fix, and nothing created that the user did not ask for."""
import functools
import os

import numpy as np
import pytest
import torch

from runtime.errors import ConfigError, DataError, MissingFileError, run_main
from se3_transformer import train
from se3_transformer.data import load_qm9, qm9, write_qm9_edge
from se3_transformer.model.basis import spherical_harmonics
from tests.se3_transformer.helpers import train_args


def _one_error_line(capsys, argv) -> str:
    assert run_main(train.main, argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith("127.0.0.1 - - ")]  # the test HTTP server's own request log
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _no_data(monkeypatch):
    """Fail the test if data loading is reached (the error must come first)."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the error")

    monkeypatch.setattr(train, "load_qm9", refuse)


def test_dgl_with_a_nonexistent_data_dir_creates_nothing(capsys, tmp_path):
    for missing in ("/nonexistent/dir", str(tmp_path / "no" / "such" / "dir")):
        line = _one_error_line(capsys, train_args(tmp_path, "--dataset", "dgl", "--data_dir", missing, ckpt=False))
        assert f"--data_dir {missing} does not exist" in line and "nothing was created" in line
        assert "download qm9_edge.npz" in line and "mkdir -p" in line
        assert not os.path.exists(missing) and not os.path.exists(os.path.dirname(missing))


def test_failed_download_is_one_error_with_the_offline_alternatives(capsys, tmp_path, local_server, monkeypatch):
    _, base = local_server
    monkeypatch.setattr(qm9, "download_qm9_edge", functools.partial(qm9.download_qm9_edge, url=f"{base}/absent.npz"))
    data_dir = tmp_path / "data"  # its parent exists: created for the download
    line = _one_error_line(capsys, train_args(tmp_path, "--dataset", "dgl", "--data_dir", data_dir, ckpt=False))
    assert "404" in line and f"copy DGL's qm9_edge.npz to {data_dir}/qm9_edge.npz" in line and "qm9pack" in line
    assert list(data_dir.iterdir()) == []  # no partial file left


def test_damaged_files_name_the_file_and_how_to_rebuild(capsys, tmp_path):
    (tmp_path / "qm9pack_50.npz").write_bytes(b"PK\x03\x04 damaged")
    line = _one_error_line(capsys, train_args(tmp_path, "--dataset", "qm9pack", "--num_molecules", "50",
                                              "--data_dir", tmp_path, ckpt=False))
    assert f"{tmp_path}/qm9pack_50.npz" in line and "corrupt or truncated" in line
    assert "delete it and run again to rebuild it from the qm9pack wheel" in line

    good = tmp_path / "good.npz"
    write_qm9_edge(good, load_qm9("sample", num_molecules=20))
    (tmp_path / "qm9_edge.npz").write_bytes(good.read_bytes()[:300])  # truncated
    line = _one_error_line(capsys, train_args(tmp_path, "--dataset", "dgl", "--data_dir", tmp_path, ckpt=False))
    assert f"{tmp_path}/qm9_edge.npz" in line and "download it again" in line

    np.savez(tmp_path / "qm9_edge.npz", n_node=np.array([1]))
    with pytest.raises(DataError, match="missing arrays"):
        load_qm9("dgl", tmp_path)


def _arrays_with(tmp_path, change):
    arrays = load_qm9("sample", num_molecules=20)
    change(arrays)
    write_qm9_edge(tmp_path / "qm9_edge.npz", arrays)
    return arrays


def test_non_finite_coordinates_are_reported_with_the_molecule(tmp_path):
    arrays = _arrays_with(tmp_path, lambda a: a.node_pos.__setitem__((a.atom_ptr[3] + 1, 0), np.nan))
    with pytest.raises(DataError, match=rf"qm9_edge.npz: molecule 3 \(QM9 id {arrays.qm9_index[3]}\) has "
                                        r"non-finite \(NaN or infinite\) atom coordinates"):
        load_qm9("dgl", tmp_path)
    _arrays_with(tmp_path, lambda a: a.node_pos.__setitem__(a.atom_ptr[5], np.inf))
    with pytest.raises(DataError, match="molecule 5 .* non-finite"):
        load_qm9("dgl", tmp_path)

    def overlap(a):  # two bonded atoms of molecule 7 at the same place
        first = a.edge_ptr[7]
        a.node_pos[a.atom_ptr[7] + a.dst[first]] = a.node_pos[a.atom_ptr[7] + a.src[first]]

    _arrays_with(tmp_path, overlap)
    with pytest.raises(DataError, match="molecule 7 .*: an edge joins two atoms at the same position"):
        load_qm9("dgl", tmp_path)


def test_model_input_check_tells_nan_from_overlap():
    with pytest.raises(ValueError, match="non-finite"):
        spherical_harmonics(torch.tensor([[float("nan"), 0.0, 1.0]]), 2)
    with pytest.raises(ValueError, match="same position"):
        spherical_harmonics(torch.zeros(1, 3), 2)


def test_unwritable_outputs_fail_before_the_data_is_read(capsys, tmp_path, monkeypatch):
    _no_data(monkeypatch)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    line = _one_error_line(capsys, train_args(blocker / "logs", ckpt=False))
    assert line.startswith(f"error: --log_dir: cannot write to {blocker}/logs")
    line = _one_error_line(capsys, train_args(tmp_path / "logs", "--save_ckpt_path", blocker / "ckpt" / "m.pt"))
    assert f"--save_ckpt_path: cannot write to {blocker}/ckpt" in line
    line = _one_error_line(capsys, train_args(tmp_path / "logs", "--save_ckpt_path", tmp_path))
    assert "is a directory; give a file name" in line


def test_unreadable_data_fails_before_the_first_step(capsys, tmp_path):
    (tmp_path / "qm9_edge.npz").mkdir()  # something that is not a file where the data should be
    line = _one_error_line(capsys, train_args(tmp_path, "--dataset", "dgl", "--data_dir", tmp_path, ckpt=False))
    assert f"{tmp_path}/qm9_edge.npz is not a regular file" in line
    assert not (tmp_path / "log.json").exists() or "train_loss" not in (tmp_path / "log.json").read_text()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_permissions(tmp_path):
    write_qm9_edge(tmp_path / "qm9_edge.npz", load_qm9("sample", num_molecules=20))
    os.chmod(tmp_path / "qm9_edge.npz", 0)
    with pytest.raises(DataError, match="cannot read .*qm9_edge.npz.*permission"):
        load_qm9("dgl", tmp_path)


def test_data_dir_rules():
    with pytest.raises(ConfigError, match="not a directory"):
        qm9.prepare_data_dir(__file__, "test")
    with pytest.raises(MissingFileError, match="does not exist"):
        qm9.prepare_data_dir("/nonexistent/dir", "test")
    assert not os.path.exists("/nonexistent")
