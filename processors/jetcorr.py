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
                   charged = ``PFCands_charge != 0``, neutral = ``== 0``
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
to the MET (jets may cross the threshold) and to mT in the same pass. The model runs only on the jets of the
events that some selection needs (lazily, :class:`JetMET`), since jets change only the MET, hence only mT.

Example:
    >>> calib = JetCalibration("model.onnx", fallback_model="jet_level.onnx")  # doctest: +SKIP
    >>> proc = WTemplateProcessor(jet_calibration=calib)                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import awkward as ak
import numpy as np

from wfit.calib.export import METADATA_KEY, OnnxCalibrator
from wfit.calib.features import FeatureSpec, derived_feature

__all__ = ["FEATURE_SOURCES", "JetCalibration", "JetMET", "type1_met"]

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
_ONNX_FLOAT, _ONNX_INT32 = 1, 6


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


def _load_spec(path: str) -> FeatureSpec:
    """The feature specification of an exported model: metadata, checked against the sidecar if present."""
    import onnx
    import yaml

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf's DecodeError names neither the file nor the fix
        raise ValueError(
            f"{path}: not a readable ONNX model ({type(e).__name__}: {e}); pass the .onnx file written by "
            "wfit.calib.export_onnx"
        ) from e
    meta = {p.key: p.value for p in proto.metadata_props}
    sidecar = path + ".features.yaml"
    spec = None
    if METADATA_KEY in meta:
        spec = FeatureSpec.from_dict(json.loads(meta[METADATA_KEY]), source=f"{path}: metadata {METADATA_KEY}")
    if os.path.exists(sidecar):
        with open(sidecar) as f:
            side = FeatureSpec.from_dict(yaml.safe_load(f), source=sidecar)
        if spec is None:
            spec = side
        elif side.to_dict() != spec.to_dict():
            raise ValueError(
                f"{sidecar} disagrees with the feature specification embedded in {path} ({METADATA_KEY}); "
                "the sidecar belongs to another export: delete it or export the model again"
            )
    if spec is None:
        raise ValueError(
            f"{path}: no feature specification (metadata_props {METADATA_KEY!r} and no {sidecar}); "
            "export the model with wfit.calib.export_onnx"
        )
    _check_graph(path, proto, spec)
    return spec


def _check_graph(path: str, proto: Any, spec: FeatureSpec) -> None:
    """The ONNX graph's inputs must be those that the specification builds (names, dtypes, ranks, widths)."""
    expected: dict[str, tuple[int, int, int | None]] = {
        "jet_numerical": (_ONNX_FLOAT, 2, len(spec.jet_numerical))
    }
    for name in spec.jet_categorical:
        expected[name] = (_ONNX_INT32, 1, None)
    for c in spec.constituents:
        expected[f"{c.name}_numerical"] = (_ONNX_FLOAT, 3, len(c.numerical))
        expected[f"{c.name}_mask"] = (_ONNX_FLOAT, 2, None)
        for name in c.categorical:
            expected[name] = (_ONNX_INT32, 2, None)
    initializers = {i.name for i in proto.graph.initializer}
    graph = {i.name: i for i in proto.graph.input if i.name not in initializers}
    if set(graph) != set(expected):
        raise ValueError(
            f"{path}: the graph's inputs {sorted(graph)} are not those of its feature specification "
            f"{sorted(expected)}; the model and its features.yaml/metadata come from different exports: "
            "export the model again with wfit.calib.export_onnx"
        )
    for name, (dtype, rank, width) in expected.items():
        t = graph[name].type.tensor_type
        dims = list(t.shape.dim)
        last = dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None
        if t.elem_type != dtype or len(dims) != rank or (width is not None and last != width):
            shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
            raise ValueError(
                f"{path}: input {name!r} has shape {shape} and ONNX type {t.elem_type}, but the feature "
                f"specification builds rank {rank}" + (f" with {width} features" if width is not None else "")
                + f" of type {dtype}; the specification does not belong to this model: export it again"
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


def _branches(spec: FeatureSpec) -> list[str]:
    """NanoAOD branches that building this specification's inputs reads."""
    out = ["nJet", "Jet_pt", "Jet_rawFactor", "Jet_phi"]
    for name in [*spec.jet_numerical, *spec.jet_categorical]:
        if name == "mass":
            out.append("Jet_mass")
        elif name in _JET:
            coll, field = _JET[name]
            out.append(field if coll is None else f"{coll}_{field}")
    for c in spec.constituents:
        coll, link, charge = _TYPES[c.name]
        if link is None:
            out += [f"n{coll}", f"{coll}_jetIdx"]
        else:
            out += [f"n{link}", f"{link}_jetIdx", f"{link}_pFCandsIdx", f"n{coll}"]
        if charge:
            out.append(f"{coll}_charge")
        for feature in c.branches:
            src = _FIELDS[c.name][feature[len(c.name) + 1 :]]
            out += [f"{coll}_{s}" for s in (src if isinstance(src, tuple) else (src,))]
    return list(dict.fromkeys(out))


class JetCalibration:
    """A DNN jet calibration for :class:`~wfit.processors.WTemplateProcessor`; checked when constructed.

    Construction loads the ONNX graphs' metadata (not an onnxruntime session) and checks: the file exists;
    its feature specification (metadata, and the sidecar when present) matches the graph's inputs; every
    feature has a NanoAOD source; the fallback is a jet-level model. onnxruntime sessions are created lazily
    on the worker and are not pickled (:class:`wfit.calib.OnnxCalibrator`).

    Args:
        model: ONNX file from :func:`wfit.calib.export_onnx`.
        fallback_model: A jet-level ONNX model (no constituents) for files without ``JetPFCands``/``PFCands``/
            ``JetSVs``; None makes such files an error (when ``model`` needs constituents).
        variation: Relative size of the ``jetCalib{Up,Down}`` variation of the predicted correction.
        met_jet_pt_min: Corrected-pT threshold of the jets propagated to the MET, GeV.
        batch_size: Jets per feature-building and inference batch.
        threads: onnxruntime intra-op threads (1: one core per worker).

    Raises:
        FileNotFoundError: A model file does not exist.
        ValueError: A specification/graph mismatch, a feature without a NanoAOD source, a fallback that needs
            constituents, or a bad option; the message names the file, the input or feature, and the fix.
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
    ) -> None:
        if not 0.0 <= variation < 1.0:
            raise ValueError(f"JetCalibration.variation must be in [0, 1), got {variation}")
        if batch_size < 1:
            raise ValueError(f"JetCalibration.batch_size must be positive, got {batch_size}")
        self.variation = float(variation)
        self.met_jet_pt_min = float(met_jet_pt_min)
        self.model = self._calibrator(model, batch_size, threads)
        self.specs = {"model": _load_spec(self.model.path)}
        self.fallback = None
        if fallback_model is not None:
            self.fallback = self._calibrator(fallback_model, batch_size, threads)
            self.specs["fallback"] = _load_spec(self.fallback.path)
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

    @staticmethod
    def _calibrator(path: str | os.PathLike[str], batch_size: int, threads: int) -> OnnxCalibrator:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: jet calibration model not found; pass the .onnx file written by wfit.calib.export_onnx"
            )
        return OnnxCalibrator(path, threads=threads, chunk_size=batch_size)

    @property
    def needs_constituents(self) -> bool:
        """Whether the main model reads constituents."""
        return bool(self.specs["model"].constituents)

    def branches(self, role: str = "model") -> list[str]:
        """NanoAOD branches that the ``"model"`` or the ``"fallback"`` reads."""
        return _branches(self.specs[role])

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
        """Pre-flight check of one input file (branch names only); returns the role that will run on it."""
        import uproot

        with uproot.open(path) as f:
            keys = f[treename].keys()
        if "Rho_fixedGridRhoFastjetAll" in keys:  # NanoAOD v12+ name
            keys.append("fixedGridRhoFastjetAll")
        try:
            return self.choose(keys)
        except ValueError as err:
            raise ValueError(f"file {path!r}: {err}") from None

    def evaluate(self, events: Any, met_pt: np.ndarray, met_phi: np.ndarray) -> JetMET:
        """The lazy corrected jets and MET of one chunk of NanoEvents (see :class:`JetMET`)."""
        fname = events.metadata.get("filename", "?")
        try:
            role = self.choose(_event_branches(events))
        except ValueError as err:
            raise ValueError(f"file {fname!r}: {err}") from None
        calibrator = self.model if role == "model" else self.fallback
        assert calibrator is not None
        return JetMET(self, calibrator, self.specs[role], events, met_pt, met_phi)


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

    The model runs once per jet, on the jets of the events in the masks passed to :meth:`met`, the first
    time each event is needed. Jets are flat over the chunk, in event order.

    Attributes:
        counts: Jets per event.
        nano_pt: ``Jet_pt`` (standard JEC), GeV.
        raw_pt: ``Jet_pt * (1 - Jet_rawFactor)``, GeV.
        phi: ``Jet_phi``.
        correction: Predicted multiplicative correction of the raw pT; NaN for jets not evaluated yet.
        model: Path of the model that ran (main or fallback).
    """

    def __init__(
        self,
        calibration: JetCalibration,
        calibrator: OnnxCalibrator,
        spec: FeatureSpec,
        events: Any,
        met_pt: np.ndarray,
        met_phi: np.ndarray,
    ) -> None:
        self._calibration = calibration
        self._calibrator = calibrator
        self._spec = spec
        self._events = events
        self.model = calibrator.path
        jets = events.Jet
        self.counts = ak.to_numpy(ak.num(jets, axis=1)).astype(np.int64)
        self.offsets = np.zeros(len(self.counts) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=self.offsets[1:])
        self.jet_event = np.repeat(np.arange(len(self.counts)), self.counts)
        self.nano_pt = _flat(jets.pt, np.float64)
        self.raw_pt = self.nano_pt * (1.0 - _flat(jets.rawFactor, np.float64))
        self.phi = _flat(jets.phi, np.float64)
        self.correction = np.full(len(self.nano_pt), np.nan)
        self._done = np.zeros(len(self.counts), dtype=bool)
        met_pt = np.asarray(met_pt, dtype=np.float64)
        self._met = (met_pt * np.cos(met_phi), met_pt * np.sin(met_phi))
        self._constituents: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        self._columns: dict[tuple[str, str], np.ndarray] = {}
        self._link_rows: dict[tuple[str, str | None], tuple[np.ndarray, np.ndarray]] = {}
        self._delta: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------------ inputs
    def _column(self, coll: str, field: str) -> np.ndarray:
        """Flat values of one constituent branch over the chunk (read once, shared by the types)."""
        key = (coll, field)
        if key not in self._columns:
            self._columns[key] = _flat(self._events[coll][field])
        return self._columns[key]

    def _links(self, coll: str, link: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(global jet index, flat row in ``coll``) of each constituent link; links to no jet are dropped."""
        key = (coll, link)
        if key in self._link_rows:
            return self._link_rows[key]
        ev = self._events
        lk = ev[link if link is not None else coll]
        n_per_event = ak.to_numpy(ak.num(lk, axis=1))
        which = np.repeat(np.arange(len(n_per_event)), n_per_event)
        jet_local = _flat(lk.jetIdx, np.int64)
        if link is None:
            rows = np.arange(len(jet_local))
        else:
            cand_local = _flat(lk.pFCandsIdx, np.int64)
            n_cand = ak.to_numpy(ak.num(ev[coll], axis=1)).astype(np.int64)
            cand_offsets = np.concatenate([[0], np.cumsum(n_cand)])
            if np.any((cand_local < 0) | (cand_local >= n_cand[which])):
                raise ValueError(
                    f"file {ev.metadata.get('filename', '?')!r}: {link}_pFCandsIdx points outside {coll}; "
                    "the file is inconsistent: regenerate it"
                )
            rows = cand_offsets[which] + cand_local
        ok = (jet_local >= 0) & (jet_local < self.counts[which])  # links to jets outside Jet are dropped
        self._link_rows[key] = ((self.offsets[which] + jet_local)[ok], rows[ok])
        return self._link_rows[key]

    def _constituent_table(self, name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(global jet index, {field: values}) of one constituent type, sorted by jet, then decreasing pT."""
        if name in self._constituents:
            return self._constituents[name]
        coll, link, charge = _TYPES[name]
        gjet, rows = self._links(coll, link)
        cache: dict[str, np.ndarray] = {}

        def column(field: str) -> np.ndarray:
            if field not in cache:
                cache[field] = self._column(coll, field)[rows]
            return cache[field]

        if charge is not None:
            q = column("charge")
            keep = q != 0 if charge == "charged" else q == 0
            gjet, rows = gjet[keep], rows[keep]
            cache.clear()
        if np.any(gjet[1:] < gjet[:-1]):  # group by jet (NanoAOD writes them grouped already)
            order = np.argsort(gjet, kind="stable")
            gjet, rows = gjet[order], rows[order]
            cache.clear()
        # The model sums over constituents, so their order matters only for which ones the max_count cap keeps:
        # sort by decreasing pT (ties: the file's order) only the jets above the cap (a full sort of ~10M
        # candidates per chunk would cost more than the inference).
        cap = self._spec_type(name).max_count
        counts = np.bincount(gjet, minlength=len(self.nano_pt))
        over = np.flatnonzero(counts[gjet] > cap)
        if len(over):
            order = np.lexsort((-column("pt")[over].astype(np.float64), gjet[over]))
            rows = rows.copy()  # (the link table is shared by the types)
            rows[over] = rows[over][order]  # the jets' blocks stay in place: gjet[over] is sorted already
            cache.clear()
        values: dict[str, np.ndarray] = {}
        for feature in self._spec_type(name).branches:
            src_field = _FIELDS[name][feature[len(name) + 1 :]]
            if isinstance(src_field, tuple):
                num, den = (column(f).astype(np.float64) for f in src_field)
                with np.errstate(divide="ignore", invalid="ignore"):
                    values[feature] = np.where(den > 0, num / den, 0.0)
            else:
                values[feature] = column(src_field)
        self._constituents[name] = (gjet, values)
        return self._constituents[name]

    def _spec_type(self, name: str) -> Any:
        return next(c for c in self._spec.constituents if c.name == name)

    def _event_column(self, name: str) -> np.ndarray:
        coll, field = _JET[name]
        if coll is None and field not in self._events.fields:
            coll = "Rho"  # NanoAOD v12+: Rho_fixedGridRhoFastjetAll
        x = self._events[field] if coll is None else self._events[coll][field]
        return ak.to_numpy(x)

    def inputs(self, jets: np.ndarray) -> dict[str, Any]:
        """Feature arrays (``build_inputs``'s input) of the jets with these flat indices (sorted)."""
        ev = self._events
        arrays: dict[str, Any] = {}
        spec = self._spec
        for name in [*spec.jet_numerical, *spec.jet_categorical, "pt", "eta", "phi"]:
            if name in arrays:
                continue
            if name == "pt":
                arrays[name] = self.raw_pt[jets]
            elif name == "mass":
                arrays[name] = (_flat(ev.Jet.mass, np.float64) * (1.0 - _flat(ev.Jet.rawFactor, np.float64)))[jets]
            elif _JET[name][0] == "Jet":
                arrays[name] = _flat(ev.Jet[_JET[name][1]])[jets]
            else:
                arrays[name] = self._event_column(name)[self.jet_event[jets]]
        for c in spec.constituents:
            gjet, values = self._constituent_table(c.name)
            wanted = np.zeros(len(self.nano_pt), dtype=bool)
            wanted[jets] = True
            keep = wanted[gjet]
            counts = np.bincount(gjet[keep], minlength=len(self.nano_pt))[jets]
            for feature, v in values.items():
                arrays[feature] = ak.unflatten(v[keep], counts)
        return arrays

    # ------------------------------------------------------------------ evaluation
    def ensure(self, mask: np.ndarray) -> None:
        """Run the model on the jets of the events in ``mask`` that were not evaluated yet."""
        todo = np.asarray(mask, dtype=bool) & ~self._done
        if not todo.any():
            return
        jets = np.flatnonzero(np.repeat(todo, self.counts))
        if len(jets):
            self.correction[jets] = np.exp(self._calibrator.predict(self.inputs(jets)).astype(np.float64))
        self._done |= todo

    def pt(self, variation: str = "nominal", jets: Any = slice(None)) -> np.ndarray:
        """Corrected jet pT (``"nominal"``, ``"up"`` or ``"down"``), GeV; NaN for jets not evaluated.

        Args:
            variation: Which correction.
            jets: A selection of the flat jets (index, boolean mask or slice); all by default.
        """
        s = {"nominal": 0.0, "up": self._calibration.variation, "down": -self._calibration.variation}[variation]
        return self.raw_pt[jets] * self.correction[jets] * (1.0 + s)

    def met_xy(self, mask: np.ndarray, variation: str = "nominal") -> tuple[np.ndarray, np.ndarray]:
        """Type-1 corrected MET components of the events in ``mask`` (length ``mask.sum()``), GeV.

        The jets' MET change of an event is computed once per variation and reused: the selections of the
        other systematic variations mostly ask for the same events again.
        """
        mask = np.asarray(mask, dtype=bool)
        if variation not in self._delta:
            n = len(self.counts)
            self._delta[variation] = (np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool))
        dx, dy, done = self._delta[variation]
        todo = mask & ~done
        if todo.any():
            self.ensure(todo)
            todo = self._done & ~done  # every evaluated event at once: later masks mostly ask for the same
            on = np.repeat(todo, self.counts)
            events = np.flatnonzero(todo)
            position = np.cumsum(todo) - 1  # index of an event among those computed now
            zero = np.zeros(len(events))
            mx, my = type1_met(
                zero,
                zero,
                position[self.jet_event[on]],
                self.nano_pt[on],
                self.pt(variation, on),
                self.phi[on],
                self._calibration.met_jet_pt_min,
            )
            dx[events], dy[events] = mx, my
            done |= todo
        return self._met[0][mask] + dx[mask], self._met[1][mask] + dy[mask]

    def met(self, mask: np.ndarray, variation: str = "nominal") -> tuple[np.ndarray, np.ndarray]:
        """Type-1 corrected MET ``(pt, phi)`` of the events in ``mask`` (length ``mask.sum()``)."""
        mx, my = self.met_xy(mask, variation)
        return np.hypot(mx, my), np.arctan2(my, mx)


def jet_models_used(calibration: JetCalibration | None, fileset: Mapping[str, Any]) -> dict[str, str]:
    """Pre-flight: check every file of a coffea fileset; ``{file: "model" or "fallback"}``.

    Raises:
        ValueError: A file lacks branches that the calibration needs (naming the file and the fix).
    """
    out: dict[str, str] = {}
    if calibration is None:
        return out
    for files in fileset.values():
        if isinstance(files, Mapping):
            files = files.get("files", files)
        if isinstance(files, str):
            files = [files]
        items = files.items() if isinstance(files, Mapping) else ((f, "Events") for f in files)
        for path, tree in items:
            out[str(path)] = calibration.check_file(str(path), tree or "Events")
    return out
