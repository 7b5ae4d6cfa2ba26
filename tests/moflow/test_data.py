"""Preprocessing, encoding, the cache and the resumable download (local HTTP server)."""
import gzip
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest

from moflow import preprocess
from moflow.config import DATASETS, NO_BOND
from moflow.data.dataset import MoleculeCache
from runtime.io import download
from moflow.data.encoding import encode_many, encode_smiles
from moflow.data.sources import SAMPLE_PATH, read_smiles_csv


def test_encode_is_canonical_and_kekulized():
    spec = DATASETS["zinc250k"]
    can1, a1, b1 = encode_smiles("c1ccccc1O", spec)
    can2, a2, b2 = encode_smiles("Oc1ccccc1", spec)
    assert can1 == can2 == "Oc1ccccc1"
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    assert a1.shape == (40,) and b1.shape == (40, 40)
    assert (a1[:7] != len(spec.atomic_nums)).all() and (a1[7:] == len(spec.atomic_nums)).all()
    np.testing.assert_array_equal(b1, b1.T)
    ring = b1[:7, :7]
    assert (ring == 0).sum() // 2 == 4 and (ring == 1).sum() // 2 == 3  # kekulé: 3 double bonds
    assert (b1[7:] == NO_BOND).all()


def test_unknown_atoms_and_large_molecules_are_counted():
    spec = DATASETS["qm9"]
    smiles = ["CCO", "CCS", "C[Si](C)C", "CCCCCCCCCC", "not_a_smiles", "N#N"]
    kept, atoms, bonds, skipped, src = encode_many(smiles, spec)
    assert kept == ["CCO", "N#N"] and src.tolist() == [0, 5]
    assert skipped == {"unknown_atom": 2, "too_many_atoms": 1, "unparseable": 1}
    assert atoms.shape == (2, 9) and bonds.shape == (2, 9, 9)
    assert bonds[1, 0, 1] == 2  # triple


def test_preprocess_cli_reports_refusals_and_writes_cache(tmp_path, capsys):
    csv = tmp_path / "mols.csv"
    csv.write_text("smiles,logP\nCCO,0.1\nc1ccccc1,0.2\nCC[Se]C,0.3\nC[Si](C)(C)C,0.4\nOCC(=O)N,1\n")
    preprocess.main(["--dataset", "qm9", "--csv", str(csv), "--data_dir", str(tmp_path),
                     "--valid_fraction", "0.34"])
    out = capsys.readouterr().out
    assert "3 encoded, 2 refused (unknown_atom=2)" in out
    cache = MoleculeCache(str(tmp_path), "qm9")
    assert len(cache) == 3 and cache.spec.max_nodes == 9
    assert sorted(cache.train_idx + cache.valid_idx) == [0, 1, 2] and len(cache.valid_idx) == 1
    x, adj = cache.subset("all")[1]
    assert x.shape == (9, 5) and adj.shape == (4, 9, 9)
    assert float(x.sum()) == 9 and float(adj.sum()) == 81
    with pytest.raises(ValueError, match="--strict"):
        preprocess.main(["--dataset", "qm9", "--csv", str(csv), "--data_dir", str(tmp_path), "--strict"])


def test_missing_cache_and_bad_csv_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="moflow.preprocess"):
        MoleculeCache(str(tmp_path), "zinc250k")
    bad = tmp_path / "bad.csv"
    bad.write_text("name,value\na,1\n")
    with pytest.raises(ValueError, match="no column 'smiles'"):
        read_smiles_csv(str(bad))


def test_embedded_sample_is_real_moses_subset():
    smiles = read_smiles_csv(SAMPLE_PATH)
    assert len(smiles) >= 5000
    with gzip.open(SAMPLE_PATH, "rt") as f:
        assert f.readline().strip() == "smiles"


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static file server that honours ``Range: bytes=N-`` and can cut a response short."""
    cut_after = None  # serve only this many bytes once (simulates a dropped connection)

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        data = open(path, "rb").read()
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        type(self).requests.append(rng)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).cut_after is not None:  # announce the full length, then drop the connection
            body = body[:type(self).cut_after]
            type(self).cut_after = None
            self.close_connection = True
        self.wfile.write(body)


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = type("Handler", (_RangeHandler,), {"requests": [], "cut_after": None})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: handler(*a, directory=str(root), **k))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_download_checksum_and_resume(http_root, tmp_path):
    root, base, handler = http_root
    payload = ("smiles,logP,qed,SAS\n" + "CCO,0.1,0.4,2.0\n" * 5000).encode()
    (root / "zinc250k.csv").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    dest = str(tmp_path / "dl" / "zinc250k.csv")

    # a partial file from an interrupted download is resumed with a Range request
    os.makedirs(os.path.dirname(dest))
    with open(dest + ".part", "wb") as f:
        f.write(payload[:1000])
    download(f"{base}/zinc250k.csv", dest, sha256=digest, verbose=False)
    assert open(dest, "rb").read() == payload
    assert handler.requests[-1] == "bytes=1000-"
    assert not os.path.exists(dest + ".part")

    # a matching existing file is not fetched again
    n = len(handler.requests)
    download(f"{base}/zinc250k.csv", dest, sha256=digest, verbose=False)
    assert len(handler.requests) == n

    # a dropped connection leaves a .part file; the next call completes it
    dest2 = str(tmp_path / "dl" / "again.csv")
    handler.cut_after = 3000
    with pytest.raises(RuntimeError, match="interrupted"):
        download(f"{base}/zinc250k.csv", dest2, sha256=digest, verbose=False)
    assert os.path.getsize(dest2 + ".part") == 3000
    download(f"{base}/zinc250k.csv", dest2, sha256=digest, verbose=False)
    assert open(dest2, "rb").read() == payload and handler.requests[-1] == "bytes=3000-"

    # wrong checksum: clear error and nothing left behind
    dest3 = str(tmp_path / "dl" / "bad.csv")
    with pytest.raises(ValueError, match="checksum mismatch"):
        download(f"{base}/zinc250k.csv", dest3, sha256="0" * 64, verbose=False)
    assert not os.path.exists(dest3) and not os.path.exists(dest3 + ".part")

    with pytest.raises(RuntimeError, match="404"):
        download(f"{base}/missing.csv", str(tmp_path / "dl" / "m.csv"), verbose=False)


def test_preprocess_download_path(http_root, tmp_path):
    root, base, _ = http_root
    (root / "zinc.csv").write_text("smiles,logP,qed,SAS\nCCO\n,1,1,1\nc1ccccc1I,1,1,1\nCC[Na],1,1,1\n"
                                   .replace("CCO\n,", "CCO,"))
    data_dir = tmp_path / "zinc"
    preprocess.main(["--dataset", "zinc250k", "--download", "--url", f"{base}/zinc.csv",
                     "--data_dir", str(data_dir), "--valid_fraction", "0.5"])
    cache = MoleculeCache(str(data_dir), "zinc250k")
    assert cache.smiles == ["CCO", "Ic1ccccc1"]
