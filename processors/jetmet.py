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
    read instead (the jets' kinematics included: the input's jet branches other than ``nJet`` are then not
    read), and what is computed here is stored. Jets are flat over the chunk, in event order.

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
        self._loaded = chunk is None
        self.model = calibrator.path
        self.counts = ak.to_numpy(ak.num(events.Jet, axis=1)).astype(np.int64)  # reads nJet only
        self._inputs = ModelInputs(events, spec, self.counts)
        self.offsets, self.jet_event = self._inputs.offsets, self._inputs.jet_event
        self.n_jets = n_jets = self._inputs.n_jets
        # The jets' kinematics as the input stores them (float32 in NanoAOD), from the cache or the input.
        self._kin: dict[str, np.ndarray] | None = None
        self._kin_known = np.zeros(len(self.counts), dtype=bool)
        self.correction = np.full(n_jets, np.nan)
        self.outputs: dict[str, np.ndarray] = {OUTPUT_NAME: np.full(n_jets, np.nan, dtype=np.float32)}
        if spec.quantiles:
            self.outputs[QUANTILES_NAME] = np.full((n_jets, len(spec.quantiles)), np.nan, dtype=np.float32)
        self.cached_jets = 0
        self.computed_jets = 0
        self._done = np.zeros(len(self.counts), dtype=bool)
        met_pt = np.asarray(met_pt, dtype=np.float64)
        self._met = (met_pt * np.cos(met_phi), met_pt * np.sin(met_phi))
        self._delta: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._derived: dict[str, np.ndarray] = {}

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
            ok = (raw >= self._calibration.min_raw_pt) & ~np.isnan(log_corr)
        if not ok.any():
            return
        self.outputs[OUTPUT_NAME][ok] = log_corr[ok]
        for i, name in enumerate(columns[1:]):
            self.outputs[QUANTILES_NAME][ok, i] = cached.values[name][ok]
        self.correction[ok] = np.exp(log_corr[ok].astype(np.float64))
        self.cached_jets = int(ok.sum())

    def _store(self) -> None:
        """Write this chunk's entry: every event whose jets are known, with every output known."""
        chunk = self._chunk
        assert chunk is not None
        known = self._kin_known
        if self._kin is None or not known.any():
            return
        on = np.repeat(known, self.counts)
        quantiles = self._spec.quantiles
        columns = output_columns(quantiles)
        values = {name: self._kin[name][on] for name in KINEMATICS}
        values[columns[0]] = self.outputs[OUTPUT_NAME][on]
        for i, name in enumerate(columns[1:]):
            values[name] = self.outputs[QUANTILES_NAME][on, i]
        chunk.cache.write(
            chunk.key,
            chunk.rows[known],
            self.counts[known],
            values,
            file_path=chunk.path,
            model_path=self.model,
            quantiles=quantiles,
        )

    def ensure(self, mask: np.ndarray) -> bool:
        """Evaluate the jets of the events in ``mask`` that were not evaluated yet (read from the cache where it
        holds them, computed and stored otherwise); whether the model ran."""
        todo = np.asarray(mask, dtype=bool) & ~self._done
        if not todo.any():
            return False
        raw = self._kinematics_for(todo)["raw_pt"]
        jets = np.flatnonzero(
            np.repeat(todo, self.counts) & (raw >= self._calibration.min_raw_pt) & np.isnan(self.outputs[OUTPUT_NAME])
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
                self.outputs[name][jets] = values
            self.correction[jets] = np.exp(out[OUTPUT_NAME].astype(np.float64))
            for key in ("corrected", "factor_resoUp", "factor_resoDown"):
                self._derived.pop(key, None)
            self.computed_jets += len(jets)
            if self._chunk is not None:
                self._store()
        self._done |= todo
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

        The jets' MET change of an event is computed once per variation and reused: the selections of the
        other systematic variations mostly ask for the same events again.
        """
        mask = np.asarray(mask, dtype=bool)
        self._check_variation(variation)  # an unknown variation is an error before any work
        if variation not in self._delta:
            n = len(self.counts)
            self._delta[variation] = (self._met[0].copy(), self._met[1].copy(), np.zeros(n, dtype=bool))
        mx, my, done = self._delta[variation]
        if (mask & ~done).any():
            self.ensure(mask)
            todo = self._done & ~done  # every evaluated event at once: later masks mostly ask for the same
            k = self._kinematics_for(todo)
            if "corrected" not in k or len(k["corrected"]) != self.n_jets:
                k["corrected"] = k["raw_pt"] * self.correction
            on = slice(None) if todo.all() else np.repeat(todo, self.counts)
            factor = self._factor(variation)  # after ensure: the outputs of the new jets are known
            pt_new = k["corrected"][on] * (factor[on] if isinstance(factor, np.ndarray) else factor)
            # type1_met's sums (jets below the threshold, or not evaluated, add exact zeros), with the chunk's
            # cosines and sines computed once for every variation.
            d = np.where(pt_new > self._calibration.met_jet_pt_min, pt_new - k["nano_pt"][on], 0.0)
            n = len(self.counts)
            ev = self.jet_event[on]
            mx -= np.bincount(ev, weights=d * k["cos"][on], minlength=n)  # zero for the other events
            my -= np.bincount(ev, weights=d * k["sin"][on], minlength=n)
            done |= todo
        return mx[mask], my[mask]

    def met(self, mask: np.ndarray, variation: str = "nominal") -> tuple[np.ndarray, np.ndarray]:
        """Type-1 corrected MET ``(pt, phi)`` of the events in ``mask`` (length ``mask.sum()``)."""
        mx, my = self.met_xy(mask, variation)
        return np.hypot(mx, my), np.arctan2(my, mx)
