"""Analysis configuration of the W lepton templates: binning, cuts and systematic variations.

All momenta and masses are in GeV, impact parameters in cm, curvatures ``k = q / pT`` in 1/GeV.
One frozen, picklable :class:`TemplateConfig` carries everything that a processor needs; the
defaults are the muon channel of the issue ("W lepton (eta, pT, charge) templates").

Example:
    >>> cfg = TemplateConfig()
    >>> cfg.eta_bins, cfg.pt_bins, cfg.n_components
    ((48, -2.4, 2.4), (30, 26.0, 56.0), 66)
    >>> cfg.component_names[:4]
    ['Wplus_y0_L', 'Wplus_y0_R', 'Wplus_y0_0', 'Wplus_y1_L']
    >>> TemplateConfig.electron().lepton_pt_min
    30.0
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

__all__ = ["HELICITIES", "QCD_PTW_EDGES_CMS", "CurvatureVariation", "TemplateConfig"]

#: Helicity labels, in the order of the component index: left, right, longitudinal.
HELICITIES: tuple[str, ...] = ("L", "R", "0")

#: LHEScaleWeight indices (9-weight NanoAOD convention: [0] muR=0.5 muF=0.5, [1] muR=0.5 muF=1,
#: [2] muR=0.5 muF=2, [3] muR=1 muF=0.5, [4] nominal, [5] muR=1 muF=2, [6] muR=2 muF=0.5,
#: [7] muR=2 muF=1, [8] muR=2 muF=2). The anti-correlated [2] and [6] are not used (7-point scheme).
#: The keys are systematics declared in wfit.processors.systematics.SYSTEMATICS.
_QCD_SCALE_9 = {"QCDscale_muR": (7, 1), "QCDscale_muF": (5, 3), "QCDscale_muRmuF": (8, 0)}

#: Generator W pT edges (GeV) of the QCD scale decorrelation in the CMS W helicity/rapidity analysis: ten bins,
#: the last an overflow bin above 40.2 GeV (:meth:`TemplateConfig.with_full_model`).
QCD_PTW_EDGES_CMS: tuple[float, ...] = (0.0, 2.9, 4.7, 6.7, 9.0, 11.8, 15.3, 20.1, 27.2, 40.2)


@dataclass(frozen=True)
class CurvatureVariation:
    """Momentum scale and resolution variations in curvature ``k = q / pT`` per |eta| region.

    A scale variation multiplies the curvature, ``k -> k (1 +- scale)`` (so ``pT -> pT / (1 +- scale)``);
    a resolution variation adds a Gaussian ``N(0, resolution)`` in 1/GeV to ``k``, i.e. a constant
    curvature error with ``sigma(pT)/pT = pT * resolution``. Each region is its own nuisance.
    Only leptons with |eta| inside a region are varied; the event is then re-selected and re-filled,
    so that events cross the pT threshold in both directions. The MET is corrected for the change
    of the lepton transverse momenta.

    Attributes:
        abseta_edges: Region edges in |eta|.
        scale: Relative curvature scale shift per region.
        resolution: Extra curvature smearing per region in 1/GeV (0 disables the region).
        stat_scale: The statistical nuisances of the calibration: a relative curvature shift given to every
            muon at once (``muonScaleStat{Up,Down}``), which the workspace splits into one independent nuisance
            per template eta bin and charge, each moving only the events whose selected muon is in its bin
            (0: none).
    """

    abseta_edges: tuple[float, ...] = (0.0, 1.2, 2.4)
    scale: tuple[float, ...] = (1e-3, 2e-3)
    resolution: tuple[float, ...] = (1.5e-4, 3e-4)
    stat_scale: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.stat_scale) and 0.0 <= self.stat_scale < 0.1):
            raise ValueError(
                f"CurvatureVariation.stat_scale must be a relative curvature shift in [0, 0.1), got {self.stat_scale}"
            )
        n = len(self.abseta_edges) - 1
        if n < 1 or np.any(np.diff(self.abseta_edges) <= 0):
            raise ValueError(f"CurvatureVariation.abseta_edges must increase, got {self.abseta_edges}")
        if len(self.scale) != n or len(self.resolution) != n:
            raise ValueError(
                f"CurvatureVariation: {n} |eta| regions need {n} scale and resolution values, got "
                f"{len(self.scale)} and {len(self.resolution)}"
            )


@dataclass(frozen=True)
class TemplateConfig:
    """Binning, selection cuts and systematic options of the template processor.

    Attributes:
        channel: ``"mu"`` (muon channel) or ``"e"`` (electron channel, same shape of selection).
        eta_bins: Template eta axis ``(n, lo, hi)``.
        pt_bins: Template pT axis ``(n, lo, hi)`` in GeV.
        mt_edges: mT axis edges in GeV (the last may be ``inf``).
        iso_edges: Relative isolation (``pfRelIso04_all``) axis edges.
        signal_region: ``(mT_min, iso_max)``: the cell filled with all systematic variations.
        lepton_pt_min, lepton_abseta_max: Candidate lepton kinematics.
        dxy_max, dz_max: Candidate impact parameters in cm.
        electron_id_min: Candidate electron ``cutBased`` minimum (electron channel).
        veto_muon_pt_min, veto_muon_abseta_max: Veto muons (``looseId``).
        veto_electron_pt_min, veto_electron_abseta_max, veto_electron_id_min: Veto electrons
            (``cutBased >= veto_electron_id_min``).
        absy_edges: Generator |y_W| bin edges of the signal decomposition; an overflow bin above the
            last edge is always added.
        coeff_pt_edges: pT_W bin edges (GeV) in which A0 and A4 are measured (overflow added).
        eff_groups: Number of eta nuisances of the efficiency scale factors (decorrelated per group of
            adjacent template eta bins); must divide the number of eta bins.
        eff_parameters: 0: one scale-factor variation (``effStat``, +-1 sigma) split into ``eff_groups``
            nuisances. 1 to 3: that many smooth modes in pT per eta group and charge (``effStatPar{k}``,
            the relative scale-factor uncertainty times a Legendre polynomial of degree k in pT over the
            template range, normalised so that the modes add up to it in quadrature at every pT): the
            normalisation, slope and curvature of the efficiency versus pT, each decorrelated by eta group and
            charge.
        qcd_ptw_edges: Generator W pT edges (GeV; an overflow bin is added) in which the QCD scale variations of
            the signal are decorrelated, each bin also decorrelated by W charge and helicity
            (``QCDscale_*_ptW{b}``); ``None``: one variation of each scale for every process.
        curvature: Momentum scale/resolution variations (muon channel), or ``None``.
        lumi_uncertainty: Relative luminosity uncertainty, used when the workspace is made.
        longitudinal_uncertainty: The longitudinal (helicity 0) signal components are not free parameters of
            the fit but each constrained to its prediction within this relative uncertainty (a log-normal
            nuisance per W charge and |y_W| bin); ``None``: they are POIs like the others.
        fake_eta_groups: The data-driven fake estimate's normalisation is decorrelated in this many groups of
            adjacent eta bins and in charge (``fakeNormEta``, ``fake_norm_uncertainty`` each), and its pT shape
            in the same eta groups (``fakeShapeEta``); 0: the correlated normalisation ``fakeNorm`` only.
        fake_norm_uncertainty: Relative normalisation uncertainty of each eta group and charge of the fakes.
        fake_shape_uncertainty: Linear pT tilt of the fake estimate, the relative change at the ends of the
            pT range, correlated (``fakeShape``) and per eta group (``fakeShapeEta``); 0: none.
        qcd_scale: Whether to fill the LHEScaleWeight variations.
        pdf: Whether to fill the LHEPdfWeight variations.
        pileup: Whether to fill the pileup weight and its variations.
        prefire: Whether to fill the L1 prefiring weight and its variations.
        seed: Seed of the per-event resolution smearing (a counter-based hash of run, lumi, event).
        variations: Fill the systematic variations; ``False`` fills only the nominal weights (the
            scale factor, pileup and prefiring weights still enter them), e.g. for fast checks.
        nonfinite: An event with a NaN or infinite genWeight, MET or lepton pT/eta/phi: ``"error"`` (the
            chunk fails with a message naming the file, the entry and the branch) or ``"drop"`` (the event
            is left out and counted in ``nonfinite_events``, for samples known to carry a few such records).
    """

    channel: Literal["mu", "e"] = "mu"
    eta_bins: tuple[int, float, float] = (48, -2.4, 2.4)
    pt_bins: tuple[int, float, float] = (30, 26.0, 56.0)
    mt_edges: tuple[float, ...] = (0.0, 20.0, 40.0, float("inf"))
    iso_edges: tuple[float, ...] = (0.0, 0.15, float("inf"))
    signal_region: tuple[float, float] = (40.0, 0.15)
    lepton_pt_min: float = 26.0
    lepton_abseta_max: float = 2.4
    dxy_max: float = 0.05
    dz_max: float = 0.2
    electron_id_min: int = 4
    veto_muon_pt_min: float = 15.0
    veto_muon_abseta_max: float = 2.4
    veto_electron_pt_min: float = 10.0
    veto_electron_abseta_max: float = 2.5
    veto_electron_id_min: int = 1
    absy_edges: tuple[float, ...] = tuple(float(x) for x in np.round(np.arange(0.0, 2.5001, 0.25), 6))
    coeff_pt_edges: tuple[float, ...] = (0.0, 5.0, 10.0, 20.0, 40.0, 80.0)
    eff_groups: int = 48
    eff_parameters: int = 0
    qcd_ptw_edges: tuple[float, ...] | None = None
    curvature: CurvatureVariation | None = field(default_factory=CurvatureVariation)
    lumi_uncertainty: float = 0.017
    longitudinal_uncertainty: float | None = None
    fake_eta_groups: int = 0
    fake_norm_uncertainty: float = 0.1
    fake_shape_uncertainty: float = 0.0
    qcd_scale: bool = True
    pdf: bool = True
    pileup: bool = True
    prefire: bool = True
    seed: int = 12345
    variations: bool = True
    nonfinite: Literal["error", "drop"] = "error"

    def __post_init__(self) -> None:
        if self.nonfinite not in ("error", "drop"):
            raise ValueError(f"TemplateConfig.nonfinite must be 'error' or 'drop', got {self.nonfinite!r}")
        if self.channel not in ("mu", "e"):
            raise ValueError(f"TemplateConfig.channel must be 'mu' or 'e', got {self.channel!r}")
        if self.eta_bins[0] % self.eff_groups != 0:
            raise ValueError(
                f"TemplateConfig.eff_groups={self.eff_groups} must divide the {self.eta_bins[0]} eta bins, "
                "so that every efficiency nuisance covers whole template bins"
            )
        if self.eff_parameters not in (0, 1, 2, 3):
            raise ValueError(f"TemplateConfig.eff_parameters must be 0, 1, 2 or 3, got {self.eff_parameters!r}")
        if self.fake_eta_groups < 0 or (self.fake_eta_groups and self.eta_bins[0] % self.fake_eta_groups):
            raise ValueError(
                f"TemplateConfig.fake_eta_groups={self.fake_eta_groups} must be 0 or divide the {self.eta_bins[0]} "
                "eta bins"
            )
        if self.longitudinal_uncertainty is not None and not (0.0 < self.longitudinal_uncertainty <= 1.0):
            raise ValueError(
                "TemplateConfig.longitudinal_uncertainty must be None or a relative uncertainty in (0, 1], got "
                f"{self.longitudinal_uncertainty!r}"
            )
        for name in ("fake_norm_uncertainty", "fake_shape_uncertainty"):
            value = getattr(self, name)
            if not (np.isfinite(value) and 0.0 <= value < 1.0):
                raise ValueError(f"TemplateConfig.{name} must be in [0, 1), got {value!r}")
        if self.qcd_ptw_edges is not None:
            edges = np.asarray(self.qcd_ptw_edges, dtype=float)
            if edges.size < 1 or edges[0] < 0 or np.any(np.diff(edges) <= 0) or not np.all(np.isfinite(edges)):
                raise ValueError(
                    f"TemplateConfig.qcd_ptw_edges must be finite, increasing and >= 0, got {self.qcd_ptw_edges}"
                )
        for name in ("mt_edges", "iso_edges", "absy_edges", "coeff_pt_edges"):
            edges = np.asarray(getattr(self, name), dtype=float)
            if edges.size < 2 or np.any(np.diff(edges) <= 0):
                raise ValueError(f"TemplateConfig.{name} must be increasing with >= 2 edges, got {edges}")
        if self.signal_region[0] not in self.mt_edges or self.signal_region[1] not in self.iso_edges:
            raise ValueError(
                f"TemplateConfig.signal_region={self.signal_region} must lie on the mT and isolation edges "
                f"({self.mt_edges}, {self.iso_edges})"
            )
        if self.curvature is not None and self.channel != "mu":
            raise ValueError(
                "TemplateConfig.curvature variations are defined for the muon channel; pass None"
            )

    @classmethod
    def electron(cls, **overrides: Any) -> TemplateConfig:
        """The electron channel: pT > 30 GeV, |eta| < 2.5, ``cutBased >= 4`` (tight).

        The template axes become 50 eta bins in [-2.5, 2.5] and 30 pT bins in [30, 60] GeV; no curvature
        variations (their model is a muon-spectrometer one).
        """
        base: dict[str, Any] = dict(
            channel="e",
            eta_bins=(50, -2.5, 2.5),
            pt_bins=(30, 30.0, 60.0),
            lepton_pt_min=30.0,
            lepton_abseta_max=2.5,
            dxy_max=0.1,
            dz_max=0.2,
            eff_groups=50,
            curvature=None,
        )
        base.update(overrides)
        return cls(**base)

    def with_full_model(self, **overrides: Any) -> TemplateConfig:
        """This channel with the systematics model of the CMS W helicity/rapidity analysis.

        Efficiencies: three smooth pT modes per template eta bin and charge; QCD scales of the signal
        decorrelated in the analysis's ten generator W pT bins (:data:`QCD_PTW_EDGES_CMS`) and in W charge and
        helicity; every PDF member; muon curvature scale statistical nuisances per eta bin and charge
        (``stat_scale`` 1e-4) next to the region scale and resolution variations; the fakes' normalisation
        decorrelated in eta groups (of about 6 bins) and charge with a pT tilt; the longitudinal components
        constrained to +-30%. The binning is this configuration's.
        """
        n_eta = self.eta_bins[0]
        fake_groups = max(g for g in range(1, 11) if n_eta % g == 0)
        base: dict[str, Any] = dict(
            eff_groups=n_eta,
            eff_parameters=3,
            qcd_ptw_edges=QCD_PTW_EDGES_CMS,
            longitudinal_uncertainty=0.3,
            fake_eta_groups=fake_groups,
            fake_norm_uncertainty=0.1,
            fake_shape_uncertainty=0.1,
            qcd_scale=True,
            pdf=True,
            variations=True,
        )
        if self.curvature is not None:
            base["curvature"] = replace(self.curvature, stat_scale=1e-4)
        base.update(overrides)
        return self.replace(**base)

    def replace(self, **changes: Any) -> TemplateConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ derived quantities
    @property
    def n_absy(self) -> int:
        """Number of |y_W| bins, including the overflow bin above the last edge."""
        return len(self.absy_edges)

    @property
    def n_components(self) -> int:
        """Number of signal components: charge (2) x |y_W| bins (with overflow) x helicity (3)."""
        return 2 * self.n_absy * len(HELICITIES)

    @property
    def component_names(self) -> list[str]:
        """Signal component names ``W{plus,minus}_y{i}_{L,R,0}`` in component-index order.

        The index is ``(charge_index * n_absy + y_index) * 3 + helicity_index`` with charge_index 0 for
        W+ and 1 for W-; ``y{n_absy-1}`` is the overflow bin |y_W| >= last edge.
        """
        return [f"W{q}_y{iy}_{h}" for q in ("plus", "minus") for iy in range(self.n_absy) for h in HELICITIES]

    @property
    def unmatched_component(self) -> int:
        """Component index of signal-sample events without a generator W -> l nu (a background)."""
        return self.n_components

    @property
    def qcd_scale_pairs(self) -> dict[str, tuple[int, int]]:
        """QCD scale nuisances -> (up index, down index) in the 9-weight LHEScaleWeight."""
        return dict(_QCD_SCALE_9)

    @property
    def eff_group_size(self) -> int:
        """Template eta bins per efficiency nuisance."""
        return self.eta_bins[0] // self.eff_groups

    @property
    def n_qcd_ptw(self) -> int:
        """Number of generator W pT bins of the QCD scale decorrelation (0 without it; overflow included)."""
        return 0 if self.qcd_ptw_edges is None else len(self.qcd_ptw_edges)

    def is_poi(self, process: str) -> bool:
        """Whether a signal component is a parameter of interest (a longitudinal one is not when it is
        constrained, ``longitudinal_uncertainty``)."""
        return not (self.longitudinal_uncertainty is not None and is_longitudinal(process))


def is_longitudinal(component: str) -> bool:
    """Whether a signal component name is a longitudinal (helicity 0) one, e.g. ``Wplus_y3_0``."""
    return component.startswith("W") and component.endswith("_" + HELICITIES[2])


def component_labels(component: str) -> tuple[str, str] | None:
    """``(W charge, helicity)`` of a signal component name (``("Wplus", "L")`` for ``Wplus_y3_L``), or None for
    another process name."""
    parts = component.split("_")
    if len(parts) != 3 or parts[0] not in ("Wplus", "Wminus") or parts[2] not in HELICITIES:
        return None
    return parts[0], parts[2]
