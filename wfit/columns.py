"""The event-columns file: per selected event, what the cuts act on and the templates are filled from.

The template processor with ``WTemplateProcessor(..., event_columns=True)`` outputs, per dataset, the fill entries
of every event of its selection *before* the signal-region cut (run it with a loosened preselection, e.g. a lower
``lepton_pt_min`` and a pT axis that starts there, to let a cut on the lepton pT move). :func:`write_columns`
writes them, with the normalisation inputs, to one HDF5 file (h5py: any HDF5 tool opens it); :func:`read_columns`
reads and validates it. :func:`wfit.processors.hard_templates` fills, from the columns, the processor's own
``templates_syst`` histogram for given cuts, bit for bit (tested); :mod:`wfit.fitter.cutopt` builds soft
(differentiable) templates from the same columns.

Layout (format ``wfit-event-columns``, :data:`FORMAT_VERSION`)::

    /                      attrs: format, version, config (JSON: the processor's TemplateConfig binning and cuts)
    /<dataset>/            attrs: kind ("data", "mc" or "signal"), sumw_sign, nevents, files and tables (JSON)
    /<dataset>/<table>/    one table per selection: "nominal", and one per muon momentum variation (its name
                           on the syst axis, e.g. "muonScale_eta0Up")
        pt, eta, mt, iso   float64, per entry (an entry is one event in one component)
        charge             int8
        component          int16 (the processor's component index: 0 for MC backgrounds)
        w, fac             float64: the entry's weight is w * fac (w: the event's nominal weight with the
                           lepton's scale factor; fac: the component's share, 1 but for the signal split)
        ratios             float64 [entries x K], attrs names (JSON): each weight variation's weight / nominal
                           ("nominal" table of MC only)
        mt_variations      float64 [entries x J], attrs names (JSON): mT under each jet-calibration variation
                           ("nominal" table with a jet calibration only)
        chunks             int64: entries per processor chunk, in file and entry order

Example:
    >>> chunks = ColumnChunks.from_chunk({"filename": "a.root", "entrystart": 0}, {"nominal": {
    ...     "pt": [30.0], "eta": [0.1], "charge": [1], "mt": [60.0], "iso": [0.01], "component": [0],
    ...     "fac": [1.0], "w": [1.0], "ratios": {}, "mt_variations": {}}})
    >>> later = ColumnChunks.from_chunk({"filename": "a.root", "entrystart": 1000}, {"nominal": {
    ...     "pt": [40.0], "eta": [0.2], "charge": [-1], "mt": [70.0], "iso": [0.02], "component": [0],
    ...     "fac": [1.0], "w": [1.0], "ratios": {}, "mt_variations": {}}})
    >>> (later + chunks).tables()["nominal"]["pt"].tolist()  # in file and entry order
    [30.0, 40.0]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wfit.atomic import atomic_write_hdf5

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "TABLE_COLUMNS",
    "ColumnChunks",
    "ColumnsError",
    "DatasetColumns",
    "EventColumns",
    "Table",
    "read_columns",
    "write_columns",
]

FORMAT = "wfit-event-columns"
FORMAT_VERSION = 1
#: The per-entry columns of every table, with their stored dtypes.
TABLE_COLUMNS: dict[str, Any] = {
    "pt": np.float64,
    "eta": np.float64,
    "charge": np.int8,
    "mt": np.float64,
    "iso": np.float64,
    "component": np.int16,
    "fac": np.float64,
    "w": np.float64,
}
_MATRICES = ("ratios", "mt_variations")
#: The TemplateConfig fields recorded in the file (binning, cuts, components and the parts of the model that decide
#: its nuisances and POIs; a file without the later ones has their defaults).
_CONFIG_FIELDS = (
    "channel",
    "eta_bins",
    "pt_bins",
    "signal_region",
    "lepton_pt_min",
    "absy_edges",
    "eff_groups",
    "eff_parameters",
    "lumi_uncertainty",
    "longitudinal_uncertainty",
)


class ColumnsError(ValueError):
    """An event-columns file that cannot be used (the message names the file, the field and the fix)."""


class ColumnChunks:
    """The processor's ``columns`` output: per-chunk tables, added with ``+`` (coffea's accumulation) and put in
    file and entry order when read (:meth:`tables`), whatever order the executor added them in."""

    def __init__(self, chunks: list[tuple[tuple[str, int], dict[str, dict[str, Any]]]] | None = None) -> None:
        self.chunks = list(chunks or [])

    @classmethod
    def from_chunk(cls, metadata: Mapping[str, Any], tables: Mapping[str, Mapping[str, Any]]) -> ColumnChunks:
        """One chunk's tables (``{table: {column: per-entry array, "ratios": {name: ...}, "mt_variations":
        {name: ...}}}``), keyed by its file and first entry."""
        key = (str(metadata.get("filename", "")), int(metadata.get("entrystart") or 0))
        out: dict[str, dict[str, Any]] = {}
        for name, table in tables.items():
            t = {c: np.asarray(table[c], dtype=dt) for c, dt in TABLE_COLUMNS.items()}
            for m in _MATRICES:
                t[m] = {k: np.asarray(v, dtype=np.float64) for k, v in dict(table.get(m) or {}).items()}
            out[name] = t
        return cls([(key, out)])

    def __add__(self, other: ColumnChunks) -> ColumnChunks:
        if not isinstance(other, ColumnChunks):
            return NotImplemented
        return ColumnChunks(self.chunks + other.chunks)

    def __iadd__(self, other: ColumnChunks) -> ColumnChunks:
        if not isinstance(other, ColumnChunks):
            return NotImplemented
        self.chunks += other.chunks
        return self

    def __len__(self) -> int:
        return len(self.chunks)

    def tables(self) -> dict[str, dict[str, Any]]:
        """Every table over all chunks (file, then entry order); matrices as ``(names, [entries x n])``.

        Raises:
            ColumnsError: Two chunks of the same file and first entry (a chunk added twice), or chunks whose
                variations differ for one table.
        """
        keys = [k for k, _ in self.chunks]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})[:3]
            raise ColumnsError(f"event columns: chunk(s) {dup} (file, first entry) were added twice")
        order = sorted(range(len(self.chunks)), key=lambda i: keys[i])
        names: list[str] = []
        for i in order:
            names += [t for t in self.chunks[i][1] if t not in names]
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            # A chunk without this table (no event selected there) has an empty part: one size per chunk.
            parts = [self.chunks[i][1].get(name) or _EMPTY for i in order]
            table: dict[str, Any] = {c: np.concatenate([p[c] for p in parts]) for c in TABLE_COLUMNS}
            table["chunks"] = np.array([len(p["pt"]) for p in parts], dtype=np.int64)
            for m in _MATRICES:
                # A chunk without entries has no variation names (nothing was computed): left out of the check.
                filled = [p for p in parts if len(p["pt"])]
                variations = list(filled[0][m]) if filled else []
                for p in filled:
                    if list(p[m]) != variations:
                        raise ColumnsError(
                            f"event columns, table {name!r}: chunks with different {m} ({variations} and "
                            f"{list(p[m])}); process every file with the same configuration"
                        )
                cols = [np.stack([p[m][v] for v in variations], axis=1) if variations and len(p["pt"]) else
                        np.zeros((len(p["pt"]), len(variations))) for p in parts]  # fmt: skip
                table[m] = (variations, np.concatenate(cols) if cols else np.zeros((0, 0)))
            out[name] = table
        return out


_EMPTY: dict[str, Any] = {
    **{c: np.zeros(0, dtype=dt) for c, dt in TABLE_COLUMNS.items()},
    **{m: {} for m in _MATRICES},
}


@dataclass
class Table:
    """One selection's entries (:data:`TABLE_COLUMNS`) and their weight ratios and mT variations."""

    columns: dict[str, np.ndarray]
    ratio_names: list[str] = field(default_factory=list)
    ratios: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    mt_names: list[str] = field(default_factory=list)
    mt_variations: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    #: Entries per processor chunk, in order (the processor's histograms are summed chunk by chunk).
    chunks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.columns["pt"])


@dataclass
class DatasetColumns:
    """One dataset's tables and what its normalisation needs."""

    name: str
    kind: str
    sumw_sign: float
    nevents: int
    files: list[str]
    tables: dict[str, Table]


@dataclass
class EventColumns:
    """A read event-columns file (:func:`read_columns`)."""

    path: str
    config: dict[str, Any]
    datasets: dict[str, DatasetColumns]


def _config_record(config: Any) -> dict[str, Any]:
    return {k: getattr(config, k) for k in _CONFIG_FIELDS}


def write_columns(path: str | os.PathLike[str], output: Mapping[str, Any], config: Any) -> str:
    """Write the ``columns`` of a processor output (every dataset that has them) to one file, atomically.

    Args:
        path: The ``.h5`` file.
        output: ``run_templates(...).output`` of a ``WTemplateProcessor(..., event_columns=True)``.
        config: The processor's :class:`~wfit.processors.TemplateConfig`.

    Returns:
        The path written.

    Raises:
        ColumnsError: No dataset has columns (the processor ran without ``event_columns=True``), or a dataset's
            chunks disagree (see :meth:`ColumnChunks.tables`).
    """
    datasets = {ds: res for ds, res in output.items() if isinstance(res, Mapping) and "columns" in res}
    if not datasets:
        raise ColumnsError(
            f"write_columns({os.fspath(path)!r}): the output has no event columns (datasets {sorted(output)}); "
            "run the processor with WTemplateProcessor(..., event_columns=True)"
        )
    tables = {ds: res["columns"].tables() for ds, res in datasets.items()}

    def body(f: Any) -> None:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = FORMAT_VERSION
        f.attrs["config"] = json.dumps(_config_record(config))
        f.attrs["n_components"] = int(config.n_components)
        for ds, res in datasets.items():
            g = f.create_group(ds)
            kinds = sorted(res["kind"])
            if len(kinds) != 1:
                raise ColumnsError(f"write_columns: dataset {ds!r} mixes file kinds {kinds}; split it")
            g.attrs["kind"] = kinds[0]
            g.attrs["sumw_sign"] = float(res["sumw_sign"])
            g.attrs["nevents"] = int(res["nevents"])
            g.attrs["files"] = json.dumps(sorted({k[0] for k, _ in res["columns"].chunks}))
            g.attrs["tables"] = json.dumps(list(tables[ds]))  # the processor's order (HDF5 lists by name)
            for name, table in tables[ds].items():
                t = g.create_group(name)
                for c in TABLE_COLUMNS:
                    t.create_dataset(c, data=table[c])
                t.create_dataset("chunks", data=table["chunks"])
                for m in _MATRICES:
                    names, values = table[m]
                    if names:
                        d = t.create_dataset(m, data=values)
                        d.attrs["names"] = json.dumps(names)

    atomic_write_hdf5(path, body)
    return os.fspath(path)


def _fail(path: str, where: str, what: str, fix: str = "write it again with wfit.columns.write_columns") -> None:
    raise ColumnsError(f"{path}: {where}: {what}; {fix}")


def read_columns(path: str | os.PathLike[str]) -> EventColumns:
    """Read and check an event-columns file.

    Checked, before anything is returned: the format and version; every table's columns present with one length;
    finite values; charges of +-1; components within the processor's range for the dataset's kind; variation
    names unique; matrices of one row per entry.

    Raises:
        FileNotFoundError: No such file.
        ColumnsError: Anything else, naming the file, the dataset, the table and the field.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such event-columns file; write one with wfit.columns.write_columns")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ColumnsError(f"{path}: not an HDF5 file ({e}); write it with wfit.columns.write_columns") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            _fail(path, "attribute 'format'", f"is {f.attrs.get('format')!r}, not {FORMAT!r}")
        version = int(f.attrs.get("version", -1))
        if version != FORMAT_VERSION:
            _fail(path, "attribute 'version'", f"is {version}, this wfit reads {FORMAT_VERSION}",
                  "write it again with this wfit (or read it with the wfit that wrote it)")  # fmt: skip
        config = json.loads(f.attrs["config"])
        n_components = int(f.attrs["n_components"])  # the signal components; the unmatched one is this index
        datasets: dict[str, DatasetColumns] = {}
        for ds, g in f.items():
            kind = str(g.attrs.get("kind"))
            if kind not in ("data", "mc", "signal"):
                _fail(path, f"dataset {ds!r}, attribute 'kind'", f"is {kind!r}, not 'data', 'mc' or 'signal'")
            tables: dict[str, Table] = {}
            order = json.loads(g.attrs.get("tables", "[]"))
            if sorted(order) != sorted(g):
                _fail(path, f"dataset {ds!r}, attribute 'tables'", f"lists {order}, the file holds {sorted(g)}")
            for name in order:
                t = g[name]
                where = f"dataset {ds!r}, table {name!r}"
                missing = [c for c in TABLE_COLUMNS if c not in t]
                if missing:
                    _fail(path, where, f"columns {missing} are missing")
                cols = {c: np.asarray(t[c][()]) for c in TABLE_COLUMNS}
                lengths = {c: len(v) for c, v in cols.items()}
                if len(set(lengths.values())) > 1:
                    _fail(path, where, f"columns of different lengths {lengths}")
                for c, v in cols.items():
                    if v.dtype.kind == "f" and not np.isfinite(v).all():
                        _fail(path, f"{where}, column {c!r}", f"{int((~np.isfinite(v)).sum())} non-finite value(s)")
                if len(cols["charge"]) and not np.isin(cols["charge"], (-1, 1)).all():
                    _fail(path, f"{where}, column 'charge'", "values other than -1 and +1")
                top = n_components if kind == "signal" else 0
                comp = cols["component"]
                if len(comp) and (comp.min() < 0 or comp.max() > top):
                    _fail(path, f"{where}, column 'component'", f"values outside [0, {top}] for a {kind} dataset")
                chunks = np.asarray(t["chunks"][()], dtype=np.int64) if "chunks" in t else np.array([len(comp)])
                if np.any(chunks < 0) or int(chunks.sum()) != len(comp):
                    _fail(path, f"{where}, 'chunks'", f"sizes sum to {int(chunks.sum())}, not the {len(comp)} entries")
                mats: dict[str, tuple[list[str], np.ndarray]] = {}
                for m in _MATRICES:
                    if m not in t:
                        mats[m] = ([], np.zeros((len(comp), 0)))
                        continue
                    names = json.loads(t[m].attrs.get("names", "[]"))
                    values = np.asarray(t[m][()], dtype=np.float64)
                    if len(set(names)) != len(names):
                        _fail(path, f"{where}, {m} attribute 'names'", "a variation named twice")
                    if values.shape != (len(comp), len(names)):
                        _fail(path, f"{where}, {m}", f"shape {values.shape}, expected {(len(comp), len(names))}")
                    if not np.isfinite(values).all():
                        _fail(path, f"{where}, {m}", f"{int((~np.isfinite(values)).sum())} non-finite value(s)")
                    mats[m] = (names, values)
                tables[name] = Table(cols, *mats["ratios"], *mats["mt_variations"], chunks=chunks)
            if "nominal" not in tables:
                _fail(path, f"dataset {ds!r}", "has no 'nominal' table")
            sumw = float(g.attrs.get("sumw_sign", np.nan))
            if kind != "data" and not (np.isfinite(sumw) and sumw > 0):
                _fail(path, f"dataset {ds!r}, attribute 'sumw_sign'", f"is {sumw}, not a positive number")
            datasets[ds] = DatasetColumns(ds, kind, sumw, int(g.attrs.get("nevents", 0)),
                                          json.loads(g.attrs.get("files", "[]")), tables)  # fmt: skip
    return EventColumns(path, config, datasets)
