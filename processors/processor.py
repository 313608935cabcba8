"""The coffea processor that fills W lepton (eta, pT, charge) templates with weight systematics.

:class:`WTemplateProcessor` runs on NanoAOD (``NanoAODSchema``) under
:func:`~wfit.processors.runner.run_templates` with any of its executors (iterative, futures, Dask), which
give the same histograms. Per dataset the output holds

* ``templates``: nominal weights, axes ``(component, mt, iso, charge, eta, pt)``, all mT x isolation
  cells (the control cells feed a data-driven fake estimate);
* ``templates_syst``: axes ``(syst, component, charge, eta, pt)`` for the signal-region cell
  (mT >= 40 GeV, iso < 0.15 by default), one entry of the StrCategory ``syst`` axis per variation,
  ``nominal`` included (names declared in :data:`wfit.processors.systematics.SYSTEMATICS`);
* ``cutflow`` (event counts) and ``cutflow_sumw`` (sums of sign(genWeight)) per selection step;
* ``sumw`` (sum of genWeight), ``sumw_sign`` (sum of sign(genWeight)) and ``nevents`` over all
  processed events; ``nonfinite_events``: events dropped for a non-finite value (with ``nonfinite="drop"``, see below);
  ``skipped``: a set of ``"variation: reason (file)"`` strings;
* ``kind``: ``{"data"}``, ``{"mc"}`` or ``{"signal"}``;
* ``jet_calibration``: with a :class:`~wfit.processors.jetcorr.JetCalibration`, a set of
  ``"<model file> (<file>)"`` strings saying which model (main or jet-level fallback) corrected each file.

With ``jet_calibration`` the MET of every event is type-1 corrected for the DNN-corrected jets (see
:mod:`wfit.processors.jetcorr`), so mT, the mT axis and the signal region use it; MC gets the
``jetCalib{Up,Down}`` variation (the correction scaled by ``1 +- variation``, propagated to MET and mT) in
``templates_syst``.

All histograms use Weight storage (sum of weights and of squared weights). MC events are filled with
sign(genWeight) times the efficiency scale factor, pileup and prefiring weights (where available; see
:mod:`wfit.processors.weights`); the normalisation ``xsec * lumi / sumw_sign`` is applied when the workspace
is made. (Normalising by the sum of genWeight is right only for histograms filled with genWeight itself;
with sign weights the matching denominator is the sum of signs, and both sums are kept.)

Signal datasets (``signal_datasets``) are split by generator W charge x |y_W| bin x helicity
(component index in :attr:`TemplateConfig.component_names`, one more index for events without a
generator W -> l nu); each event enters the three helicity components with the weights of
:func:`wfit.processors.helicity.polarization_weights`, which sum to one.

Behaviour on special inputs (each one is tested):

* data files (no ``genWeight``) are data: weight 1, only ``nominal``, no MC weights expected;
* a file without a branch that a variation needs (``LHEScaleWeight``, ``LHEPdfWeight``, pileup,
  prefiring, or such a branch with zero entries per event) skips that variation and records it in
  ``skipped``; it never crashes and never skips silently;
* an empty file (zero events) adds zero events and empty histograms;
* an event with a NaN or infinite genWeight, MET (pt, phi) or muon/electron pT, eta or phi is an error
  naming the file, the entry and the branch; with ``TemplateConfig(nonfinite="drop")`` it is dropped
  before the selection instead (it enters no histogram, cutflow step nor sum of weights; ``nevents`` still
  counts it) and counted in ``nonfinite_events``;
* NanoAOD v15 stores the MET as ``PFMET_*``: ``MET_*`` is used when present, ``PFMET_*`` otherwise;
* a file without ``luminosityBlock`` (``missing_luminosityBlock.root``) is refused by coffea's
  ``NanoAODSchema`` ("missing event ID fields"): its chunks fail, on purpose, because event
  identification is needed for run-dependent corrections and for the per-event smearing seeds;
* a file without a branch that the selection itself needs raises a ``ValueError`` naming the file,
  the branch and the fix.

Example:
    >>> from wfit.processors import WTemplateProcessor, run_templates  # doctest: +SKIP
    >>> run = run_templates({"data": ["nano_dimuon.root"]}, WTemplateProcessor())  # doctest: +SKIP
    >>> run.output["data"]["templates"].sum()  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any, Literal, NamedTuple

import awkward as ak
import hist
import numpy as np
from coffea import processor

from wfit.columns import ColumnChunks

from .accumulator import Accumulator
from .config import TemplateConfig
from .corrections import default_corrections_path, load_corrections
from .helicity import GEN_FIELDS, AngularCoefficients, ComponentSplit, expand_components, gen_w_from_events
from .jetcorr import JetCalibration, JetMET, jet_models_used
from .reading import EVENT_ID_BRANCHES, event_branches, event_ids, finite_events, read_leptons, read_met
from .selection import CUTFLOW_STEPS, Leptons, Selection, select_events
from .systematics import NOMINAL, SYSTEMATICS, curvature_variations
from .weights import Skip, event_weights, lepton_weights, lhe_variations, ptw_bin, weight_branches

__all__ = ["WTemplateProcessor"]

Kind = Literal["data", "mc", "signal"]
#: One fill of ``templates_syst``: (variation, coordinates (component, charge, eta, pt), weights).
_Fill = tuple[str, dict[str, np.ndarray], np.ndarray]
#: Variations that move the same few entries only: (their coordinates, nominal weights, [(variation, weights)]).
_Partial = tuple[dict[str, np.ndarray], np.ndarray, list[tuple[str, np.ndarray]]]


def _axes(config: TemplateConfig) -> tuple[Any, Any, Any]:
    eta = hist.axis.Regular(*config.eta_bins, name="eta", label="lepton eta")
    pt = hist.axis.Regular(*config.pt_bins, name="pt", label="lepton pT [GeV]")
    charge = hist.axis.IntCategory([-1, 1], name="charge", label="lepton charge", overflow=False)
    return eta, pt, charge


def _component_axis(config: TemplateConfig, signal: bool) -> Any:
    n = config.n_components + 1 if signal else 1
    return hist.axis.Integer(0, n, name="component", label="process component", flow=False)


def syst_histogram(config: TemplateConfig, signal: bool, names: list[str]) -> hist.Hist:
    """The empty ``templates_syst`` histogram, axes ``(syst, component, charge, eta, pt)``, with these variations
    (``signal``: one component per W charge x |y_W| x helicity, and the unmatched one)."""
    eta, pt, charge = _axes(config)
    return hist.Hist(
        hist.axis.StrCategory(names, growth=True, name="syst", label="systematic variation"),
        _component_axis(config, signal),
        charge,
        eta,
        pt,
        storage=hist.storage.Weight(),
    )


class _Rows(NamedTuple):
    """The fill entries of one selection: entry ``i`` is selected event ``rep[i]`` in component ``comp[i]``
    with weight ``w[rep[i]] * fac[i]`` (``w`` per selected event)."""

    sel: Selection
    rep: np.ndarray
    comp: np.ndarray
    fac: np.ndarray
    w: np.ndarray

    def table(
        self, ratios: Mapping[str, np.ndarray] | None = None, mt: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, Any]:
        """The entries as columns (:data:`wfit.columns.TABLE_COLUMNS`), with per-entry weight ratios and mT
        variations (given per selected event)."""
        sel, rep = self.sel, self.rep
        out: dict[str, Any] = {
            "pt": sel.pt[rep],
            "eta": sel.eta[rep],
            "charge": sel.charge[rep],
            "mt": sel.mt[rep],
            "iso": sel.iso[rep],
            "component": self.comp,
            "fac": self.fac,
            "w": self.w[rep],
        }
        out["ratios"] = {name: r[rep] for name, r in (ratios or {}).items()}
        out["mt_variations"] = {name: m[rep] for name, m in (mt or {}).items()}
        return out


class WTemplateProcessor(processor.ProcessorABC):
    """Fill W lepton (eta, pT, charge) templates with weight and kinematic systematics.

    See the module docstring for the output, the conventions and the behaviour on special inputs.

    Args:
        config: Binning, cuts and systematic options.
        signal_datasets: Dataset names of W MC to split into charge x |y_W| x helicity components.
        coefficients: A0/A4 per (charge, |y_W|, pT_W) bin (from
            :class:`~wfit.processors.moments.AngularCoefficientsProcessor`), needed for signal datasets.
        corrections: Path of a correctionlib JSON with the scale factors and pileup weights;
            ``"example"`` (default) for the shipped example, ``None`` for no corrections (the scale
            factor and pileup variations are then recorded as skipped).
        jet_calibration: A DNN jet calibration to apply (checked when it is constructed), or None to keep
            NanoAOD's jets and MET.
        event_columns: Also output, per dataset, the fill entries of every selected event before the
            signal-region cut (``columns``, a :class:`wfit.columns.ColumnChunks`; written to a file by
            :func:`wfit.columns.write_columns`): what the cuts act on and the templates are filled from, for
            differentiable cuts (:mod:`wfit.fitter.cutopt`). The other outputs are unchanged.
    """

    def __init__(
        self,
        config: TemplateConfig | None = None,
        *,
        signal_datasets: Collection[str] = (),
        coefficients: AngularCoefficients | None = None,
        corrections: str | os.PathLike[str] | None = "example",
        jet_calibration: JetCalibration | None = None,
        event_columns: bool = False,
    ) -> None:
        self.event_columns = bool(event_columns)
        if self.event_columns and config is not None and config.qcd_ptw_edges is not None:
            raise ValueError(
                "WTemplateProcessor(event_columns=True) records per-event weight ratios, not the QCD scale "
                "variations in W pT bins (TemplateConfig.qcd_ptw_edges): pass a config with qcd_ptw_edges=None for "
                "the columns"
            )
        if jet_calibration is not None and not isinstance(jet_calibration, JetCalibration):
            raise TypeError(
                "WTemplateProcessor(jet_calibration=...) takes a wfit.processors.JetCalibration, got "
                f"{type(jet_calibration).__name__}: wrap the model path, JetCalibration('model.onnx')"
            )
        self.jet_calibration = jet_calibration
        self.config = config or TemplateConfig()
        self.signal_datasets = frozenset(signal_datasets)
        if self.signal_datasets and coefficients is None:
            raise ValueError(
                "signal_datasets need angular coefficients: run AngularCoefficientsProcessor on the W MC and "
                "pass coefficients=AngularCoefficients.from_moments(out[dataset]['moments'])"
            )
        self.coefficients = coefficients
        if corrections == "example":
            corrections = default_corrections_path()
        self.corrections = None if corrections is None else str(corrections)
        self._cset: Any = None

    # The correctionlib object is created lazily on the worker and never pickled.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cset"] = None
        return state

    def preflight(self, fileset: Mapping[str, Any]) -> dict[str, str]:
        """Check the inputs before any chunk is processed (the jet calibration's branches in every file).

        :func:`~wfit.processors.runner.run_templates` calls it. Returns ``{file: "model" or "fallback"}``
        (empty without a jet calibration); raises ``ValueError`` naming the file, the missing branches and
        the fix.
        """
        return jet_models_used(self.jet_calibration, fileset)

    @property
    def cset(self) -> Any:
        if self._cset is None and self.corrections is not None:
            self._cset = load_corrections(self.corrections)
        return self._cset

    def branches(self, dataset: str) -> list[str]:
        """NanoAOD branches that processing a chunk of ``dataset`` reads (alternatives included: a file has
        some of them). :func:`~wfit.processors.runner.run_templates` preloads them in one bulk read per
        chunk, which is faster than NanoEvents' reading of one branch at a time; a branch left out here is
        still read when it is accessed. (Collision data reads the three event-ID branches of the resolution
        smearing in vain: the list cannot tell data from MC.)"""
        cfg = self.config
        out = event_branches(cfg) + weight_branches(cfg)
        if cfg.variations and cfg.curvature is not None and any(r > 0 for r in cfg.curvature.resolution):
            out += EVENT_ID_BRANCHES
        if dataset in self.signal_datasets:
            out += ["nGenPart", *(f"GenPart_{f}" for f in GEN_FIELDS)]
        if self.jet_calibration is not None:  # with a cache, the model's inputs are read only where needed
            out += self.jet_calibration.preload_branches()
        return list(dict.fromkeys(out))

    # ------------------------------------------------------------------ histograms
    def empty_output(self, dataset: str, kind: Kind) -> Accumulator:
        """The output of a chunk without events (the identity of the accumulation)."""
        cfg = self.config
        eta, pt, charge = _axes(self.config)
        comp = _component_axis(self.config, kind == "signal")
        templates = hist.Hist(
            comp,
            hist.axis.Variable(cfg.mt_edges, name="mt", label="mT [GeV]"),
            hist.axis.Variable(cfg.iso_edges, name="iso", label="relative isolation"),
            charge,
            eta,
            pt,
            storage=hist.storage.Weight(),
        )
        syst = syst_histogram(self.config, kind == "signal", [])
        return Accumulator(
            {
                dataset: Accumulator(
                    {
                        "templates": templates,
                        "templates_syst": syst,
                        "cutflow": Accumulator(dict.fromkeys((*CUTFLOW_STEPS, "signal_region"), 0)),
                        "cutflow_sumw": Accumulator(dict.fromkeys((*CUTFLOW_STEPS, "signal_region"), 0.0)),
                        "sumw": 0.0,
                        "sumw_sign": 0.0,
                        "nevents": 0,
                        "nonfinite_events": 0,
                        "skipped": set(),
                        "kind": {kind},
                        "jet_calibration": set(),
                    }
                )
            }
        )

    # ------------------------------------------------------------------ processing
    def process(self, events: Any) -> Accumulator:
        cfg = self.config
        dataset = events.metadata.get("dataset", "unknown")
        fname = os.path.basename(str(events.metadata.get("filename", "?")))
        is_mc = "genWeight" in events.fields
        kind = self._kind(dataset, fname, is_mc)
        out = self.empty_output(dataset, kind)
        res = out[dataset]
        res["nevents"] = len(events)
        if len(events) == 0:
            return out
        events = self._drop_nonfinite(events, is_mc, res)
        skipped: set[str] = res["skipped"]

        def skip(variation: str, reason: str) -> None:
            skipped.add(f"{variation}: {reason} ({fname})")

        # Selections: nominal, and re-selected with each varied muon kinematics (their fills come last).
        muons, electrons = read_leptons(events, cfg)
        met_pt, met_phi = read_met(events)
        # With a jet calibration, mT comes from the type-1 corrected MET (below), not from the stored one.
        stored = (met_pt, met_phi) if self.jet_calibration is None else (None, None)
        sel = select_events(muons, electrons, *stored, cfg)
        kinematic = self._kinematic_selections(events, muons, electrons, met_pt, met_phi, kind)
        needed = sel.mask.copy()  # the events that some selection fills
        for _, vsel, _ in kinematic:
            needed |= vsel.mask
        jets = self._calibrate_jets(events, met_pt, met_phi, needed, res, fname)
        if jets is not None:
            sel = sel.with_met(*jets.met_xy(sel.mask))

        # Weights: generator sign, event-level weights (full length), the selected lepton's scale factor.
        sign = self._generator_sign(events, is_mc, res)
        evt_w, evt_vars = event_weights(events, sign, needed, cfg, self.cset, skip) if is_mc else (sign.copy(), {})
        split = self._component_split(events, kind)
        rep, comp, fac = expand_components(split, sel.mask)
        lep_w, lep_vars = self._lepton_weights(sel, is_mc, skip)
        w_sel = evt_w[sel.mask] * lep_w

        self._fill_cutflow(res, sel, sign)
        res["templates"].fill(
            component=comp,
            mt=sel.mt[rep],
            iso=sel.iso[rep],
            charge=sel.charge[rep],
            eta=sel.eta[rep],
            pt=sel.pt[rep],
            weight=w_sel[rep] * fac,
        )

        # Signal region: nominal and variations.
        in_sr = sel.in_signal_region(cfg)[rep]
        r_sr, c_sr, f_sr = rep[in_sr], comp[in_sr], fac[in_sr]
        coords = dict(component=c_sr, charge=sel.charge[r_sr], eta=sel.eta[r_sr], pt=sel.pt[r_sr])
        fills: list[_Fill] = [(NOMINAL, coords, w_sel[r_sr] * f_sr)]
        # Per selected event, the ratio of each weight variation's weight to the nominal one.
        ratios: dict[str, np.ndarray] = {}
        jet_sels: list[tuple[str, Selection]] = []
        kin_rows: list[tuple[str, _Rows]] = []
        partial: list[_Partial] = []
        if is_mc and cfg.variations:
            ratios.update(lep_vars)
            ratios.update((name, ratio[sel.mask]) for name, ratio in evt_vars.items())
            ratios.update(lhe_variations(events, sel.mask, cfg, skip))
            for name, ratio in ratios.items():
                fills.append((name, coords, (w_sel * ratio)[r_sr] * f_sr))
            if split is not None and cfg.qcd_ptw_edges is not None:
                partial += self._ptw_fills(split.pt[sel.mask][r_sr], coords, w_sel, ratios, r_sr, f_sr)
            if jets is not None:
                jet_sels = self._jet_selections(sel, jets)
                fills += self._jet_fills(sel, jet_sels, w_sel, rep, comp, fac)
            kin_rows = self._kinematic_rows(kinematic, jets, evt_w, split)
            fills += self._kinematic_fills(kin_rows)
        res["templates_syst"] = self._fill_syst(kind, fills, partial)
        if self.event_columns:
            kept = {f[0] for f in fills if f[0] != NOMINAL and SYSTEMATICS.resolve(f[0]).systematic.filled_for(kind)}
            nominal = _Rows(sel, rep, comp, fac, w_sel)
            res["columns"] = ColumnChunks.from_chunk(
                events.metadata,
                {
                    NOMINAL: nominal.table(
                        ratios={n: r for n, r in ratios.items() if n in kept},
                        mt={n: j.mt for n, j in jet_sels if n in kept},
                    ),
                    **{n: rows.table() for n, rows in kin_rows if n in kept},
                },
            )
        return out

    def _kind(self, dataset: str, fname: str, is_mc: bool) -> Kind:
        if dataset in self.signal_datasets:
            if not is_mc:
                raise ValueError(
                    f"file {fname!r} of signal dataset {dataset!r} has no genWeight (it is data); remove the "
                    "dataset from signal_datasets or give it W Monte Carlo files"
                )
            return "signal"
        return "mc" if is_mc else "data"

    def _drop_nonfinite(self, events: Any, is_mc: bool, res: Accumulator) -> Any:
        # An event with a NaN or infinite weight or lepton/MET kinematic value is a corrupt record: an error
        # naming it, or (TemplateConfig.nonfinite="drop") left out of the histograms, the cutflow and the sums
        # of weights, and counted.
        culprits: dict[str, int] = {}
        finite = finite_events(events, is_mc, culprits)
        n_bad = len(events) - int(finite.sum())
        if not n_bad:
            return events
        if self.config.nonfinite == "error":
            md = events.metadata
            start = int(md.get("entrystart") or 0)
            first = min(culprits.values())
            branches = sorted(b for b, e in culprits.items() if e == first)
            raise ValueError(
                f"file {md.get('filename', '?')!r}: {n_bad} event(s) with a NaN or infinite value, the first at "
                f"entry {start + first} in {branches}; fix or replace the file, or pass "
                "TemplateConfig(nonfinite='drop') to leave such events out (counted in nonfinite_events)"
            )
        res["nonfinite_events"] = n_bad
        return events[finite]

    def _kinematic_selections(
        self, events: Any, muons: Leptons, electrons: Leptons, met_pt: np.ndarray, met_phi: np.ndarray, kind: Kind
    ) -> list[tuple[str, Selection, tuple[np.ndarray, np.ndarray]]]:
        """(variation, re-selection, the muons' change of the MET) per muon momentum variation."""
        cfg = self.config
        if cfg.curvature is None or not cfg.variations or kind == "data":
            return []
        # With a jet calibration, each re-selection's mT comes from the jets' MET plus the muons' change
        # (_kinematic_rows): the muon-varied MET alone is not computed.
        variations = curvature_variations(
            muons, met_pt, met_phi, cfg.curvature, cfg.seed, lambda: event_ids(events),
            varied_met=self.jet_calibration is None,
        )  # fmt: skip
        return [
            (name, select_events(vmuons, electrons, vmet_pt, vmet_phi, cfg), muon_dmet)
            for name, vmuons, vmet_pt, vmet_phi, muon_dmet in variations
        ]

    def _calibrate_jets(
        self, events: Any, met_pt: np.ndarray, met_phi: np.ndarray, needed: np.ndarray, res: Accumulator, fname: str
    ) -> JetMET | None:
        if self.jet_calibration is None:
            return None
        jets = self.jet_calibration.evaluate(events, met_pt, met_phi)
        res["jet_calibration"].add(f"{os.path.basename(jets.model)} ({fname})")
        # One inference over every event that some selection needs (run lazily per selection, the model
        # would run once per variation on the few events that each adds).
        jets.ensure(needed)
        return jets

    @staticmethod
    def _generator_sign(events: Any, is_mc: bool, res: Accumulator) -> np.ndarray:
        """sign(genWeight) per event (1 for data); records the sums of genWeight and of its sign."""
        if not is_mc:
            return np.ones(len(events))
        gw = np.asarray(ak.to_numpy(events.genWeight), dtype=np.float64)  # float32 in the file
        sign = np.sign(gw)
        res["sumw"] = float(gw.sum())
        res["sumw_sign"] = float(sign.sum())
        return sign

    def _component_split(self, events: Any, kind: Kind) -> ComponentSplit | None:
        if kind != "signal":
            return None
        assert self.coefficients is not None
        return ComponentSplit.from_gen(gen_w_from_events(events), self.coefficients, self.config)

    def _lepton_weights(
        self, sel: Selection, is_mc: bool, skip: Skip | None, variations: bool = True
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if not is_mc:
            return np.ones(len(sel.pt)), {}
        return lepton_weights(sel, self.config, self.cset, skip, corrections=self.corrections, variations=variations)

    def _fill_cutflow(self, res: Accumulator, sel: Selection, sign: np.ndarray) -> None:
        for step, passed in sel.cutflow.items():
            res["cutflow"][step] = int(passed.sum())
            res["cutflow_sumw"][step] = float(sign[passed].sum())
        sr = sel.in_signal_region(self.config)
        res["cutflow"]["signal_region"] = int(sr.sum())
        res["cutflow_sumw"]["signal_region"] = float(sign[sel.mask][sr].sum())

    def _jet_selections(self, sel: Selection, jets: JetMET) -> list[tuple[str, Selection]]:
        """(histogram, selection) per jet-calibration variation: the same events and lepton, another MET, hence
        mT and signal-region membership."""
        out: list[tuple[str, Selection]] = []
        variations = [(SYSTEMATICS["jetCalib"], str.lower)]
        if jets.has_resolution:  # the model's resolution head: each jet at a bound of its predicted interval
            variations.append((SYSTEMATICS["jetReso"], lambda shift: f"reso{shift}"))
        for jet_syst, variation in variations:
            for shift in jet_syst.shifts:
                out.append((jet_syst.histogram(shift), sel.with_met(*jets.met_xy(sel.mask, variation(shift)))))
        return out

    def _jet_fills(
        self,
        sel: Selection,
        jet_sels: list[tuple[str, Selection]],
        w_sel: np.ndarray,
        rep: np.ndarray,
        comp: np.ndarray,
        fac: np.ndarray,
    ) -> list[_Fill]:
        """The jet calibration's variations: the signal-region entries of each variation's selection."""
        fills: list[_Fill] = []
        for name, jsel in jet_sels:
            keep = jsel.in_signal_region(self.config)[rep]
            r2 = rep[keep]
            jcoords = dict(component=comp[keep], charge=sel.charge[r2], eta=sel.eta[r2], pt=sel.pt[r2])
            fills.append((name, jcoords, w_sel[r2] * fac[keep]))
        return fills

    def _kinematic_rows(
        self,
        kinematic: list[tuple[str, Selection, tuple[np.ndarray, np.ndarray]]],
        jets: JetMET | None,
        evt_w: np.ndarray,
        split: ComponentSplit | None,
    ) -> list[tuple[str, _Rows]]:
        """The re-selected events of the muon momentum variations, with their own lepton's nominal weight."""
        out: list[tuple[str, _Rows]] = []
        for name, vsel, muon_dmet in kinematic:
            if jets is not None:
                # The muons' change of the MET plus the jets' (as for the nominal MET).
                m = vsel.mask
                jx, jy = jets.met_xy(m)
                vsel = vsel.with_met(jx + muon_dmet[0][m], jy + muon_dmet[1][m])
            vrep, vcomp, vfac = expand_components(split, vsel.mask)
            vlep_w, _ = self._lepton_weights(vsel, True, None, variations=False)  # only the nominal is filled
            out.append((name, _Rows(vsel, vrep, vcomp, vfac, evt_w[vsel.mask] * vlep_w)))
        return out

    def _kinematic_fills(self, kin_rows: list[tuple[str, _Rows]]) -> list[_Fill]:
        """The signal-region entries of the momentum variations' re-selections."""
        fills: list[_Fill] = []
        for name, rows in kin_rows:
            vsel, vrep, vcomp, vfac, vw = rows
            keep = vsel.in_signal_region(self.config)[vrep]
            r2 = vrep[keep]
            vcoords = dict(component=vcomp[keep], charge=vsel.charge[r2], eta=vsel.eta[r2], pt=vsel.pt[r2])
            fills.append((name, vcoords, vw[r2] * vfac[keep]))
        return fills

    def _ptw_fills(
        self,
        ptw: np.ndarray,
        coords: dict[str, np.ndarray],
        w_sel: np.ndarray,
        ratios: Mapping[str, np.ndarray],
        r_sr: np.ndarray,
        f_sr: np.ndarray,
    ) -> list[_Partial]:
        """The QCD scale variations in each generator W pT bin (``QCDscale_*_ptW{b}``), as partial fills: the
        entries of bin ``b`` with their nominal weights and with each scale variation's."""
        edges = self.config.qcd_ptw_edges
        assert edges is not None
        scales = [(name, SYSTEMATICS.resolve(name)) for name in ratios]
        scales = [(name, v) for name, v in scales if v.systematic.name in self.config.qcd_scale_pairs]
        if not scales:
            return []
        ib = ptw_bin(ptw, edges)
        order = np.argsort(ib, kind="stable")
        bounds = np.searchsorted(ib[order], np.arange(len(edges) + 1))
        w_nom = w_sel[r_sr] * f_sr
        w_var = [(SYSTEMATICS[f"{v.systematic.name}_ptW{{index}}"], v.shift, (w_sel * ratios[name])[r_sr] * f_sr)
                 for name, v in scales]  # fmt: skip
        out: list[_Partial] = []
        for b in range(len(edges)):
            idx = order[bounds[b] : bounds[b + 1]]
            sub = {k: v[idx] for k, v in coords.items()}
            out.append((sub, w_nom[idx], [(family.histogram(shift, index=b), w[idx]) for family, shift, w in w_var]))
        return out

    def _fill_syst(self, kind: Kind, fills: list[_Fill], partial: list[_Partial] | None = None) -> hist.Hist:
        # Book all categories at once: growing a StrCategory one name at a time reallocates the whole (large,
        # for the signal split) histogram each time. Variations that the registry does not fill for this kind
        # of dataset are left out.
        def filled(name: str) -> bool:
            return name == NOMINAL or SYSTEMATICS.resolve(name).systematic.filled_for(kind)

        fills = [f for f in fills if filled(f[0])]
        partial = [(c, w, [v for v in varied if filled(v[0])]) for c, w, varied in partial or []]
        partial = [p for p in partial if p[2]]
        names = [f[0] for f in fills] + [name for _, _, varied in partial for name, _ in varied]
        h = syst_histogram(self.config, kind == "signal", names)
        for name, coords, weight in fills:
            h.fill(syst=name, **coords, weight=weight)
        if partial:
            # Each variation: the nominal's sums (of weights and of squared weights) less those of the entries it
            # moves with their nominal weights, plus those with its weights: what filling every entry would give,
            # from fills of the few entries it moves.
            view = h.view()
            syst_axis = h.axes["syst"]
            nominal = view[syst_axis.index(NOMINAL)]
            for coords, w_nominal, varied in partial:
                work = syst_histogram(self.config, kind == "signal", [NOMINAL] + [name for name, _ in varied])
                work.fill(syst=NOMINAL, **coords, weight=w_nominal)
                for name, w_varied in varied:
                    work.fill(syst=name, **coords, weight=w_varied)
                wv = work.view()
                for i, (name, _) in enumerate(varied, start=1):
                    target = view[syst_axis.index(name)]
                    for field in ("value", "variance"):
                        target[field] = nominal[field] - wv[0][field] + wv[i][field]
        return h

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator
