"""Reading a workspace file: the in-memory :class:`Workspace` and :func:`read_workspace` with its validation.

The reader accepts files written by wfit and by rabbit's TensorWriter (0.2.5 and its main
branch, whose arrays are Blosc2-compressed: :mod:`wfit.workspace.compression`). Every dataset is
checked before the fitter sees it (presence, shape against ``hprocs``/``hsysts``, float64,
finite, no negative yields or data, metadata consistent with the arrays), and a failure names the
file, the dataset and the fix. What changes the model is never guessed: the systematic type comes
from ``wfit_meta`` or from rabbit's pickled ``meta`` group, read without running code
(:mod:`wfit.workspace.rabbit`), and rabbit features that wfit does not model (beta variations,
external likelihood terms) are refused.

Example:
    >>> import os, tempfile
    >>> from wfit.workspace import WorkspaceWriter, read_workspace
    >>> w = WorkspaceWriter()
    >>> w.add_channel("sr", [{"name": "x", "label": "x", "type": "Regular", "edges": [0.0, 1.0, 2.0]}])
    >>> w.add_process("sig", "sr", [4.0, 6.0], signal=True)
    >>> w.add_data("sr", [5.0, 5.0])
    >>> path = os.path.join(tempfile.mkdtemp(), "ws.hdf5"); w.write(path)
    >>> ws = read_workspace(path)
    >>> ws.nbins, ws.channel("sr").shape, ws.symmetric, ws.systematic_type
    (2, (2,), True, 'log_normal')
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from .compression import require_filters
from .encoding import aligned_empty, check_finite, densify_coo, read_array, read_coo, read_strings
from .rabbit import default_channels, read_rabbit_meta
from .schema import REQUIRED_DATASETS, SCHEMA_VERSION, SYSTEMATIC_TYPES, Channel, WorkspaceError, dataset_error
from .streaming import read_logk_dense

__all__ = ["Workspace", "file_sha256", "read_workspace"]


@dataclass
class Workspace:
    """A workspace in memory (float64 arrays, names as ``str``).

    ``logk_avg`` is [nbinsfull, nproc, nsyst]; ``logk_halfdiff`` is [nbinsfull, nproc, nasym] for the
    nuisances listed in ``asym_idx`` (indices into ``systs``), or ``None`` when all are symmetric.
    For sparse files, ``norm`` and ``logk_avg``/``logk_halfdiff`` are dense arrays unless the
    reader was asked for the COO form (``sparse_coo``).

    ``systematic_type`` says how to read log(kappa): ``"log_normal"`` (logarithms of yield ratios)
    or ``"normal"`` (differences of yields, rabbit's additive systematics). ``data_cov_inv`` is the
    inverse covariance [nbins, nbins] of the data for the chi-square fit, when the file has one;
    ``pseudodata`` maps the names of the stored pseudo-data sets to their [nbins] counts.
    """

    path: str
    sha256: str
    procs: list[str]
    signals: list[str]
    systs: list[str]
    systs_noconstraint: list[str]
    constraint_weights: np.ndarray
    syst_groups: dict[str, list[int]]
    noi_idxs: np.ndarray
    data_obs: np.ndarray
    pseudodata: dict[str, np.ndarray]
    sumw: np.ndarray
    sumw2: np.ndarray
    norm: np.ndarray
    logk_avg: np.ndarray | None
    logk_halfdiff: np.ndarray | None
    asym_idx: np.ndarray
    channels: list[Channel]
    meta: dict[str, Any]
    sparse_coo: dict[str, np.ndarray] | None = None
    systematic_type: str = "log_normal"
    data_cov_inv: np.ndarray | None = None

    @property
    def nbins(self) -> int:
        """Number of unmasked bins (those with data)."""
        return int(self.data_obs.shape[0])

    @property
    def nbinsfull(self) -> int:
        """Number of bins including masked channels."""
        return int(self.norm.shape[0])

    @property
    def nproc(self) -> int:
        return len(self.procs)

    @property
    def nsyst(self) -> int:
        return len(self.systs)

    @property
    def symmetric(self) -> bool:
        return len(self.asym_idx) == 0

    def channel(self, name: str) -> Channel:
        for c in self.channels:
            if c.name == name:
                return c
        raise KeyError(f"no channel {name!r} in {self.path}; channels: {[c.name for c in self.channels]}")

    def describe_bin(self, b: int) -> str:
        """``"channel 'ch' bin (i, j)"``: a flat bin index as its channel and its index in the channel's shape."""
        for ch in self.channels:
            if ch.start <= b < ch.stop:
                idx = np.unravel_index(b - ch.start, ch.shape)
                return f"channel {ch.name!r} bin {tuple(int(i) for i in idx)}"
        return f"bin {b}"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_workspace(
    path: str | os.PathLike[str],
    *,
    trust_pickle: bool = False,
    allocate: Callable[..., np.ndarray] = aligned_empty,
    densify_sparse: bool = True,
    load_logk: bool = True,
) -> Workspace:
    """Read and validate a workspace written by wfit or by rabbit's TensorWriter.

    Args:
        path: The HDF5 file.
        trust_pickle: Unpickle rabbit's ``meta`` group with ``wums`` when it holds more than the
            restricted unpickler builds (plain values, numpy arrays, hist axes). That executes
            code stored in the file: only use it for files you trust. Without it such a file is
            an error, as its systematic type cannot be known.
        allocate: ``allocate(shape, dtype)`` returning a writable C-contiguous array; the large
            arrays are read straight into it (e.g. a buffer shared with TensorFlow).
        densify_sparse: Convert ``hnorm_sparse``/``hlogk_sparse`` to dense arrays (otherwise the COO
            arrays are returned in ``sparse_coo`` and ``norm``/``logk_avg`` are empty).
        load_logk: Read the log(kappa) tensor into memory. With ``False`` (dense files only) it is
            validated for shape and dtype but left on disk (``logk_avg`` is ``None``); consumers such
            as the fitter then stream it with :func:`iter_logk_blocks`.

    Returns:
        The validated :class:`Workspace`.

    Raises:
        WorkspaceError: The file is not a valid workspace; the message names the dataset and the fix.
        FileNotFoundError: There is no such file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: no such workspace file; check the path (write one with WorkspaceWriter)"
        )
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise WorkspaceError(f"{path}: not a readable HDF5 file ({err}); regenerate the workspace") from err
    with f:
        for name in REQUIRED_DATASETS:
            if name not in f:
                raise dataset_error(
                    path,
                    name,
                    "is missing; this is not a complete workspace (rewrite it with wfit or rabbit)",
                )
        _refuse_unmodelled(path, f)
        meta: dict[str, Any] = {}
        if "wfit_meta" in f:
            try:
                meta = json.loads(f["wfit_meta"][()])
            except (ValueError, TypeError) as err:
                raise dataset_error(path, "wfit_meta", f"is not valid JSON ({err}); rewrite the workspace") from err
            if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
                raise dataset_error(
                    path,
                    "wfit_meta",
                    f"has schema version {meta['schema_version']}, newer than this "
                    f"wfit understands ({SCHEMA_VERSION}); upgrade wfit",
                )
        procs = read_strings(f, "hprocs")
        signals = read_strings(f, "hsignals")
        systs = read_strings(f, "hsysts")
        noconstraint = read_strings(f, "hsystsnoconstraint")
        groups = read_strings(f, "hsystgroups")
        require_filters(path, f["hsystgroupidxs"])
        gidx = [np.asarray(x, dtype=np.int64) for x in f["hsystgroupidxs"][...]]
        noi_name = "hnoiidxs" if "hnoiidxs" in f else "hnoigroupidxs"
        if noi_name in f:
            require_filters(path, f[noi_name])
            noi = np.asarray(f[noi_name][...], dtype=np.int64)
        else:
            noi = np.zeros(0, dtype=np.int64)
        for name, values in (
            ("hprocs", procs),
            ("hsignals", signals),
            ("hsysts", systs),
            ("hsystsnoconstraint", noconstraint),
            ("hsystgroups", groups),
        ):
            _check_unique(path, name, values)
        if procs[: len(signals)] != signals:
            raise dataset_error(path, "hsignals", f"signals {signals} must be the first processes in hprocs {procs}")
        nproc, nsyst = len(procs), len(systs)
        if nproc == 0:
            raise dataset_error(path, "hprocs", "is empty; a workspace needs at least one process")

        missing = [s for s in noconstraint if s not in set(systs)]
        if missing:
            raise dataset_error(
                path, "hsystsnoconstraint", f"names {missing[:5]} that are not in hsysts; rewrite the workspace"
            )
        if len(gidx) != len(groups):
            raise dataset_error(
                path,
                "hsystgroupidxs",
                f"has {len(gidx)} index lists for the {len(groups)} groups of hsystgroups; rewrite the workspace",
            )
        for g, idx in zip(groups, gidx, strict=True):
            _check_indices(path, "hsystgroupidxs", idx, nsyst, "hsysts", f"group {g!r}")
        _check_indices(path, noi_name, noi, nsyst, "hsysts")

        cw = read_array(path, f, "hconstraintweights")
        if cw.shape != (nsyst,):
            raise dataset_error(path, "hconstraintweights", f"has shape {cw.shape}, expected ({nsyst},) from hsysts")
        _check_constraint_weights(path, cw, systs, set(noconstraint))
        data = read_array(path, f, "hdata_obs")
        nbins = data.shape[0] if data.ndim == 1 else -1
        if data.ndim != 1 or nbins == 0:
            raise dataset_error(
                path,
                "hdata_obs",
                f"has shape {data.shape}; expected a non-empty 1-D array (an empty "
                "channel or no unmasked bins): add data to at least one unmasked channel",
            )
        check_finite(path, "hdata_obs", data)
        # a chi-square fit with a data covariance allows negative data (e.g. background-subtracted)
        if np.any(data < 0) and "hdata_cov_inv" not in f:
            raise dataset_error(path, "hdata_obs", "has negative observed counts; observed data must be >= 0")
        cov_inv = None
        if "hdata_cov_inv" in f:
            cov_inv = read_array(path, f, "hdata_cov_inv")
            if cov_inv.shape != (nbins, nbins):
                raise dataset_error(
                    path, "hdata_cov_inv", f"has shape {cov_inv.shape}, expected ({nbins}, {nbins}) from hdata_obs"
                )
            check_finite(path, "hdata_cov_inv", cov_inv)

        sparse = "hnorm" not in f
        coo = None
        if sparse:
            if "hnorm_sparse" not in f or "hlogk_sparse" not in f:
                raise dataset_error(
                    path, "hnorm", "is missing (and no hnorm_sparse/hlogk_sparse either); rewrite the file"
                )
            coo = read_coo(path, f)
            nshape = tuple(int(x) for x in coo["norm_shape"])
            nbinsfull = nshape[0]
            if len(nshape) != 2 or nshape[1] != nproc:
                raise dataset_error(path, "hnorm_sparse", f"dense_shape {nshape} does not match {nproc} processes")
            _check_coo(path, coo, nbinsfull, nproc, nsyst)
            for k in ("norm_values", "logk_values"):
                check_finite(path, f"h{k.split('_')[0]}_sparse/values", coo[k])
            if np.any(coo["norm_values"] < 0):
                raise dataset_error(
                    path, "hnorm_sparse/values", "has negative expected yields; clip or fix the templates"
                )
        else:
            norm = read_array(path, f, "hnorm", allocate)
            if norm.ndim != 2 or norm.shape[1] != nproc:
                raise dataset_error(
                    path, "hnorm", f"has shape {norm.shape}, expected (nbinsfull, {nproc}) from hprocs"
                )
            nbinsfull = norm.shape[0]
            check_finite(path, "hnorm", norm)
            if np.any(norm < 0):
                n = int(np.count_nonzero(norm < 0))
                raise dataset_error(
                    path,
                    "hnorm",
                    f"has {n} negative expected yields; the writer clips negative template "
                    "bins to zero: rewrite the workspace with WorkspaceWriter",
                )
        if nbins > nbinsfull:
            raise dataset_error(path, "hdata_obs", f"has {nbins} bins, more than the {nbinsfull} bins of hnorm")

        sumw = read_array(path, f, "hsumw")
        sumw2 = read_array(path, f, "hsumw2")
        for name, arr in (("hsumw", sumw), ("hsumw2", sumw2)):
            if arr.shape != (nbinsfull, nproc):
                raise dataset_error(path, name, f"has shape {arr.shape}, expected ({nbinsfull}, {nproc})")
            check_finite(path, name, arr)
        if np.any(sumw2 < 0):
            raise dataset_error(path, "hsumw2", "has negative sums of squared weights; they must be >= 0")

        pseudo: dict[str, np.ndarray] = {}
        if "hpseudodata" in f and "hpseudodatanames" in f:
            names = read_strings(f, "hpseudodatanames")
            if names:
                arr = read_array(path, f, "hpseudodata")
                if arr.shape != (nbins, len(names)):
                    raise dataset_error(
                        path,
                        "hpseudodata",
                        f"has shape {arr.shape}, expected ({nbins}, {len(names)}) from hdata_obs and hpseudodatanames",
                    )
                check_finite(path, "hpseudodata", arr)
                pseudo = {n: np.ascontiguousarray(arr[:, i]) for i, n in enumerate(names)}

        if meta:
            channels = _channels_from_meta(path, meta, nbins, nbinsfull)
            systematic_type = meta.get("systematic_type", "log_normal")
            if systematic_type not in SYSTEMATIC_TYPES:
                raise dataset_error(
                    path,
                    "wfit_meta",
                    f"has systematic_type {systematic_type!r}; wfit models {', '.join(SYSTEMATIC_TYPES)}",
                )
        elif "meta" in f:
            rmeta = read_rabbit_meta(path, f, nbins, nbinsfull, trust_pickle=trust_pickle)
            channels, systematic_type = rmeta.channels, rmeta.systematic_type
        else:
            # no metadata at all: what rabbit assumes then (log-normal, one channel per kind)
            channels, systematic_type = default_channels(nbins, nbinsfull), "log_normal"

        if sparse:
            norm, avg, half, asym = densify_coo(coo, nbinsfull, nproc, nsyst, allocate, logk=densify_sparse)
            if densify_sparse:
                coo = None
        else:
            hint = None
            if meta:
                asym_names = list(meta.get("asymmetric_systs", []))
                unknown = [s for s in asym_names if s not in systs]
                if unknown or len(set(asym_names)) != len(asym_names):
                    raise dataset_error(
                        path,
                        "wfit_meta",
                        f"lists asymmetric_systs {unknown[:5] or asym_names[:5]} that are not distinct names of "
                        "hsysts; the metadata does not belong to these arrays: rewrite the workspace",
                    )
                hint = [systs.index(s) for s in asym_names]
            avg, half, asym = read_logk_dense(path, f, nbinsfull, nproc, nsyst, hint, allocate, load_logk)

    ws = Workspace(
        path=path,
        sha256=file_sha256(path),
        procs=procs,
        signals=signals,
        systs=systs,
        systs_noconstraint=noconstraint,
        constraint_weights=cw,
        syst_groups={g: list(map(int, i)) for g, i in zip(groups, gidx, strict=True)},
        noi_idxs=noi,
        data_obs=data,
        pseudodata=pseudo,
        sumw=sumw,
        sumw2=sumw2,
        norm=norm,
        logk_avg=avg,
        logk_halfdiff=half,
        asym_idx=asym,
        channels=channels,
        meta=meta,
        sparse_coo=coo,
        systematic_type=systematic_type,
        data_cov_inv=cov_inv,
    )
    return ws


def _check_unique(path: str, dataset: str, names: list[str]) -> None:
    """Refuse a name listed twice: the second would silently share (or shadow) the first's parameters."""
    if len(set(names)) != len(names):
        dup = sorted(n for n, k in Counter(names).items() if k > 1)
        raise dataset_error(
            path, dataset, f"lists {dup[:5]} more than once; every name must be unique: rewrite the workspace"
        )


def _check_indices(
    path: str, dataset: str, idx: np.ndarray, size: int, target: str, what: str = "", column: str = ""
) -> None:
    """Refuse indices outside [0, size): a negative one would wrap around to the end of ``target``."""
    idx = np.asarray(idx)
    if idx.size == 0:
        return
    if idx.dtype.kind not in "iu":
        raise dataset_error(path, dataset, f"has {idx.dtype} indices; they must be integers: rewrite the workspace")
    bad = (idx < 0) | (idx >= size)
    if np.any(bad):
        where = f" ({what})" if what else ""
        col = f" {column}" if column else ""
        raise dataset_error(
            path,
            dataset,
            f"has{col} indices {sorted(set(idx[bad].tolist()))[:5]}{where} outside [0, {size}) of {target}; "
            "the file is inconsistent: rewrite the workspace",
        )


def _check_constraint_weights(path: str, cw: np.ndarray, systs: list[str], noconstraint: set[str]) -> None:
    """Finite and > 0 for the constrained nuisances (0 marks the unconstrained ones of hsystsnoconstraint)."""
    check_finite(path, "hconstraintweights", cw)
    free = np.array([s in noconstraint for s in systs], dtype=bool)
    bad = (cw < 0) | ((cw == 0) & ~free)
    if np.any(bad):
        names = [s for s, b in zip(systs, bad, strict=True) if b][:5]
        raise dataset_error(
            path,
            "hconstraintweights",
            f"has weights {cw[bad][:5].tolist()} for {names}: a constraint weight must be > 0 (0 only for the "
            "unconstrained nuisances of hsystsnoconstraint); list free nuisances as unconstrained in the writer "
            "and rewrite the workspace",
        )


def _check_coo(path: str, coo: Mapping[str, np.ndarray], nbinsfull: int, nproc: int, nsyst: int) -> None:
    """Range-check the COO indices of hnorm_sparse and hlogk_sparse against their dense shapes."""
    nidx, nval = coo["norm_indices"], coo["norm_values"]
    if nidx.size != 2 * nval.size:
        raise dataset_error(
            path, "hnorm_sparse/indices", f"has {nidx.size} entries for {nval.size} values (expected 2 per value)"
        )
    nidx = nidx.reshape(-1, 2)
    _check_indices(path, "hnorm_sparse/indices", nidx[:, 0], nbinsfull, "the bins of dense_shape", column="bin")
    _check_indices(path, "hnorm_sparse/indices", nidx[:, 1], nproc, "hprocs", column="process")
    lshape = tuple(int(x) for x in coo["logk_shape"])
    if len(lshape) != 2 or lshape[1] not in (nsyst, 2 * nsyst):
        raise dataset_error(
            path, "hlogk_sparse", f"dense_shape {lshape} does not match ({nval.size}, {nsyst} or {2 * nsyst})"
        )
    lidx, lval = coo["logk_indices"], coo["logk_values"]
    if lidx.size != 2 * lval.size:
        raise dataset_error(
            path, "hlogk_sparse/indices", f"has {lidx.size} entries for {lval.size} values (expected 2 per value)"
        )
    lidx = lidx.reshape(-1, 2)
    _check_indices(path, "hlogk_sparse/indices", lidx[:, 0], len(nval), "the entries of hnorm_sparse", column="row")
    _check_indices(path, "hlogk_sparse/indices", lidx[:, 1], lshape[1], "the nuisance columns", column="column")


def _refuse_unmodelled(path: str, f: h5py.File) -> None:
    """Refuse rabbit features that change the likelihood and that wfit does not model."""
    if "hbetavariations" in f:
        raise dataset_error(
            path,
            "hbetavariations",
            "holds rabbit's bin-by-bin statistical variations of masked channels "
            "(TensorWriter.add_beta_variations), which wfit does not model; fit this file with rabbit",
        )
    terms = f.get("external_terms")
    if terms is not None and len(terms):
        raise dataset_error(
            path,
            "external_terms",
            f"holds {len(terms)} external likelihood term(s) (TensorWriter.add_external_likelihood_term), "
            "which wfit does not add to its likelihood; fit this file with rabbit",
        )


def _channels_from_meta(path: str, meta: Mapping[str, Any], nbins: int, nbinsfull: int) -> list[Channel]:
    out = []
    for c in meta["channels"]:
        ch = Channel(
            name=c["name"],
            axes=tuple(c["axes"]),
            masked=bool(c["masked"]),
            flow=bool(c["flow"]),
            start=int(c["start"]),
            stop=int(c["stop"]),
        )
        if ch.size != int(np.prod(ch.shape)):
            raise dataset_error(
                path, "wfit_meta", f"channel {ch.name!r} spans {ch.size} bins but its axes give {ch.shape}"
            )
        if ch.size == 0:
            raise dataset_error(
                path, "wfit_meta", f"channel {ch.name!r} is empty; every channel needs at least one bin"
            )
        out.append(ch)
    if out and (out[-1].stop != nbinsfull or sum(c.size for c in out if not c.masked) != nbins):
        raise dataset_error(
            path,
            "wfit_meta",
            f"channels cover {out[-1].stop} bins but the arrays have {nbinsfull} "
            f"({nbins} unmasked); the metadata does not belong to these arrays",
        )
    return out
