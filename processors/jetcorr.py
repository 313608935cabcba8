"""The DNN jet pT calibration inside the template processor: NanoAOD -> model inputs -> onnxruntime ->
corrected jets -> type-1 MET -> mT, with the jet-calibration systematic.

The model is an ONNX file written by :func:`wfit.calib.export_onnx`; its feature specification travels in
the file's metadata (and in the ``<file>.features.yaml`` sidecar). Inputs are built by the one definition of
the features, :func:`wfit.calib.features.build_inputs` (through :class:`wfit.calib.OnnxCalibrator`); this
module only maps NanoAOD branches to the calibration's feature names.

Feature sources (:data:`FEATURE_SOURCES`; pT and masses in GeV). NanoAOD jets are already corrected by the
standard JEC; the model was trained on uncorrected ("raw") jets with the target ``log(pt_gen / pt)``, so it
is fed the raw jet and the corrected pT is ``pt_raw * exp(prediction)``:

=================  =======================================================================
feature            NanoAOD source
=================  =======================================================================
pt                 ``Jet_pt * (1 - Jet_rawFactor)`` (the raw pT)
mass               ``Jet_mass * (1 - Jet_rawFactor)``
eta, phi, area     ``Jet_eta``, ``Jet_phi``, ``Jet_area``
rho                ``fixedGridRhoFastjetAll`` (per event; ``Rho_fixedGridRhoFastjetAll`` from v12)
num_pv             ``PV_npvs`` (per event)
exp_pileup         ``Pileup_nTrueInt`` (per event, MC only)
ch_* / ne_*        PFNano ``PFCands`` reached through ``JetPFCands`` (``jetIdx``, ``pFCandsIdx``);
                   charged and neutral split by ``PFCands_pdgId`` (see below)
<t>_pt/eta/phi     ``PFCands_pt/eta/phi``
ch_id, ne_id       ``PFCands_pdgId``
ch_pv_ass          ``PFCands_pvAssocQuality`` (MiniAOD's enum 0, 1, 4, 5, 6, 7, as ml-jec's)
ch_dxy, ch_dz      ``PFCands_d0``, ``PFCands_dz`` (cm)
ch_dxy_significance ``PFCands_d0 / PFCands_d0Err`` (0 where ``d0Err`` is 0)
ch_lost_hits       ``PFCands_lostInnerHits``
ch_norm_chi2       ``PFCands_trkChi2``
sv_*               PFNano ``JetSVs`` (``jetIdx``): ``sv_pt`` = ``pt``, ``sv_mass`` = ``mass``,
                   ``sv_distance`` = ``d3d``, ``sv_significance`` = ``d3dsig``, ``sv_num_tracks`` =
                   ``ntracks``
=================  =======================================================================

Derived features (``<t>_rel_pt``, ``<t>_deta``, ``<t>_dphi``) are computed from these by ``build_inputs``,
relative to the raw jet. Constituents of a jet are ordered by decreasing pT (ml-jec's order, which decides
which ones survive the ``max_count`` cap; since the model sums over constituents, only the jets above the
cap are sorted). Features with no NanoAOD source (generator-level ones such as
``pt_gen`` or ``hadron_flavor``, ``ne_hcal_frac``, ``ch_num_hits``, SV eta/phi) make the model unusable:
:class:`JetCalibration` refuses it when it is constructed.

Files without constituents (plain NanoAOD such as ``nano_dy.root``): a model that needs constituents runs
there only through a **jet-level fallback model** (``fallback_model``, an ONNX file exported from a model
trained without constituents, e.g. with ``features: {constituents: {}}``); which model corrected which file is
recorded in the output (``jet_calibration``). Without a fallback such a file is an error, reported by the
pre-flight check (:meth:`JetCalibration.check_file`, called by :func:`wfit.processors.run_templates`) before
any chunk is processed. Zero constituents are never substituted: the model was not trained on such jets.

Type-1 MET: ``MET' = MET - sum_j (pT'_j - Jet_pt_j) (cos phi_j, sin phi_j)`` over jets with corrected
``pT'_j > met_jet_pt_min`` (15 GeV by default), where ``Jet_pt`` is the NanoAOD (standard-JEC) pT that the
stored MET was type-1 corrected with. The lepton, and the jet that may contain it, are not treated apart
(CMS's type-1 also subtracts muons from jets and skips jets with a large electromagnetic fraction).

Systematic ``jetCalib{Up,Down}``: the predicted correction times ``1 +- variation`` for every jet, carried
to the MET (jets may cross the threshold) and to mT in the same pass.

Systematic ``jetReso{Up,Down}``, for a model with a resolution head (:attr:`wfit.calib.FeatureSpec.quantiles`,
e.g. trained with ``model: {resolution: {quantiles: [0.16, 0.84]}}``): every jet moved to the upper (lower)
bound of its own predicted interval of pT_gen, ``raw pT * exp(q_84)`` (``exp(q_16)``), the model's predicted
quantiles of ``log(pt_gen / pt)`` (:func:`wfit.calib.onnx_spec.interval_levels`), carried to the MET and mT
like ``jetCalib``: a per-jet resolution, as CMS regressions store beside the correction, as a nuisance. Files
corrected by a fallback model without a head get the nominal there (no variation), so that every file of a
dataset fills the same histograms.

What is read and run. Jets change only the MET, hence only mT, so the model runs only on the jets of the
events that some selection needs (those passing the lepton preselection, or one of its momentum-varied
re-selections; lazily, :class:`JetMET`), and of those only on jets with raw pT of at least ``min_raw_pt``
(``met_jet_pt_min / 2`` by default: a softer jet would need a correction above 2 to pass the type-1 threshold;
it is left out of the MET like any jet below it, in every pass alike). The constituent branches are read
through NanoEvents' lazy (virtual) arrays only when some jet is evaluated, and only the links of the wanted
events are followed. The charged/neutral split of the PF candidates comes from ``PFCands_pdgId`` when the model
reads it anyway (``ch_id``/``ne_id``): charged are ``|pdgId|`` 11, 13 and 211, neutral 1, 2, 22 and 130 (the PF
candidate types of MiniAOD); a chunk with any other pdgId reads ``PFCands_charge`` instead, so the split is
always the charge's.

With ``cache_dir`` (:mod:`wfit.processors.jetcache`) the model's outputs are kept per input file and model:
the first pass over a chunk writes them, later passes read one jagged branch and neither the constituents nor
the model are touched. Results are the same bits with or without the cache.

Example:
    >>> calib = JetCalibration("model.onnx", fallback_model="jet_level.onnx", cache_dir="jetcache")  # doctest: +SKIP
    >>> proc = WTemplateProcessor(jet_calibration=calib)                                           # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import awkward as ak
import numpy as np

from wfit.calib.export import OnnxCalibrator
from wfit.calib.features import FeatureSpec, derived_feature
from wfit.calib.onnx_spec import OUTPUT_NAME, QUANTILES_NAME, interval_levels

from .jetcache import KINEMATICS, FileIdentity, JetCache, file_identity, output_columns

__all__ = [
    "CHARGED_PDGIDS",
    "FEATURE_SOURCES",
    "MET_BRANCHES",
    "NEUTRAL_PDGIDS",
    "JetCalibration",
    "JetMET",
    "jet_models_used",
    "type1_met",
]

#: Calibration feature -> NanoAOD source (documentation and the pre-flight check's branch list).
FEATURE_SOURCES: dict[str, str] = {
    "pt": "Jet_pt * (1 - Jet_rawFactor)",
    "mass": "Jet_mass * (1 - Jet_rawFactor)",
    "eta": "Jet_eta",
    "phi": "Jet_phi",
    "area": "Jet_area",
    "rho": "fixedGridRhoFastjetAll",
    "num_pv": "PV_npvs",
    "exp_pileup": "Pileup_nTrueInt",
    "ch_pt": "PFCands_pt",
    "ch_eta": "PFCands_eta",
    "ch_phi": "PFCands_phi",
    "ch_id": "PFCands_pdgId",
    "ch_pv_ass": "PFCands_pvAssocQuality",
    "ch_dxy": "PFCands_d0",
    "ch_dz": "PFCands_dz",
    "ch_dxy_significance": "PFCands_d0 / PFCands_d0Err",
    "ch_lost_hits": "PFCands_lostInnerHits",
    "ch_norm_chi2": "PFCands_trkChi2",
    "ne_pt": "PFCands_pt",
    "ne_eta": "PFCands_eta",
    "ne_phi": "PFCands_phi",
    "ne_id": "PFCands_pdgId",
    "sv_pt": "JetSVs_pt",
    "sv_mass": "JetSVs_mass",
    "sv_distance": "JetSVs_d3d",
    "sv_significance": "JetSVs_d3dsig",
    "sv_num_tracks": "JetSVs_ntracks",
}

# Jet-level features: (collection or None for an event-level branch, field).
_JET = {
    "eta": ("Jet", "eta"),
    "phi": ("Jet", "phi"),
    "area": ("Jet", "area"),
    "rho": (None, "fixedGridRhoFastjetAll"),
    "num_pv": ("PV", "npvs"),
    "exp_pileup": ("Pileup", "nTrueInt"),
}
#: PF candidate types by |pdgId| (MiniAOD's packed candidates): charged ones and neutral ones.
CHARGED_PDGIDS: frozenset[int] = frozenset({11, 13, 211})
NEUTRAL_PDGIDS: frozenset[int] = frozenset({1, 2, 22, 130})
# |pdgId| -> 1 (charged PF candidate), 2 (neutral) or 0 (any other id, the last entry included).
_PDGID_KIND = np.zeros(max(CHARGED_PDGIDS | NEUTRAL_PDGIDS) + 2, dtype=np.int8)
_PDGID_KIND[sorted(CHARGED_PDGIDS)] = 1
_PDGID_KIND[sorted(NEUTRAL_PDGIDS)] = 2
# Constituent types: (collection holding the fields, link collection or None, charge selection).
_TYPES = {
    "ch": ("PFCands", "JetPFCands", "charged"),
    "ne": ("PFCands", "JetPFCands", "neutral"),
    "sv": ("JetSVs", None, None),
}
_FIELDS = {
    "ch": {
        "pt": "pt",
        "eta": "eta",
        "phi": "phi",
        "id": "pdgId",
        "pv_ass": "pvAssocQuality",
        "dxy": "d0",
        "dz": "dz",
        "dxy_significance": ("d0", "d0Err"),
        "lost_hits": "lostInnerHits",
        "norm_chi2": "trkChi2",
    },
    "ne": {"pt": "pt", "eta": "eta", "phi": "phi", "id": "pdgId"},
    "sv": {"pt": "pt", "mass": "mass", "distance": "d3d", "significance": "d3dsig", "num_tracks": "ntracks"},
}


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


def _unmapped(spec: FeatureSpec) -> list[str]:
    names = [*spec.jet_numerical, *spec.jet_categorical]
    for c in spec.constituents:
        names += [*c.numerical, *c.categorical]
    out = []
    for name in names:
        base = derived_feature(name)
        if base is not None:
            name = base[0]
        if name not in FEATURE_SOURCES:
            out.append(name)
    return out


def _reads_pdgid(spec: FeatureSpec) -> bool:
    """Whether the model reads ``PFCands_pdgId`` as a feature (then it also splits charged from neutral)."""
    return any(
        _FIELDS[c.name][f[len(c.name) + 1 :]] == "pdgId" for c in spec.constituents if c.name in ("ch", "ne")
        for f in c.branches
    )


def _branches(spec: FeatureSpec) -> list[str]:
    """NanoAOD branches that building this specification's inputs reads."""
    out = ["nJet", "Jet_pt", "Jet_rawFactor", "Jet_phi"]
    for name in [*spec.jet_numerical, *spec.jet_categorical]:
        if name == "mass":
            out.append("Jet_mass")
        elif name in _JET:
            coll, field = _JET[name]
            out.append(field if coll is None else f"{coll}_{field}")
    pdgid = _reads_pdgid(spec)
    for c in spec.constituents:
        coll, link, charge = _TYPES[c.name]
        if link is None:
            out += [f"n{coll}", f"{coll}_jetIdx"]
        else:
            out += [f"n{link}", f"{link}_jetIdx", f"{link}_pFCandsIdx", f"n{coll}"]
        if charge:
            out.append(f"{coll}_pdgId" if pdgid else f"{coll}_charge")
        for feature in c.branches:
            src = _FIELDS[c.name][feature[len(c.name) + 1 :]]
            out += [f"{coll}_{s}" for s in (src if isinstance(src, tuple) else (src,))]
    return list(dict.fromkeys(out))


#: The jet branches that the type-1 MET needs: read from the input by a pass that computes the correction, from
#: the cache (``nJet`` aside, which checks it) by one that does not.
MET_BRANCHES: tuple[str, ...] = ("nJet", "Jet_pt", "Jet_rawFactor", "Jet_phi")


class JetCalibration:
    """A DNN jet calibration for :class:`~wfit.processors.WTemplateProcessor`; checked when constructed.

    Construction reads the ONNX files (not an onnxruntime session) and checks: the file exists; its feature
    specification (metadata, and the sidecar when present) matches the graph (:func:`wfit.calib.read_feature_spec`);
    every feature has a NanoAOD source; the fallback is a jet-level model; the cache directory can be written.
    onnxruntime sessions are created lazily on the worker and are not pickled (:class:`wfit.calib.OnnxCalibrator`).

    Args:
        model: ONNX file from :func:`wfit.calib.export_onnx`.
        fallback_model: A jet-level ONNX model (no constituents) for files without ``JetPFCands``/``PFCands``/
            ``JetSVs``; None makes such files an error (when ``model`` needs constituents).
        variation: Relative size of the ``jetCalib{Up,Down}`` variation of the predicted correction.
        met_jet_pt_min: Corrected-pT threshold of the jets propagated to the MET, GeV.
        batch_size: Jets per feature-building and inference batch.
        threads: onnxruntime intra-op threads (1: one core per worker).
        cache_dir: Directory of the per-file correction cache (:mod:`wfit.processors.jetcache`; a shared file
            system on a batch cluster), or None to compute the correction in every pass.
        min_raw_pt: Jets with a lower raw pT are not corrected and stay out of the type-1 MET, GeV; None for
            ``met_jet_pt_min / 2`` (such a jet would need a correction above 2 to pass the threshold), 0 to
            correct every jet.

    Attributes:
        cache: The :class:`~wfit.processors.jetcache.JetCache`, or None.

    Raises:
        FileNotFoundError: A model file does not exist.
        wfit.calib.onnx_spec.ModelSpecError: A specification missing or disagreeing with the graph (a
            ``ValueError``).
        ValueError: A feature without a NanoAOD source, a fallback that needs constituents, or a bad option; the
            message names the file, the input or feature, and the fix.
        wfit.processors.jetcache.JetCacheError: ``cache_dir`` cannot be created or written (an ``OSError``
            naming the directory).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        fallback_model: str | os.PathLike[str] | None = None,
        variation: float = 0.02,
        met_jet_pt_min: float = 15.0,
        batch_size: int = 100_000,
        threads: int = 1,
        cache_dir: str | os.PathLike[str] | None = None,
        min_raw_pt: float | None = None,
    ) -> None:
        if not 0.0 <= variation < 1.0:
            raise ValueError(f"JetCalibration.variation must be in [0, 1), got {variation}")
        if batch_size < 1:
            raise ValueError(f"JetCalibration.batch_size must be positive, got {batch_size}")
        if min_raw_pt is not None and not min_raw_pt >= 0.0:
            raise ValueError(f"JetCalibration.min_raw_pt must be >= 0 GeV (or None), got {min_raw_pt}")
        self.variation = float(variation)
        self.met_jet_pt_min = float(met_jet_pt_min)
        self.min_raw_pt = self.met_jet_pt_min / 2.0 if min_raw_pt is None else float(min_raw_pt)
        self.model = self._calibrator(model, batch_size, threads)
        self.specs = {"model": self.model.spec}
        self.fallback = None
        if fallback_model is not None:
            self.fallback = self._calibrator(fallback_model, batch_size, threads)
            self.specs["fallback"] = self.fallback.spec
            if self.specs["fallback"].constituents:
                raise ValueError(
                    f"{self.fallback.path}: the fallback model needs constituents "
                    f"({[c.name for c in self.specs['fallback'].constituents]}); it is used where a file has "
                    "none: export a model trained without constituents (features: {constituents: {}})"
                )
        for role, spec in self.specs.items():
            bad = _unmapped(spec)
            if bad:
                path = self.model.path if role == "model" else self.fallback.path  # type: ignore[union-attr]
                raise ValueError(
                    f"{path}: feature(s) {bad} have no NanoAOD source (see wfit.processors.jetcorr."
                    "FEATURE_SOURCES); train the model without them, e.g. with wfit.calib's configs/pfnano.yaml"
                )
        self._checked: dict[tuple[str, str, int, int], str] = {}  # check_file's answers per file state
        self.cache = None if cache_dir is None else JetCache(cache_dir)
        if self.cache is not None:  # the key of every entry: read on the driver, checked on the workers
            for calibrator in (self.model, self.fallback):
                if calibrator is not None:
                    _ = calibrator.sha256

    @staticmethod
    def _calibrator(path: str | os.PathLike[str], batch_size: int, threads: int) -> OnnxCalibrator:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: jet calibration model not found; pass the .onnx file written by wfit.calib.export_onnx"
            )
        return OnnxCalibrator(path, threads=threads, chunk_size=batch_size)

    @property
    def has_resolution(self) -> bool:
        """Whether the main model has a resolution head: the processor then fills ``jetReso{Up,Down}`` (for files
        that the fallback corrects, and a fallback without a head, those are the nominal)."""
        return interval_levels(self.specs["model"].quantiles) is not None

    @property
    def needs_constituents(self) -> bool:
        """Whether the main model reads constituents."""
        return bool(self.specs["model"].constituents)

    def branches(self, role: str = "model") -> list[str]:
        """NanoAOD branches that the ``"model"`` or the ``"fallback"`` reads."""
        return _branches(self.specs[role])

    def preload_branches(self) -> list[str]:
        """The branches worth reading in the processor's one bulk read per chunk.

        Without a cache, everything either model reads. With one, only ``nJet``: a chunk that the cache holds
        reads nothing else of the jets (the cache has the kinematics that the type-1 MET needs), and one that it
        does not reads :data:`MET_BRANCHES` and the model's inputs lazily.
        """
        if self.cache is not None:
            return ["nJet"]
        out = self.branches("model") + (self.branches("fallback") if self.fallback is not None else [])
        return list(dict.fromkeys(out))

    def check_cache(self) -> None:
        """Check that the cache directory (if any) can be written (:meth:`JetCache.check`)."""
        if self.cache is not None:
            self.cache.check()

    def choose(self, fields: Iterable[str]) -> str:
        """``"model"`` or ``"fallback"`` for a file with these branches; raises if neither can run there.

        Args:
            fields: The file's branch names.
        """
        have = set(fields)
        missing = [b for b in self.branches("model") if b not in have]
        if not missing:
            return "model"
        if self.fallback is not None and all(b in have for b in self.branches("fallback")):
            return "fallback"
        hint = (
            "use PFNano files or pass fallback_model= (a jet-level model)"
            if self.needs_constituents and self.fallback is None
            else "use NanoAOD with these branches"
        )
        raise ValueError(f"branches {missing} needed by the jet calibration {self.model.path} are missing: {hint}")

    def check_file(self, path: str, treename: str = "Events") -> str:
        """Pre-flight check of one input file (branch names only); returns the role that will run on it.

        The answer is remembered per local file, its size and modification time: a later run over the same files
        does not open them again here.
        """
        import uproot

        from wfit.atomic import is_remote

        key = None
        if not is_remote(path):
            st = os.stat(path.removeprefix("file://"))
            key = (os.path.abspath(path.removeprefix("file://")), treename, st.st_size, st.st_mtime_ns)
            if key in self._checked:
                return self._checked[key]
        with uproot.open(path) as f:
            keys = f[treename].keys()
        if "Rho_fixedGridRhoFastjetAll" in keys:  # NanoAOD v12+ name
            keys.append("fixedGridRhoFastjetAll")
        try:
            role = self.choose(keys)
        except ValueError as err:
            raise ValueError(f"file {path!r}: {err}") from None
        if key is not None:
            self._checked[key] = role
        return role

    def evaluate(self, events: Any, met_pt: np.ndarray, met_phi: np.ndarray) -> JetMET:
        """The lazy corrected jets and MET of one chunk of NanoEvents (see :class:`JetMET`).

        The cache is used when the events carry coffea's chunk metadata (``filename``, ``entrystart``,
        ``entrystop``, as :func:`~wfit.processors.run_templates` gives them); other events are computed in place.
        """
        fname = events.metadata.get("filename", "?")
        try:
            role = self.choose(_event_branches(events))
        except ValueError as err:
            raise ValueError(f"file {fname!r}: {err}") from None
        calibrator = self.model if role == "model" else self.fallback
        assert calibrator is not None
        return JetMET(self, calibrator, self.specs[role], events, met_pt, met_phi, self._chunk(events, calibrator))

    def _chunk(self, events: Any, calibrator: OnnxCalibrator) -> _Chunk | None:
        md = events.metadata
        fname, start, stop = md.get("filename"), md.get("entrystart"), md.get("entrystop")
        if self.cache is None or fname is None or start is None or stop is None:
            return None
        rows = _entry_rows(events, int(stop) - int(start))
        if rows is None:
            return None
        return _Chunk(self.cache, _identity(str(fname), md.get("fileuuid") or None), calibrator.sha256,
                      int(start), int(stop), rows, str(fname))  # fmt: skip


class _Chunk:
    """Where a chunk's cache entry lives: the cache, the file, the model, the range, the events' entries."""

    def __init__(
        self, cache: JetCache, file: FileIdentity, sha256: str, start: int, stop: int, rows: np.ndarray, path: str
    ) -> None:
        self.cache, self.file, self.sha256 = cache, file, sha256
        self.start, self.stop, self.rows, self.path = start, stop, rows, path


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


def _event_branches(events: Any) -> list[str]:
    out = ["fixedGridRhoFastjetAll"] if "Rho" in events.fields else []  # NanoAOD v12+: Rho_fixedGrid...
    for name in events.fields:
        sub = events[name]
        fields = getattr(sub, "fields", [])
        if fields:
            out.append(f"n{name}")
            out += [f"{name}_{f}" for f in fields]
        else:
            out.append(name)
    return out


def _flat(x: Any, dtype: Any = None) -> np.ndarray:
    out = ak.to_numpy(ak.flatten(x, axis=1)) if x.ndim > 1 else ak.to_numpy(x)
    return np.asarray(out, dtype=dtype) if dtype is not None else np.asarray(out)


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
        chunk: _Chunk | None = None,
    ) -> None:
        self._calibration = calibration
        self._calibrator = calibrator
        self._spec = spec
        self._events = events
        self._chunk = chunk
        self._loaded = chunk is None
        self.model = calibrator.path
        self.counts = ak.to_numpy(ak.num(events.Jet, axis=1)).astype(np.int64)  # reads nJet only
        self.offsets = np.zeros(len(self.counts) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=self.offsets[1:])
        self.jet_event = np.repeat(np.arange(len(self.counts)), self.counts)
        self.n_jets = n_jets = int(self.offsets[-1])
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
        self._columns: dict[tuple[str, str], np.ndarray] = {}
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
            self._kin = {name: _flat(jets[name]) for name in KINEMATICS}
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

    # ------------------------------------------------------------------ inputs
    def _column(self, coll: str, field: str) -> np.ndarray:
        """Flat values of one constituent branch over the chunk (read once, shared by the types)."""
        key = (coll, field)
        if key not in self._columns:
            self._columns[key] = _flat(self._events[coll][field])
        return self._columns[key]

    def _links(
        self, coll: str, link: str | None, events: np.ndarray, jets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(global jet index, flat row in ``coll``) of the constituent links of the wanted ``events`` that point
        to the wanted ``jets`` (boolean masks); links to no jet are dropped."""
        ev = self._events
        lk = ev[link if link is not None else coll]
        n_per_event = ak.to_numpy(ak.num(lk, axis=1)).astype(np.int64)
        keep = np.repeat(events, n_per_event)
        which = np.repeat(np.arange(len(n_per_event)), n_per_event)[keep]
        jet_local = _flat(lk.jetIdx, np.int64)[keep]
        if link is None:
            rows = np.flatnonzero(keep)
        else:
            cand_local = _flat(lk.pFCandsIdx, np.int64)[keep]
            n_cand = ak.to_numpy(ak.num(ev[coll], axis=1)).astype(np.int64)
            cand_offsets = np.concatenate([[0], np.cumsum(n_cand)])
            if np.any((cand_local < 0) | (cand_local >= n_cand[which])):
                raise ValueError(
                    f"file {ev.metadata.get('filename', '?')!r}: {link}_pFCandsIdx points outside {coll}; "
                    "the file is inconsistent: regenerate it"
                )
            rows = cand_offsets[which] + cand_local
        ok = (jet_local >= 0) & (jet_local < self.counts[which])  # links to jets outside Jet are dropped
        gjet = self.offsets[which[ok]] + jet_local[ok]
        rows = rows[ok]
        wanted = jets[gjet]
        return gjet[wanted], rows[wanted]

    def _charged(self, coll: str, rows: np.ndarray) -> np.ndarray:
        """Per PF candidate row: charged (else neutral), from pdgId where the model reads it and every id is a
        known PF candidate type, else from the charge."""
        if _reads_pdgid(self._spec):
            pid = np.abs(self._column(coll, "pdgId")[rows].astype(np.int64))
            kind = _PDGID_KIND[np.minimum(pid, len(_PDGID_KIND) - 1)]  # 1 charged, 2 neutral, 0 another type
            if np.all(kind > 0):
                return kind == 1
        return self._column(coll, "charge")[rows] != 0

    def _constituent_table(
        self, name: str, links: tuple[np.ndarray, np.ndarray], charged: np.ndarray | None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(global jet index, {field: values}) of one constituent type, sorted by jet, then decreasing pT."""
        coll, _, charge = _TYPES[name]
        gjet, rows = links
        if charge is not None:
            assert charged is not None
            keep = charged if charge == "charged" else ~charged
            gjet, rows = gjet[keep], rows[keep]
        if np.any(gjet[1:] < gjet[:-1]):  # group by jet (NanoAOD writes them grouped already)
            order = np.argsort(gjet, kind="stable")
            gjet, rows = gjet[order], rows[order]
        # The model sums over constituents, so their order matters only for which ones the max_count cap keeps:
        # sort by decreasing pT (ties: the file's order) only the jets above the cap (a full sort of ~10M
        # candidates per chunk would cost more than the inference).
        cap = self._spec_type(name).max_count
        counts = np.bincount(gjet, minlength=self.n_jets)
        over = np.flatnonzero(counts[gjet] > cap)
        if len(over):
            pt = self._column(coll, "pt")[rows[over]].astype(np.float64)
            order = np.lexsort((-pt, gjet[over]))
            rows = rows.copy()
            rows[over] = rows[over][order]  # the jets' blocks stay in place: gjet[over] is sorted already
        values: dict[str, np.ndarray] = {}
        for feature in self._spec_type(name).branches:
            src_field = _FIELDS[name][feature[len(name) + 1 :]]
            if isinstance(src_field, tuple):
                num, den = (self._column(coll, f)[rows].astype(np.float64) for f in src_field)
                with np.errstate(divide="ignore", invalid="ignore"):
                    values[feature] = np.where(den > 0, num / den, 0.0)
            else:
                values[feature] = self._column(coll, src_field)[rows]
        return gjet, values

    def _spec_type(self, name: str) -> Any:
        return next(c for c in self._spec.constituents if c.name == name)

    def _event_column(self, name: str) -> np.ndarray:
        coll, field = _JET[name]
        if coll is None and field not in self._events.fields:
            coll = "Rho"  # NanoAOD v12+: Rho_fixedGridRhoFastjetAll
        x = self._events[field] if coll is None else self._events[coll][field]
        return ak.to_numpy(x)

    def inputs(self, jets: np.ndarray) -> dict[str, Any]:
        """Feature arrays (``build_inputs``'s input) of the jets with these flat indices (sorted).

        Only the constituent links of these jets' events are followed (the branches themselves are read whole:
        uproot reads baskets).
        """
        ev = self._events
        arrays: dict[str, Any] = {}
        spec = self._spec
        for name in [*spec.jet_numerical, *spec.jet_categorical, "pt", "eta", "phi"]:
            if name in arrays:
                continue
            if name == "pt":
                arrays[name] = self._derive()["raw_pt"][jets]
            elif name == "mass":
                arrays[name] = (_flat(ev.Jet.mass, np.float64) * (1.0 - _flat(ev.Jet.rawFactor, np.float64)))[jets]
            elif _JET[name][0] == "Jet":
                arrays[name] = _flat(ev.Jet[_JET[name][1]])[jets]
            else:
                arrays[name] = self._event_column(name)[self.jet_event[jets]]
        if not spec.constituents:
            return arrays
        wanted = np.zeros(self.n_jets, dtype=bool)
        wanted[jets] = True
        events = np.zeros(len(self.counts), dtype=bool)
        events[self.jet_event[jets]] = True
        links: dict[tuple[str, str | None], tuple[np.ndarray, np.ndarray]] = {}
        charged: dict[str, np.ndarray] = {}
        for c in spec.constituents:
            coll, link, charge = _TYPES[c.name]
            if (coll, link) not in links:
                links[(coll, link)] = self._links(coll, link, events, wanted)
            if charge is not None and coll not in charged:
                charged[coll] = self._charged(coll, links[(coll, link)][1])
            gjet, values = self._constituent_table(c.name, links[(coll, link)], charged.get(coll))
            counts = np.bincount(gjet, minlength=self.n_jets)[jets]
            for feature, v in values.items():
                arrays[feature] = ak.unflatten(v, counts)
        return arrays

    # ------------------------------------------------------------------ evaluation
    def _load(self) -> None:
        """Take what the cache holds for this chunk: the kinematics of the events it knows, and the outputs of
        their jets (those below ``min_raw_pt`` are never used, as in a pass without the cache)."""
        self._loaded = True
        chunk = self._chunk
        assert chunk is not None
        quantiles = self._spec.quantiles
        cached = chunk.cache.read(chunk.file, chunk.sha256, chunk.start, chunk.stop, chunk.rows, self.counts, quantiles)
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
            chunk.file,
            chunk.sha256,
            chunk.start,
            chunk.stop,
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
            out = self._calibrator.predict_outputs(self.inputs(jets))
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


def jet_models_used(calibration: JetCalibration | None, fileset: Mapping[str, Any]) -> dict[str, str]:
    """Pre-flight: check the cache directory and every file of a coffea fileset; ``{file: "model" or "fallback"}``.

    Raises:
        ValueError: A file lacks branches that the calibration needs (naming the file and the fix).
        wfit.processors.jetcache.JetCacheError: The cache directory cannot be written (naming it).
    """
    out: dict[str, str] = {}
    if calibration is None:
        return out
    calibration.check_cache()
    for files in fileset.values():
        if isinstance(files, Mapping):
            files = files.get("files", files)
        if isinstance(files, str):
            files = [files]
        items = files.items() if isinstance(files, Mapping) else ((f, "Events") for f in files)
        for path, tree in items:
            out[str(path)] = calibration.check_file(str(path), tree or "Events")
    return out
