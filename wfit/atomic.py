"""Atomic file writing: the one way every wfit output reaches the disk.

A file is written under a temporary name in its destination folder and renamed into place with ``os.replace``
only once it is complete and flushed to the disk, so a reader never sees a half-written file, and an interrupted
or failed write (a full disk, Ctrl-C, an exception in the writer) leaves no temporary file behind and any earlier
file at the path intact. The temporary file sits in a hidden folder beside the destination and has the
destination's own name there, so libraries that choose a format by the name (matplotlib, Keras) see the right
one and formats that record their own name (ROOT's TFile) record the final one.

The new file gets the permissions of any file the user creates (``0o666`` less the umask), whatever the library
that wrote it chose: on a shared file system (EOS, AFS, NFS) colleagues can read a workspace, a model or a figure
as they can read everything else the user writes. A file that is replaced gets the same new-file permissions,
not the old file's.

Remote URLs (``root://``, ``s3://``, ... anything with ``://`` except ``file://``) are written through fsspec:
:func:`write_bytes` streams to the store, :func:`atomic_path` writes a local temporary file and uploads it once
it is complete; the remote store's own semantics apply there.

Example:
    >>> import os, tempfile
    >>> from wfit.atomic import atomic_path, write_text
    >>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> write_text(path, "mu = 1")
    >>> with atomic_path(path) as tmp:
    ...     with open(tmp, "w") as f:
    ...         _ = f.write("mu = 2")
    >>> from pathlib import Path
    >>> Path(path).read_text()
    'mu = 2'
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["atomic_path", "atomic_write_hdf5", "file_mode", "is_remote", "write_bytes", "write_text"]

_umask_lock = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where the system allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _umask_lock:  # os.umask can only be read by setting it: keep other threads of ours out meanwhile
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The permission bits of a new file as the user's umask makes them (``0o666 & ~umask``)."""
    return 0o666 & ~_umask()


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a URL of a remote store (anything with ``://`` but ``file://``).

    Example:
        >>> is_remote("root://eosuser.cern.ch//eos/user/w/ws.hdf5"), is_remote("file:///tmp/ws.hdf5")
        (True, False)
    """
    text = os.fspath(path)
    return "://" in text and not text.startswith("file://")


def _fsync(path: str) -> None:
    """Flush a complete file to the disk: a full disk or a failing server (NFS reports late) shows here."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path for ``path``; on a clean exit move the file written there to ``path``.

    The caller writes the whole file at the yielded path with any library (h5py, uproot, onnx, matplotlib,
    Keras). The path is in a new hidden folder beside ``path`` and has ``path``'s name (with ``suffix``
    appended unless the name already ends with it); the folder is removed in every case. Folders on the way to
    ``path`` are created. Remote URLs are written to a local temporary file and uploaded through fsspec.

    Args:
        path: The destination (local path, ``file://`` URL or remote URL).
        suffix: An ending the temporary file's name must have, for a library that insists on one.

    Raises:
        FileNotFoundError: the block finished without writing a file at the yielded path.
        OSError: the folder cannot be created or written, or the disk is full; nothing is left behind and an
            earlier file at ``path`` is unchanged.
    """
    target = os.fspath(path).removeprefix("file://")
    remote = is_remote(target)
    name = os.path.basename(target.rstrip("/")) or "file"
    if not name.endswith(suffix):
        name += suffix
    if remote:
        folder = tempfile.mkdtemp(prefix=".wfit-upload.")
    else:
        parent = os.path.dirname(os.path.abspath(target))
        os.makedirs(parent, exist_ok=True)
        folder = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=parent)
    tmp = os.path.join(folder, name)
    try:
        yield tmp
        if not os.path.isfile(tmp):
            raise FileNotFoundError(
                f"{target}: nothing was written to the temporary file {tmp}; the writer must create the file "
                "at the path that wfit.atomic.atomic_path yields"
            )
        os.chmod(tmp, file_mode())  # the library's choice (mkstemp-like 0600) is not what a colleague can read
        if remote:
            import fsspec

            with open(tmp, "rb") as src, fsspec.open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            _fsync(tmp)
            os.replace(tmp, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (remote URLs streamed through fsspec).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "blob.bin")
        >>> write_bytes(path, b"\\x00\\x01")
        >>> from pathlib import Path
        >>> Path(path).read_bytes()
        b'\\x00\\x01'
    """
    if is_remote(path):
        import fsspec

        with fsspec.open(os.fspath(path), "wb") as f:
            f.write(data)
        return
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def atomic_write_hdf5(path: str | os.PathLike[str], body: Callable[[Any], None]) -> None:
    """Write an HDF5 file through ``body(h5py.File)`` into a temporary file, then move it into place.

    Example:
        >>> import os, tempfile, h5py
        >>> path = os.path.join(tempfile.mkdtemp(), "result.hdf5")
        >>> atomic_write_hdf5(path, lambda f: f.create_dataset("mu", data=[1.0]))
        >>> float(h5py.File(path, "r")["mu"][0])
        1.0
    """
    import h5py

    with atomic_path(path) as tmp:
        # h5py flushes on close, inside the block: a failure there (a full disk) removes the temporary file
        with h5py.File(tmp, "w") as f:
            body(f)
