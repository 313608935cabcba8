"""Building a workspace from ``hist.Hist`` templates and writing it: :class:`WorkspaceWriter`.

The writer models every systematic as log(kappa) in the log-normal convention of CMS combine (see
:mod:`wfit.workspace.schema`): a shape systematic from its up/down templates, per bin, as
``logk_up = log(up / nominal)`` and ``logk_down = -log(down / nominal)``, stored as their average and
half-difference; a normalisation (lnN) systematic as ``log(kappa)`` (or ``log(kappa_up)``,
``-log(kappa_down)``) in every bin. A variation that vanishes or flips sign gets
:data:`~wfit.workspace.schema.LOGK_EPSILON` = log(1e-3), as in rabbit. Unlike rabbit 0.2.5's writer,
a scalar kappa reaches every listed process and an asymmetric lnN is kept asymmetric.

The file is written atomically (:func:`wfit.atomic.atomic_write_hdf5`): a reader never sees a
half-written workspace.

Example:
    A shape systematic whose up template vanishes in the second bin:

    >>> import os, tempfile
    >>> from wfit.workspace import WorkspaceWriter, read_workspace
    >>> w = WorkspaceWriter()
    >>> w.add_channel("sr", [{"name": "m", "label": "m", "type": "Regular", "edges": [0.0, 1.0, 2.0]}])
    >>> w.add_process("ttbar", "sr", [10.0, 20.0], signal=True)
    >>> w.add_shape_systematic("jes", "ttbar", "sr", up=[12.0, 0.0], down=[9.0, 18.0])
    >>> w.add_data("sr", [11.0, 19.0])
    >>> path = os.path.join(tempfile.mkdtemp(), "ws.hdf5"); w.write(path)
    >>> ws = read_workspace(path)
    >>> logk_up = ws.logk_avg[:, 0, 0] + ws.logk_halfdiff[:, 0, 0]  # log(12/10), then log(1e-3)
    >>> [round(x, 4) for x in logk_up.tolist()]
    [0.1823, -6.9078]
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from wfit.atomic import atomic_write_hdf5

from .compression import dataset_options
from .encoding import write_flat, write_sparse, write_strings
from .rabbit import write_rabbit_meta
from .schema import LOGK_EPSILON, SCHEMA_VERSION, WorkspaceError, axes_match, axis_size, axis_to_json

__all__ = ["WorkspaceWriter"]

log = logging.getLogger(__name__)


@dataclass
class _ChannelData:
    axes: tuple[dict[str, Any], ...]
    masked: bool
    flow: bool
    size: int
    norm: dict[str, np.ndarray] = field(default_factory=dict)
    sumw2: dict[str, np.ndarray] = field(default_factory=dict)
    data: np.ndarray | None = None
    # logk[process][syst] = (avg, halfdiff or None)
    logk: dict[str, dict[str, tuple[np.ndarray, np.ndarray | None]]] = field(default_factory=dict)


class WorkspaceWriter:
    """Build a workspace from ``hist.Hist`` templates and write it to HDF5.

    Processes are ordered signals first, then backgrounds, each in the order they were added.
    Nuisances are ordered unconstrained first, then constrained, each in the order they were
    booked. Negative nominal bins are set to zero (rabbit's default policy); the number of such
    bins per process is kept in :attr:`clipped_negative_bins` and in the file's metadata.

    Args:
        sparse: Write ``hnorm_sparse``/``hlogk_sparse`` instead of the dense arrays.
    """

    def __init__(self, *, sparse: bool = False) -> None:
        self.sparse = bool(sparse)
        self._channels: dict[str, _ChannelData] = {}
        self._signals: list[str] = []
        self._backgrounds: list[str] = []
        self._systs: dict[str, dict[str, Any]] = {}  # name -> {"constrained", "noi"}
        self._groups: dict[str, list[str]] = {}
        self._asymmetric: set[str] = set()
        self._pseudodata: dict[str, dict[str, np.ndarray]] = {}
        self.clipped_negative_bins: dict[str, int] = {}

    # -------------------------------------------------------------------------- structure
    def add_channel(
        self, name: str, axes: Sequence[Any], *, masked: bool = False, flow: bool = False
    ) -> None:
        """Declare a channel by its histogram axes (``hist`` axes, or JSON axis dicts)."""
        if name in self._channels:
            raise WorkspaceError(f"channel {name!r} is already defined; give each channel a unique name")
        if flow and not masked:
            raise WorkspaceError(
                f"channel {name!r}: flow bins are only supported for masked channels (as in rabbit); "
                "pass flow=False or masked=True"
            )
        jaxes = tuple(a if isinstance(a, Mapping) else axis_to_json(a) for a in axes)
        size = int(np.prod([axis_size(a, flow) for a in jaxes])) if jaxes else 0
        if size == 0:
            raise WorkspaceError(f"channel {name!r} has no bins; give it at least one axis with one bin")
        self._channels[name] = _ChannelData(axes=jaxes, masked=masked, flow=flow, size=size)

    def _channel(self, channel: str) -> _ChannelData:
        try:
            return self._channels[channel]
        except KeyError:
            raise WorkspaceError(
                f"channel {channel!r} is not defined; call add_channel first (known: {list(self._channels)})"
            ) from None

    def _flat(self, h: Any, channel: str, what: str, variances: bool = False) -> np.ndarray:
        ch = self._channel(channel)
        if hasattr(h, "axes"):
            haxes = [axis_to_json(a) for a in h.axes]
            if len(haxes) != len(ch.axes) or not all(axes_match(a, b) for a, b in zip(haxes, ch.axes, strict=True)):
                raise WorkspaceError(
                    f"{what} in channel {channel!r}: histogram axes {[a['name'] for a in haxes]} do not match "
                    f"the channel's axes {[a['name'] for a in ch.axes]} (names, edges or categories differ); "
                    "project or rebin the histogram to the channel's axes"
                )
            if variances:
                arr = h.variances(flow=ch.flow)
                if arr is None:
                    # Unweighted storage: Poisson variances equal the counts.
                    arr = h.values(flow=ch.flow)
            else:
                arr = h.values(flow=ch.flow)
        else:
            arr = np.asarray(h)
        arr = np.asarray(arr, dtype=np.float64).reshape(-1)
        if arr.size != ch.size:
            raise WorkspaceError(
                f"{what} in channel {channel!r} has {arr.size} bins but the channel has {ch.size}; "
                "fill it with the channel's axes"
            )
        if not np.all(np.isfinite(arr)):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            raise WorkspaceError(
                f"{what} in channel {channel!r} has {bad} NaN or infinite bins; fix the inputs that filled it"
            )
        return arr

    def add_process(
        self, name: str, channel: str, nominal: Any, *, signal: bool = False, variances: Any = None
    ) -> None:
        """Add the nominal template of a process in a channel.

        Args:
            name: Process name; signals become parameters of interest (signal strength mu).
            channel: Channel name.
            nominal: ``hist.Hist`` (its variances, from Weight storage, give ``sumw2``) or array.
            signal: Whether the process is a signal (a POI).
            variances: Sum of squared weights, if not taken from ``nominal`` (for a plain array
                without variances, ``|nominal|``, as for unit-weight events).
        """
        ch = self._channel(channel)
        if name in ch.norm:
            raise WorkspaceError(f"process {name!r} already has a nominal template in channel {channel!r}")
        if signal and name in self._backgrounds or not signal and name in self._signals:
            raise WorkspaceError(
                f"process {name!r} was added as {'background' if signal else 'signal'} elsewhere; "
                "a process is a signal in all channels or in none"
            )
        norm = self._flat(nominal, channel, f"process {name!r}")
        if variances is None and not hasattr(nominal, "axes"):
            sumw2 = np.abs(norm)  # a plain array: Poisson variances of unit-weight events
        else:
            sumw2 = self._flat(
                nominal if variances is None else variances,
                channel,
                f"process {name!r} variances",
                variances=True,
            )
        if np.any(sumw2 < 0):
            raise WorkspaceError(f"process {name!r} in channel {channel!r} has negative variances")
        nneg = int(np.count_nonzero(norm < 0))
        if nneg:
            self.clipped_negative_bins[f"{channel}/{name}"] = nneg
            log.warning("process %r in channel %r: %d negative bins set to zero", name, channel, nneg)
            norm = np.maximum(norm, 0.0)
        ch.norm[name] = norm
        ch.sumw2[name] = sumw2
        ch.logk[name] = {}
        target = self._signals if signal else self._backgrounds
        if name not in target:
            target.append(name)

    def add_data(self, channel: str, data: Any) -> None:
        """Set the observed data of an unmasked channel."""
        ch = self._channel(channel)
        if ch.masked:
            raise WorkspaceError(f"channel {channel!r} is masked: masked channels have no data")
        if ch.data is not None:
            raise WorkspaceError(f"data for channel {channel!r} is already set")
        arr = self._flat(data, channel, "data")
        if np.any(arr < 0):
            raise WorkspaceError(f"data in channel {channel!r} has negative bins; observed counts are >= 0")
        ch.data = arr

    def add_pseudodata(self, name: str, channel: str, data: Any) -> None:
        """Add a named pseudo-data set (e.g. a toy or an alternative model) for an unmasked channel."""
        self._pseudodata.setdefault(name, {})[channel] = self._flat(data, channel, f"pseudodata {name!r}")

    def _book(self, name: str, constrained: bool, noi: bool, groups: Iterable[str] | None) -> None:
        spec = {"constrained": bool(constrained), "noi": bool(noi)}
        if name in self._systs and self._systs[name] != spec:
            raise WorkspaceError(
                f"systematic {name!r} was booked before with {self._systs[name]}, now with {spec}; "
                "use the same constrained/noi flags for every process"
            )
        self._systs.setdefault(name, spec)
        for g in [name] if groups is None else groups:
            members = self._groups.setdefault(g, [])
            if name not in members:
                members.append(name)

    def _set_logk(
        self, name: str, process: str, channel: str, avg: np.ndarray, half: np.ndarray | None
    ) -> None:
        ch = self._channel(channel)
        if process not in ch.norm:
            raise WorkspaceError(
                f"systematic {name!r}: process {process!r} has no nominal template in channel {channel!r}; "
                "call add_process first"
            )
        if name in ch.logk[process]:
            raise WorkspaceError(f"systematic {name!r} is already set for {process!r} in channel {channel!r}")
        zero = ch.norm[process] == 0.0
        avg = np.where(zero, 0.0, avg)
        if half is not None:
            half = np.where(zero, 0.0, half)
            if np.any(half != 0.0):
                self._asymmetric.add(name)
            else:
                half = None
        ch.logk[process][name] = (avg, half)

    @staticmethod
    def _logk(var: np.ndarray, nom: np.ndarray) -> np.ndarray:
        # rabbit's convention: a variation that vanishes or flips sign gets log(1e-3).
        with np.errstate(divide="ignore", invalid="ignore"):
            logk = np.log(var / nom)
        return np.where(np.sign(nom * var) == 1, logk, LOGK_EPSILON)

    def add_shape_systematic(
        self,
        name: str,
        process: str,
        channel: str,
        up: Any,
        down: Any = None,
        *,
        symmetrize: bool = False,
        constrained: bool = True,
        noi: bool = False,
        groups: Iterable[str] | None = None,
        kfactor: float = 1.0,
    ) -> None:
        """Add a shape systematic from varied templates.

        Args:
            name: Nuisance name (shared by all processes and channels it affects).
            process: Process whose template varies.
            channel: Channel.
            up: Template at ``theta = +1``.
            down: Template at ``theta = -1``; ``None`` mirrors ``up`` (log-symmetric).
            symmetrize: Replace an up/down pair by its log-average (symmetric) variation.
            constrained: Gaussian constraint (True) or a free parameter (False).
            noi: Nuisance of interest (reported with the POIs).
            groups: Groups for grouped impacts; defaults to a group named after the nuisance.
            kfactor: Scale of log(kappa) (e.g. 0.5 for half of the variation).
        """
        nom = self._channel(channel).norm.get(process)
        if nom is None:
            raise WorkspaceError(
                f"systematic {name!r}: process {process!r} has no nominal template in channel {channel!r}; "
                "call add_process first"
            )
        logkup = kfactor * self._logk(self._flat(up, channel, f"systematic {name!r} up"), nom)
        if down is None:
            avg, half = logkup, None
        else:
            logkdown = -kfactor * self._logk(self._flat(down, channel, f"systematic {name!r} down"), nom)
            avg, half = 0.5 * (logkup + logkdown), 0.5 * (logkup - logkdown)
            if symmetrize:
                half = None
        self._set_logk(name, process, channel, avg, half)
        self._book(name, constrained, noi, groups)

    def add_norm_systematic(
        self,
        name: str,
        processes: str | Sequence[str],
        channel: str | Sequence[str] | None,
        kappa: float | tuple[float, float] | Mapping[str, float | tuple[float, float]],
        *,
        symmetrize: bool = False,
        constrained: bool = True,
        noi: bool = False,
        groups: Iterable[str] | None = None,
    ) -> None:
        """Add a log-normal normalisation systematic (lnN).

        Args:
            name: Nuisance name.
            processes: Process name(s) affected.
            channel: Channel name(s); ``None`` means every channel where the process exists.
            kappa: ``kappa`` (symmetric: yield x kappa^theta), ``(kappa_up, kappa_down)``
                (asymmetric: x kappa_up at +1, x kappa_down at -1), or a mapping process -> either.
                A single value applies to every listed process.
            symmetrize: Replace an asymmetric pair by its log-average.
            constrained, noi, groups: As in :meth:`add_shape_systematic`.
        """
        procs = [processes] if isinstance(processes, str) else list(processes)
        if isinstance(kappa, Mapping):
            missing = [p for p in procs if p not in kappa]
            if missing:
                raise WorkspaceError(f"lnN {name!r}: no kappa given for processes {missing}")
            kappas = {p: kappa[p] for p in procs}
        else:
            kappas = dict.fromkeys(procs, kappa)
        if channel is None:
            channels = [c for c, d in self._channels.items() if any(p in d.norm for p in procs)]
        else:
            channels = [channel] if isinstance(channel, str) else list(channel)
        found = False
        for c in channels:
            ch = self._channel(c)
            for p in procs:
                if p not in ch.norm:
                    if channel is None:
                        continue
                    raise WorkspaceError(
                        f"lnN {name!r}: process {p!r} has no nominal template in channel {c!r}; "
                        "call add_process first or pass channel=None"
                    )
                found = True
                k = kappas[p]
                ones = np.ones(ch.size)
                if isinstance(k, (tuple, list, np.ndarray)):
                    if len(k) != 2:
                        raise WorkspaceError(
                            f"lnN {name!r} for {p!r}: kappa must be a number or a pair (up, down), got {k!r}"
                        )
                    kup, kdown = (float(x) for x in k)
                    _check_kappa(name, p, kup)
                    _check_kappa(name, p, kdown)
                    lup, ldown = math.log(kup), -math.log(kdown)
                    avg, half = 0.5 * (lup + ldown) * ones, 0.5 * (lup - ldown) * ones
                    if symmetrize:
                        half = None
                else:
                    _check_kappa(name, p, float(k))
                    avg, half = math.log(float(k)) * ones, None
                self._set_logk(name, p, c, avg, half)
        if not found:
            raise WorkspaceError(f"lnN {name!r}: none of the processes {procs} exists in channels {channels}")
        self._book(name, constrained, noi, groups)

    def add_free_parameter(
        self,
        name: str,
        processes: str | Sequence[str],
        channel: str | None = None,
        kappa: float = 2.0,
        groups: Iterable[str] | None = None,
    ) -> None:
        """Add an unconstrained rate parameter: yield x kappa^theta for the given processes."""
        self.add_norm_systematic(name, processes, channel, kappa, constrained=False, groups=groups)

    # -------------------------------------------------------------------------- output
    @property
    def procs(self) -> list[str]:
        return self._signals + self._backgrounds

    @property
    def systs(self) -> list[str]:
        free = [s for s, v in self._systs.items() if not v["constrained"]]
        return free + [s for s, v in self._systs.items() if v["constrained"]]

    def _ordered_channels(self) -> list[tuple[str, _ChannelData]]:
        items = list(self._channels.items())
        return [i for i in items if not i[1].masked] + [i for i in items if i[1].masked]

    def write(
        self,
        path: str | os.PathLike[str],
        *,
        rabbit_meta: bool = False,
        compression: str = "gzip",
        compression_level: int = 4,
    ) -> None:
        """Write the workspace atomically (a temporary file in the same folder, then a rename).

        Args:
            path: Output file.
            rabbit_meta: Also write rabbit's pickled ``meta`` group (needs ``wums``), so that
                rabbit reads channel names and the symmetric layout.
            compression: Compression of the array datasets: ``"gzip"`` (readable everywhere),
                ``"blosc2"`` (Blosc2 + LZ4, what rabbit's main branch writes: faster, needs
                ``hdf5plugin`` to read), ``"zstd"``, ``"lz4"`` or ``"none"``
                (:mod:`wfit.workspace.compression`).
            compression_level: Level of gzip, Blosc2 or Zstd.
        """
        dataset_options(compression, compression_level)  # an unknown compression fails before any work
        channels = self._ordered_channels()
        if not channels:
            raise WorkspaceError("no channels: call add_channel before write")
        procs, systs = self.procs, self.systs
        if not self._signals and not procs:
            raise WorkspaceError("no processes: call add_process before write")
        for cname, ch in channels:
            if not ch.masked and ch.data is None:
                raise WorkspaceError(
                    f"channel {cname!r} has no data; call add_data (observed, Asimov or pseudo-data)"
                )
        nbinsfull = sum(ch.size for _, ch in channels)
        nbins = sum(ch.size for _, ch in channels if not ch.masked)
        nproc, nsyst = len(procs), len(systs)
        iproc = {p: i for i, p in enumerate(procs)}
        isyst = {s: i for i, s in enumerate(systs)}
        symmetric = not self._asymmetric

        norm = np.zeros((nbinsfull, nproc))
        sumw2 = np.zeros((nbinsfull, nproc))
        # A sparse file is written from the entries themselves: the dense tensor of a large model (thousands of
        # bins, processes and nuisances) would not fit in memory.
        logk = None if self.sparse else np.zeros((nbinsfull, nproc, nsyst) if symmetric else (nbinsfull, nproc, 2, nsyst))
        entries: list[tuple[np.ndarray, int, int, np.ndarray, np.ndarray | None]] = []
        data = np.zeros(nbins)
        pseudo = np.zeros((nbins, len(self._pseudodata)))
        meta_channels = []
        start = 0
        for cname, ch in channels:
            stop = start + ch.size
            meta_channels.append(
                {
                    "name": cname,
                    "axes": list(ch.axes),
                    "masked": ch.masked,
                    "flow": ch.flow,
                    "start": start,
                    "stop": stop,
                }
            )
            for p, arr in ch.norm.items():
                norm[start:stop, iproc[p]] = arr
                sumw2[start:stop, iproc[p]] = ch.sumw2[p]
                for s, (avg, half) in ch.logk[p].items():
                    if logk is None:
                        entries.append((np.arange(start, stop), iproc[p], isyst[s], avg, half))
                    elif symmetric:
                        logk[start:stop, iproc[p], isyst[s]] = avg
                    else:
                        logk[start:stop, iproc[p], 0, isyst[s]] = avg
                        if half is not None:
                            logk[start:stop, iproc[p], 1, isyst[s]] = half
            if not ch.masked:
                data[start:stop] = ch.data
                for k, (pname, pdata) in enumerate(self._pseudodata.items()):
                    if cname not in pdata:
                        raise WorkspaceError(f"pseudodata {pname!r} is missing channel {cname!r}")
                    pseudo[start:stop, k] = pdata[cname]
            start = stop

        groups = list(self._groups)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "writer": "wfit",
            "channels": meta_channels,
            "symmetric_tensor": symmetric,
            "systematic_type": "log_normal",
            "asymmetric_systs": [s for s in systs if s in self._asymmetric],
            "clipped_negative_bins": self.clipped_negative_bins,
        }
        from wfit import __version__

        meta["wfit_version"] = __version__

        def body(f: h5py.File) -> None:
            f.create_dataset("wfit_meta", data=json.dumps(meta))
            write_strings(f, "hprocs", procs)
            write_strings(f, "hsignals", self._signals)
            write_strings(f, "hsysts", systs)
            write_strings(f, "hsystsnoconstraint", [s for s in systs if not self._systs[s]["constrained"]])
            write_strings(f, "hsystgroups", groups)
            idx = f.create_dataset("hsystgroupidxs", (len(groups),), dtype=h5py.vlen_dtype(np.dtype("int32")))
            for i, g in enumerate(groups):
                idx[i] = np.array([isyst[s] for s in self._groups[g]], dtype=np.int32)
            f.create_dataset(
                "hnoiidxs", data=np.array([isyst[s] for s in systs if self._systs[s]["noi"]], dtype=np.int32)
            )
            write_strings(f, "hpseudodatanames", list(self._pseudodata))
            cw = np.array([1.0 if self._systs[s]["constrained"] else 0.0 for s in systs])
            lvl, comp = compression_level, compression
            write_flat(f, "hconstraintweights", cw, lvl, comp)
            write_flat(f, "hdata_obs", data, lvl, comp)
            write_flat(f, "hpseudodata", pseudo, lvl, comp)
            write_flat(f, "hsumw", norm, lvl, comp)
            write_flat(f, "hsumw2", sumw2, lvl, comp)
            if self.sparse:
                write_sparse(f, norm, _coo_logk(norm, entries, nsyst, symmetric), symmetric, lvl, comp)
            else:
                write_flat(f, "hnorm", norm, lvl, comp)
                write_flat(f, "hlogk", logk, lvl, comp)
            if rabbit_meta:
                write_rabbit_meta(f, meta_channels, symmetric)

        atomic_write_hdf5(path, body)


def _check_kappa(name: str, process: str, k: float) -> None:
    if not (np.isfinite(k) and k > 0):
        raise WorkspaceError(f"lnN {name!r} for {process!r}: kappa must be a positive finite number, got {k}")


def _coo_logk(
    norm: np.ndarray,
    entries: list[tuple[np.ndarray, int, int, np.ndarray, np.ndarray | None]],
    nsyst: int,
    symmetric: bool,
) -> tuple[np.ndarray, np.ndarray, int]:
    """rabbit's ``hlogk_sparse`` entries, ``(indices [n, 2], values, columns)`` over ``[nnz(norm), (2) nsyst]`` in row-major
    order, from ``(bins, process, systematic, avg, halfdiff)`` per process and systematic of a channel."""
    nz_bin, nz_proc = np.nonzero(norm)
    position = np.full(norm.shape, -1, dtype=np.int64)
    position[nz_bin, nz_proc] = np.arange(len(nz_bin))
    rows, cols, values = [], [], []
    for bins, proc, syst, avg, half in entries:
        for part, arr in ((0, avg), (1, half)):
            if arr is None:
                continue
            keep = (arr != 0.0) & (position[bins, proc] >= 0)
            rows.append(position[bins[keep], proc])
            cols.append(np.full(int(keep.sum()), syst + (0 if symmetric else part * nsyst), dtype=np.int64))
            values.append(arr[keep])
    ncols = nsyst if symmetric else 2 * nsyst
    if not rows:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0), ncols
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(values)
    order = np.lexsort((c, r))
    return np.stack([r[order], c[order]], axis=-1), v[order], ncols
