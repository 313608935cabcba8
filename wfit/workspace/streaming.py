"""Reading the log(kappa) tensor ``hlogk`` of a dense workspace block by block.

``hlogk`` is the one array that can outgrow memory ([nbinsfull, nproc, (2,) nsyst] float64). It is
read in blocks of consecutive bins, each checked for NaN and infinities as it arrives, either into
the reader's arrays (:func:`read_logk_dense`, without a second full copy) or straight to a consumer
(:func:`iter_logk_blocks`, so that the fitter never holds the whole tensor).

Example:
    >>> import hist, os, tempfile
    >>> from wfit.workspace import WorkspaceWriter, iter_logk_blocks, read_workspace
    >>> w = WorkspaceWriter()
    >>> w.add_channel("ch0", [hist.axis.Regular(5, 0.0, 5.0, name="x")])
    >>> w.add_process("sig", "ch0", [1.0, 2.0, 3.0, 4.0, 5.0], signal=True)
    >>> w.add_norm_systematic("lumi", "sig", "ch0", 1.02)
    >>> w.add_data("ch0", [1.0, 2.0, 3.0, 4.0, 5.0])
    >>> path = os.path.join(tempfile.mkdtemp(), "ws.hdf5"); w.write(path)
    >>> ws = read_workspace(path, load_logk=False)
    >>> [(b0, b1, avg.shape) for b0, b1, avg, _ in iter_logk_blocks(ws, 2)]
    [(0, 2, (2, 1, 1)), (2, 4, (2, 1, 1)), (4, 5, (1, 1, 1))]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import h5py
import numpy as np

from .compression import require_filters
from .encoding import check_finite, check_float64, stored_shape
from .schema import dataset_error

if TYPE_CHECKING:
    from .reader import Workspace

__all__ = ["iter_logk_blocks", "read_logk_dense"]

# Bytes per block when streaming large datasets, so that no second full copy is held.
_BLOCK_BYTES = 16 * 1024**2


def _logk_layout(path: str, f: h5py.File, nbinsfull: int, nproc: int, nsyst: int) -> bool:
    """Check the shape and dtype of ``hlogk``; return whether it is the symmetric layout."""
    if "hlogk" not in f:
        raise dataset_error(path, "hlogk", "is missing; a dense workspace needs hnorm and hlogk")
    dset = f["hlogk"]
    check_float64(path, dset)
    require_filters(path, dset)
    shape = stored_shape(path, dset)
    if shape == (nbinsfull, nproc, nsyst):
        return True
    if shape == (nbinsfull, nproc, 2, nsyst):
        return False
    raise dataset_error(
        path,
        "hlogk",
        f"has shape {shape}, expected ({nbinsfull}, {nproc}, [2,] {nsyst}) from "
        "hnorm and hsysts; the file is inconsistent",
    )


def _raw_logk_blocks(
    path: str,
    f: h5py.File,
    nbinsfull: int,
    nproc: int,
    nsyst: int,
    symmetric: bool,
    step: int,
    stop: int | None = None,
    start: int = 0,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(b0, b1, block)`` with ``block`` the [b1-b0, nproc, (2,) nsyst] rows of ``hlogk``."""
    dset = f["hlogk"]
    row = nproc * (nsyst if symmetric else 2 * nsyst)
    tail = () if symmetric else (2,)
    stop = nbinsfull if stop is None else stop
    for b0 in range(start, stop, step):
        b1 = min(stop, b0 + step)
        blk = dset[b0 * row : b1 * row] if len(dset.shape) == 1 else dset[b0:b1]
        blk = np.asarray(blk).reshape((b1 - b0, nproc, *tail, nsyst))
        check_finite(path, "hlogk", blk)
        yield b0, b1, blk


def _asym_columns(
    nsyst: int, symmetric: bool, hint: list[int] | None, blocks: Iterable[tuple[int, int, np.ndarray]]
) -> np.ndarray:
    """The nuisances (indices into ``hsysts``) with a half-difference: ``hint`` when the writer recorded them.

    ``blocks`` (the raw blocks of ``hlogk``) are read only for a foreign asymmetric file without a hint.
    """
    if symmetric:
        return np.zeros(0, dtype=np.int64)
    if hint is not None:
        return np.asarray(hint, dtype=np.int64)
    # A foreign file: find the nuisances with a non-zero half-difference in a first pass.
    nonzero = np.zeros(nsyst, dtype=bool)
    for _, _, blk in blocks:
        nonzero |= np.any(blk[:, :, 1, :] != 0.0, axis=(0, 1))
    return np.flatnonzero(nonzero)


def iter_logk_blocks(
    ws: Workspace, bins_per_block: int, start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray | None]]:
    """Stream the log(kappa) arrays of a workspace in blocks of bins.

    Yields ``(b0, b1, avg, half)`` with ``avg`` [nb, nproc, nsyst] and ``half`` [nb, nproc, nasym]
    (columns ``ws.asym_idx``) or ``None``. Uses the arrays in memory when the workspace holds them,
    otherwise reads the file block by block, so the full tensor is never in memory.
    """
    stop = ws.nbinsfull if stop is None else stop
    if ws.logk_avg is not None and ws.logk_avg.shape[0] == ws.nbinsfull:
        for b0 in range(start, stop, bins_per_block):
            b1 = min(stop, b0 + bins_per_block)
            half = None if ws.logk_halfdiff is None else ws.logk_halfdiff[b0:b1]
            yield b0, b1, ws.logk_avg[b0:b1], half
        return
    with h5py.File(ws.path, "r") as f:
        symmetric = _logk_layout(ws.path, f, ws.nbinsfull, ws.nproc, ws.nsyst)
        asym = ws.asym_idx
        for b0, b1, blk in _raw_logk_blocks(
            ws.path, f, ws.nbinsfull, ws.nproc, ws.nsyst, symmetric, bins_per_block, stop, start
        ):
            if symmetric:
                yield b0, b1, blk, None
            else:
                yield b0, b1, blk[:, :, 0, :], (blk[:, :, 1, asym] if len(asym) else None)


def read_logk_dense(
    path: str,
    f: h5py.File,
    nbinsfull: int,
    nproc: int,
    nsyst: int,
    asym_hint: list[int] | None,
    allocate: Callable[..., np.ndarray],
    load: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Stream ``hlogk`` block by block into the average and (compact) half-difference arrays.

    Returns:
        ``(avg, half, asym_idx)``: ``avg`` [nbinsfull, nproc, nsyst], ``half`` [nbinsfull, nproc,
        len(asym_idx)] or ``None`` when every nuisance is symmetric; both ``None`` without ``load``
        (the tensor is then only checked for shape and dtype).
    """
    symmetric = _logk_layout(path, f, nbinsfull, nproc, nsyst)
    row = nproc * (nsyst if symmetric else 2 * nsyst)
    step = max(1, _BLOCK_BYTES // (8 * max(row, 1)))
    first_pass = _raw_logk_blocks(path, f, nbinsfull, nproc, nsyst, symmetric, step)  # lazy
    asym = _asym_columns(nsyst, symmetric, asym_hint, first_pass)
    if not load:
        return None, None, asym
    avg = allocate((nbinsfull, nproc, nsyst), np.float64)
    half = allocate((nbinsfull, nproc, len(asym)), np.float64) if len(asym) else None
    for b0, b1, blk in _raw_logk_blocks(path, f, nbinsfull, nproc, nsyst, symmetric, step):
        if symmetric:
            avg[b0:b1] = blk
        else:
            avg[b0:b1] = blk[:, :, 0, :]
            if half is not None:
                half[b0:b1] = blk[:, :, 1, asym]
    return avg, half, asym
