"""runtime.plot: learning curves from DLLogger logs, one panel per metric, runs overlaid."""
import numpy as np
import pytest
from PIL import Image

from runtime.errors import MissingFileError
from runtime.logging import setup_logger
from runtime.plot import main, plot_runs, read_series


def _fake_run(path, scale):
    logger = setup_logger(str(path), silent=True, stdout=False, recipe="se3_transformer")
    for epoch in range(3):
        for step in range(1, 6):
            s = epoch * 5 + step
            logger.log((epoch, s), {"train_loss": scale / s, "lr": 1e-3, "train_throughput": 100.0})
        logger.log((epoch,), {"train_loss": scale / (epoch + 1), "val_mae": scale / (epoch + 2),
                              "val_mae_baseline_mean": 0.9})
    logger.close()


def test_curves_png_is_written_and_not_blank(tmp_path):
    _fake_run(tmp_path / "a", 1.0)
    _fake_run(tmp_path / "b", 2.0)
    series, units = read_series(str(tmp_path / "a" / "log.json"))
    assert [x for x, _ in series["train_loss"]] == list(range(1, 16))  # per-step values win over epoch means
    assert series["val_mae"] == [(5.0, 0.5), (10.0, 1 / 3), (15.0, 0.25)]  # epochs at their last step
    out = tmp_path / "curves.png"
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(out)]) == 0
    image = np.asarray(Image.open(out).convert("L"), dtype=float)
    assert image.shape[0] > 300 and image.shape[1] > 300
    assert image.std() > 5 and (image < 128).mean() > 0.005  # lines and text, not an empty canvas
    with pytest.raises(MissingFileError):
        plot_runs([str(tmp_path / "missing")], str(out))
