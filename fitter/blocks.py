"""The fitter's block layout of log(kappa): blocks of consecutive bins without their zeros.

A workspace's log(kappa) tensor is [nbinsfull, nproc, (2,) nsyst] and mostly zeros: most nuisances
act on a few processes in a few channels, and empty template bins have no yield to vary. The
likelihood works on :class:`CompactBlock` s instead: per block of bins, only the (bin, process) rows
with a non-zero nominal yield (or, for additive systematics, a non-zero shift: an empty template
can be shifted) and only the nuisance columns that act somewhere in the block. The
blocks are built from the arrays in memory, by streaming a dense file
(:func:`wfit.workspace.iter_logk_blocks`), or from a sparse file's COO arrays, so that neither a
dense copy nor the full tensor needs to be in memory.

Example:
    >>> import os, tempfile
    >>> from wfit.fitter.blocks import iter_compact_blocks
    >>> from wfit.workspace import WorkspaceWriter, read_workspace
    >>> w = WorkspaceWriter()
    >>> w.add_channel("sr", [{"name": "x", "label": "x", "type": "Regular", "edges": [0.0, 1.0, 2.0, 3.0]}])
    >>> w.add_process("sig", "sr", [4.0, 0.0, 6.0], signal=True)
    >>> w.add_process("bkg", "sr", [1.0, 1.0, 1.0])
    >>> w.add_norm_systematic("lumi", "sig", "sr", 1.02)
    >>> w.add_norm_systematic("bnorm", "bkg", "sr", 1.1)
    >>> w.add_data("sr", [5.0, 1.0, 7.0])
    >>> path = os.path.join(tempfile.mkdtemp(), "ws.hdf5"); w.write(path)
    >>> [(b.b0, b.b1, b.row_proc.tolist(), b.cols.tolist()) for b in iter_compact_blocks(read_workspace(path), 2)]
    [(0, 2, [0, 1, 1], [0, 1]), (2, 3, [0, 1], [0, 1])]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from wfit.workspace import Workspace, iter_logk_blocks

__all__ = ["CompactBlock", "iter_compact_blocks"]


@dataclass(frozen=True)
class CompactBlock:
    """The log(kappa) of a block of consecutive bins, without its zeros.

    Rows are the (bin, process) pairs with a non-zero nominal yield (or a non-zero additive shift),
    bin-major; columns the nuisances that act somewhere in the block.

    Attributes:
        b0, b1: The bins ``[b0, b1)``.
        row_bin: Bin of each row, relative to ``b0``.
        row_proc: Process of each row.
        norm: Nominal yield of each row.
        cols: Nuisances (indices into ``systs``) of the columns of ``avg``.
        avg: log(kappa) average, [rows, len(cols)].
        dcols: Asymmetric nuisances of the columns of ``half``, as indices into ``asym_idx``.
        half: log(kappa) half-difference, [rows, len(dcols)], or ``None``.
        dense: Every (bin, process) pair is a row (the rows are then the full [bins x processes]).
    """

    b0: int
    b1: int
    row_bin: np.ndarray
    row_proc: np.ndarray
    norm: np.ndarray
    cols: np.ndarray
    avg: np.ndarray
    dcols: np.ndarray
    half: np.ndarray | None
    dense: bool


def _compact(b0: int, b1: int, norm: np.ndarray, avg: np.ndarray, half: np.ndarray | None,
             asym_idx: np.ndarray, additive: bool = False) -> CompactBlock:
    """The :class:`CompactBlock` of bins ``[b0, b1)`` from their dense ``norm``, ``avg`` and ``half`` arrays.

    With ``additive`` (``systematic_type="normal"``) a row without nominal yield is kept when it is shifted.
    """
    nb, nproc = norm.shape
    nz = norm != 0.0
    if additive:
        nz = nz | np.any(avg != 0.0, axis=-1)
        if half is not None:
            nz = nz | np.any(half != 0.0, axis=-1)
    dense = bool(nz.all())
    if dense:
        row_bin, row_proc = np.divmod(np.arange(nb * nproc), nproc)
        a = avg.reshape(nb * nproc, -1)
        h = None if half is None else half.reshape(nb * nproc, -1)
    else:
        row_bin, row_proc = np.nonzero(nz)
        a = avg[row_bin, row_proc]
        h = None if half is None else half[row_bin, row_proc]
    dcols = np.flatnonzero(np.any(h != 0.0, axis=0)) if h is not None else np.zeros(0, dtype=np.int64)
    active = np.any(a != 0.0, axis=0)
    active[asym_idx[dcols]] = True
    cols = np.flatnonzero(active)
    return CompactBlock(b0, b1, row_bin, row_proc, norm[row_bin, row_proc], cols,
                        np.ascontiguousarray(a[:, cols]), dcols,
                        None if len(dcols) == 0 else np.ascontiguousarray(h[:, dcols]), dense)


def iter_compact_blocks(ws: Workspace, bins_per_block: int, start: int = 0,
                        stop: int | None = None) -> Iterator[CompactBlock]:
    """The log(kappa) tensor of bins ``[start, stop)`` in :class:`CompactBlock` s of consecutive bins.

    Works from the arrays in memory, by streaming a dense file, or from a sparse file's COO arrays,
    so that neither a dense copy nor the full tensor needs to be in memory. (A sparse file stores
    log(kappa) only where the nominal yield is non-zero.)
    """
    stop = ws.nbinsfull if stop is None else stop
    additive = ws.systematic_type == "normal"
    if ws.sparse_coo is None:
        for b0, b1, avg, half in iter_logk_blocks(ws, bins_per_block, start=start, stop=stop):
            yield _compact(b0, b1, ws.norm[b0:b1], avg, half, ws.asym_idx, additive)
        return
    coo, nsyst = ws.sparse_coo, ws.nsyst
    nidx = coo["norm_indices"].reshape(-1, 2)
    lidx = coo["logk_indices"].reshape(-1, 2)
    lval = coo["logk_values"]
    asym_pos = {int(s): i for i, s in enumerate(ws.asym_idx)}
    for b0 in range(start, stop, bins_per_block):
        b1 = min(stop, b0 + bins_per_block)
        n0, n1 = np.searchsorted(nidx[:, 0], [b0, b1])  # norm entries are sorted bin-major
        l0, l1 = np.searchsorted(lidx[:, 0], [n0, n1])  # logk entries are sorted by norm entry
        row = lidx[l0:l1, 0] - n0
        col = lidx[l0:l1, 1]
        vals = lval[l0:l1]
        first = col < nsyst
        cols = np.unique(np.concatenate([col[first], ws.asym_idx[[asym_pos[c - nsyst] for c in col[~first]]]]))
        avg = np.zeros((n1 - n0, len(cols)))
        avg[row[first], np.searchsorted(cols, col[first])] = vals[first]
        half = None
        dcols = np.unique([asym_pos[c - nsyst] for c in col[~first]]).astype(np.int64)
        if len(dcols):
            half = np.zeros((n1 - n0, len(dcols)))
            half[row[~first], np.searchsorted(dcols, [asym_pos[c - nsyst] for c in col[~first]])] = vals[~first]
        rb, rp = nidx[n0:n1, 0] - b0, nidx[n0:n1, 1]
        yield CompactBlock(b0, b1, rb, rp, coo["norm_values"][n0:n1], cols, avg, dcols, half,
                           dense=(n1 - n0) == (b1 - b0) * ws.nproc)
