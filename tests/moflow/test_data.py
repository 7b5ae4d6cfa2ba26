"""Preprocessing, encoding, the cache and the resumable download (local HTTP server)."""
import gzip
import hashlib
import http.server
import io
import json
import os
import threading

import numpy as np
import pytest

from moflow import preprocess
from moflow.chem import generation_metrics
from moflow.config import DATASETS, NO_BOND
from moflow.data.dataset import MoleculeCache, save_cache
from moflow.data.encoding import encode_many, encode_smiles
from moflow.data.sources import SAMPLE_PATH, read_smiles_csv, read_valid_idx
from runtime.errors import DataError, MissingFileError, run_main
from runtime.io import download


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


# ---- ZINC250k from local files -------------------------------------------------------------

# the layout of 250k_rndm_zinc_drugs_clean_3.csv: quoted SMILES that end with a newline
ZINC_ROWS = [("CC(C)(C)c1ccc2occ(CC(=O)Nc3ccccc3F)c2c1", 5.0506, 0.702012232801, 2.0840945720726807),
             ("C[C@@H]1CC(Nc2cncc(-c3nncn3C)c2)C[C@@H](C)C1", 3.1137, 0.928975488089, 3.4320038192747795),
             ("C[Si](C)(C)c1ccccc1", 3.1, 0.5, 2.5),  # refused: Si is not a ZINC250k element
             ("[NH3+]CC(=O)[O-]", -1.0, 0.4, 2.0),
             ("Cc1ccccc1", 2.3, 0.45, 1.0)]


def _zinc_csv(path, rows=ZINC_ROWS):
    lines = ["smiles,logP,qed,SAS"] + [f'"{s}\n",{a},{b},{c}' for s, a, b, c in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_zinc250k_from_local_csv_and_valid_idx(tmp_path, capsys):
    csv_path = _zinc_csv(tmp_path / "250k_rndm_zinc_drugs_clean_3.csv")
    assert read_smiles_csv(str(csv_path))[0] == ZINC_ROWS[0][0]  # the newline inside the quotes is stripped
    idx = tmp_path / "valid_idx_zinc.json"
    idx.write_text("[2, 3, 5]")  # 1-based rows, as MoFlow reads the file
    data = tmp_path / "cache"
    preprocess.main(["--dataset", "zinc250k", "--csv", str(csv_path), "--valid_idx", str(idx),
                     "--data_dir", str(data)])
    out = capsys.readouterr().out
    assert "4 encoded, 1 refused (unknown_atom=1)" in out
    assert "3 rows listed, 2 of them encoded" in out
    cache = MoleculeCache(str(data), "zinc250k")
    valid = [cache.smiles[i] for i in cache.valid_idx]
    train = [cache.smiles[i] for i in cache.train_idx]
    assert valid == ["C[C@@H]1CC(Nc2cncc(-c3nncn3C)c2)C[C@@H](C)C1", "Cc1ccccc1"]
    assert train == ["CC(C)(C)c1ccc2occ(CC(=O)Nc3ccccc3F)c2c1", "[NH3+]CC(=O)[O-]"]
    assert json.loads((data / "zinc250k_split.json").read_text())["valid_idx_file"] == str(idx)

    # the same rows counted from 0 (CGVAE/GraphAF convention)
    idx.write_text("[1, 2, 4]")
    preprocess.main(["--dataset", "zinc250k", "--csv", str(csv_path), "--valid_idx", str(idx),
                     "--valid_idx_base", "0", "--data_dir", str(data)])
    cache = MoleculeCache(str(data), "zinc250k")
    assert [cache.smiles[i] for i in cache.valid_idx] == valid

    # rows follow the source file through --max_molecules sampling
    preprocess.main(["--dataset", "zinc250k", "--csv", str(csv_path), "--valid_idx", str(idx),
                     "--valid_idx_base", "0", "--max_molecules", "3", "--data_dir", str(data)])
    cache = MoleculeCache(str(data), "zinc250k")
    assert {cache.smiles[i] for i in cache.valid_idx} <= set(valid)
    assert not {cache.smiles[i] for i in cache.train_idx} & set(valid)


def test_valid_idx_formats_and_errors(tmp_path):
    p = tmp_path / "valid_idx_qm9.json"
    p.write_text('{"valid_idxs": ["000003", "000001"]}')  # the QM9 file of the reference
    assert read_valid_idx(str(p)) == [0, 2]
    assert read_valid_idx(str(p), base=0) == [1, 3]
    for content, message in [("", "is empty"), ("[1, 2, 3", "not valid JSON"), ('{"train": [1]}', "valid_idxs"),
                             ('"1 2 3"', "expected a JSON list"), ("[1, 2.5]", "not a row number"),
                             ("[true]", "not a row number"), ('["x"]', "not a row number"),
                             ("[0, 1]", "--valid_idx_base 0"), ("[1, 1]", "twice"), ("\x00\x01", "not valid JSON")]:
        p.write_text(content)
        with pytest.raises(DataError, match=message) as err:
            read_valid_idx(str(p), hint="fix it")
        assert str(p) in str(err.value) and "fix it" in str(err.value)
    with pytest.raises(MissingFileError, match="valid_idx_zinc.json"):
        read_valid_idx(str(tmp_path / "valid_idx_zinc.json"))
    # rows past the end of the CSV: an index file of another dataset
    csv_path = _zinc_csv(tmp_path / "zinc.csv")
    p.write_text("[2, 6]")
    with pytest.raises(DataError, match="only 5 rows"):
        preprocess.main(["--dataset", "zinc250k", "--csv", str(csv_path), "--valid_idx", str(p),
                         "--data_dir", str(tmp_path / "out")])
    p.write_text("[3]")  # only the refused Si molecule
    with pytest.raises(DataError, match="none of the 1 rows"):
        preprocess.main(["--dataset", "zinc250k", "--csv", str(csv_path), "--valid_idx", str(p),
                         "--data_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


# ---- damaged inputs: one DataError naming the file and the fix; MissingFileError when absent ---

def _small_cache(data_dir, name="qm9"):
    kept, atoms, bonds, _, _ = encode_many(["CCO", "CC#N", "OC=O", "CCC"], DATASETS["qm9"])
    return save_cache(str(data_dir), name, DATASETS["qm9"], kept, atoms, bonds, 0.25, 0)


def _npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _damage_npz(npz_path, how):
    good = open(npz_path, "rb").read()
    with np.load(npz_path) as z:
        arrays = {k: z[k] for k in z.files}
    if how == "empty":
        return b""
    if how == "truncated":
        return good[:len(good) // 2]
    if how == "text":
        return b"smiles\nCCO\n"
    if how == "npy":
        buf = io.BytesIO()
        np.save(buf, arrays["atoms"])
        return buf.getvalue()
    if how == "missing_array":
        return _npz_bytes(**{k: v for k, v in arrays.items() if k != "bonds"})
    if how == "bad_shapes":
        return _npz_bytes(**dict(arrays, bonds=arrays["bonds"][:2]))
    if how == "bad_codes":
        return _npz_bytes(**dict(arrays, atoms=arrays["atoms"] + 7))
    if how == "corrupt_member":  # right size and zip structure, damaged compressed data
        data = bytearray(good)
        mid = len(data) // 3
        data[mid:mid + 64] = bytes(64)
        return bytes(data)
    raise ValueError(how)


@pytest.mark.parametrize("how, message", [
    ("empty", "is empty"), ("truncated", "truncated or not an npz"), ("text", "not a MoFlow npz cache"),
    ("npy", "single .npy array"), ("missing_array", r"missing arrays \['bonds'\]"),
    ("bad_shapes", "inconsistent shapes"), ("bad_codes", "atom codes outside"),
    ("corrupt_member", "damaged|truncated")])
def test_damaged_npz_cache(tmp_path, how, message):
    npz, _ = _small_cache(tmp_path)
    damaged = _damage_npz(npz, how)
    open(npz, "wb").write(damaged)
    with pytest.raises(DataError, match=message) as err:
        MoleculeCache(str(tmp_path), "qm9")
    text = str(err.value)
    assert npz in text and f"python -m moflow.preprocess --dataset qm9 --data_dir {tmp_path}" in text


@pytest.mark.parametrize("content, message", [
    ("", "is empty"), ('{"seed": 0, "valid": [0], "train": [1, ', "not valid JSON"),
    ("[0, 1, 2]", "not a MoFlow split"), ('{"valid": [0]}', "'train' must be a list"),
    ('{"train": [1, 2, 9], "valid": [0]}', "outside"), ('{"train": [0, 1], "valid": [1]}', "in both"),
    ('{"train": ["1"], "valid": [0]}', "'train' must be a list")])
def test_damaged_split_file(tmp_path, content, message):
    _, split = _small_cache(tmp_path)
    open(split, "w").write(content)
    with pytest.raises(DataError, match=message) as err:
        MoleculeCache(str(tmp_path), "qm9")
    assert split in str(err.value) and "moflow.preprocess --dataset qm9" in str(err.value)


def test_missing_cache_files_and_no_directory_created(tmp_path):
    npz, split = _small_cache(tmp_path / "d")
    os.remove(split)
    with pytest.raises(MissingFileError, match="qm9_split.json not found.*moflow.preprocess --dataset qm9"):
        MoleculeCache(str(tmp_path / "d"), "qm9")
    nowhere = tmp_path / "no" / "such" / "dir"
    with pytest.raises(MissingFileError, match="moflow.preprocess --dataset zinc250k"):
        MoleculeCache(str(nowhere), "zinc250k")
    with pytest.raises(MissingFileError, match="zinc250k --download"):
        preprocess.main(["--dataset", "zinc250k", "--data_dir", str(nowhere)])
    with pytest.raises(MissingFileError, match="missing.csv"):
        preprocess.main(["--dataset", "qm9", "--csv", str(tmp_path / "missing.csv"), "--data_dir", str(nowhere)])
    assert not (tmp_path / "no").exists()


def _gzip_bytes(text):
    return gzip.compress(text.encode())


@pytest.mark.parametrize("name, content, message", [
    ("mols.csv", b"", "is empty"),
    ("mols.csv", b"smiles,logP\n", "a header but no SMILES"),
    ("mols.csv", b"name,logP\nCCO,1\n", "no column 'smiles'"),
    ("mols.csv", bytes(range(256)) * 4, "not UTF-8|NUL|not a readable CSV"),
    ("mols.csv", b'smiles\n"CCO\n', "not a readable CSV|unexpected end"),
    ("mols.csv.gz", b"smiles\nCCO\n", "not gzip-compressed"),
    ("mols.csv.gz", _gzip_bytes("smiles\n" + "CCO\n" * 2000)[:-30], "truncated or corrupt"),
    ("mols.csv.gz", _gzip_bytes("name\nCCO\n"), "no column 'smiles'"),
    ("mols.smi", b"", "no SMILES line"),
    ("mols.smi", b"CCO\x00\x01\n", "NUL"),
    ("mols.smi", b"\xff\xfe\xfa\n", "not UTF-8"),
    ("mols.smi.gz", b"CCO\n", "not gzip-compressed")])
def test_damaged_smiles_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        preprocess.main(["--dataset", "qm9", "--csv", str(path), "--data_dir", str(tmp_path / "out")])
    assert str(path) in str(err.value) and "--smiles_column" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_smi_files_and_cli_error_line(tmp_path, capsys):
    smi = tmp_path / "mols.smi"
    smi.write_text("SMILES\nCCO ethanol\n\nc1ccccc1\tbenzene\nCC#N\n")
    assert read_smiles_csv(str(smi)) == ["CCO", "c1ccccc1", "CC#N"]
    gz = tmp_path / "mols.smi.gz"
    gz.write_bytes(gzip.compress(smi.read_bytes()))
    assert read_smiles_csv(str(gz)) == ["CCO", "c1ccccc1", "CC#N"]
    bad = tmp_path / "bad.csv.gz"
    bad.write_text("smiles\nCCO\n")
    code = run_main(preprocess.main, ["--dataset", "qm9", "--csv", str(bad), "--data_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and str(bad) in err[0]


def test_decoded_training_set_is_cached_per_cache(tmp_path):
    """Novelty's training side: cached graphs decoded like generated ones, kept beside the cache."""
    csv_path = tmp_path / "mols.csv"
    csv_path.write_text("smiles\nC[C@@H](N)C(=O)O\nC/C=C/C(=O)O\n[NH3+]CC(=O)[O-]\nCCCC\n")
    idx = tmp_path / "valid.json"
    idx.write_text("[4]")
    preprocess.main(["--dataset", "zinc250k", "--csv", str(csv_path), "--valid_idx", str(idx),
                     "--data_dir", str(tmp_path)])
    cache = MoleculeCache(str(tmp_path), "zinc250k")
    train = cache.subset("train")
    assert sorted(train.decoded_smiles()) == ["CC(N)C(=O)O", "CC=CC(=O)O", "NCC(=O)O"]
    assert "[NH3+]CC(=O)[O-]" in train.smiles()  # the source SMILES stay as they were
    decoded_file = tmp_path / "zinc250k_decoded.json"
    stored = json.loads(decoded_file.read_text())
    assert len(stored["smiles"]) == 4
    # a fresh cache object reads the file (marked here) instead of decoding again
    stored["smiles"][cache.train_idx[0]] = "MARK"
    decoded_file.write_text(json.dumps(stored))
    assert "MARK" in MoleculeCache(str(tmp_path), "zinc250k").subset("train").decoded_smiles()
    # a file of another npz (stale digest) or a damaged one is rebuilt
    for content in (json.dumps(dict(stored, npz_sha256="0" * 64)), "{trunc"):
        decoded_file.write_text(content)
        assert "MARK" not in MoleculeCache(str(tmp_path), "zinc250k").decoded_smiles("train")
    generated = ["CC(N)C(=O)O", "CC=CC(=O)O", "NCC(=O)O", "CCCC"]
    m = generation_metrics(generated, generated, train.decoded_smiles(), train_decoded=True)
    assert m["novelty"] == pytest.approx(25.0)  # only CCCC (held out) is new
