"""Event selection of W -> l nu candidates on flat (numpy) lepton arrays.

The selection works on flat per-lepton numpy arrays plus per-event counts (the layout of NanoAOD
branches), so that re-selecting with varied lepton momenta costs a few vectorised passes. Muon
channel (defaults of :class:`~wfit.processors.config.TemplateConfig`):

* candidate muon: pT > 26 GeV, |eta| < 2.4, ``tightId``, |dxy| < 0.05 cm, |dz| < 0.2 cm; exactly one;
* veto: no other muon with pT > 15 GeV, |eta| < 2.4, ``looseId``; no electron with pT > 10 GeV,
  |eta| < 2.5, ``cutBased >= 1``;
* mT = sqrt(2 pT MET (1 - cos dphi)) with the MET of ``MET_pt/MET_phi`` (``PFMET_*`` in NanoAOD v15).

The electron channel swaps the roles: the candidate is an electron (pT > 30 GeV, |eta| < 2.5,
``cutBased >= 4``), the other electrons are vetoed with the electron veto and all muons with the
muon veto.

Example:
    >>> import numpy as np
    >>> from wfit.processors.config import TemplateConfig
    >>> mu = Leptons(counts=np.array([1, 2]), pt=np.array([30.0, 30.0, 20.0]), eta=np.zeros(3),
    ...              phi=np.zeros(3), charge=np.array([1, -1, 1]), iso=np.zeros(3), tight=np.ones(3, bool),
    ...              loose=np.ones(3, bool), dxy=np.zeros(3), dz=np.zeros(3))
    >>> ele = Leptons.empty(2)
    >>> sel = select_events(mu, ele, met_pt=np.array([30.0, 30.0]), met_phi=np.array([np.pi, 0.0]),
    ...                     config=TemplateConfig())
    >>> sel.mask.tolist(), sel.mt.tolist()
    ([True, False], [60.0])
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from .config import TemplateConfig

__all__ = ["CUTFLOW_STEPS", "Leptons", "Selection", "select_events", "transverse_mass"]

#: Names of the cutflow steps, in order.
CUTFLOW_STEPS: tuple[str, ...] = ("all", "one_candidate", "no_extra_muon", "no_extra_electron")


@dataclass(frozen=True)
class Leptons:
    """Flat per-lepton arrays of one collection in one chunk (float64 kinematics, GeV and cm).

    Attributes:
        counts: Leptons per event.
        pt, eta, phi, charge: Kinematics (charge in units of e).
        iso: Relative isolation (``pfRelIso04_all`` for muons, ``pfRelIso03_all`` for electrons).
        tight: Candidate identification (``Muon_tightId``; ``Electron_cutBased >= id_min``).
        loose: Veto identification (``Muon_looseId``; ``Electron_cutBased >= veto_id_min``).
        dxy, dz: Impact parameters in cm.
    """

    counts: np.ndarray
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    charge: np.ndarray
    iso: np.ndarray
    tight: np.ndarray
    loose: np.ndarray
    dxy: np.ndarray
    dz: np.ndarray

    @classmethod
    def empty(cls, n_events: int) -> Leptons:
        """A collection with no leptons in ``n_events`` events."""
        z = np.zeros(0)
        b = np.zeros(0, dtype=bool)
        return cls(np.zeros(n_events, dtype=np.int64), z, z, z, z.astype(np.int64), z, b, b, z, z)

    @functools.cached_property
    def event_index(self) -> np.ndarray:
        """Event index of each lepton."""
        return np.repeat(np.arange(len(self.counts)), self.counts)

    def with_pt(self, pt: np.ndarray, charge: np.ndarray | None = None) -> Leptons:
        """The same leptons with other transverse momenta (and charges)."""
        out = replace(self, pt=pt, charge=self.charge if charge is None else charge)
        if "event_index" in self.__dict__:  # same counts: share the computed index
            out.__dict__["event_index"] = self.event_index
        return out


@dataclass(frozen=True)
class Selection:
    """Selected events of one chunk and their candidate lepton.

    Attributes:
        mask: Per-event selection (exactly one candidate, no extra lepton).
        index: Flat index of the candidate lepton of each selected event.
        pt, eta, phi, charge, iso: Candidate kinematics for the selected events (GeV).
        mt: Transverse mass of the candidate and the MET, GeV.
        cutflow: Per-event booleans of the cumulative cutflow steps (:data:`CUTFLOW_STEPS`).
    """

    mask: np.ndarray
    index: np.ndarray
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    charge: np.ndarray
    iso: np.ndarray
    mt: np.ndarray
    cutflow: dict[str, np.ndarray]

    def with_met(self, met_x: np.ndarray, met_y: np.ndarray) -> Selection:
        """The same events with mT recomputed from another MET (its components for the selected events, GeV)."""
        return replace(self, mt=transverse_mass(self.pt, self.phi, np.hypot(met_x, met_y), np.arctan2(met_y, met_x)))

    def in_signal_region(self, config: TemplateConfig) -> np.ndarray:
        """Per selected event: mT >= ``signal_region[0]`` GeV and isolation < ``signal_region[1]``."""
        mt_min, iso_max = config.signal_region
        return (self.mt >= mt_min) & (self.iso < iso_max)


def transverse_mass(pt: np.ndarray, phi: np.ndarray, met_pt: np.ndarray, met_phi: np.ndarray) -> np.ndarray:
    """mT = sqrt(2 pT MET (1 - cos(phi - phi_MET))) in GeV, in float64."""
    return np.sqrt(2.0 * pt * met_pt * (1.0 - np.cos(phi - met_phi)))


def _per_event(leptons: Leptons, flags: np.ndarray) -> np.ndarray:
    """Number of flagged leptons per event."""
    return np.bincount(leptons.event_index[flags], minlength=len(leptons.counts))


def select_events(
    muons: Leptons,
    electrons: Leptons,
    met_pt: np.ndarray | None,
    met_phi: np.ndarray | None,
    config: TemplateConfig,
) -> Selection:
    """Select W -> l nu candidate events.

    Args:
        muons: Muon collection.
        electrons: Electron collection.
        met_pt: MET per event, GeV; None where another MET will be given (:meth:`Selection.with_met`, e.g.
            the type-1 corrected one): no mT is computed (``mt`` is empty) and none of the selection depends on it.
        met_phi: MET azimuth per event (None with ``met_pt``).
        config: Cuts; ``config.channel`` picks the candidate collection.

    Returns:
        The selected events and their candidate lepton.
    """
    cfg = config
    if cfg.channel == "mu":
        lep, other = muons, electrons
    else:
        lep, other = electrons, muons
    cand = (
        (lep.pt > cfg.lepton_pt_min)
        & (np.abs(lep.eta) < cfg.lepton_abseta_max)
        & lep.tight
        & (np.abs(lep.dxy) < cfg.dxy_max)
        & (np.abs(lep.dz) < cfg.dz_max)
    )
    mu_veto = (muons.pt > cfg.veto_muon_pt_min) & (np.abs(muons.eta) < cfg.veto_muon_abseta_max) & muons.loose
    ele_veto = (
        (electrons.pt > cfg.veto_electron_pt_min)
        & (np.abs(electrons.eta) < cfg.veto_electron_abseta_max)
        & electrons.loose
    )
    if cfg.channel == "mu":
        same_veto, other_veto = mu_veto, ele_veto
    else:
        same_veto, other_veto = ele_veto, mu_veto
    n_cand = _per_event(lep, cand)
    n_extra_same = _per_event(lep, same_veto & ~cand)
    n_extra_other = _per_event(other, other_veto)
    one = n_cand == 1
    step2 = one & (n_extra_same == 0)
    mask = step2 & (n_extra_other == 0)
    if cfg.channel == "mu":
        cutflow = {
            "all": np.ones_like(mask),
            "one_candidate": one,
            "no_extra_muon": step2,
            "no_extra_electron": mask,
        }
    else:
        step_mu = one & (n_extra_other == 0)
        cutflow = {
            "all": np.ones_like(mask),
            "one_candidate": one,
            "no_extra_muon": step_mu,
            "no_extra_electron": mask,
        }
    # The candidate of a selected event is its only candidate: take the flat index of each candidate
    # lepton whose event is selected (one per selected event, in event order).
    cand_idx = np.flatnonzero(cand)
    index = cand_idx[mask[lep.event_index[cand_idx]]] if cand_idx.size else cand_idx
    pt = lep.pt[index]
    phi = lep.phi[index]
    if met_pt is None or met_phi is None:
        mt = np.full(len(pt), np.nan)
    else:
        mt = transverse_mass(pt, phi, met_pt[mask], met_phi[mask])
    return Selection(
        mask=mask,
        index=index,
        pt=pt,
        eta=lep.eta[index],
        phi=phi,
        charge=lep.charge[index],
        iso=lep.iso[index],
        mt=mt,
        cutflow=cutflow,
    )
