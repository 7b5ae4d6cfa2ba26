"""Resumable HTTP download with SHA-256 verification (standard library only)."""
import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
from typing import Optional

# Public sources used by the MoFlow paper. Checksums are not pinned here (no network access
# when this was written): pass --sha256 to verify; the digest of every download is printed.
SOURCES = {
    "zinc250k": dict(
        url="https://raw.githubusercontent.com/aspuru-guzik-group/chemical_vae/master/"
            "models/zinc_properties/250k_rndm_zinc_drugs_clean_3.csv",
        filename="zinc250k.csv", sha256=None),
    "qm9": dict(
        url="https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/qm9.csv",
        filename="qm9.csv", sha256=None),
}


def sha256_of(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str, sha256: Optional[str] = None, chunk: int = 1 << 16,
             timeout: float = 60.0, verbose: bool = True) -> str:
    """Download ``url`` to ``dest``; resume a partial ``dest + '.part'`` with an HTTP Range request.

    An existing ``dest`` whose checksum matches is kept. A checksum mismatch deletes the download
    and raises ValueError. Returns ``dest``.
    """
    if os.path.exists(dest):
        if sha256 is None or sha256_of(dest) == sha256.lower():
            return dest
        os.remove(dest)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "molrecipes-moflow"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # partial file already complete
            response = None
        else:
            raise RuntimeError(f"download of {url} failed: HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise RuntimeError(f"download of {url} failed: {err.reason}") from err
    if response is not None:
        with response:
            resumed = offset and response.status == 206
            if offset and not resumed:
                offset = 0  # server ignored Range: start over
            with open(part, "ab" if resumed else "wb") as f:
                try:
                    shutil.copyfileobj(response, f, chunk)
                except (OSError, http.client.HTTPException) as err:
                    raise RuntimeError(f"download of {url} interrupted after "
                                       f"{f.tell()} bytes ({err!r}); run again to resume") from err
                length = response.headers.get("Content-Length")
                expected = (offset if resumed else 0) + int(length) if length else None
                if expected is not None and f.tell() < expected:
                    raise RuntimeError(f"download of {url} interrupted at {f.tell()} of {expected} "
                                       "bytes; run again to resume")
        if verbose and offset:
            print(f"resumed {url} at byte {offset}")
    digest = sha256_of(part)
    if sha256 is not None and digest != sha256.lower():
        os.remove(part)
        raise ValueError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {digest}")
    os.replace(part, dest)
    if verbose:
        print(f"downloaded {url} -> {dest} (sha256 {digest})")
    return dest


def download_dataset(name: str, data_dir: str, url: Optional[str] = None,
                     sha256: Optional[str] = None) -> str:
    """Fetch the raw CSV of ``name`` ('zinc250k' or 'qm9') into ``data_dir``."""
    if name not in SOURCES:
        raise ValueError(f"no download source for dataset {name!r}; known: {sorted(SOURCES)}")
    src = SOURCES[name]
    return download(url or src["url"], os.path.join(data_dir, src["filename"]),
                    sha256=sha256 or src["sha256"])
