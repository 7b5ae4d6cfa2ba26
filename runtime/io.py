"""File helpers shared by the recipes: atomic writes, writability checks, SHA-256, resumable downloads.

Fault injection for tests: with ``MOLRECIPES_KILL_AT=<point>`` in the environment the process
SIGKILLs itself when it reaches :func:`fault_point` ``<point>``. Points: ``write:opened`` (temp file
created, nothing written), ``write:partial`` (after the first 4 KiB of data), ``write:before_fsync``,
``write:before_rename``, ``write:renamed`` (before stale temp files are cleaned) and
``checkpoint:saved`` (before the numbered keep-last copy). With ``MOLRECIPES_RAISE_AT=<point>:<rank>``
that rank raises a :class:`~runtime.errors.ConfigError` there instead (a rank-local error while its
peers go on: ``logger``, reached by every entry point after the process group is up). Nothing happens
without the variables.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import os
import shutil
import signal
import tempfile
import urllib.error
import urllib.request
from typing import Callable, Iterator, Optional, Union

from runtime.errors import ConfigError

PathLike = Union[str, "os.PathLike[str]"]
KILL_ENV = "MOLRECIPES_KILL_AT"
RAISE_ENV = "MOLRECIPES_RAISE_AT"


def fault_point(name: str) -> None:
    """Test hook: SIGKILL this process here when ``MOLRECIPES_KILL_AT`` names this point, or raise a
    ConfigError when ``MOLRECIPES_RAISE_AT`` names this point and this process's rank."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(RAISE_ENV) == f"{name}:{os.environ.get('RANK', '0')}":
        raise ConfigError(f"injected failure at {name} ({RAISE_ENV})")


class _KillAfterBytes:
    """File proxy for the ``write:partial`` fault point: dies once ``limit`` bytes were written."""

    def __init__(self, f, limit: int = 4096):
        self._f, self._left = f, limit

    def write(self, data):
        n = self._f.write(data)
        self._left -= len(data)
        if self._left <= 0:
            self._f.flush()
            os.fsync(self._f.fileno())
            fault_point("write:partial")
        return n

    def __getattr__(self, name):
        return getattr(self._f, name)


def _stale_temps(path: str):
    directory, base = os.path.split(os.path.abspath(path))
    return glob.glob(os.path.join(glob.escape(directory), glob.escape(base) + ".*.tmp"))


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", encoding: Optional[str] = None) -> Iterator:
    """Open a temp file beside ``path``; on success flush, fsync and rename it over ``path``.

    On any exception the temp file is removed and ``path`` keeps its previous content. A process
    killed mid-write leaves ``<path>.<random>.tmp`` behind; the next successful write removes it.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    fault_point("write:opened")
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield _KillAfterBytes(f) if os.environ.get(KILL_ENV) == "write:partial" else f
            f.flush()
            fault_point("write:before_fsync")
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        fault_point("write:before_rename")
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fault_point("write:renamed")
    for stale in _stale_temps(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(stale)


def _fsync_dir(directory: str) -> None:
    """Make a rename durable (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def ensure_writable_dir(directory: PathLike, what: str) -> str:
    """Create ``directory`` if needed and prove a file can be written there; else :class:`ConfigError`.

    Called before training starts, so an unwritable log or checkpoint location fails in seconds,
    not after hours of training. ``what`` names the flag in the message (e.g. ``--log_dir``).
    """
    directory = os.path.abspath(os.fspath(directory) or ".")
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=directory)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise ConfigError(f"{what}: cannot write to {directory} ({err.strerror or err})") from None
    return directory


def sha256_of(path: PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: PathLike, sha256: Optional[str] = None, validate: Optional[Callable[[str], None]] = None,
             chunk: int = 1 << 16, timeout: float = 60.0, verbose: bool = True) -> str:
    """Download ``url`` to ``dest``, resuming a partial ``dest + '.part'`` with an HTTP Range request.

    An existing ``dest`` whose checksum matches (or any existing ``dest`` when no checksum is given)
    is kept. The finished ``.part`` file is checked against ``sha256`` and passed to ``validate``
    (which raises on bad content) before it is renamed to ``dest``; a failed check deletes it, so a
    bad download never appears under ``dest``. Returns ``dest``.
    """
    dest = os.fspath(dest)
    if os.path.exists(dest):
        if sha256 is None or sha256_of(dest) == sha256.lower():
            return dest
        os.remove(dest)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "molrecipes"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the partial file is already complete
            response = None
        else:
            raise RuntimeError(f"download of {url} failed: HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise RuntimeError(f"download of {url} failed: {err.reason}") from err
    if response is not None:
        with response:
            resumed = bool(offset) and response.status == 206
            if offset and not resumed:
                offset = 0  # the server ignored Range: start over
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
    try:
        if sha256 is not None and digest != sha256.lower():
            raise ValueError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {digest}")
        if validate is not None:
            validate(part)
    except BaseException:
        os.remove(part)
        raise
    os.replace(part, dest)
    if verbose:
        print(f"downloaded {url} -> {dest} (sha256 {digest})")
    return dest
