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
  values) and ``nJet`` (its number of jets, 0 where not stored);
* a TTree ``JetCorrections`` with one entry per stored jet (the events' ``Jet`` lists one after another, the
  input's order; with ``nJet``, one jagged column): ``dnnLogCorrection`` (float32, the model's
  ``log(pt_gen / pt)``; NaN for a jet that was not evaluated), for a model with a resolution head
  ``dnnLogQuantile<i>`` (the i-th predicted quantile, levels in the metadata), and copies of the input's
  ``Jet_pt``, ``Jet_rawFactor`` and ``Jet_phi`` as ``pt``, ``rawFactor``, ``phi`` (what the type-1 MET needs
  besides the correction: a warm pass reads only ``nJet`` of the input's jets, the count that every entry is
  checked against);
* a string ``wfit_jet_cache``: JSON with the format version, the input file's UUID, size and path, the range,
  the model's SHA-256 and file name, and the output columns.

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
    "output_columns",
]

#: Version of the entry layout; entries of another version are stale.
FORMAT_VERSION = 1
_EVENTS = "JetCorrectionEvents"
_JETS = "JetCorrections"
_META = "wfit_jet_cache"
#: The input's jet columns that an entry copies (what the type-1 MET needs besides the correction).
KINEMATICS = ("pt", "rawFactor", "phi")
_CORRECTION = "dnnLogCorrection"
_QUANTILE = "dnnLogQuantile"
_BASKET = 100_000


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
        known: Per event: an entry holds its jets.
        values: Per output column name, per jet: the stored value, NaN where no entry holds one.
        entries: The entry files read.
        stale: Entry files found stale (and removed).
    """

    known: np.ndarray
    values: dict[str, np.ndarray]
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
        self, key: EntryKey, events: np.ndarray, counts: np.ndarray, quantiles: Sequence[float] = ()
    ) -> CachedChunk:
        """What the entries overlapping the chunk ``key`` (``[start, stop)`` of its file) hold for its events.

        Args:
            key: The input file, the model that ran, and the chunk's entry range in the file.
            events: The entry (relative to ``start``) of each event of the chunk, increasing (all of
                ``range(stop - start)`` unless events were dropped).
            counts: Jets per event of the chunk (the consistency check of every entry read).
            quantiles: The model's quantile levels (the entry must have the same).

        Returns:
            A :class:`CachedChunk` (kinematic columns as stored or as float64, outputs as float32); entries that are
            unreadable, of another key or format, or whose jet counts differ from ``counts`` are left out (and
            removed) and listed as stale.
        """
        file, model_sha256, start, stop = key
        counts = np.asarray(counts, dtype=np.int64)
        columns = _columns(quantiles)
        n_jets = int(counts.sum())
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        known = np.zeros(len(counts), dtype=bool)
        values: dict[str, np.ndarray] = {}
        used: list[str] = []
        stale: list[str] = []
        absolute = start + np.asarray(events, dtype=np.int64)  # entry in the file of each event of the chunk
        for e_start, e_stop, path in self.entries(file, model_sha256):
            lo, hi = max(start, e_start), min(stop, e_stop)
            if lo >= hi:
                continue
            # Events of the chunk inside the overlap, and their rows in the entry.
            first, last = (int(i) for i in np.searchsorted(absolute, [lo, hi]))
            if first == last or known[first:last].all():
                continue
            got = self._read_entry(path, file, model_sha256, e_start, e_stop, columns, quantiles, lo, hi)
            if got is None:
                stale.append(path)
                continue
            state, n_entry, flat = got
            rows = absolute[first:last] - lo
            here = state[rows] == 1
            mine = np.arange(first, last)
            if np.any(n_entry[rows][here] != counts[mine][here]):
                stale.append(path)  # the entry describes other jets than the file's: never use it
                continue
            used.append(path)
            fresh = here & ~known[mine]
            if not fresh.any():
                continue
            if not values:
                if fresh.all() and len(rows) == len(counts) and len(n_entry) == len(rows) and rows[-1] == len(rows) - 1:
                    # The usual case: one entry holds the whole chunk, event for event: its columns as they are.
                    values = dict(flat)
                    known[:] = True
                    break
                values = _unknown(n_jets, columns)
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
        if not values:
            values = _unknown(n_jets, columns)
        for path in stale:
            _remove(path)
        return CachedChunk(known=known, values=values, entries=used, stale=stale)

    @staticmethod
    def _read_entry(
        path: str,
        file: FileIdentity,
        model_sha256: str,
        start: int,
        stop: int,
        columns: Sequence[str],
        quantiles: Sequence[float],
        lo: int,
        hi: int,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None:
        """(state, jet counts, {column: flat values}) of entries ``[lo, hi)`` of one entry file; None if stale."""
        import uproot

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
            with uproot.open(path) as f:
                meta = json.loads(str(f[_META]))
                if any(meta.get(k) != v for k, v in expected.items()):
                    return None
                events = f[_EVENTS]
                if events.num_entries != stop - start:
                    return None
                ev = events.arrays(["dnnState", "nJet"], library="np")
                n_all = ev["nJet"].astype(np.int64)
                jets = f[_JETS]
                if jets.num_entries != int(n_all.sum()):
                    return None
                j0, j1 = int(n_all[: lo - start].sum()), int(n_all[: hi - start].sum())
                if j1 > j0:
                    flat = jets.arrays(list(columns), entry_start=j0, entry_stop=j1, library="np")
                else:
                    flat = {c: np.zeros(0, dtype=np.float32) for c in columns}
        except FileNotFoundError:
            return None
        except Exception:  # a damaged or foreign file at an entry's path: stale, computed again
            return None
        state = ev["dnnState"].astype(np.uint8)[lo - start : hi - start]
        return state, n_all[lo - start : hi - start], dict(flat)

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
        }
        folder = self.folder(file, model_sha256)
        path = os.path.join(folder, f"{start}-{stop}.root")
        try:
            with atomic_path(path) as tmp, uproot.recreate(tmp, compression=None) as f:
                f[_META] = json.dumps(meta, sort_keys=True)
                tree = f.mktree(_EVENTS, {"dnnState": np.uint8, "nJet": np.int32})
                tree.extend({"dnnState": state, "nJet": n_entry.astype(np.int32)})
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
