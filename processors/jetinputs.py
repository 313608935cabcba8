"""NanoAOD -> the inputs of a DNN jet-calibration model: which branch feeds which feature, and the per-jet and
per-constituent arrays that :func:`wfit.calib.features.build_inputs` turns into model inputs.

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
Derived features (``<t>_rel_pt``, ``<t>_deta``, ``<t>_dphi``) are computed from these by ``build_inputs``,
relative to the raw jet. Constituents of a jet are ordered by decreasing pT (ml-jec's order, which decides
which ones survive the ``max_count`` cap; since the model sums over constituents, only the jets above the
cap are sorted). Features with no NanoAOD source (generator-level ones such as ``pt_gen`` or
``hadron_flavor``, ``ne_hcal_frac``, ``ch_num_hits``, SV eta/phi) make the model unusable:
:class:`~wfit.processors.JetCalibration` refuses it when it is constructed (:func:`unmapped_features`).

The charged/neutral split of the PF candidates comes from ``PFCands_pdgId`` when the model reads it anyway
(``ch_id``/``ne_id``): charged are ``|pdgId|`` 11, 13 and 211, neutral 1, 2, 22 and 130 (the PF candidate
types of MiniAOD); a chunk with any other pdgId reads ``PFCands_charge`` instead, so the split is always the
charge's. Only the constituent links of the wanted jets' events are followed (:class:`ModelInputs`).
"""

from __future__ import annotations

import functools
from typing import Any

import awkward as ak
import numpy as np

from wfit.calib.features import FeatureSpec, derived_feature

__all__ = [
    "CHARGED_PDGIDS",
    "FEATURE_SOURCES",
    "NEUTRAL_PDGIDS",
    "ModelInputs",
    "event_branches",
    "flat_values",
    "model_branches",
    "reads_pdgid",
    "unmapped_features",
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


def unmapped_features(spec: FeatureSpec) -> list[str]:
    """The features of this specification (derived ones by their base) that have no NanoAOD source."""
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


def reads_pdgid(spec: FeatureSpec) -> bool:
    """Whether the model reads ``PFCands_pdgId`` as a feature (then it also splits charged from neutral)."""
    return any(
        _FIELDS[c.name][f[len(c.name) + 1 :]] == "pdgId"
        for c in spec.constituents
        if c.name in ("ch", "ne")
        for f in c.branches
    )


def model_branches(spec: FeatureSpec) -> list[str]:
    """NanoAOD branches that building this specification's inputs reads."""
    out = ["nJet", "Jet_pt", "Jet_rawFactor", "Jet_phi"]
    for name in [*spec.jet_numerical, *spec.jet_categorical]:
        if name == "mass":
            out.append("Jet_mass")
        elif name in _JET:
            coll, field = _JET[name]
            out.append(field if coll is None else f"{coll}_{field}")
    pdgid = reads_pdgid(spec)
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


def event_branches(events: Any) -> list[str]:
    """The NanoAOD branch names that a chunk of NanoEvents holds (``n<Coll>`` and ``<Coll>_<field>``)."""
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


def flat_values(x: Any, dtype: Any = None) -> np.ndarray:
    """A jagged (or flat) awkward array's values as one numpy array, optionally cast."""
    out = ak.to_numpy(ak.flatten(x, axis=1)) if x.ndim > 1 else ak.to_numpy(x)
    return np.asarray(out, dtype=dtype) if dtype is not None else np.asarray(out)


class ModelInputs:
    """The model's input arrays for chosen jets of one chunk of NanoEvents; constituent branches are read (whole,
    as uproot reads baskets) the first time a jet needs them, once per chunk, and shared by the types.

    Args:
        events: The chunk's NanoEvents.
        spec: The model's feature specification.
        counts: Jets per event.
    """

    def __init__(self, events: Any, spec: FeatureSpec, counts: np.ndarray) -> None:
        self._events = events
        self._spec = spec
        self.counts = counts
        self.offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.offsets[1:])
        self.n_jets = int(self.offsets[-1])
        self._columns: dict[tuple[str, str], np.ndarray] = {}

    @functools.cached_property
    def jet_event(self) -> np.ndarray:
        """The event (index in the chunk) of each jet."""
        return np.repeat(np.arange(len(self.counts)), self.counts)

    def _column(self, coll: str, field: str) -> np.ndarray:
        """Flat values of one constituent branch over the chunk (read once, shared by the types)."""
        key = (coll, field)
        if key not in self._columns:
            self._columns[key] = flat_values(self._events[coll][field])
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
        jet_local = flat_values(lk.jetIdx, np.int64)[keep]
        if link is None:
            rows = np.flatnonzero(keep)
        else:
            cand_local = flat_values(lk.pFCandsIdx, np.int64)[keep]
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
        if reads_pdgid(self._spec):
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

    def build(self, jets: np.ndarray, raw_pt: np.ndarray) -> dict[str, Any]:
        """Feature arrays (``build_inputs``'s input) of the jets with these flat indices (sorted); ``raw_pt`` is
        every jet's raw pT (GeV).

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
                arrays[name] = raw_pt[jets]
            elif name == "mass":
                arrays[name] = (
                    flat_values(ev.Jet.mass, np.float64) * (1.0 - flat_values(ev.Jet.rawFactor, np.float64))
                )[jets]
            elif _JET[name][0] == "Jet":
                arrays[name] = flat_values(ev.Jet[_JET[name][1]])[jets]
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
