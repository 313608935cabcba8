"""How arrays and names are stored in the HDF5 datasets of a workspace, and read back.

* Strings: variable-length UTF-8 string datasets (``hprocs``, ``hsysts``, ...).
* Flat arrays: any array stored 1-D with its shape in an ``original_shape`` attribute, chunked in
  blocks of about 4 MiB and compressed (gzip by default, or a filter of ``hdf5plugin``, see
  :mod:`wfit.workspace.compression`); read back with ``read_direct`` straight into a
  caller-supplied buffer (no second copy).
* Sparse arrays: rabbit's COO layout. ``hnorm_sparse`` holds ``indices`` [nnz, 2] over
  [nbinsfull, nproc] and ``values``; ``hlogk_sparse`` holds COO over [nnz(norm), nsyst] (or
  [nnz(norm), 2 nsyst] with the half-differences in the second half) whose first index points into
  the norm entries. Both carry a ``dense_shape`` attribute.

Example:
    >>> import os, tempfile, h5py, numpy as np
    >>> from wfit.workspace.encoding import read_array, write_flat
    >>> path = os.path.join(tempfile.mkdtemp(), "a.hdf5")
    >>> with h5py.File(path, "w") as f:
    ...     write_flat(f, "hsumw", np.arange(6.0).reshape(3, 2), level=4)
    >>> with h5py.File(path, "r") as f:
    ...     read_array(path, f, "hsumw").shape
    (3, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import h5py
import numpy as np

from .compression import dataset_options, require_filters
from .schema import FLOAT_DATASETS, dataset_error

__all__ = [
    "aligned_empty",
    "check_finite",
    "check_float64",
    "densify_coo",
    "read_array",
    "read_coo",
    "read_strings",
    "stored_shape",
    "write_flat",
    "write_sparse",
    "write_strings",
]

_STR = h5py.string_dtype()
# Chunk size of the flat datasets, in bytes.
_CHUNK_BYTES = 4 * 1024**2


# ----------------------------------------------------------------------------------------- writing
def write_strings(f: h5py.File, name: str, values: Sequence[str]) -> None:
    """Write ``values`` as the variable-length string dataset ``name``."""
    f.create_dataset(name, data=np.array(values, dtype=object), dtype=_STR)


def write_flat(f: h5py.Group, name: str, arr: np.ndarray, level: int, compression: str = "gzip") -> None:
    """Write ``arr`` flattened to 1-D, chunked and compressed (``compression`` at ``level``), with its
    ``original_shape``."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    if flat.size == 0:
        dset = f.create_dataset(name, shape=(0,), dtype=flat.dtype)
    else:
        chunk = int(min(flat.size, max(1, _CHUNK_BYTES // flat.itemsize)))
        dset = f.create_dataset(name, data=flat, chunks=(chunk,), **dataset_options(compression, level))
    dset.attrs["original_shape"] = np.array(arr.shape, dtype=np.int64)


def write_sparse(
    f: h5py.File,
    norm: np.ndarray,
    logk: np.ndarray | tuple[np.ndarray, np.ndarray, int],
    symmetric: bool,
    level: int,
    compression: str = "gzip",
) -> None:
    """Write ``hnorm_sparse`` and ``hlogk_sparse`` (rabbit's COO layout) from the dense norm and either the dense
    logk or its COO entries ``(indices [n, 2], values, columns)`` over ``[nnz(norm), columns]`` (``columns``:
    nsyst, or 2 nsyst when asymmetric) in row-major order."""
    # norm as COO over [nbinsfull, nproc]; logk as COO over [nnz(norm), nsyst] (or [nnz(norm), 2 nsyst])
    # whose first index points into the norm entries.
    nz = np.nonzero(norm)
    nidx = np.stack(nz, axis=-1).astype(np.int64)
    g = f.create_group("hnorm_sparse")
    write_flat(g, "indices", nidx, level, compression)
    write_flat(g, "values", norm[nz], level, compression)
    g.attrs["dense_shape"] = np.array(norm.shape, dtype=np.int64)
    if isinstance(logk, tuple):
        lidx, lvalues, ncols = logk
    else:
        lk = logk[nz].reshape(len(nidx), -1)
        lnz = np.nonzero(lk)
        lidx, lvalues, ncols = np.stack(lnz, axis=-1).astype(np.int64), lk[lnz], lk.shape[1]
    g = f.create_group("hlogk_sparse")
    write_flat(g, "indices", np.asarray(lidx, dtype=np.int64).reshape(-1, 2), level, compression)
    write_flat(g, "values", np.asarray(lvalues, dtype=np.float64), level, compression)
    g.attrs["dense_shape"] = np.array((len(nidx), int(ncols)), dtype=np.int64)


# ----------------------------------------------------------------------------------------- reading
def aligned_empty(shape: Sequence[int], dtype: Any = np.float64, align: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data start on an ``align``-byte boundary.

    TensorFlow's CPU kernels need 64-byte aligned buffers to share memory with numpy.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = np.empty(nbytes + align, dtype=np.uint8)
    offset = (-buf.ctypes.data) % align
    return buf[offset : offset + nbytes].view(dtype).reshape(shape)


def stored_shape(path: str, dset: h5py.Dataset) -> tuple[int, ...]:
    """The shape of the array stored in ``dset`` (its ``original_shape``, checked against its size)."""
    if "original_shape" in dset.attrs:
        shape = tuple(int(x) for x in dset.attrs["original_shape"])
        if int(np.prod(shape)) != dset.size:
            raise dataset_error(
                path,
                dset.name.lstrip("/"),
                f"original_shape {shape} does not match its {dset.size} stored values; rewrite the file",
            )
        return shape
    return tuple(dset.shape)


def check_float64(path: str, dset: h5py.Dataset) -> None:
    """Refuse a dataset that is not float64 (the fitter computes in float64)."""
    if dset.dtype != np.float64:
        raise dataset_error(
            path,
            dset.name.lstrip("/"),
            f"has dtype {dset.dtype}, the fitter needs float64; rewrite the workspace with float64 arrays",
        )


def read_array(
    path: str, f: h5py.File, name: str, allocate: Callable[..., np.ndarray] = aligned_empty
) -> np.ndarray:
    """Read the flat dataset ``name`` into ``allocate(shape, dtype)``, with its original shape."""
    if name not in f:
        raise dataset_error(
            path, name, "is missing; this is not a complete workspace (rewrite it with wfit or rabbit)"
        )
    dset = f[name]
    if not isinstance(dset, h5py.Dataset):
        raise dataset_error(path, name, "is a group, expected a dataset")
    if name in FLOAT_DATASETS:
        check_float64(path, dset)
    require_filters(path, dset)
    shape = stored_shape(path, dset)
    out = allocate(shape, dset.dtype)
    if dset.size:
        # read_direct into the destination's flat view: no second copy of the array.
        dset.read_direct(out.reshape(-1))
    return out


def read_coo(path: str, f: h5py.File) -> dict[str, np.ndarray]:
    """The COO arrays of ``hnorm_sparse``/``hlogk_sparse`` with their dense shapes.

    Returns:
        ``norm_indices``, ``norm_values``, ``logk_indices``, ``logk_values`` (flat, as stored) and
        ``norm_shape``, ``logk_shape`` (the ``dense_shape`` attributes).
    """
    coo = {
        k: read_array(path, f[f"h{k.split('_')[0]}_sparse"], k.split("_")[1])
        for k in ("norm_indices", "norm_values", "logk_indices", "logk_values")
    }
    coo["norm_shape"] = np.array(tuple(int(x) for x in f["hnorm_sparse"].attrs["dense_shape"]))
    coo["logk_shape"] = np.array(tuple(int(x) for x in f["hlogk_sparse"].attrs["dense_shape"]))
    return coo


def read_strings(f: h5py.File, name: str) -> list[str]:
    """The string dataset ``name`` as a list of ``str``."""
    dset = f[name]
    require_filters(f.filename, dset)
    return [s.decode() if isinstance(s, bytes) else str(s) for s in dset[...]]


def check_finite(path: str, name: str, arr: np.ndarray) -> None:
    """Refuse NaN or infinite values in the array read from dataset ``name``."""
    if not np.all(np.isfinite(arr)):
        n = int(np.count_nonzero(~np.isfinite(arr)))
        raise dataset_error(path, name, f"has {n} NaN or infinite values; regenerate the templates that filled it")


def densify_coo(
    coo: dict[str, np.ndarray],
    nbinsfull: int,
    nproc: int,
    nsyst: int,
    allocate: Callable[..., np.ndarray],
    logk: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Dense arrays from the COO form.

    Args:
        coo: ``norm_indices``, ``norm_values``, ``logk_indices``, ``logk_values`` and ``logk_shape``.
        nbinsfull, nproc, nsyst: The dense dimensions.
        allocate: ``allocate(shape, dtype)`` for the dense arrays.
        logk: Also densify log(kappa); ``norm`` is always dense (it is small).

    Returns:
        ``(norm, logk_avg, logk_halfdiff, asym_idx)``; ``logk_avg`` and ``logk_halfdiff`` are ``None``
        without ``logk``, and ``logk_halfdiff`` is ``None`` when every nuisance is symmetric.
    """
    nidx = coo["norm_indices"].reshape(-1, 2)
    norm = allocate((nbinsfull, nproc), np.float64)
    norm[...] = 0.0
    norm[nidx[:, 0], nidx[:, 1]] = coo["norm_values"]
    lidx = coo["logk_indices"].reshape(-1, 2)
    col = lidx[:, 1]
    first = col < nsyst
    asym = np.unique(col[~first] - nsyst) if int(coo["logk_shape"][1]) != nsyst else np.zeros(0, dtype=np.int64)
    if not logk:
        return norm, None, None, asym
    avg = allocate((nbinsfull, nproc, nsyst), np.float64)
    avg[...] = 0.0
    rows = nidx[lidx[:, 0]]
    avg[rows[first, 0], rows[first, 1], col[first]] = coo["logk_values"][first]
    if len(asym) == 0:
        return norm, avg, None, asym
    pos = np.searchsorted(asym, col[~first] - nsyst)
    half = allocate((nbinsfull, nproc, len(asym)), np.float64)
    half[...] = 0.0
    half[rows[~first, 0], rows[~first, 1], pos] = coo["logk_values"][~first]
    return norm, avg, half, asym
