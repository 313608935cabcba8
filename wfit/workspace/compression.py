"""Compression of the array datasets: what the writer offers and what the reader needs to decompress.

h5py has gzip (deflate), shuffle and LZF built in. The other HDF5 filters come from
``hdf5plugin``: rabbit's main branch writes its arrays with Blosc2 + LZ4 (HDF5 filter 32026),
and ``wums`` (rabbit's pickled ``meta`` group) uses Blosc (32001). The reader checks the filters
of every dataset before it reads it (:func:`require_filters`) and imports ``hdf5plugin`` only
when a dataset needs a filter that h5py does not have; a filter that neither provides is a
:class:`~wfit.workspace.schema.WorkspaceError` naming the dataset, the filter and what to install.

The writer's choices (:data:`COMPRESSIONS`, :func:`dataset_options`):

============  ======================================================  =================
name          filter                                                  ``level``
============  ======================================================  =================
``gzip``      deflate (built into HDF5), the default                  0-9
``blosc2``    Blosc2 with LZ4 and byte shuffle, as rabbit main writes 0-9 (clevel)
``zstd``      Zstandard (``hdf5plugin.Zstd``)                          1-22
``lz4``       LZ4 (``hdf5plugin.LZ4``)                                 ignored
``none``      uncompressed                                            ignored
============  ======================================================  =================

Example:
    >>> from wfit.workspace.compression import dataset_options
    >>> dataset_options("gzip", 4)
    {'compression': 'gzip', 'compression_opts': 4}
    >>> dataset_options("blosc2", 5)["compression"]
    32026
"""

from __future__ import annotations

from typing import Any

import h5py

from .schema import WorkspaceError, dataset_error

__all__ = ["COMPRESSIONS", "dataset_options", "require_filters"]

#: The compressions :func:`dataset_options` (and ``WorkspaceWriter.write``) accept.
COMPRESSIONS = ("gzip", "blosc2", "zstd", "lz4", "none")

# Names of the registered filters that hdf5plugin provides, for the error messages.
_PLUGIN_NAMES = {
    32001: "Blosc",
    32004: "LZ4",
    32008: "Bitshuffle",
    32013: "Zfp",
    32015: "Zstd",
    32017: "SZ",
    32018: "FciDecomp",
    32024: "SZ3",
    32026: "Blosc2",
    32028: "Sperr",
    32029: "Htj2k",
    307: "BZip2",
}
_INSTALL = "pip install 'hdf5plugin>=4.0'"


def _hdf5plugin() -> Any:
    """Import ``hdf5plugin`` (registering its filters with HDF5); ``None`` if it is not installed."""
    try:
        import hdf5plugin
    except ImportError:
        return None
    return hdf5plugin


def _available(code: int) -> bool:
    return bool(h5py.h5z.filter_avail(code))


def dataset_options(compression: str, level: int) -> dict[str, Any]:
    """Keyword arguments of ``h5py.Group.create_dataset`` for ``compression`` at ``level``.

    Raises:
        WorkspaceError: An unknown compression, or one that needs ``hdf5plugin`` when it is missing.
    """
    if compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": int(level)}
    if compression not in COMPRESSIONS:
        raise WorkspaceError(f"compression={compression!r} is not known; choose one of {', '.join(COMPRESSIONS)}")
    plugin = _hdf5plugin()
    if plugin is None:
        raise WorkspaceError(f"compression={compression!r} needs the hdf5plugin package: {_INSTALL}")
    if compression == "blosc2":
        return dict(plugin.Blosc2(cname="lz4", clevel=int(level), filters=plugin.Blosc2.SHUFFLE))
    if compression == "zstd":
        return dict(plugin.Zstd(clevel=int(level)))
    return dict(plugin.LZ4())


def _filters(dset: h5py.Dataset) -> list[tuple[int, int, str]]:
    """``(code, flags, name)`` of each filter in the dataset's pipeline."""
    plist = dset.id.get_create_plist()
    out = []
    for i in range(plist.get_nfilters()):
        code, flags, _, name = plist.get_filter(i)
        out.append((int(code), int(flags), name.decode(errors="replace") if isinstance(name, bytes) else str(name)))
    return out


def require_filters(path: str, dset: h5py.Dataset) -> None:
    """Make sure that HDF5 can decompress ``dset``: import ``hdf5plugin`` if one of its filters is missing.

    Raises:
        WorkspaceError: A filter of the dataset is available neither in h5py nor in
            ``hdf5plugin`` (or ``hdf5plugin`` is not installed); the message names the dataset,
            the filter and the fix.
    """
    # h5py registers third-party filters as optional, yet HDF5 cannot read a chunk that went through
    # one it lacks: every filter of the pipeline is needed
    for code, _, name in _filters(dset):
        if _available(code):
            continue
        plugin = _hdf5plugin()
        if plugin is not None and _available(code):
            continue
        what = f"HDF5 filter {code} ({_PLUGIN_NAMES.get(code, name or 'unnamed')})"
        where = dset.name.lstrip("/")
        if plugin is None:
            raise dataset_error(
                path, where, f"is compressed with {what}, which h5py does not provide: {_INSTALL}"
            )
        raise dataset_error(
            path,
            where,
            f"is compressed with {what}, which neither h5py nor hdf5plugin {plugin.version} provides; "
            "install the HDF5 plugin that wrote it (HDF5_PLUGIN_PATH) or rewrite the file with gzip",
        )
