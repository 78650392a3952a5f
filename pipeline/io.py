"""Crash-safe file output: every file the pipeline writes appears complete or not at all."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed onto `path` (atomic on POSIX).

    The temporary name starts with '.tmp' and keeps the target's suffix (tools such as ffmpeg pick the
    container from it). If the body raises, the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp", suffix=suffix if suffix is not None else path.suffix, dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual permissions
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Atomically write `data` as indented, key-sorted JSON (stable diffs for DVC metrics)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npz(path: str | os.PathLike[str], **arrays: Any) -> None:
    """Atomically write a compressed .npz that is byte-identical for identical arrays.

    `np.savez_compressed` stamps each zip member with the current time, so rerunning a stage would change
    every output's hash (and DVC would see new data). Here members get a fixed timestamp and sorted order.
    The file loads with plain `np.load`.
    """
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(arrays):
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asanyarray(arrays[name]), allow_pickle=False)


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load every array of an .npz into memory (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class NotWritable(OSError):
    """An output location the process cannot write to (checked before any expensive work)."""


def check_writable(*folders: str | os.PathLike[str]) -> None:
    """Prove that each folder can be written, creating nothing: a temporary file is created and deleted in the folder,
    or, when the folder does not exist yet, in its nearest existing ancestor (which must be a folder).

    A real write rather than `os.access`: root passes `os.access` on read-only folders, and read-only mounts,
    full disks, quotas and paths below a regular file only show on an actual write.

    Raises:
        NotWritable: naming the first folder that cannot be written and why.
    """
    for folder in folders:
        folder = Path(folder)
        existing = folder
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        try:
            if not existing.is_dir():
                raise NotADirectoryError(f"{existing} is not a folder")
            fd, probe = tempfile.mkstemp(prefix=".tmp-writable-", dir=existing)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            why = err.strerror if err.strerror else str(err)
            where = "" if existing == folder or not existing.is_dir() else f"cannot create it in {existing}: "
            raise NotWritable(f"output folder {folder} is not writable: {where}{why}") from err


def verify_npz(path: str | os.PathLike[str], required: tuple[str, ...] = ()) -> str | None:
    """Why the .npz at `path` cannot be trusted, or None when it is whole.

    An integrity read: the zip's central directory, every member's CRC (`ZipFile.testzip`, which decompresses
    each member), and the presence of the `required` members. A file cut short (full disk, a crash outside the
    atomic write) or with flipped bytes fails here instead of crashing a later `np.load`.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            names = set(zf.namelist())
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError, RuntimeError) as err:
        return f"{type(err).__name__}: {err}"
    if bad is not None:
        return f"member {bad} fails its CRC check"
    missing = [m for m in required if f"{m}.npy" not in names]
    if missing:
        return f"member(s) {', '.join(missing)} missing"
    return None


def file_digest(path: str | os.PathLike[str]) -> str:
    """blake2b-128 hex digest of a file's bytes.

    Memoised per process on (path, size, mtime, inode), so a stage that fingerprints its inputs (preprocess
    cache keys) and records their data version (tracking) reads each file once.
    """
    st = os.stat(path)
    return _file_digest(os.fspath(path), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=1 << 16)
def _file_digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remove_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Delete '.tmp*' leftovers of a killed run under `folder`; returns how many were removed."""
    n = 0
    for p in Path(folder).rglob(".tmp*"):
        if p.is_file():
            p.unlink()
            n += 1
    return n


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return o.as_posix()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
