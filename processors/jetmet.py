"""Corrected jets and type-1 MET of one chunk (:class:`JetMET`), evaluated lazily for the events a selection
asks for, through the model or the per-file cache (:mod:`wfit.processors.jetcache`).

Type-1 MET (:func:`type1_met`): ``MET' = MET - sum_j (pT'_j - Jet_pt_j) (cos phi_j, sin phi_j)`` over jets
with corrected ``pT'_j > met_jet_pt_min``, where ``Jet_pt`` is the NanoAOD (standard-JEC) pT that the stored
MET was type-1 corrected with. The variations (``"up"``/``"down"``: the correction times ``1 +- variation``;
``"resoUp"``/``"resoDown"``: each jet at a bound of its predicted interval) are carried to the MET in the same
pass, jets crossing the threshold included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import awkward as ak
import numpy as np

from wfit.calib.features import FeatureSpec
from wfit.calib.onnx_spec import OUTPUT_NAME, QUANTILES_NAME, interval_levels

from .jetcache import KINEMATICS, EntryKey, FileIdentity, JetCache, file_identity, output_columns
from .jetinputs import ModelInputs, flat_values

if TYPE_CHECKING:
    from wfit.calib.export import OnnxCalibrator

    from .jetcorr import JetCalibration

__all__ = ["MET_BRANCHES", "ChunkEntry", "JetMET", "chunk_entry", "type1_met"]

#: The jet branches that the type-1 MET needs: read from the input by a pass that computes the correction, from
#: the cache (``nJet`` aside, which checks it) by one that does not.
MET_BRANCHES: tuple[str, ...] = ("nJet", "Jet_pt", "Jet_rawFactor", "Jet_phi")


def type1_met(
    met_x: np.ndarray,
    met_y: np.ndarray,
    jet_event: np.ndarray,
    pt_old: np.ndarray,
    pt_new: np.ndarray,
    jet_phi: np.ndarray,
    pt_min: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Propagate jet pT changes to the MET: ``MET - sum (pt_new - pt_old) (cos phi, sin phi)``.

    Args:
        met_x, met_y: MET components per event, GeV.
        jet_event: Event index (into ``met_x``) of each jet.
        pt_old: Jet pT that the MET already accounts for (NanoAOD's ``Jet_pt``), GeV.
        pt_new: Corrected jet pT, GeV.
        jet_phi: Jet azimuth.
        pt_min: Only jets with ``pt_new > pt_min`` contribute.

    Returns:
        Corrected ``(met_x, met_y)``, float64.

    Example:
        >>> mx, my = type1_met(np.array([10.0]), np.array([0.0]), np.array([0, 0]), np.array([20.0, 20.0]),
        ...                    np.array([25.0, 10.0]), np.array([0.0, 1.0]), 15.0)
        >>> float(mx[0]), float(my[0])
        (5.0, 0.0)
    """
    use = pt_new > pt_min
    d = (np.asarray(pt_new, dtype=np.float64) - pt_old)[use]
    phi = np.asarray(jet_phi, dtype=np.float64)[use]
    n = len(met_x)
    ev = np.asarray(jet_event)[use]
    return (
        met_x - np.bincount(ev, weights=d * np.cos(phi), minlength=n),
        met_y - np.bincount(ev, weights=d * np.sin(phi), minlength=n),
    )


class ChunkEntry:
    """Where a chunk's cache entry lives: the cache, the entry's key (file, model, range), the events' entries
    and the file's path (made by :func:`chunk_entry`)."""

    def __init__(self, cache: JetCache, key: EntryKey, rows: np.ndarray, path: str) -> None:
        self.cache, self.key, self.rows, self.path = cache, key, rows, path


_IDENTITIES: dict[tuple[str, str | None], FileIdentity] = {}


def _identity(path: str, file_uuid: str | None) -> FileIdentity:
    """:func:`file_identity`, remembered per process for URLs (opening a remote file per chunk costs)."""
    from wfit.atomic import is_remote

    if not is_remote(path) or file_uuid is None:
        return file_identity(path, file_uuid)
    key = (path, file_uuid)
    if key not in _IDENTITIES:
        _IDENTITIES[key] = file_identity(path, file_uuid)
    return _IDENTITIES[key]


def _entry_rows(events: Any, n_entries: int) -> np.ndarray | None:
    """The entry (within the chunk) of each event: all of them, or those a boolean selection kept (NanoEvents
    then index the chunk's record); None when that cannot be told."""
    layout = events.layout
    if isinstance(layout, ak.contents.IndexedArray) and len(layout.content) == n_entries:
        rows = np.asarray(layout.index, dtype=np.int64)
        if len(rows) and (np.any(rows[1:] <= rows[:-1]) or rows[0] < 0):
            return None  # reordered or repeated events: no entry range describes them
        return rows
    if len(layout) == n_entries and not isinstance(layout, ak.contents.IndexedArray):
        return np.arange(n_entries, dtype=np.int64)
    return None


def chunk_entry(cache: JetCache | None, events: Any, sha256: str) -> ChunkEntry | None:
    """Where the cache keeps this chunk of NanoEvents for the model with this SHA-256; None without a cache or
    when the events do not carry coffea's chunk metadata (``filename``, ``entrystart``, ``entrystop``, as
    :func:`~wfit.processors.run_templates` gives them) or are reordered: they are then computed in place."""
    md = events.metadata
    fname, start, stop = md.get("filename"), md.get("entrystart"), md.get("entrystop")
    if cache is None or fname is None or start is None or stop is None:
        return None
    rows = _entry_rows(events, int(stop) - int(start))
    if rows is None:
        return None
    key = EntryKey(_identity(str(fname), md.get("fileuuid") or None), sha256, int(start), int(stop))
    return ChunkEntry(cache, key, rows, str(fname))


class JetMET:
    """Corrected jets and MET of one chunk, computed lazily for the events that are asked for.

    The model runs once per jet, on the jets of the events in the masks passed to :meth:`met` (with raw pT of
    at least ``min_raw_pt``), the first time each event is needed; with a cache, what an earlier pass stored is
    read instead, and what is computed here is stored. A cached event's MET changes are read as they were
    stored (per variation, two numbers per event), so that a warm pass reads neither the jets' columns nor the
    input's jet branches other than ``nJet``; the jets' own values (:attr:`correction`, :meth:`pt`, ...) are
    read from the cache when asked for. Jets are flat over the chunk, in event order.

    Attributes:
        counts: Jets per event.
        nano_pt: ``Jet_pt`` (standard JEC), GeV.
        raw_pt: ``Jet_pt * (1 - Jet_rawFactor)``, GeV.
        phi: ``Jet_phi``.
        correction: Predicted multiplicative correction of the raw pT; NaN for jets not evaluated (yet, or at
            all: below ``min_raw_pt``).
        outputs: The model's outputs per jet (``log_correction``; ``log_quantiles`` with one column per level for a
            model with a resolution head); NaN where not evaluated.
        model: Path of the model that ran (main or fallback).
        cached_jets, computed_jets: Jets whose outputs were read from the cache, and computed here.
        cached_events: Events whose MET changes were read from the cache.
    """

    def __init__(
        self,
        calibration: JetCalibration,
        calibrator: OnnxCalibrator,
        spec: FeatureSpec,
        events: Any,
        met_pt: np.ndarray,
        met_phi: np.ndarray,
        chunk: ChunkEntry | None = None,
    ) -> None:
        self._calibration = calibration
        self._calibrator = calibrator
        self._spec = spec
        self._events = events
        self._chunk = chunk
        self._loaded = chunk is None  # the cache's jets read (or no cache)
        self._met_loaded = chunk is None  # the cache's MET changes read (or no cache)
        self.model = calibrator.path
        self.counts = ak.to_numpy(ak.num(events.Jet, axis=1)).astype(np.int64)  # reads nJet only
        self._inputs = ModelInputs(events, spec, self.counts)
        self.offsets = self._inputs.offsets
        self.n_jets = self._inputs.n_jets
        # The jets' kinematics as the input stores them (float32 in NanoAOD), from the cache or the input.
        self._kin: dict[str, np.ndarray] | None = None
        self._kin_known = np.zeros(len(self.counts), dtype=bool)
        # Per jet: the correction and the model's outputs (allocated when a jet is first evaluated or read: a
        # pass served by the cache's MET changes needs none).
        self._jet_values: tuple[np.ndarray, dict[str, np.ndarray]] | None = None
        self.cached_jets = 0
        self.computed_jets = 0
        self.cached_events = 0
        self._done = np.zeros(len(self.counts), dtype=bool)
        # Per event: its MET changes are known per variation (read from the cache, or computed and stored here).
        self._met_known = np.zeros(len(self.counts), dtype=bool)
        self._met_cached: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        met_pt = np.asarray(met_pt, dtype=np.float64)
        self._met = (met_pt * np.cos(met_phi), met_pt * np.sin(met_phi))
        self._delta: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._derived: dict[str, np.ndarray] = {}

    @property
    def jet_event(self) -> np.ndarray:
        """The event (index in the chunk) of each jet."""
        return self._inputs.jet_event

    def _allocate(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self._jet_values is None:
            n, q = self.n_jets, self._spec.quantiles
            outputs = {OUTPUT_NAME: np.full(n, np.nan, dtype=np.float32)}
            if q:
                outputs[QUANTILES_NAME] = np.full((n, len(q)), np.nan, dtype=np.float32)
            self._jet_values = (np.full(n, np.nan), outputs)
        return self._jet_values

    @property
    def _correction(self) -> np.ndarray:
        return self._allocate()[0]

    @property
    def _outputs(self) -> dict[str, np.ndarray]:
        return self._allocate()[1]

    # ------------------------------------------------------------------ kinematics
    def _kinematics(self, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The jets' ``pt``, ``rawFactor`` and ``phi``, complete at least for the events in ``mask`` (all by
        default): the cache's where it holds the event, else the input's (read whole, once)."""
        if not self._loaded:
            self._load()
        need = ~self._kin_known if mask is None else np.asarray(mask, dtype=bool) & ~self._kin_known
        if self._kin is None or need.any():
            jets = self._events.Jet
            self._kin = {name: flat_values(jets[name]) for name in KINEMATICS}
            self._kin_known[:] = True
            self._derived.clear()
        return self._kin

    def _derive(self) -> dict[str, np.ndarray]:
        """float64 nano pT, raw pT, phi and its cosine and sine (for the jets the kinematics hold)."""
        if not self._derived:
            kin = self._kinematics(self._kin_known if self._kin is not None else None)
            nano = np.asarray(kin["pt"], dtype=np.float64)
            phi = np.asarray(kin["phi"], dtype=np.float64)
            self._derived = {
                "nano_pt": nano,
                "raw_pt": nano * (1.0 - np.asarray(kin["rawFactor"], dtype=np.float64)),
                "phi": phi,
                "cos": np.cos(phi),
                "sin": np.sin(phi),
            }
        return self._derived

    def _kinematics_for(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`_derive`'s arrays, complete for the events in ``mask``."""
        if self._kin is None or (np.asarray(mask, dtype=bool) & ~self._kin_known).any():
            self._kinematics(mask)
        return self._derive()

    @property
    def nano_pt(self) -> np.ndarray:
        """``Jet_pt`` (standard JEC) of every jet of the chunk, GeV."""
        self._kinematics()
        return self._derive()["nano_pt"]

    @property
    def raw_pt(self) -> np.ndarray:
        """``Jet_pt * (1 - Jet_rawFactor)`` of every jet of the chunk, GeV."""
        self._kinematics()
        return self._derive()["raw_pt"]

    @property
    def phi(self) -> np.ndarray:
        """``Jet_phi`` of every jet of the chunk."""
        self._kinematics()
        return self._derive()["phi"]

    # ------------------------------------------------------------------ evaluation
    @property
    def correction(self) -> np.ndarray:
        """Predicted multiplicative correction of each jet's raw pT; NaN for jets not evaluated (yet, or at all:
        below ``min_raw_pt``)."""
        if not self._loaded:
            self._load()
        return self._correction

    @property
    def outputs(self) -> dict[str, np.ndarray]:
        """The model's outputs per jet (``log_correction``; ``log_quantiles`` with one column per level for a model
        with a resolution head); NaN where not evaluated."""
        if not self._loaded:
            self._load()
        return self._outputs

    def met_variations(self) -> list[str]:
        """The variations of the MET that this chunk's calibration gives (:meth:`met_xy`)."""
        return ["nominal", "up", "down", *(("resoUp", "resoDown") if self.has_resolution else ())]

    def _met_settings(self) -> dict[str, float]:
        """What the MET changes depend on besides the model's outputs (an entry's MET columns are used only by a
        calibration with the same)."""
        c = self._calibration
        return {"met_jet_pt_min": c.met_jet_pt_min, "variation": c.variation, "min_raw_pt": c.min_raw_pt}

    def _read_met(self, variations: list[str]) -> Any:
        chunk = self._chunk
        assert chunk is not None
        return chunk.cache.read(
            chunk.key,
            chunk.rows,
            self.counts,
            self._spec.quantiles,
            jets=False,
            met_settings=self._met_settings(),
            met_variations=variations,
        )

    def _load_met(self) -> None:
        """Take which events the cache holds the MET changes of, and their nominal changes: those events are
        done (the other variations' changes are read when first asked for, :meth:`_load_met_variation`)."""
        self._met_loaded = True
        cached = self._read_met(["nominal"])  # read with the event states: every pass fills the nominal
        if cached.met_known.any():
            self._met_known = cached.met_known
            self._met_cached["nominal"] = cached.met["nominal"]
            self._done |= cached.met_known
            self.cached_events = int(cached.met_known.sum())

    def _load_met_variation(self, variation: str) -> None:
        """Read one variation's MET changes from the cache, with its other side (the processor fills both).
        Events that the cache no longer holds (an entry replaced meanwhile by another worker's) are no longer
        done: they are evaluated again when needed."""
        pair = {"up": "down", "down": "up", "resoUp": "resoDown", "resoDown": "resoUp"}
        wanted = [v for v in (variation, pair.get(variation)) if v is not None and v not in self._met_cached]
        cached = self._read_met(wanted)
        lost = self._met_known & ~cached.met_known
        if lost.any():
            self._met_known = self._met_known & ~lost
            self._done &= ~lost
            for dx, dy in self._met_cached.values():  # unknown again: exact zeros, as read() gives them
                dx[lost] = 0.0
                dy[lost] = 0.0
        extra = cached.met_known & ~self._met_known  # added meanwhile by another worker: not taken here
        for v, (dx, dy) in cached.met.items():
            if extra.any():
                dx[extra] = 0.0
                dy[extra] = 0.0
            self._met_cached[v] = (dx, dy)

    def _load(self) -> None:
        """Take what the cache holds for this chunk: the kinematics of the events it knows, and the outputs of
        their jets (those below ``min_raw_pt`` are never used, as in a pass without the cache)."""
        self._loaded = True
        chunk = self._chunk
        assert chunk is not None
        quantiles = self._spec.quantiles
        cached = chunk.cache.read(chunk.key, chunk.rows, self.counts, quantiles)
        if not cached.known.any():
            return
        self._kin = {name: cached.values[name] for name in KINEMATICS}
        self._kin_known = cached.known.copy()
        self._derived.clear()
        columns = output_columns(quantiles)
        log_corr = cached.values[columns[0]]
        raw = self._derive()["raw_pt"]
        with np.errstate(invalid="ignore"):
            ok = (raw >= self._calibration.min_raw_pt) & ~np.isnan(log_corr) & np.isnan(self._outputs[OUTPUT_NAME])
        if not ok.any():
            return
        self._outputs[OUTPUT_NAME][ok] = log_corr[ok]
        for i, name in enumerate(columns[1:]):
            self._outputs[QUANTILES_NAME][ok, i] = cached.values[name][ok]
        self._correction[ok] = np.exp(log_corr[ok].astype(np.float64))
        self.cached_jets = int(ok.sum())

    def _jet_delta(self, events: np.ndarray, variation: str) -> tuple[np.ndarray, np.ndarray]:
        """The type-1 MET change ``sum_j (pT'_j - Jet_pt_j) (cos phi_j, sin phi_j)`` of the (evaluated) events in
        the mask ``events``, per event of the chunk (exact zeros for the others); one definition for
        :meth:`met_xy` and the cache, so that a cached change is the same bits as one computed here."""
        k = self._kinematics_for(events)
        if "corrected" not in k or len(k["corrected"]) != self.n_jets:
            k["corrected"] = k["raw_pt"] * self._correction
        on = slice(None) if events.all() else np.repeat(events, self.counts)
        factor = self._factor(variation)  # after ensure: the outputs of the new jets are known
        pt_new = k["corrected"][on] * (factor[on] if isinstance(factor, np.ndarray) else factor)
        # type1_met's sums (jets below the threshold, or not evaluated, add exact zeros), with the chunk's
        # cosines and sines computed once for every variation.
        d = np.where(pt_new > self._calibration.met_jet_pt_min, pt_new - k["nano_pt"][on], 0.0)
        n = len(self.counts)
        ev = self.jet_event[on]
        return (
            np.bincount(ev, weights=d * k["cos"][on], minlength=n),
            np.bincount(ev, weights=d * k["sin"][on], minlength=n),
        )

    def _store(self) -> None:
        """Write this chunk's entry: every event whose jets are known, with every output known, and the MET
        changes of every evaluated event."""
        chunk = self._chunk
        assert chunk is not None
        known = self._kin_known
        if self._kin is None or not known.any():
            return
        on = np.repeat(known, self.counts)
        quantiles = self._spec.quantiles
        columns = output_columns(quantiles)
        values = {name: self._kin[name][on] for name in KINEMATICS}
        values[columns[0]] = self._outputs[OUTPUT_NAME][on]
        for i, name in enumerate(columns[1:]):
            values[name] = self._outputs[QUANTILES_NAME][on, i]
        # Events read from the cache's MET columns alone have no jets here: they stay in the older entry's range
        # only if their jets are known; their MET changes are taken as read.
        evaluated = self._done & known
        met = {}
        for v in self.met_variations():
            if v not in self._met_cached and self._met_known.any():
                self._load_met_variation(v)  # the cached events' changes, kept as they were read
            dx, dy = self._jet_delta(evaluated & ~self._met_known, v)
            if v in self._met_cached:
                cx, cy = self._met_cached[v]
                dx, dy = np.where(self._met_known, cx, dx), np.where(self._met_known, cy, dy)
            met[v] = (dx, dy)
        met_known = evaluated | (self._met_known & known)
        self._met_known, self._met_cached = met_known.copy(), met
        chunk.cache.write(
            chunk.key,
            chunk.rows[known],
            self.counts[known],
            values,
            file_path=chunk.path,
            model_path=self.model,
            quantiles=quantiles,
            met_known=met_known[known],
            met={v: (dx[known], dy[known]) for v, (dx, dy) in met.items()},
            met_settings=self._met_settings(),
        )

    def ensure(self, mask: np.ndarray) -> bool:
        """Evaluate the jets of the events in ``mask`` that were not evaluated yet (read from the cache where it
        holds them, computed and stored otherwise); whether the model ran."""
        if not self._met_loaded:
            self._load_met()
        todo = np.asarray(mask, dtype=bool) & ~self._done
        if not todo.any():
            return False
        raw = self._kinematics_for(todo)["raw_pt"]
        outputs = self.outputs  # the cache's jets, read now that some event needs them
        jets = np.flatnonzero(
            np.repeat(todo, self.counts) & (raw >= self._calibration.min_raw_pt) & np.isnan(outputs[OUTPUT_NAME])
        )
        ran = bool(len(jets))
        if ran:
            try:
                out = self._calibrator.predict_outputs(self._inputs.build(jets, self._derive()["raw_pt"]))
            except ValueError as err:  # a non-finite input or output (NonFiniteOutputError): name the file
                md = self._events.metadata
                where = f"entries [{md.get('entrystart')}, {md.get('entrystop')})" if "entrystart" in md else "a chunk"
                raise ValueError(f"file {md.get('filename', '?')!r}, {where}: {err}") from None
            for name, values in out.items():
                self._outputs[name][jets] = values
            self._correction[jets] = np.exp(out[OUTPUT_NAME].astype(np.float64))
            for key in ("corrected", "factor_resoUp", "factor_resoDown"):
                self._derived.pop(key, None)
            self.computed_jets += len(jets)
        self._done |= todo
        if ran and self._chunk is not None:
            self._store()
        return ran

    @property
    def has_resolution(self) -> bool:
        """Whether the calibration's model has a resolution head (then ``"resoUp"``/``"resoDown"`` exist; on a
        file corrected by a fallback without one they are the nominal)."""
        return self._calibration.has_resolution

    def _check_variation(self, variation: str) -> None:
        if variation in ("nominal", "up", "down") or (variation in ("resoUp", "resoDown") and self.has_resolution):
            return
        known = "'nominal', 'up', 'down'" + (", 'resoUp', 'resoDown'" if self.has_resolution else "")
        raise ValueError(
            f"JetMET: unknown variation {variation!r}; use {known}"
            + ("" if self.has_resolution else " (the resolution variations need a model with a resolution head)")
        )

    def _factor(self, variation: str) -> float | np.ndarray:
        """The corrected pT's factor for a variation: ``1 +- variation`` (``"up"``, ``"down"``), or per jet
        ``exp(q - c)`` with ``q`` the upper or lower bound of the predicted interval (``"resoUp"``, ``"resoDown"``)."""
        self._check_variation(variation)
        if variation in ("nominal", "up", "down"):
            s = {"nominal": 0.0, "up": self._calibration.variation, "down": -self._calibration.variation}[variation]
            return 1.0 + s
        if interval_levels(self._spec.quantiles) is None:  # the jet-level fallback without a head
            return 1.0
        key = f"factor_{variation}"
        if key not in self._derived:
            lo, hi = interval_levels(self._spec.quantiles)  # type: ignore[misc]
            q = self.outputs[QUANTILES_NAME][:, hi if variation == "resoUp" else lo].astype(np.float64)
            self._derived[key] = np.exp(q - self.outputs[OUTPUT_NAME].astype(np.float64))
        return self._derived[key]

    def pt(self, variation: str = "nominal", jets: Any = slice(None)) -> np.ndarray:
        """Corrected jet pT, GeV; NaN for jets not evaluated.

        Args:
            variation: ``"nominal"``, ``"up"`` or ``"down"`` (the correction times ``1 +- variation``), or for a
                model with a resolution head ``"resoUp"``/``"resoDown"``: each jet at the upper/lower bound of its
                predicted interval of pT_gen (``raw_pt * exp(q)``, the 84% and 16% quantiles).
            jets: A selection of the flat jets (index, boolean mask or slice); all by default.
        """
        factor = self._factor(variation)
        if isinstance(factor, np.ndarray):
            factor = factor[jets]
        return self.raw_pt[jets] * self.correction[jets] * factor

    def met_xy(self, mask: np.ndarray, variation: str = "nominal") -> tuple[np.ndarray, np.ndarray]:
        """Type-1 corrected MET components of the events in ``mask`` (length ``mask.sum()``), GeV.

        The jets' MET change of an event is computed (or read from the cache) once per variation and reused: the
        selections of the other systematic variations mostly ask for the same events again.
        """
        mask = np.asarray(mask, dtype=bool)
        self._check_variation(variation)  # an unknown variation is an error before any work
        if variation not in self._delta:
            if not self._met_loaded:
                self._load_met()
            if variation not in self._met_cached and self._met_known.any():
                self._load_met_variation(variation)
            if variation in self._met_cached:  # read from the cache, or computed when the entry was written
                dx, dy = self._met_cached[variation]  # exact zeros where not known
                self._delta[variation] = (self._met[0] - dx, self._met[1] - dy, self._met_known.copy())
            else:
                n = len(self.counts)
                self._delta[variation] = (self._met[0].copy(), self._met[1].copy(), np.zeros(n, dtype=bool))
        mx, my, done = self._delta[variation]
        if np.any(mask > done):  # some event of the mask is not done
            self.ensure(mask)
            if variation in self._met_cached:  # events computed since, or read again after an entry changed
                k = self._met_known & ~done
                dx, dy = self._met_cached[variation]
                np.subtract(mx, dx, out=mx, where=k)
                np.subtract(my, dy, out=my, where=k)
                done |= k
            todo = self._done & ~done  # every evaluated event at once: later masks mostly ask for the same
            if todo.any():
                dx, dy = self._jet_delta(todo, variation)
                mx -= dx  # zero for the other events
                my -= dy
                done |= todo
        return mx[mask], my[mask]

    def met(self, mask: np.ndarray, variation: str = "nominal") -> tuple[np.ndarray, np.ndarray]:
        """Type-1 corrected MET ``(pt, phi)`` of the events in ``mask`` (length ``mask.sum()``)."""
        mx, my = self.met_xy(mask, variation)
        return np.hypot(mx, my), np.arctan2(my, mx)
