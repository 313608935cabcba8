"""A per-file cache of the DNN jet correction: the model runs once per input file and model, later passes read
one jagged branch instead of the jet constituents.

CMS evaluates its jet regressions once, upstream, and analyses read their output as a jet branch; here the
template processor applies the ONNX model itself (:mod:`wfit.processors.jetcorr`), and this cache keeps what it
computed, so that the constituents (about 13 PF candidates per event, 27 branches) are read and the network is
run only on the first pass over a file.

**Location and key.** ``JetCalibration(..., cache_dir=...)`` puts entries under ::

    <cache_dir>/<ROOT UUID of the input file>-<its size in bytes>/<SHA-256 of the model file>/<start>-<stop>.root

A rewritten input file has another UUID (ROOT and uproot draw one per file) and an edited model another
SHA-256: an entry made for an older file or model is never looked at. Each entry also records its key and
entry range in its metadata, and the jet count of every event it covers; an entry whose metadata or counts do
not match the file being read is stale: it is ignored (and removed), and the jets are computed again. The
directory must be a local path (a shared file system such as NFS, EOS or CephFS on a batch cluster is one);
it is created if needed.

**Entries.** One entry covers the entry range ``[start, stop)`` of the input file that a processor chunk (or
:func:`build_jet_cache`) computed. It is a ROOT file written by uproot (uncompressed: a side file is read
often and is small) holding

* a TTree ``JetCorrectionEvents`` with one entry per event of the range: ``dnnState`` (uint8; 1 if the
  event's jets are stored, 0 for an event that the pass did not see, such as one dropped for non-finite
  values), ``nJet`` (its number of jets, 0 where not stored), ``metState`` (uint8; 1 if every jet of the
  event that the type-1 MET can use was evaluated) and, per jet-calibration variation ``<v>`` (``nominal``,
  ``up``, ``down``, and ``resoUp``, ``resoDown`` for a model with a resolution head), ``metDx_<v>`` and
  ``metDy_<v>`` (float64): the event's type-1 MET change ``sum_j (pT'_j - Jet_pt_j) (cos phi_j, sin phi_j)``
  (:mod:`wfit.processors.jetmet`), 0 where ``metState`` is 0. These depend on the calibration's MET settings
  (``met_jet_pt_min``, ``variation``, ``min_raw_pt``), recorded in the metadata: a pass with other settings
  uses the jets' columns instead. A later pass with the same settings reads these two columns per variation it
  fills and nothing of the jets;
* a TTree ``JetCorrections`` with one entry per stored jet (the events' ``Jet`` lists one after another, the
  input's order; with ``nJet``, one jagged column): ``dnnLogCorrection`` (float32, the model's
  ``log(pt_gen / pt)``; NaN for a jet that was not evaluated), for a model with a resolution head
  ``dnnLogQuantile<i>`` (the i-th predicted quantile, levels in the metadata), and copies of the input's
  ``Jet_pt``, ``Jet_rawFactor`` and ``Jet_phi`` as ``pt``, ``rawFactor``, ``phi`` (what the type-1 MET needs
  besides the correction: a warm pass reads only ``nJet`` of the input's jets, the count that every entry is
  checked against);
* a string ``wfit_jet_cache``: JSON with the format version, the input file's UUID, size and path, the range,
  the model's SHA-256 and file name, the output columns, and the MET settings and variations.

The model's outputs are stored as it gave them, and inference is deterministic per jet
(:class:`wfit.calib.OnnxCalibrator`), so templates from a warm cache equal those computed in place bit for bit.

**Chunks.** A chunk ``[a, b)`` is served by every entry that overlaps it, whatever chunking wrote them: a
cache written with one chunk size is used with another, and one built per file by :func:`build_jet_cache`
serves any chunking. Jets that no entry holds (a range not covered, or events that the earlier pass did not
need) are computed in place, and the chunk's range is then written as a new entry holding everything it
knows.

**Concurrency.** An entry is written under a temporary name beside it and renamed into place
(:mod:`wfit.atomic`): a reader sees a whole entry or none. Two workers that reach the same chunk compute the
same values and both rename; the second rename replaces the first file with an equal one.

Example:
    >>> calib = JetCalibration("model.onnx", cache_dir="/shared/jetcache")    # doctest: +SKIP
    >>> build_jet_cache(client, {"W": files}, calib)                          # doctest: +SKIP
    >>> run_templates({"W": files}, WTemplateProcessor(jet_calibration=calib), client=client)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from wfit.atomic import atomic_path, is_remote

__all__ = [
    "FORMAT_VERSION",
    "KINEMATICS",
    "CachedChunk",
    "EntryKey",
    "FileIdentity",
    "JetCache",
    "JetCacheError",
    "build_jet_cache",
    "file_identity",
    "met_columns",
    "output_columns",
]

#: Version of the entry layout; entries of another version are stale.
FORMAT_VERSION = 2
_EVENTS = "JetCorrectionEvents"
_JETS = "JetCorrections"
_META = "wfit_jet_cache"
#: The input's jet columns that an entry copies (what the type-1 MET needs besides the correction).
KINEMATICS = ("pt", "rawFactor", "phi")
_CORRECTION = "dnnLogCorrection"
_QUANTILE = "dnnLogQuantile"
_BASKET = 100_000


def met_columns(variation: str) -> tuple[str, str]:
    """The two per-event columns of an entry holding one variation's type-1 MET change, ``metDx_<v>``, ``metDy_<v>``."""
    return f"metDx_{variation}", f"metDy_{variation}"


class JetCacheError(OSError):
    """The jet-correction cache directory cannot be created or written (the message names it and the fix)."""


@dataclass(frozen=True)
class FileIdentity:
    """What identifies an input file's content: its ROOT UUID and its size in bytes."""

    uuid: str
    size: int

    @property
    def key(self) -> str:
        """The folder name of the file's entries, ``<uuid>-<size>``."""
        return f"{self.uuid}-{self.size}"


class EntryKey(NamedTuple):
    """Which cache entry a chunk has: its input file, the model (SHA-256 of the ONNX file) and the chunk's
    entry range ``[start, stop)`` in the file."""

    file: FileIdentity
    model_sha256: str
    start: int
    stop: int


def file_identity(path: str, file_uuid: str | None = None) -> FileIdentity:
    """The identity of a ROOT file: its UUID (``file_uuid`` if known, e.g. coffea's ``metadata["fileuuid"]``)
    and its size (``os.stat`` for a local file; uproot for a URL, or when the UUID is not given)."""
    local = path.removeprefix("file://")
    if file_uuid and not is_remote(path):
        return FileIdentity(str(uuid.UUID(str(file_uuid))), os.stat(local).st_size)
    import uproot

    with uproot.open(path) as f:
        return FileIdentity(str(f.file.uuid), int(f.file.source.num_bytes))


@dataclass
class CachedChunk:
    """What the cache knows about one chunk (events in the chunk's order, jets flat in event order).

    Attributes:
        known: Per event: an entry holds its jets (none when the jets were not asked for).
        values: Per output column name, per jet: the stored value, NaN where no entry holds one (empty when the
            jets were not asked for).
        met_known: Per event: an entry holds its type-1 MET changes for the MET settings asked for.
        met: Per variation asked for: the ``(dx, dy)`` MET change per event, 0 where ``met_known`` is False.
        entries: The entry files read.
        stale: Entry files found stale (and removed).
    """

    known: np.ndarray
    values: dict[str, np.ndarray]
    met_known: np.ndarray
    met: dict[str, tuple[np.ndarray, np.ndarray]]
    entries: list[str]
    stale: list[str]


def output_columns(quantiles: Sequence[float]) -> list[str]:
    """The model-output columns of an entry: ``dnnLogCorrection``, then ``dnnLogQuantile<i>`` per level."""
    return [_CORRECTION, *(f"{_QUANTILE}{i}" for i in range(len(quantiles)))]


def _columns(quantiles: Sequence[float]) -> list[str]:
    return [*KINEMATICS, *output_columns(quantiles)]


class JetCache:
    """Entries of the jet-correction cache under one directory (see the module docstring for the layout).

    The object holds only the directory: it pickles to workers. Construction checks that the directory can be
    written (:meth:`check`).

    Args:
        directory: A local directory (created if needed), e.g. on the batch cluster's shared file system.

    Raises:
        JetCacheError: ``directory`` is a URL, or cannot be created or written.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        text = os.fspath(directory)
        if is_remote(text):
            raise JetCacheError(
                f"jet-correction cache directory {text!r} is a URL; entries are renamed into place, which needs a "
                "file system: give a local or shared-file-system path (NFS, EOS or CephFS mount)"
            )
        self.directory = os.path.abspath(text.removeprefix("file://"))
        self.check()

    def __repr__(self) -> str:
        return f"JetCache({self.directory!r})"

    def check(self) -> None:
        """Create the directory if needed and write (and remove) a probe file in it.

        Raises:
            JetCacheError: It cannot be created or written; the message names the directory.
        """
        try:
            os.makedirs(self.directory, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".wfit-probe.", dir=self.directory)
            os.close(fd)
            os.remove(probe)
        except OSError as e:
            raise JetCacheError(
                f"jet-correction cache directory {self.directory!r} cannot be written ({type(e).__name__}: "
                f"{e.strerror or e}); pass a writable cache_dir to JetCalibration, or cache_dir=None to compute "
                "the correction in every pass"
            ) from None

    def folder(self, file: FileIdentity, model_sha256: str) -> str:
        """The folder of one input file's entries for one model."""
        return os.path.join(self.directory, file.key, model_sha256)

    def entries(self, file: FileIdentity, model_sha256: str) -> list[tuple[int, int, str]]:
        """``(start, stop, path)`` of the entries of one file and model, largest first."""
        folder = self.folder(file, model_sha256)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            stem, ext = os.path.splitext(name)
            start, sep, stop = stem.partition("-")
            if ext == ".root" and sep and start.isdigit() and stop.isdigit() and int(stop) > int(start):
                out.append((int(start), int(stop), os.path.join(folder, name)))
        return sorted(out, key=lambda e: (e[0] - e[1], e[0]))

    # ------------------------------------------------------------------ reading
    def read(
        self,
        key: EntryKey,
        events: np.ndarray,
        counts: np.ndarray,
        quantiles: Sequence[float] = (),
        *,
        jets: bool = True,
        met_settings: Mapping[str, float] | None = None,
        met_variations: Sequence[str] = (),
    ) -> CachedChunk:
        """What the entries overlapping the chunk ``key`` (``[start, stop)`` of its file) hold for its events.

        Args:
            key: The input file, the model that ran, and the chunk's entry range in the file.
            events: The entry (relative to ``start``) of each event of the chunk, increasing (all of
                ``range(stop - start)`` unless events were dropped).
            counts: Jets per event of the chunk (the consistency check of every entry read).
            quantiles: The model's quantile levels (the entry must have the same).
            jets: Read the jets' columns (else only the per-event columns).
            met_settings: The calibration's MET settings (:meth:`write`'s): which events' MET changes entries
                written with the same settings hold is read (``met_known``).
            met_variations: The variations whose MET changes to read (with ``met_settings``).

        Returns:
            A :class:`CachedChunk` (kinematic columns as stored or as float64, outputs as float32); entries that are
            unreadable, of another key or format, or whose jet counts differ from ``counts`` are left out (and
            removed) and listed as stale.
        """
        file, model_sha256, start, stop = key
        counts = np.asarray(counts, dtype=np.int64)
        columns = _columns(quantiles)
        met_variations = list(met_variations) if met_settings is not None else []
        if met_settings is None and met_variations:
            raise ValueError("JetCache.read: met_variations need met_settings")
        known = np.zeros(len(counts), dtype=bool)
        met_known = np.zeros(len(counts), dtype=bool)
        met = {v: (np.zeros(len(counts)), np.zeros(len(counts))) for v in met_variations}
        values: dict[str, np.ndarray] = {}
        offsets: np.ndarray | None = None  # of the chunk's jets, when an entry's jets are scattered
        used: list[str] = []
        stale: list[str] = []
        absolute = start + np.asarray(events, dtype=np.int64)  # entry in the file of each event of the chunk
        for e_start, e_stop, path in self.entries(file, model_sha256):
            lo, hi = max(start, e_start), min(stop, e_stop)
            if lo >= hi:
                continue
            # Events of the chunk inside the overlap, and their rows in the entry.
            first, last = (int(i) for i in np.searchsorted(absolute, [lo, hi]))
            if first == last:
                continue
            want_jets = jets and not known[first:last].all()
            want_met = met_settings is not None and not met_known[first:last].all()
            if not (want_jets or want_met):
                continue
            spec = _EntrySpec(file, model_sha256, e_start, e_stop, columns, quantiles)
            got = _read_entry(path, spec, lo, hi, want_jets, met_settings if want_met else None, met_variations)
            if got is None:
                stale.append(path)
                continue
            state, n_entry, flat, met_state, met_flat = got
            rows = absolute[first:last] - lo
            # Rows of the entry for the chunk's events of the overlap: a slice when none was dropped (the usual
            # case), else an index.
            sel: slice | np.ndarray = rows
            if rows[-1] - rows[0] == len(rows) - 1:
                sel = slice(int(rows[0]), int(rows[-1]) + 1)
            here = state[sel] == 1
            if np.any((n_entry[sel] != counts[first:last]) & here):
                stale.append(path)  # the entry describes other jets than the file's: never use it
                continue
            used.append(path)
            if want_met:  # met_state is 0 where the entry's MET settings are others
                take = (met_state[sel] == 1) & here & ~met_known[first:last]
                for v in met_variations if take.any() else ():
                    for out, col in zip(met[v], met_flat[v], strict=True):
                        np.copyto(out[first:last], col[sel], where=take)
                met_known[first:last] |= take
            fresh = here & ~known[first:last]
            if not want_jets or not fresh.any():
                continue
            mine = np.arange(first, last)
            if not values:
                if fresh.all() and len(rows) == len(counts) and len(n_entry) == len(rows) and rows[-1] == len(rows) - 1:
                    # The usual case: one entry holds the whole chunk, event for event: its columns as they are.
                    values = dict(flat)
                    known[:] = True
                    continue
                values = _unknown(int(counts.sum()), columns)
            if offsets is None:
                offsets = np.zeros(len(counts) + 1, dtype=np.int64)
                np.cumsum(counts, out=offsets[1:])
            entry_offsets = np.zeros(len(n_entry) + 1, dtype=np.int64)
            np.cumsum(n_entry, out=entry_offsets[1:])
            take, src_rows = mine[fresh], rows[fresh]
            c = counts[take]
            within = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
            dst = np.repeat(offsets[take], c) + within
            src = np.repeat(entry_offsets[src_rows], c) + within
            for name in columns:
                values[name][dst] = flat[name][src]
            known[take] = True
        if jets and not values:
            values = _unknown(int(counts.sum()), columns)
        for path in stale:
            _remove(path)
        return CachedChunk(known=known, values=values, met_known=met_known, met=met, entries=used, stale=stale)

    # ------------------------------------------------------------------ writing
    def write(
        self,
        key: EntryKey,
        events: np.ndarray,
        counts: np.ndarray,
        values: Mapping[str, np.ndarray],
        *,
        file_path: str = "",
        model_path: str = "",
        quantiles: Sequence[float] = (),
        met_known: np.ndarray | None = None,
        met: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
        met_settings: Mapping[str, float] | None = None,
    ) -> str:
        """Write (atomically) the entry of the chunk ``key``: the jets of its events.

        Args:
            key: The input file, the model, and the entry range ``[start, stop)``.
            events: The entry (relative to ``start``) of each event of the chunk (others are written as
                unknown, ``dnnState`` 0).
            counts: Jets per event of the chunk.
            values: Per column (:data:`KINEMATICS`, as the input stores them, and :func:`output_columns`, float32),
                per jet of the chunk's events; outputs are NaN for jets not evaluated.
            file_path, model_path: Recorded for people reading the cache.
            quantiles: The model's quantile levels.
            met_known: Per event of the chunk: its MET changes are given (every jet the MET can use evaluated).
            met: Per variation, the ``(dx, dy)`` type-1 MET change per event of the chunk (used where
                ``met_known``).
            met_settings: The calibration's MET settings that ``met`` depends on (recorded; a reader with other
                settings ignores ``met``).

        Returns:
            The entry's path.

        Raises:
            JetCacheError: The entry cannot be written (the message names the directory).
        """
        import uproot

        file, model_sha256, start, stop = key
        columns = _columns(quantiles)
        n = stop - start
        if n < 1:
            raise ValueError(f"JetCache.write: empty entry range [{start}, {stop})")
        events = np.asarray(events, dtype=np.int64)
        counts = np.asarray(counts, dtype=np.int64)
        state = np.zeros(n, dtype=np.uint8)
        state[events] = 1
        n_entry = np.zeros(n, dtype=np.int64)
        n_entry[events] = counts
        per_event: dict[str, np.ndarray] = {"dnnState": state, "nJet": n_entry.astype(np.int32)}
        met = dict(met or {})
        if met and (met_known is None or met_settings is None):
            raise ValueError("JetCache.write: met needs met_known and met_settings")
        met_state = np.zeros(n, dtype=np.uint8)
        if met:
            known_rows = events[np.asarray(met_known, dtype=bool)]
            met_state[known_rows] = 1
            for v, pair in met.items():
                for name, col in zip(met_columns(v), pair, strict=True):
                    full = np.zeros(n, dtype=np.float64)
                    full[known_rows] = np.asarray(col, dtype=np.float64)[np.asarray(met_known, dtype=bool)]
                    per_event[name] = full
        per_event["metState"] = met_state
        flat = {}
        for name in columns:
            v = np.asarray(values[name])
            flat[name] = v if name in KINEMATICS else v.astype(np.float32, copy=False)
        if len(flat[columns[0]]) != int(counts.sum()):
            raise ValueError(f"JetCache.write: {len(flat[columns[0]])} jet values for {int(counts.sum())} jets")
        meta = {
            "format": FORMAT_VERSION,
            "file_uuid": file.uuid,
            "file_size": file.size,
            "file_path": file_path,
            "entry_start": start,
            "entry_stop": stop,
            "model_sha256": model_sha256,
            "model_file": os.path.basename(model_path),
            "columns": columns,
            "quantiles": [float(q) for q in quantiles],
            "met_settings": {k: float(x) for k, x in (met_settings or {}).items()} if met else None,
            "met_variations": sorted(met),
        }
        folder = self.folder(file, model_sha256)
        path = os.path.join(folder, f"{start}-{stop}.root")
        try:
            with atomic_path(path) as tmp, uproot.recreate(tmp, compression=None) as f:
                f[_META] = json.dumps(meta, sort_keys=True)
                tree = f.mktree(_EVENTS, {name: v.dtype for name, v in per_event.items()})
                tree.extend(per_event)
                jets = f.mktree(_JETS, {name: v.dtype for name, v in flat.items()})
                # Baskets of at most _BASKET jets: a chunk of another size reads little beyond its range.
                total = len(flat[columns[0]])
                for a in range(0, total, _BASKET):
                    jets.extend({name: v[a : a + _BASKET] for name, v in flat.items()})
        except OSError as e:
            raise JetCacheError(
                f"jet-correction cache directory {self.directory!r}: cannot write {path} ({type(e).__name__}: "
                f"{e.strerror or e}); free space or pass another cache_dir to JetCalibration"
            ) from None
        return path


class _EntrySpec(NamedTuple):
    """What an entry file must say of itself to be read: its key, range, columns and quantile levels."""

    file: FileIdentity
    model_sha256: str
    start: int
    stop: int
    columns: Sequence[str]
    quantiles: Sequence[float]


def _read_entry(
    path: str,
    spec: _EntrySpec,
    lo: int,
    hi: int,
    jets: bool,
    met_settings: Mapping[str, float] | None,
    met_variations: Sequence[str],
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]] | None:
    """(state, jet counts, {column: flat jet values} if ``jets``, MET state, {variation: (dx, dy)} where the
    entry's MET settings are ``met_settings``) of events ``[lo, hi)`` of one entry file; None if stale."""
    import uproot

    file, model_sha256, start, stop, columns, quantiles = spec
    expected = {
        "format": FORMAT_VERSION,
        "file_uuid": file.uuid,
        "file_size": file.size,
        "entry_start": start,
        "entry_stop": stop,
        "model_sha256": model_sha256,
        "columns": list(columns),
        "quantiles": [float(q) for q in quantiles],
    }
    try:
        f = uproot.open(path)
    except (FileNotFoundError, OSError, ValueError):  # removed meanwhile, truncated, or not a ROOT file
        return None
    try:
        with f:
            meta = json.loads(str(f[_META]))
            if any(meta.get(k) != v for k, v in expected.items()):
                return None
            events = f[_EVENTS]
            if events.num_entries != stop - start:
                return None
            met_ok = (
                met_settings is not None
                and meta.get("met_settings") == {k: float(x) for k, x in met_settings.items()}
                and set(met_variations) <= set(meta.get("met_variations") or ())
            )
            names = ["dnnState", "nJet", "metState"]
            if met_ok:
                names += [c for v in met_variations for c in met_columns(v)]
            ev = events.arrays(names, entry_start=0, entry_stop=stop - start, library="np")
            n_all = ev["nJet"].astype(np.int64)
            flat: dict[str, np.ndarray] = {}
            if jets:
                tree = f[_JETS]
                if tree.num_entries != int(n_all.sum()):
                    return None
                j0, j1 = int(n_all[: lo - start].sum()), int(n_all[: hi - start].sum())
                if j1 > j0:
                    flat = tree.arrays(list(columns), entry_start=j0, entry_stop=j1, library="np")
                else:
                    flat = {c: np.zeros(0, dtype=np.float32) for c in columns}
    except (KeyError, OSError, ValueError, TypeError, uproot.deserialization.DeserializationError):
        return None  # a damaged or foreign file at an entry's path: stale, computed again
    window = slice(lo - start, hi - start)
    met = {v: tuple(ev[c][window] for c in met_columns(v)) for v in met_variations} if met_ok else {}
    met_state = ev["metState"][window] if met_ok else np.zeros(hi - lo, dtype=np.uint8)
    return ev["dnnState"].astype(np.uint8)[window], n_all[window], dict(flat), met_state, met  # type: ignore[return-value]


def _unknown(n_jets: int, columns: Sequence[str]) -> dict[str, np.ndarray]:
    return {c: np.full(n_jets, np.nan, dtype=np.float64 if c in KINEMATICS else np.float32) for c in columns}


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:  # another worker removed or replaced it meanwhile
        pass


# ---------------------------------------------------------------------------------------------- building
def _build_entry(path: str, treename: str, start: int, stop: int, calibration: Any) -> tuple[str, int, int, str]:
    """Compute and write the entry of ``[start, stop)`` of one file (every event); the status."""
    import uproot
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    with uproot.open({path: None}) as f:
        metadata = {
            "dataset": "jet-cache",
            "filename": path,
            "treename": treename,
            "entrystart": start,
            "entrystop": stop,
            "fileuuid": str(f.file.uuid),
        }
        events = NanoEventsFactory.from_root(
            file=f,
            treepath=treename,
            schemaclass=NanoAODSchema,
            metadata=metadata,
            mode="virtual",
            entry_start=start,
            entry_stop=stop,
            preload=calibration.preload_branches(),
        ).events()
        zeros = np.zeros(len(events))
        jets = calibration.evaluate(events, zeros, zeros)
        computed = jets.ensure(np.ones(len(events), dtype=bool))
    return path, start, stop, "computed" if computed else "cached"


def _files(fileset: Mapping[str, Any]) -> list[tuple[str, str]]:
    out: dict[tuple[str, str], None] = {}
    for files in fileset.values():
        if isinstance(files, Mapping):
            files = files.get("files", files)
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        items = files.items() if isinstance(files, Mapping) else ((f, "Events") for f in files)
        for path, tree in items:
            out[(os.fspath(path), tree or "Events")] = None
    return list(out)


def build_jet_cache(
    client_or_executor: Any,
    fileset: Mapping[str, Any],
    calibration: Any,
    *,
    chunksize: int | None = None,
) -> dict[str, list[tuple[int, int, str]]]:
    """Fill the jet-correction cache for every event of every file, as a step of its own.

    Every jet of every event (with raw pT of at least the calibration's ``min_raw_pt``) is corrected: the
    selection is not applied, so the entries serve any later selection and chunking. Ranges already held by the
    cache are read, not computed again. A processor run on a cold cache fills it too (with the jets of the
    events it selects); this step is for filling it on the cluster ahead of many runs.

    Args:
        client_or_executor: A ``distributed.Client`` (one task per range), a ``concurrent.futures`` executor,
            or None to run here, range after range.
        fileset: ``{dataset: [files]}`` (coffea's forms with trees are accepted); each file is built once.
        calibration: A :class:`~wfit.processors.JetCalibration` with a ``cache_dir``.
        chunksize: Events per range (one entry each); None for one entry per file.

    Returns:
        ``{file: [(start, stop, "computed" or "cached")]}``.

    Raises:
        ValueError: The calibration has no cache directory, or a file lacks the branches it needs.
        JetCacheError: The cache directory cannot be written.
    """
    import uproot

    if getattr(calibration, "cache", None) is None:
        raise ValueError(
            "build_jet_cache: the calibration has no cache directory: construct it with "
            "JetCalibration(model, cache_dir=...)"
        )
    if chunksize is not None and chunksize < 1:
        raise ValueError(f"build_jet_cache(chunksize={chunksize}): must be positive (or None: one entry per file)")
    calibration.cache.check()
    calls = []
    for path, tree in _files(fileset):
        calibration.check_file(path, tree)
        with uproot.open(path) as f:
            n = int(f[tree].num_entries)
        step = chunksize or max(n, 1)
        calls += [(path, tree, a, min(n, a + step), calibration) for a in range(0, n, step)]
    if client_or_executor is None:
        results = [_build_entry(*args) for args in calls]
    else:
        submit = client_or_executor.submit
        if hasattr(client_or_executor, "scheduler_info"):  # a distributed.Client: never deduplicate by key
            futures = [submit(_build_entry, *args, pure=False) for args in calls]
        else:
            futures = [submit(_build_entry, *args) for args in calls]
        results = [f.result() for f in futures]
    out: dict[str, list[tuple[int, int, str]]] = {}
    for path, start, stop, status in results:
        out.setdefault(path, []).append((start, stop, status))
    return out
