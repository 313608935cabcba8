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

__all__ = ["HELICITIES", "CurvatureVariation", "TemplateConfig"]

#: Helicity labels, in the order of the component index: left, right, longitudinal.
HELICITIES: tuple[str, ...] = ("L", "R", "0")

#: LHEScaleWeight indices (9-weight NanoAOD convention: [0] muR=0.5 muF=0.5, [1] muR=0.5 muF=1,
#: [2] muR=0.5 muF=2, [3] muR=1 muF=0.5, [4] nominal, [5] muR=1 muF=2, [6] muR=2 muF=0.5,
#: [7] muR=2 muF=1, [8] muR=2 muF=2). The anti-correlated [2] and [6] are not used (7-point scheme).
#: The keys are systematics declared in wfit.processors.systematics.SYSTEMATICS.
_QCD_SCALE_9 = {"QCDscale_muR": (7, 1), "QCDscale_muF": (5, 3), "QCDscale_muRmuF": (8, 0)}


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
    """

    abseta_edges: tuple[float, ...] = (0.0, 1.2, 2.4)
    scale: tuple[float, ...] = (1e-3, 2e-3)
    resolution: tuple[float, ...] = (1.5e-4, 3e-4)

    def __post_init__(self) -> None:
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
        curvature: Momentum scale/resolution variations (muon channel), or ``None``.
        lumi_uncertainty: Relative luminosity uncertainty, used when the workspace is made.
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
    curvature: CurvatureVariation | None = field(default_factory=CurvatureVariation)
    lumi_uncertainty: float = 0.017
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
