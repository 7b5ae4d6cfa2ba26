"""Download sources of the raw MoFlow datasets (the resumable, checksummed download is runtime's)."""
import os
from typing import Optional

from runtime.io import download

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


def download_dataset(name: str, data_dir: str, url: Optional[str] = None,
                     sha256: Optional[str] = None) -> str:
    """Fetch the raw CSV of ``name`` ('zinc250k' or 'qm9') into ``data_dir``."""
    if name not in SOURCES:
        raise ValueError(f"no download source for dataset {name!r}; known: {sorted(SOURCES)}")
    src = SOURCES[name]
    return download(url or src["url"], os.path.join(data_dir, src["filename"]),
                    sha256=sha256 or src["sha256"])
