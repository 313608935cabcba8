"""The HDF5 workspace: the one file format between the processors and the fitter.

This module holds the schema, the writer and the reader; every other module goes through it.
The layout is interchangeable with rabbit 0.2.5 (``rabbit-fit``, the successor of combinetf):

========================  ==========================================  ==========================================
dataset                   shape                                       meaning
========================  ==========================================  ==========================================
``hnorm``                 [nbinsfull, nproc]                          nominal expected events per bin and process
``hlogk``                 [nbinsfull, nproc, 2, nsyst] or             log(kappa): ``[..., 0, :]`` the average of
                          [nbinsfull, nproc, nsyst] (all symmetric)   up and -down, ``[..., 1, :]`` half their
                                                                      difference
``hdata_obs``             [nbins]                                     observed events in the unmasked bins
``hsumw``, ``hsumw2``     [nbinsfull, nproc]                          sum of weights and of squared weights (MC
                                                                      statistics, Barlow-Beeston lite)
``hprocs``, ``hsignals``  [nproc], [nsignal]                          process names; signals come first
``hsysts``                [nsyst]                                     nuisance names: unconstrained ones first
``hsystsnoconstraint``    [nnoconstraint]
``hsystgroups``           [ngroups] + ``hsystgroupidxs`` (vlen int32)  nuisance groups
``hnoiidxs``              [nnoi] int32                                nuisances of interest
``hconstraintweights``    [nsyst]                                     1 for Gaussian-constrained, 0 for free
``hnorm_sparse/``,        COO ``indices``/``values`` and a             sparse variants of ``hnorm``/``hlogk``
``hlogk_sparse/``         ``dense_shape`` attribute
========================  ==========================================  ==========================================

Large arrays are stored flattened to 1-D with an ``original_shape`` attribute, chunked and
gzip-compressed. Unmasked channels come first in bin order, masked channels (no data, used for
cross sections) after them.

Expected yields follow the log-normal convention of CMS combine: for a nuisance ``theta`` the
yield is multiplied by ``exp(theta * logk_avg + theta * alpha(theta) * logk_halfdiff)``, so that
``theta = +1`` gives the up and ``theta = -1`` the down template (``alpha`` is the smooth step of
combine's asymmetric log-normal).

Channel metadata (names, axes with their edges, masked and flow flags) is stored as JSON in the
``wfit_meta`` dataset, readable without executing anything. rabbit keeps its metadata in a group
``meta`` that is a Python pickle: the reader never unpickles it unless ``trust_pickle=True`` is
passed explicitly, and otherwise reconstructs what it needs from the datasets. The writer can add
such a group (``rabbit_meta=True``, needs ``wums``) so that rabbit reads the channel structure.

Example:
    >>> import hist, numpy as np
    >>> from wfit.workspace import WorkspaceWriter, read_workspace
    >>> ax = hist.axis.Regular(3, 0.0, 3.0, name="x")
    >>> sig = hist.Hist(ax, storage=hist.storage.Weight()); _ = sig.fill([0.5, 1.5, 1.5])
    >>> w = WorkspaceWriter()
    >>> w.add_channel("ch0", [ax])
    >>> w.add_process("sig", "ch0", sig, signal=True)
    >>> w.add_norm_systematic("lumi", ["sig"], "ch0", 1.02)
    >>> w.add_data("ch0", sig)
    >>> import tempfile, os; path = os.path.join(tempfile.mkdtemp(), "ws.hdf5")
    >>> w.write(path)
    >>> ws = read_workspace(path)
    >>> ws.procs, ws.systs, ws.norm[:, 0].tolist()
    (['sig'], ['lumi'], [1.0, 2.0, 0.0])
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "Channel",
    "Workspace",
    "WorkspaceError",
    "WorkspaceWriter",
    "CompactBlock",
    "iter_compact_blocks",
    "iter_logk_blocks",
    "read_workspace",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

#: rabbit's cutoff for a variation that flips sign or vanishes: log(1e-3).
LOGK_EPSILON = math.log(1e-3)

_STR = h5py.string_dtype()
_REQUIRED = (
    "hprocs",
    "hsignals",
    "hsysts",
    "hsystsnoconstraint",
    "hsystgroups",
    "hsystgroupidxs",
    "hconstraintweights",
    "hdata_obs",
    "hsumw",
    "hsumw2",
)
_FLOAT_DATASETS = ("hconstraintweights", "hdata_obs", "hsumw", "hsumw2", "hnorm", "hlogk", "hpseudodata")
# Bytes per block when streaming large datasets, so that no second full copy is held.
_BLOCK_BYTES = 16 * 1024**2


class WorkspaceError(ValueError):
    """A workspace file or a writer call is not valid; the message names the file, dataset and fix."""


# ----------------------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class Channel:
    """One channel of the workspace: a block of consecutive bins.

    Attributes:
        name: Channel name.
        axes: JSON-able axis descriptions (``name``, ``label``, ``type``, and ``edges`` or
            ``categories``), in the order in which the bins are flattened (C order).
        masked: Masked channels have no data and do not enter the likelihood; they carry the
            generator-level templates from which post-fit cross sections are computed.
        flow: Whether under/overflow bins are included (only for masked channels, as in rabbit).
        start: First bin of the channel in the full bin list.
        stop: One past its last bin.
    """

    name: str
    axes: tuple[dict[str, Any], ...]
    masked: bool
    flow: bool
    start: int
    stop: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The channel's histogram shape (with flow bins if ``flow``)."""
        return tuple(_axis_size(a, self.flow) for a in self.axes)

    @property
    def size(self) -> int:
        return self.stop - self.start


def _axis_to_json(axis: Any) -> dict[str, Any]:
    """Describe a ``hist`` axis as plain JSON (no pickling)."""
    kind = type(axis).__name__
    out: dict[str, Any] = {"name": axis.name, "label": getattr(axis, "label", axis.name), "type": kind}
    traits = getattr(axis, "traits", None)
    out["underflow"] = bool(getattr(traits, "underflow", False))
    out["overflow"] = bool(getattr(traits, "overflow", False))
    if kind in ("StrCategory", "IntCategory"):
        out["categories"] = [c.item() if isinstance(c, np.generic) else c for c in axis]
    else:
        out["edges"] = [float(e) for e in np.asarray(axis.edges)]
    return out


def _axis_size(axis: Mapping[str, Any], flow: bool) -> int:
    n = len(axis["categories"]) if "categories" in axis else len(axis["edges"]) - 1
    if flow:
        n += int(axis.get("underflow", False)) + int(axis.get("overflow", False))
    return n


def _axes_match(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if ("categories" in a) != ("categories" in b):
        return False
    if "categories" in a:
        return list(a["categories"]) == list(b["categories"])
    return len(a["edges"]) == len(b["edges"]) and np.allclose(a["edges"], b["edges"], rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------------------- writer
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
        dtype: Floating point type of the arrays; the fitter requires float64.
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
        jaxes = tuple(a if isinstance(a, Mapping) else _axis_to_json(a) for a in axes)
        size = int(np.prod([_axis_size(a, flow) for a in jaxes])) if jaxes else 0
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
            haxes = [_axis_to_json(a) for a in h.axes]
            if len(haxes) != len(ch.axes) or not all(_axes_match(a, b) for a, b in zip(haxes, ch.axes, strict=True)):
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
        self, path: str | os.PathLike[str], *, rabbit_meta: bool = False, compression_level: int = 4
    ) -> None:
        """Write the workspace atomically (a temporary file in the same folder, then a rename).

        Args:
            path: Output file.
            rabbit_meta: Also write rabbit's pickled ``meta`` group (needs ``wums``), so that
                rabbit reads channel names and the symmetric layout.
            compression_level: gzip level of the array datasets.
        """
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
        logk = np.zeros((nbinsfull, nproc, nsyst) if symmetric else (nbinsfull, nproc, 2, nsyst))
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
                    if symmetric:
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
            _strings(f, "hprocs", procs)
            _strings(f, "hsignals", self._signals)
            _strings(f, "hsysts", systs)
            _strings(f, "hsystsnoconstraint", [s for s in systs if not self._systs[s]["constrained"]])
            _strings(f, "hsystgroups", groups)
            idx = f.create_dataset("hsystgroupidxs", (len(groups),), dtype=h5py.vlen_dtype(np.dtype("int32")))
            for i, g in enumerate(groups):
                idx[i] = np.array([isyst[s] for s in self._groups[g]], dtype=np.int32)
            f.create_dataset(
                "hnoiidxs", data=np.array([isyst[s] for s in systs if self._systs[s]["noi"]], dtype=np.int32)
            )
            _strings(f, "hpseudodatanames", list(self._pseudodata))
            cw = np.array([1.0 if self._systs[s]["constrained"] else 0.0 for s in systs])
            lvl = compression_level
            _write_flat(f, "hconstraintweights", cw, lvl)
            _write_flat(f, "hdata_obs", data, lvl)
            _write_flat(f, "hpseudodata", pseudo, lvl)
            _write_flat(f, "hsumw", norm, lvl)
            _write_flat(f, "hsumw2", sumw2, lvl)
            if self.sparse:
                _write_sparse(f, norm, logk, symmetric, lvl)
            else:
                _write_flat(f, "hnorm", norm, lvl)
                _write_flat(f, "hlogk", logk, lvl)
            if rabbit_meta:
                _write_rabbit_meta(f, meta_channels, symmetric)

        atomic_write_hdf5(path, body)


def _check_kappa(name: str, process: str, k: float) -> None:
    if not (np.isfinite(k) and k > 0):
        raise WorkspaceError(f"lnN {name!r} for {process!r}: kappa must be a positive finite number, got {k}")


def _strings(f: h5py.File, name: str, values: Sequence[str]) -> None:
    f.create_dataset(name, data=np.array(values, dtype=object), dtype=_STR)


def _write_flat(f: h5py.Group, name: str, arr: np.ndarray, level: int) -> None:
    flat = np.ascontiguousarray(arr).reshape(-1)
    if flat.size == 0:
        dset = f.create_dataset(name, shape=(0,), dtype=flat.dtype)
    else:
        chunk = int(min(flat.size, max(1, (4 * 1024**2) // flat.itemsize)))
        dset = f.create_dataset(name, data=flat, chunks=(chunk,), compression="gzip", compression_opts=level)
    dset.attrs["original_shape"] = np.array(arr.shape, dtype=np.int64)


def _write_sparse(f: h5py.File, norm: np.ndarray, logk: np.ndarray, symmetric: bool, level: int) -> None:
    # rabbit's sparse layout: norm as COO over [nbinsfull, nproc]; logk as COO over
    # [nnz(norm), nsyst] (or [nnz(norm), 2 nsyst]) whose first index points into the norm entries.
    nz = np.nonzero(norm)
    nidx = np.stack(nz, axis=-1).astype(np.int64)
    g = f.create_group("hnorm_sparse")
    _write_flat(g, "indices", nidx, level)
    _write_flat(g, "values", norm[nz], level)
    g.attrs["dense_shape"] = np.array(norm.shape, dtype=np.int64)
    lk = logk[nz].reshape(len(nidx), -1)
    lnz = np.nonzero(lk)
    g = f.create_group("hlogk_sparse")
    _write_flat(g, "indices", np.stack(lnz, axis=-1).astype(np.int64), level)
    _write_flat(g, "values", lk[lnz], level)
    g.attrs["dense_shape"] = np.array(lk.shape, dtype=np.int64)


def _write_rabbit_meta(f: h5py.File, channels: list[dict[str, Any]], symmetric: bool) -> None:
    try:
        import hist
        from wums.ioutils import pickle_dump_h5py
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("rabbit_meta=True needs wums (pip install rabbit-fit)") from err

    def to_hist_axis(a: Mapping[str, Any]) -> Any:
        kw = {"name": a["name"], "label": a.get("label", a["name"])}
        if "categories" in a:
            cls = (
                hist.axis.StrCategory
                if a["categories"] and isinstance(a["categories"][0], str)
                else hist.axis.IntCategory
            )
            return cls(a["categories"], **kw)
        return hist.axis.Variable(a["edges"], underflow=a["underflow"], overflow=a["overflow"], **kw)

    info = {
        c["name"]: {"axes": [to_hist_axis(a) for a in c["axes"]], "masked": c["masked"], "flow": c["flow"]}
        for c in channels
    }
    pickle_dump_h5py(
        "meta",
        {
            "meta_info": {},
            "channel_info": info,
            "symmetric_tensor": symmetric,
            "systematic_type": "log_normal",
        },
        f,
    )


def atomic_write_hdf5(path: str | os.PathLike[str], body: Callable[[h5py.File], None]) -> None:
    """Write an HDF5 file through ``body`` into a temporary file, then rename it into place.

    An interrupted write leaves no partial file at ``path`` (and an older file there intact).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        with h5py.File(tmp, "w") as f:
            body(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------------------- reader
@dataclass
class Workspace:
    """A workspace in memory (float64 arrays, names as ``str``).

    ``logk_avg`` is [nbinsfull, nproc, nsyst]; ``logk_halfdiff`` is [nbinsfull, nproc, nasym] for the
    nuisances listed in ``asym_idx`` (indices into ``systs``), or ``None`` when all are symmetric.
    For sparse files, ``norm`` and ``logk_avg``/``logk_halfdiff`` are dense arrays unless the
    reader was asked for the COO form (``sparse_coo``).
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


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def aligned_empty(shape: Sequence[int], dtype: Any = np.float64, align: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data start on an ``align``-byte boundary.

    TensorFlow's CPU kernels need 64-byte aligned buffers to share memory with numpy.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = np.empty(nbytes + align, dtype=np.uint8)
    offset = (-buf.ctypes.data) % align
    return buf[offset : offset + nbytes].view(dtype).reshape(shape)


def _err(path: str, dataset: str, msg: str) -> WorkspaceError:
    return WorkspaceError(f"{path}: dataset '{dataset}': {msg}")


def _shape(path: str, dset: h5py.Dataset) -> tuple[int, ...]:
    if "original_shape" in dset.attrs:
        shape = tuple(int(x) for x in dset.attrs["original_shape"])
        if int(np.prod(shape)) != dset.size:
            raise _err(
                path,
                dset.name.lstrip("/"),
                f"original_shape {shape} does not match its {dset.size} stored values; rewrite the file",
            )
        return shape
    return tuple(dset.shape)


def _check_float(path: str, dset: h5py.Dataset) -> None:
    if dset.dtype != np.float64:
        raise _err(
            path,
            dset.name.lstrip("/"),
            f"has dtype {dset.dtype}, the fitter needs float64; rewrite the workspace with float64 arrays",
        )


def _read_array(
    path: str, f: h5py.File, name: str, allocate: Callable[..., np.ndarray] = aligned_empty
) -> np.ndarray:
    if name not in f:
        raise _err(
            path, name, "is missing; this is not a complete workspace (rewrite it with wfit or rabbit)"
        )
    dset = f[name]
    if not isinstance(dset, h5py.Dataset):
        raise _err(path, name, "is a group, expected a dataset")
    if name in _FLOAT_DATASETS:
        _check_float(path, dset)
    shape = _shape(path, dset)
    out = allocate(shape, dset.dtype)
    if dset.size:
        # read_direct into the destination's flat view: no second copy of the array.
        dset.read_direct(out.reshape(-1))
    return out


def _read_strings(f: h5py.File, name: str) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in f[name][...]]


def _check_finite(path: str, name: str, arr: np.ndarray) -> None:
    if not np.all(np.isfinite(arr)):
        n = int(np.count_nonzero(~np.isfinite(arr)))
        raise _err(path, name, f"has {n} NaN or infinite values; regenerate the templates that filled it")


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
            raise _err(
                path, "wfit_meta", f"channel {ch.name!r} spans {ch.size} bins but its axes give {ch.shape}"
            )
        if ch.size == 0:
            raise _err(
                path, "wfit_meta", f"channel {ch.name!r} is empty; every channel needs at least one bin"
            )
        out.append(ch)
    if out and (out[-1].stop != nbinsfull or sum(c.size for c in out if not c.masked) != nbins):
        raise _err(
            path,
            "wfit_meta",
            f"channels cover {out[-1].stop} bins but the arrays have {nbinsfull} "
            f"({nbins} unmasked); the metadata does not belong to these arrays",
        )
    return out


def _default_channels(nbins: int, nbinsfull: int) -> list[Channel]:
    # rabbit's fallback when no metadata can be read: one unmasked and one masked channel.
    def integer_axis(name: str, n: int) -> dict[str, Any]:
        return {
            "name": name,
            "label": name,
            "type": "Integer",
            "edges": list(map(float, range(n + 1))),
            "underflow": False,
            "overflow": False,
        }

    chans = [Channel("ch0", (integer_axis("obs", nbins),), False, False, 0, nbins)]
    if nbinsfull > nbins:
        chans.append(
            Channel("ch1_masked", (integer_axis("masked", nbinsfull - nbins),), True, False, nbins, nbinsfull)
        )
    return chans


def _channels_from_pickle(path: str, f: h5py.File, nbins: int, nbinsfull: int) -> tuple[list[Channel], dict]:
    from wums.ioutils import pickle_load_h5py  # only behind trust_pickle=True

    meta = pickle_load_h5py(f["meta"])
    chans, start = [], 0
    for name, info in meta.get("channel_info", {}).items():
        flow = bool(info.get("flow", False))
        axes = tuple(_axis_to_json(a) for a in info["axes"])
        size = int(np.prod([_axis_size(a, flow) for a in axes]))
        chans.append(Channel(name, axes, bool(info.get("masked", False)), flow, start, start + size))
        start += size
    if start != nbinsfull:
        raise _err(path, "meta", f"channel_info covers {start} bins but the arrays have {nbinsfull}")
    return chans, {"symmetric_tensor": meta.get("symmetric_tensor")}


def _logk_layout(path: str, f: h5py.File, nbinsfull: int, nproc: int, nsyst: int) -> bool:
    """Check the shape of ``hlogk``; return whether it is the symmetric layout."""
    if "hlogk" not in f:
        raise _err(path, "hlogk", "is missing; a dense workspace needs hnorm and hlogk")
    dset = f["hlogk"]
    _check_float(path, dset)
    shape = _shape(path, dset)
    if shape == (nbinsfull, nproc, nsyst):
        return True
    if shape == (nbinsfull, nproc, 2, nsyst):
        return False
    raise _err(
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
        _check_finite(path, "hlogk", blk)
        yield b0, b1, blk


def _asym_columns(
    path: str,
    f: h5py.File,
    nbinsfull: int,
    nproc: int,
    nsyst: int,
    symmetric: bool,
    hint: list[int] | None,
    step: int,
) -> np.ndarray:
    if symmetric:
        return np.zeros(0, dtype=np.int64)
    if hint is not None:
        return np.asarray(hint, dtype=np.int64)
    # A foreign file: find the nuisances with a non-zero half-difference in a first pass.
    nonzero = np.zeros(nsyst, dtype=bool)
    for _, _, blk in _raw_logk_blocks(path, f, nbinsfull, nproc, nsyst, symmetric, step):
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


def _read_logk_dense(
    path: str,
    f: h5py.File,
    nbinsfull: int,
    nproc: int,
    nsyst: int,
    asym_hint: list[int] | None,
    allocate: Callable[..., np.ndarray],
    load: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Stream ``hlogk`` block by block into the average and (compact) half-difference arrays."""
    symmetric = _logk_layout(path, f, nbinsfull, nproc, nsyst)
    row = nproc * (nsyst if symmetric else 2 * nsyst)
    step = max(1, _BLOCK_BYTES // (8 * max(row, 1)))
    asym = _asym_columns(path, f, nbinsfull, nproc, nsyst, symmetric, asym_hint, step)
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
        trust_pickle: Read channel metadata from rabbit's pickled ``meta`` group when there is no
            JSON ``wfit_meta``. Unpickling executes code stored in the file: only use this for files
            you trust. Without it, such files get rabbit's default channel layout.
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
        for name in _REQUIRED:
            if name not in f:
                raise _err(
                    path,
                    name,
                    "is missing; this is not a complete workspace (rewrite it with wfit or rabbit)",
                )
        meta: dict[str, Any] = {}
        if "wfit_meta" in f:
            try:
                meta = json.loads(f["wfit_meta"][()])
            except (ValueError, TypeError) as err:
                raise _err(path, "wfit_meta", f"is not valid JSON ({err}); rewrite the workspace") from err
            if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
                raise _err(
                    path,
                    "wfit_meta",
                    f"has schema version {meta['schema_version']}, newer than this "
                    f"wfit understands ({SCHEMA_VERSION}); upgrade wfit",
                )
        procs = _read_strings(f, "hprocs")
        signals = _read_strings(f, "hsignals")
        systs = _read_strings(f, "hsysts")
        noconstraint = _read_strings(f, "hsystsnoconstraint")
        groups = _read_strings(f, "hsystgroups")
        gidx = [np.asarray(x, dtype=np.int64) for x in f["hsystgroupidxs"][...]]
        noi = np.asarray(
            f["hnoiidxs"][...] if "hnoiidxs" in f else f.get("hnoigroupidxs", np.zeros(0))[...],
            dtype=np.int64,
        )
        if procs[: len(signals)] != signals:
            raise _err(path, "hsignals", f"signals {signals} must be the first processes in hprocs {procs}")
        nproc, nsyst = len(procs), len(systs)
        if nproc == 0:
            raise _err(path, "hprocs", "is empty; a workspace needs at least one process")

        cw = _read_array(path, f, "hconstraintweights")
        if cw.shape != (nsyst,):
            raise _err(path, "hconstraintweights", f"has shape {cw.shape}, expected ({nsyst},) from hsysts")
        data = _read_array(path, f, "hdata_obs")
        nbins = data.shape[0] if data.ndim == 1 else -1
        if data.ndim != 1 or nbins == 0:
            raise _err(
                path,
                "hdata_obs",
                f"has shape {data.shape}; expected a non-empty 1-D array (an empty "
                "channel or no unmasked bins): add data to at least one unmasked channel",
            )
        _check_finite(path, "hdata_obs", data)
        if np.any(data < 0):
            raise _err(path, "hdata_obs", "has negative observed counts; observed data must be >= 0")

        sparse = "hnorm" not in f
        coo = None
        if sparse:
            if "hnorm_sparse" not in f or "hlogk_sparse" not in f:
                raise _err(
                    path, "hnorm", "is missing (and no hnorm_sparse/hlogk_sparse either); rewrite the file"
                )
            coo = {
                k: _read_array(path, f[f"h{k.split('_')[0]}_sparse"], k.split("_")[1])
                for k in ("norm_indices", "norm_values", "logk_indices", "logk_values")
            }
            nshape = tuple(int(x) for x in f["hnorm_sparse"].attrs["dense_shape"])
            lshape = tuple(int(x) for x in f["hlogk_sparse"].attrs["dense_shape"])
            coo["norm_shape"] = np.array(nshape)
            coo["logk_shape"] = np.array(lshape)
            nbinsfull = nshape[0]
            if nshape[1] != nproc:
                raise _err(path, "hnorm_sparse", f"dense_shape {nshape} does not match {nproc} processes")
            for k in ("norm_values", "logk_values"):
                _check_finite(path, f"h{k.split('_')[0]}_sparse/values", coo[k])
            if np.any(coo["norm_values"] < 0):
                raise _err(
                    path, "hnorm_sparse/values", "has negative expected yields; clip or fix the templates"
                )
        else:
            norm = _read_array(path, f, "hnorm", allocate)
            if norm.ndim != 2 or norm.shape[1] != nproc:
                raise _err(
                    path, "hnorm", f"has shape {norm.shape}, expected (nbinsfull, {nproc}) from hprocs"
                )
            nbinsfull = norm.shape[0]
            _check_finite(path, "hnorm", norm)
            if np.any(norm < 0):
                n = int(np.count_nonzero(norm < 0))
                raise _err(
                    path,
                    "hnorm",
                    f"has {n} negative expected yields; the writer clips negative template "
                    "bins to zero: rewrite the workspace with WorkspaceWriter",
                )
        if nbins > nbinsfull:
            raise _err(path, "hdata_obs", f"has {nbins} bins, more than the {nbinsfull} bins of hnorm")

        sumw = _read_array(path, f, "hsumw")
        sumw2 = _read_array(path, f, "hsumw2")
        for name, arr in (("hsumw", sumw), ("hsumw2", sumw2)):
            if arr.shape != (nbinsfull, nproc):
                raise _err(path, name, f"has shape {arr.shape}, expected ({nbinsfull}, {nproc})")
            _check_finite(path, name, arr)
        if np.any(sumw2 < 0):
            raise _err(path, "hsumw2", "has negative sums of squared weights; they must be >= 0")

        pseudo: dict[str, np.ndarray] = {}
        if "hpseudodata" in f and "hpseudodatanames" in f:
            names = _read_strings(f, "hpseudodatanames")
            if names:
                arr = _read_array(path, f, "hpseudodata")
                pseudo = {n: np.ascontiguousarray(arr[:, i]) for i, n in enumerate(names)}

        if meta:
            channels = _channels_from_meta(path, meta, nbins, nbinsfull)
        elif trust_pickle and "meta" in f:
            channels, _ = _channels_from_pickle(path, f, nbins, nbinsfull)
        else:
            channels = _default_channels(nbins, nbinsfull)

        if sparse:
            norm, avg, half, asym = _densify(coo, nbinsfull, nproc, nsyst, allocate, logk=densify_sparse)
            if densify_sparse:
                coo = None
        else:
            hint = None
            if meta:
                hint = [systs.index(s) for s in meta.get("asymmetric_systs", [])]
            avg, half, asym = _read_logk_dense(path, f, nbinsfull, nproc, nsyst, hint, allocate, load_logk)

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
    )
    return ws


def _densify(
    coo: dict[str, np.ndarray],
    nbinsfull: int,
    nproc: int,
    nsyst: int,
    allocate: Callable[..., np.ndarray],
    logk: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Dense ``norm`` (always: it is small) and, if ``logk``, dense log(kappa) arrays from the COO form."""
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


@dataclass(frozen=True)
class CompactBlock:
    """The log(kappa) of a block of consecutive bins, without its zeros.

    Rows are the (bin, process) pairs with a non-zero nominal yield, bin-major; columns the
    nuisances that act somewhere in the block.

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
             asym_idx: np.ndarray) -> CompactBlock:
    nb, nproc = norm.shape
    nz = norm != 0.0
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
    so that neither a dense copy nor the full tensor needs to be in memory.
    """
    stop = ws.nbinsfull if stop is None else stop
    if ws.sparse_coo is None:
        for b0, b1, avg, half in iter_logk_blocks(ws, bins_per_block, start=start, stop=stop):
            yield _compact(b0, b1, ws.norm[b0:b1], avg, half, ws.asym_idx)
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
