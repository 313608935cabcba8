"""A toy W -> mu nu generator that writes NanoAOD-like ROOT files for closure tests and benchmarks.

The files are TTrees (``uproot``'s ``mktree`` + ``extend``) named ``Events`` that coffea's
``NanoAODSchema`` reads unchanged: ``run``, ``luminosityBlock``, ``event``, ``PV_*``,
``nMuon/Muon_*``, ``nElectron/Electron_*``, ``MET_*``, ``nJet/Jet_*`` and, for Monte Carlo,
``nGenPart/GenPart_*`` (the boson and its decay products with ``statusFlags``), ``genWeight``,
``LHEScaleWeight`` (9), ``LHEPdfWeight``, ``Pileup_nTrueInt`` and ``L1PreFiringWeight_{Nom,Up,Dn}``.
With ``ToyConfig(pfnano=True)`` the jets get ``Jet_rawFactor``/``Jet_area``, the events
``fixedGridRhoFastjetAll``, and the PFNano jet constituents ``PFCands_*``, ``JetPFCands_*`` and ``JetSVs_*``
(for the DNN jet calibration, :mod:`wfit.processors.jetcorr`).

Physics model (all numbers configurable in :class:`ToyConfig`; GeV):

* W: relativistic Breit-Wigner mass (80.379, width 2.085) in [50, 150]; pT_W from
  ``f(pT) ~ pT / (pT^2 + p0^2)^n`` (p0 = 6 GeV, n = 2.2, a peak near 4 GeV and a pT^-3.4 tail) up
  to 300 GeV; y_W Gaussian with a charge-dependent width (W+ 2.3, W- 2.1), |y| < 5; W+ fraction 0.58;
* decay: the helicity state is drawn with the fractions ``f_L, f_R, f_0`` of the chosen A0/A4 per
  |y_W| bin and cos(theta*) from ``P_L, P_R, P_0``, phi* uniform, in the Collins-Soper frame
  (convention of :mod:`wfit.processors.helicity`: theta* of l+ for W+, of the antineutrino for W-);
* muon reconstruction: curvature ``k = q / pT`` smeared with ``sigma_k / k = sqrt(a + c pT^2)``,
  about 1% in the barrel (|eta| < 1.2) and 3% in the endcaps at 40 GeV; ``tightId`` efficiency 0.98;
  prompt isolation exponential with mean 0.03; MET = neutrino pT + Gaussian resolution of 6 GeV per
  component;
* backgrounds: ``"Z"``: Z -> mu mu (91.1876, 2.4952) with one muon lost (the more forward one: it is
  not reconstructed if |eta| > 2.4, and fails ``looseId`` otherwise; its pT goes into the MET);
  ``"fakes"``: non-prompt muons from jets, pT 15 + exponential(12), isolation 0.02 + exponential(0.35),
  small MET (Gaussian 8 GeV per component), i.e. non-isolated and at low mT;
* jets (not correlated with the W): Poisson(2) per event, pT 20 + exponential(20), |eta| < 4.7; with
  ``pfnano``: raw pT = pT / (1.05 + 0.5 exp(-pT / 30)), charged and neutral constituents (1 + Poisson(0.08 and
  0.05 raw pT) of them) sharing the raw pT with exponential weights, in random order, and Poisson(0.3)
  secondary vertices per jet. These extra draws come after all others, so ``pfnano=False`` files are
  unchanged;
* ``yield_scale[charge, |y_W| bin]`` < 1 removes W events by acceptance-rejection (after drawing
  ``n_events`` candidates), which injects cross sections per bin relative to the nominal.

Everything is drawn from ``np.random.default_rng(seed)``; the same seed gives the same file.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "w.root")
    >>> info = write_toy(path, 1000, process="W", seed=1)
    >>> info["n_written"] <= 1000
    True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import awkward as ak
import numpy as np

from wfit.atomic import atomic_path

from .helicity import helicity_fractions
from .kinematics import decay_cs, pt_eta_phi, sample_costheta

__all__ = ["ToyConfig", "generate_events", "write_toy"]

_M_W, _G_W = 80.379, 2.085
_M_Z, _G_Z = 91.1876, 2.4952
_M_MU = 0.105658

# statusFlags bits: 0 isPrompt, 7 isHardProcess, 8 fromHardProcess, 12 isFirstCopy, 13 isLastCopy.
_FLAGS_BOSON = (1 << 0) | (1 << 7) | (1 << 8) | (1 << 13)
_FLAGS_LEPTON = (1 << 0) | (1 << 7) | (1 << 8) | (1 << 12) | (1 << 13)


def _default_a0() -> tuple[float, ...]:
    return tuple(float(x) for x in np.round(np.linspace(0.10, 0.45, 11), 4))


def _default_a4() -> tuple[float, ...]:
    return tuple(float(x) for x in np.round(np.linspace(-0.3, -1.2, 11), 4))


@dataclass(frozen=True)
class ToyConfig:
    """Parameters of the toy generator (GeV).

    Attributes:
        absy_edges: |y_W| bin edges of the angular coefficients and of ``yield_scale`` (an overflow
            bin above the last edge is included).
        a0, a4: A0 and A4 per |y_W| bin, for both charges (module convention for theta*).
        yield_scale: Acceptance probability per (charge index: 0 for W+, 1 for W-, |y_W| bin), in
            [0, 1]; ``None`` keeps all events.
        wplus_fraction: Fraction of W+ among the W.
        pt_p0, pt_power: pT_W spectrum ``pT / (pT^2 + p0^2)^power``.
        y_sigma: Width of the y_W Gaussian for (W+, W-).
        res_barrel, res_endcap: ``(a, c)`` of ``sigma_k / k = sqrt(a + c pT^2)``.
        n_pdf: Number of ``LHEPdfWeight`` members (nominal first).
        negative_weight_fraction: Fraction of events with a negative genWeight.
        gen_weight: |genWeight|.
        pfnano: Also write raw-pT factors, jet areas, rho and PFNano jet constituents.
        lepton: ``"mu"`` or ``"e"``: the flavour of the W's and Z's decay leptons and of the non-prompt lepton. An
            electron is reconstructed like the muon (the same resolution and identification draws: ``cutBased`` 4
            where the muon would pass ``tightId``, else 2; a lost Z electron ``cutBased`` 0, failing the veto) into
            ``Electron_*`` with ``pfRelIso03_all``; the soft extra muons and electrons stay. The random draws are the
            muon toy's, so that the two flavours of one seed hold the same events.
    """

    absy_edges: tuple[float, ...] = tuple(float(x) for x in np.round(np.arange(0.0, 2.5001, 0.25), 6))
    a0: tuple[float, ...] = field(default_factory=_default_a0)
    a4: tuple[float, ...] = field(default_factory=_default_a4)
    yield_scale: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    wplus_fraction: float = 0.58
    pt_p0: float = 6.0
    pt_power: float = 2.2
    y_sigma: tuple[float, float] = (2.3, 2.1)
    res_barrel: tuple[float, float] = (0.007**2, (0.01**2 - 0.007**2) / 1600.0)
    res_endcap: tuple[float, float] = (0.02**2, (0.03**2 - 0.02**2) / 1600.0)
    n_pdf: int = 33
    negative_weight_fraction: float = 0.0
    gen_weight: float = 1.0
    pfnano: bool = False
    lepton: str = "mu"

    def __post_init__(self) -> None:
        if self.lepton not in ("mu", "e"):
            raise ValueError(f"ToyConfig.lepton must be 'mu' or 'e', got {self.lepton!r}")
        n = len(self.absy_edges)
        if len(self.a0) != n or len(self.a4) != n:
            raise ValueError(
                f"ToyConfig: a0 and a4 need {n} values (|y| bins with overflow), "
                f"got {len(self.a0)} and {len(self.a4)}"
            )
        if self.yield_scale is not None:
            ys = np.asarray(self.yield_scale, dtype=float)
            if ys.shape != (2, n) or np.any(ys < 0) or np.any(ys > 1):
                raise ValueError(f"ToyConfig.yield_scale must have shape (2, {n}) with values in [0, 1]")

    def absy_index(self, absy: np.ndarray) -> np.ndarray:
        """|y_W| bin index (overflow bin last)."""
        return np.clip(
            np.searchsorted(np.asarray(self.absy_edges), absy, side="right") - 1, 0, len(self.absy_edges) - 1
        )

    def fractions(self) -> np.ndarray:
        """Helicity fractions ``[3, n_absy]`` (L, R, 0) of the configured A0/A4."""
        return helicity_fractions(np.asarray(self.a0), np.asarray(self.a4))


# ---------------------------------------------------------------------------- production
def _boson(
    rng: np.random.Generator,
    n: int,
    cfg: ToyConfig,
    mass: float,
    width: float,
    sigma_y: np.ndarray,
    m_range: tuple[float, float],
) -> np.ndarray:
    # Relativistic Breit-Wigner by inverse transform: m^2 = M^2 + M G tan(u).
    lo, hi = (np.arctan((m**2 - mass**2) / (mass * width)) for m in m_range)
    m = np.sqrt(mass**2 + mass * width * np.tan(rng.uniform(lo, hi, n)))
    # pT / (pT^2 + p0^2)^k: CDF 1 - (p0^2 / (pT^2 + p0^2))^(k-1), inverted and truncated at 300 GeV.
    k1 = cfg.pt_power - 1.0
    umax = 1.0 - (cfg.pt_p0**2 / (300.0**2 + cfg.pt_p0**2)) ** k1
    u = rng.uniform(0.0, umax, n)
    pt = cfg.pt_p0 * np.sqrt((1.0 - u) ** (-1.0 / k1) - 1.0)
    y = rng.normal(0.0, 1.0, n) * sigma_y
    bad = np.abs(y) > 5.0
    while np.any(bad):
        y[bad] = rng.normal(0.0, 1.0, int(bad.sum())) * sigma_y[bad]
        bad = np.abs(y) > 5.0
    phi = rng.uniform(-np.pi, np.pi, n)
    mt = np.sqrt(m**2 + pt**2)
    return np.stack([pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(y), mt * np.cosh(y)])


def _smear_muon(
    rng: np.random.Generator, pt: np.ndarray, eta: np.ndarray, q: np.ndarray, cfg: ToyConfig
) -> tuple[np.ndarray, np.ndarray]:
    a = np.where(np.abs(eta) < 1.2, cfg.res_barrel[0], cfg.res_endcap[0])
    c = np.where(np.abs(eta) < 1.2, cfg.res_barrel[1], cfg.res_endcap[1])
    k = q / pt * (1.0 + np.sqrt(a + c * pt**2) * rng.normal(size=len(pt)))
    return 1.0 / np.abs(k), np.where(k > 0, 1, -1)


# ---------------------------------------------------------------------------- events
def _jagged(counts: np.ndarray, **fields: np.ndarray) -> ak.Array:
    return ak.zip({k: ak.unflatten(v, counts) for k, v in fields.items()})


def generate_events(
    process: str,
    n: int,
    rng: np.random.Generator,
    cfg: ToyConfig | None = None,
    *,
    first_event: int = 0,
    is_data: bool = False,
) -> dict[str, Any]:
    """Generate one block of toy events as NanoAOD-like columns.

    Args:
        process: ``"W"`` (W -> mu nu), ``"Z"`` (Z -> mu mu, one muon lost) or ``"fakes"``.
        n: Candidate events to draw (W events may then be removed by ``yield_scale``).
        rng: Random generator.
        cfg: Toy parameters.
        first_event: Event number offset.
        is_data: Drop generator-level branches (genWeight, LHE weights, GenPart, pileup, prefiring).

    Returns:
        ``{branch or collection: numpy / awkward array}`` for :func:`write_toy`.
    """
    cfg = cfg or ToyConfig()
    gen: dict[str, np.ndarray] = {}
    if process == "W":
        q = np.where(rng.random(n) < cfg.wplus_fraction, 1, -1)
        boson = _boson(
            rng, n, cfg, _M_W, _G_W, np.where(q > 0, cfg.y_sigma[0], cfg.y_sigma[1]), (50.0, 150.0)
        )
        absy = np.abs(0.5 * np.log((boson[3] + boson[2]) / (boson[3] - boson[2])))
        iy = cfg.absy_index(absy)
        keep = np.ones(n, dtype=bool)
        if cfg.yield_scale is not None:
            keep = rng.random(n) < np.asarray(cfg.yield_scale)[np.where(q > 0, 0, 1), iy]
        f = cfg.fractions()[:, iy]
        u = rng.random(n)
        pol = np.where(u < f[0], 0, np.where(u < f[0] + f[1], 1, 2))
        cos_theta = sample_costheta(rng, pol)
        d1, d2 = decay_cs(boson, cos_theta, rng.uniform(-np.pi, np.pi, n))
        # d1 is the right-handed daughter: mu+ for W+, the antineutrino for W-.
        lep = np.where(q > 0, d1, d2)
        nu = np.where(q > 0, d2, d1)
        sel = np.flatnonzero(keep)
        q, boson, lep, nu, pol = q[sel], boson[:, sel], lep[:, sel], nu[:, sel], pol[sel]
        n = len(sel)
        mu_q = q
        lost = None
        flavour = 11 if cfg.lepton == "e" else 13
        gen["pdg"] = np.stack([24 * q, -flavour * q, (flavour + 1) * q], axis=1)
        gen["p"] = [boson, lep, nu]
        gen["pol"] = pol
    elif process == "Z":
        boson = _boson(rng, n, cfg, _M_Z, _G_Z, np.full(n, 2.0), (60.0, 120.0))
        # (1 + c^2): a mixture of uniform (3/4) and 3/2 c^2 (1/4).
        u = rng.random(n)
        c = np.where(rng.random(n) < 0.75, 2.0 * u - 1.0, np.cbrt(2.0 * u - 1.0))
        d1, d2 = decay_cs(boson, c, rng.uniform(-np.pi, np.pi, n))
        _, e1, _ = pt_eta_phi(d1)
        _, e2, _ = pt_eta_phi(d2)
        first_lost = np.abs(e1) > np.abs(e2)  # the more forward muon is the lost one
        lep = np.where(first_lost, d2, d1)
        lost = np.where(first_lost, d1, d2)
        mu_q = np.where(first_lost, 1, -1)  # d1 is mu-: the kept muon is mu+ when d1 is lost
        flavour = 11 if cfg.lepton == "e" else 13
        gen["pdg"] = np.stack([np.full(n, 23), np.full(n, flavour), np.full(n, -flavour)], axis=1)
        gen["p"] = [boson, d1, d2]
        nu = np.zeros((4, n))
    elif process == "fakes":
        pt = 15.0 + rng.exponential(12.0, n)
        eta = rng.uniform(-2.4, 2.4, n)
        phi = rng.uniform(-np.pi, np.pi, n)
        lep = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta)])
        mu_q = np.where(rng.random(n) < 0.5, 1, -1)
        nu = np.zeros((4, n))
        lost = None
    else:
        raise ValueError(f"process must be 'W', 'Z' or 'fakes', got {process!r}")

    # Reconstructed main muon.
    gpt, geta, gphi = pt_eta_phi(lep)
    rpt, rq = _smear_muon(rng, np.maximum(gpt, 1e-3), geta, mu_q, cfg)
    prompt = process != "fakes"
    iso = rng.exponential(0.03, n) if prompt else 0.02 + rng.exponential(0.35, n)
    has_mu = (np.abs(geta) < 2.5) & (rpt > 3.0)
    mu_cols = {
        "pt": rpt,
        "eta": geta,
        "phi": gphi,
        "mass": np.full(n, _M_MU),
        "charge": rq,
        "pfRelIso04_all": iso,
        "tightId": rng.random(n) < (0.98 if prompt else 0.9),
        "looseId": np.ones(n, dtype=bool),
        "dxy": rng.normal(0.0, 0.005 if prompt else 0.03, n),
        "dz": rng.normal(0.0, 0.02 if prompt else 0.08, n),
        "genPartIdx": np.full(n, 1 if prompt else -1),
    }
    met = nu[:2].copy()
    lost_cols = None
    if lost is not None:
        lpt, leta, lphi = pt_eta_phi(lost)
        met += lost[:2]
        lrpt, lrq = _smear_muon(rng, np.maximum(lpt, 1e-3), leta, -mu_q, cfg)
        reco_lost = (np.abs(leta) < 2.4) & (lrpt > 3.0)
        lost_cols = (
            reco_lost,
            {
                "pt": lrpt,
                "eta": leta,
                "phi": lphi,
                "mass": np.full(n, _M_MU),
                "charge": lrq,
                "pfRelIso04_all": rng.exponential(0.03, n),
                "tightId": np.zeros(n, bool),
                "looseId": np.zeros(n, bool),
                "dxy": rng.normal(0.0, 0.005, n),
                "dz": rng.normal(0.0, 0.02, n),
                "genPartIdx": np.full(n, 2),
            },
        )
    met += rng.normal(0.0, 6.0 if prompt else 8.0, (2, n))
    # Extra soft muons (mostly below the 15 GeV veto threshold).
    has_extra = rng.random(n) < 0.05
    extra = {
        "pt": 3.0 + rng.exponential(5.0, n),
        "eta": rng.uniform(-2.4, 2.4, n),
        "phi": rng.uniform(-np.pi, np.pi, n),
        "mass": np.full(n, _M_MU),
        "charge": np.where(rng.random(n) < 0.5, 1, -1),
        "pfRelIso04_all": 0.1 + rng.exponential(0.5, n),
        "tightId": rng.random(n) < 0.5,
        "looseId": np.ones(n, bool),
        "dxy": rng.normal(0.0, 0.02, n),
        "dz": rng.normal(0.0, 0.05, n),
        "genPartIdx": np.full(n, -1),
    }
    leptons = [(has_mu, mu_cols)] + ([lost_cols] if lost_cols is not None else [])
    blocks = ([] if cfg.lepton == "e" else leptons) + [(has_extra, extra)]
    counts = sum(b[0].astype(np.int64) for b in blocks)
    # Interleave per event: stack the blocks as columns and keep the present ones, in event order.
    present = np.stack([b[0] for b in blocks], axis=1)
    muon: dict[str, np.ndarray] = {}
    dtypes = {
        "pt": np.float32,
        "eta": np.float32,
        "phi": np.float32,
        "mass": np.float32,
        "charge": np.int32,
        "pfRelIso04_all": np.float32,
        "tightId": bool,
        "looseId": bool,
        "dxy": np.float32,
        "dz": np.float32,
        "genPartIdx": np.int16,
    }
    for key, dt in dtypes.items():
        muon[key] = np.stack([b[1][key] for b in blocks], axis=1)[present].astype(dt)
    if not prompt and cfg.lepton == "mu":
        muon["genPartIdx"][:] = -1
    # Electrons: occasionally one soft electron with a random cut-based ID.
    n_ele = (rng.random(n) < 0.03).astype(np.int64)
    ne = int(n_ele.sum())
    electron = {
        "pt": (5.0 + rng.exponential(10.0, ne)).astype(np.float32),
        "eta": rng.uniform(-2.5, 2.5, ne).astype(np.float32),
        "phi": rng.uniform(-np.pi, np.pi, ne).astype(np.float32),
        "mass": np.full(ne, 0.000511, dtype=np.float32),
        "charge": np.where(rng.random(ne) < 0.5, 1, -1).astype(np.int32),
        "cutBased": rng.integers(0, 5, ne).astype(np.int32),
        "pfRelIso03_all": rng.exponential(0.1, ne).astype(np.float32),
        "dxy": rng.normal(0.0, 0.01, ne).astype(np.float32),
        "dz": rng.normal(0.0, 0.03, ne).astype(np.float32),
    }
    if cfg.lepton == "e":
        n_ele, electron = _electrons(n, leptons, n_ele, electron)
    n_jet = rng.poisson(2.0, n)
    nj = int(n_jet.sum())
    jet = {
        "pt": (20.0 + rng.exponential(20.0, nj)).astype(np.float32),
        "eta": rng.uniform(-4.7, 4.7, nj).astype(np.float32),
        "phi": rng.uniform(-np.pi, np.pi, nj).astype(np.float32),
        "mass": (2.0 + rng.exponential(5.0, nj)).astype(np.float32),
    }
    evno = np.arange(first_event, first_event + n, dtype=np.int64)
    cols: dict[str, Any] = {
        "run": np.ones(n, dtype=np.uint32),
        "luminosityBlock": (1 + evno // 1000).astype(np.uint32),
        "event": (evno + 1).astype(np.uint64),
        "PV_x": rng.normal(0.0, 0.002, n).astype(np.float32),
        "PV_y": rng.normal(0.0, 0.002, n).astype(np.float32),
        "PV_z": rng.normal(0.0, 3.5, n).astype(np.float32),
        "PV_npvs": rng.poisson(30, n).astype(np.int32),
        "MET_pt": np.hypot(met[0], met[1]).astype(np.float32),
        "MET_phi": np.arctan2(met[1], met[0]).astype(np.float32),
        "Muon": _jagged(counts, **muon),
        "Electron": _jagged(n_ele, **electron),
        "Jet": _jagged(n_jet, **jet),
    }
    if is_data:
        if cfg.pfnano:
            _add_pfnano(rng, cols, n_jet, jet)
        return cols
    gw = np.where(rng.random(n) < cfg.negative_weight_fraction, -cfg.gen_weight, cfg.gen_weight)
    cols["genWeight"] = gw.astype(np.float32)
    cols["Pileup_nTrueInt"] = np.clip(rng.normal(30.0, 12.0, n), 0.0, 99.0).astype(np.float32)
    fwd = np.abs(geta) > 2.0
    cols["L1PreFiringWeight_Nom"] = np.where(fwd, 0.98, 1.0).astype(np.float32)
    cols["L1PreFiringWeight_Up"] = np.where(fwd, 0.99, 1.0).astype(np.float32)
    cols["L1PreFiringWeight_Dn"] = np.where(fwd, 0.97, 1.0).astype(np.float32)
    if process in ("W", "Z"):
        boson = gen["p"][0]
        bpt, beta_, bphi = pt_eta_phi(boson)
        absy = np.abs(0.5 * np.log((boson[3] + boson[2]) / (boson[3] - boson[2])))
        lrel = np.log1p(bpt / 10.0)
        # muR=0.5 -> +, 2 -> -; muF=0.5 -> +, 2 -> - (index = 3 * iR + iF with 0.5, 1, 2).
        scale = [
            1.0 + (1 - iR) * (0.03 + 0.02 * lrel) + (1 - iF) * 0.02 * np.tanh(absy - 1.0)
            for iR in range(3)
            for iF in range(3)
        ]
        cols["LHEScaleWeight"] = ak.unflatten(
            np.stack(scale, axis=1).astype(np.float32).ravel(), np.full(n, 9)
        )
        coef = np.random.default_rng(20241122).normal(0.0, 0.01, (cfg.n_pdf, 3))
        coef[0] = 0.0
        pdf = (
            1.0 + coef[:, 0:1] * (absy / 2.5) + coef[:, 1:2] * ((absy / 2.5) ** 2 - 0.3) + coef[:, 2:3] * lrel
        )
        cols["LHEPdfWeight"] = ak.unflatten(pdf.T.astype(np.float32).ravel(), np.full(n, cfg.n_pdf))
        parts = gen["p"]
        pts, etas, phis = zip(*(pt_eta_phi(p) for p in parts), strict=True)
        mass = [
            np.sqrt(np.maximum(parts[0][3] ** 2 - np.sum(parts[0][:3] ** 2, axis=0), 0.0)),
            np.full(n, _M_MU if process == "Z" else _M_MU),
            np.zeros(n) if process == "W" else np.full(n, _M_MU),
        ]
        three = np.full(n, 3)
        cols["GenPart"] = _jagged(
            three,
            pt=np.stack(pts, axis=1).ravel().astype(np.float32),
            eta=np.stack(etas, axis=1).ravel().astype(np.float32),
            phi=np.stack(phis, axis=1).ravel().astype(np.float32),
            mass=np.stack(mass, axis=1).ravel().astype(np.float32),
            pdgId=gen["pdg"].ravel().astype(np.int32),
            status=np.tile(np.array([62, 1, 1], dtype=np.int32), n),
            statusFlags=np.tile(np.array([_FLAGS_BOSON, _FLAGS_LEPTON, _FLAGS_LEPTON], dtype=np.int32), n),
            genPartIdxMother=np.tile(np.array([-1, 0, 0], dtype=np.int16), n),
        )
    else:
        zero = np.zeros(n, dtype=np.int64)
        cols["LHEScaleWeight"] = ak.unflatten(np.ones(9 * n, dtype=np.float32), np.full(n, 9))
        cols["LHEPdfWeight"] = ak.unflatten(np.ones(cfg.n_pdf * n, dtype=np.float32), np.full(n, cfg.n_pdf))
        cols["GenPart"] = _jagged(
            zero,
            pt=np.zeros(0, np.float32),
            eta=np.zeros(0, np.float32),
            phi=np.zeros(0, np.float32),
            mass=np.zeros(0, np.float32),
            pdgId=np.zeros(0, np.int32),
            status=np.zeros(0, np.int32),
            statusFlags=np.zeros(0, np.int32),
            genPartIdxMother=np.zeros(0, np.int16),
        )
        cols["Muon"] = ak.with_field(
            cols["Muon"], ak.full_like(cols["Muon"].pt, -1, dtype=np.int16), "genPartIdx"
        )
    if cfg.pfnano:
        _add_pfnano(rng, cols, n_jet, jet)
    return cols


def _add_pfnano(rng: np.random.Generator, cols: dict[str, Any], n_jet: np.ndarray, jet: dict) -> None:
    """Add raw-pT factors, areas, rho and PFNano constituents (drawn last: other branches are unchanged)."""
    n = len(n_jet)
    nj = len(jet["pt"])
    pt = jet["pt"].astype(np.float64)
    raw = pt / (1.05 + 0.5 * np.exp(-pt / 30.0))
    cols["Jet"] = ak.with_field(cols["Jet"], ak.unflatten((1.0 - raw / pt).astype(np.float32), n_jet), "rawFactor")
    area = np.clip(rng.normal(0.5, 0.03, nj), 0.3, 0.7).astype(np.float32)
    cols["Jet"] = ak.with_field(cols["Jet"], ak.unflatten(area, n_jet), "area")
    cols["fixedGridRhoFastjetAll"] = rng.uniform(5.0, 40.0, n).astype(np.float32)
    jet_event = np.repeat(np.arange(n), n_jet)
    jet_local = np.arange(nj) - np.repeat(np.cumsum(n_jet) - n_jet, n_jet)
    n_ch = 1 + rng.poisson(0.08 * raw)
    n_ne = 1 + rng.poisson(0.05 * raw)
    per_jet = n_ch + n_ne
    total = int(per_jet.sum())
    owner = np.repeat(np.arange(nj), per_jet)  # jet of each candidate, jets in event order
    within = np.arange(total) - np.repeat(np.cumsum(per_jet) - per_jet, per_jet)
    charged = within < n_ch[owner]
    share = rng.exponential(1.0, total)
    share /= np.bincount(owner, weights=share, minlength=nj)[owner]
    cand_pt = raw[owner] * share
    u = rng.random(total)
    ch_id = np.where(u < 0.9, 211, np.where(u < 0.95, 11, 13)) * np.where(rng.random(total) < 0.5, 1, -1)
    ne_id = np.where(rng.random(total) < 0.6, 22, 130)
    d0 = np.where(charged, rng.normal(0.0, 0.01, total), 0.0)
    pv = rng.choice(np.array([7, 6, 5, 4, 1, 0]), total, p=[0.8, 0.08, 0.04, 0.03, 0.03, 0.02])
    n_cand_event = np.bincount(jet_event[owner], minlength=n) if nj else np.zeros(n, dtype=np.int64)
    cand_local = np.arange(total) - np.repeat(np.cumsum(n_cand_event) - n_cand_event, n_cand_event)
    cols["PFCands"] = _jagged(
        n_cand_event,
        pt=cand_pt.astype(np.float32),
        eta=(jet["eta"][owner] + rng.normal(0.0, 0.1, total)).astype(np.float32),
        phi=(jet["phi"][owner] + rng.normal(0.0, 0.1, total)).astype(np.float32),
        mass=np.where(charged, 0.1396, 0.0).astype(np.float32),
        charge=np.where(charged, np.sign(ch_id), 0).astype(np.int32),
        pdgId=np.where(charged, ch_id, ne_id).astype(np.int32),
        d0=d0.astype(np.float32),
        d0Err=np.where(charged, 0.002 + rng.exponential(0.01, total), 0.0).astype(np.float32),
        dz=np.where(charged, rng.normal(0.0, 0.05, total), 0.0).astype(np.float32),
        pvAssocQuality=np.where(charged, pv, 0).astype(np.int32),
    )
    # Candidates are written jet by jet in random pT order; the link table points to them.
    cols["JetPFCands"] = _jagged(
        n_cand_event,
        jetIdx=jet_local[owner].astype(np.int32),
        pFCandsIdx=cand_local.astype(np.int32),
    )
    n_sv = rng.poisson(0.3, nj)
    sv_owner = np.repeat(np.arange(nj), n_sv)
    ns = len(sv_owner)
    d3d = rng.exponential(0.5, ns)
    cols["JetSVs"] = _jagged(
        np.bincount(jet_event[sv_owner], minlength=n) if ns else np.zeros(n, dtype=np.int64),
        pt=(raw[sv_owner] * rng.uniform(0.05, 0.4, ns)).astype(np.float32),
        mass=(0.5 + rng.exponential(1.0, ns)).astype(np.float32),
        d3d=d3d.astype(np.float32),
        d3dsig=(d3d / (0.02 + rng.exponential(0.01, ns))).astype(np.float32),
        ntracks=(2 + rng.poisson(1.0, ns)).astype(np.int32),
        jetIdx=jet_local[sv_owner].astype(np.int32),
    )


def _electrons(
    n: int, leptons: list[tuple[np.ndarray, dict[str, np.ndarray]]], n_soft: np.ndarray, soft: dict[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The electron collection of an electron toy: per event its decay electrons (the muon toy's lepton draws, as
    electrons) then its soft electron."""
    per_event = {k: np.zeros(n, dtype=v.dtype) for k, v in soft.items()}
    for k, v in soft.items():
        per_event[k][n_soft > 0] = v
    blocks = [(present, {
        "pt": cols["pt"], "eta": cols["eta"], "phi": cols["phi"], "mass": np.full(n, 0.000511),
        "charge": cols["charge"], "cutBased": np.where(cols["tightId"], 4, np.where(cols["looseId"], 2, 0)),
        "pfRelIso03_all": cols["pfRelIso04_all"], "dxy": cols["dxy"], "dz": cols["dz"],
    }) for present, cols in leptons] + [(n_soft > 0, per_event)]  # fmt: skip
    present = np.stack([b[0] for b in blocks], axis=1)
    out = {k: np.stack([b[1][k] for b in blocks], axis=1)[present].astype(v.dtype) for k, v in soft.items()}
    return present.sum(axis=1).astype(np.int64), out


def _concat(blocks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if len(blocks) == 1:
        return blocks[0]
    out = {}
    for key in blocks[0]:
        vals = [b[key] for b in blocks]
        out[key] = ak.concatenate(vals) if isinstance(vals[0], ak.Array) else np.concatenate(vals)
    return out


def write_toy(
    path: str | os.PathLike[str],
    n_events: int | dict[str, int],
    *,
    process: str = "W",
    seed: int = 0,
    config: ToyConfig | None = None,
    is_data: bool = False,
    block_size: int = 250_000,
) -> dict[str, Any]:
    """Write a NanoAOD-like toy file (TTree ``Events``).

    Args:
        path: Output ROOT file.
        n_events: Candidate events, or ``{process: n}`` to mix processes in one file (e.g. pseudo-data);
            ``process`` is then ignored.
        process: ``"W"``, ``"Z"`` or ``"fakes"``.
        seed: Seed of ``np.random.default_rng``.
        config: Toy parameters.
        is_data: Write it as data (no generator branches).
        block_size: Events generated and written per ``extend`` call.

    Returns:
        ``{"n_written": int, "n_candidates": {process: int}, "path": str}``.

    Raises:
        OSError: The file cannot be written (e.g. a full disk); an earlier file at ``path`` is left unchanged.
    """
    cfg = config or ToyConfig()
    plan = dict(n_events) if isinstance(n_events, dict) else {process: int(n_events)}
    processes = list(plan)
    if is_data is False and len(processes) > 1:
        raise ValueError("mixing processes in one file is for pseudo-data: pass is_data=True")
    rng = np.random.default_rng(seed)
    import uproot

    written = 0
    tree = None
    # Each block holds the same share of every process, so that mixed files are uniform.
    total = sum(plan.values())
    n_blocks = max(1, -(-total // block_size))
    # Written in a temporary folder and moved into place once complete (wfit.atomic): a failed or interrupted job
    # leaves no truncated ROOT file that a later run would take for a toy sample.
    with atomic_path(path) as tmp, uproot.recreate(tmp) as f:
        for b in range(n_blocks):
            parts = []
            for p in processes:
                lo = plan[p] * b // n_blocks
                hi = plan[p] * (b + 1) // n_blocks
                if hi > lo:
                    parts.append(generate_events(p, hi - lo, rng, cfg, first_event=written, is_data=is_data))
                    written += len(parts[-1]["run"])
            if not parts:
                continue
            cols = _concat(parts)
            if tree is None:
                types = {k: (v.type.content if isinstance(v, ak.Array) else v.dtype) for k, v in cols.items()}
                tree = f.mktree("Events", types)
            tree.extend(cols)
    return {"n_written": written, "n_candidates": plan, "path": os.fspath(path)}
