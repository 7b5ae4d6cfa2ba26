"""Atomic writes and the download's content validation (resume and checksums: tests/moflow/test_data.py)."""
import os

import pytest

from runtime.io import atomic_write, download, sha256_of


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "sub" / "file.txt"
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("first")
    assert path.read_text() == "first"
    with pytest.raises(KeyError):
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write("half")
            raise KeyError("boom")
    assert path.read_text() == "first"
    assert os.listdir(tmp_path / "sub") == ["file.txt"]


def test_download_validates_before_publishing(local_server, tmp_path):
    root, base = local_server
    (root / "good.txt").write_text("OK payload")
    (root / "bad.txt").write_text("garbage")

    def must_start_with_ok(part):
        with open(part) as f:
            if not f.read().startswith("OK"):
                raise ValueError("not an OK file")

    dest = tmp_path / "dl" / "bad.txt"
    with pytest.raises(ValueError, match="not an OK file"):
        download(f"{base}/bad.txt", dest, validate=must_start_with_ok, verbose=False)
    assert os.listdir(tmp_path / "dl") == []
    good = download(f"{base}/good.txt", tmp_path / "dl" / "good.txt", validate=must_start_with_ok,
                    sha256=sha256_of(root / "good.txt"), verbose=False)
    assert open(good).read() == "OK payload"
