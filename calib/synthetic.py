"""A seeded synthetic jet generator writing ml-jec's data layout, with a known true response.

Each jet has a generator-level pT (log-uniform), a flavour (b, c, light quark, gluon, written as
``hadron_flavor``/``parton_flavor`` as in CMS) and true constituents: charged hadrons (some leptons in b/c
jets), photons and neutral hadrons, whose energy shares follow a Dirichlet fragmentation that is softer for
gluons. The detector is modelled per constituent:

* charged particles are measured exactly (tracker);
* photons with response ``0.98 - 0.05 exp(-p / 5 GeV)``;
* neutral hadrons with ``(0.80 - 0.40 exp(-p / 10 GeV)) (1 - 0.04 |eta|)``, lower for soft particles, so the
  jet response depends on the composition and fragmentation, hence on flavour;
* a common smearing factor ``s = 1 + sigma(pt_gen) * N(0, 1)`` multiplies all constituents of the jet, with
  ``sigma(pt_gen) = sqrt((a / sqrt(pt_gen / GeV))^2 + b^2)``. This is the irreducible part: no input reveals
  ``s``, so the best achievable resolution of ``pt_corr / pt_gen`` is that of ``s`` (the resolution floor,
  :meth:`SyntheticTruth.floor_in_bins`);
* pileup: charged pileup tracks (``ch_pv_ass`` 0 or 1, large ``ch_dz``; identifiable) and neutral pileup
  photons carrying exactly ``0.25 rho area`` in total (learnable from ``rho`` and ``area``).

The reconstructed jet pT is the scalar sum of its constituents' pT; eta and phi are pT-weighted. The
standard-like calibration ``pt_full_corr`` is an L1 offset subtraction followed by a flavour-averaged
correction in bins of pT and |eta|, derived from an independent calibration sample, so it leaves the
flavour dependence that a constituent-aware model can remove.

Shards have the branch names and types of ml-jec's (tree ``Jets``); ``data.yaml``, ``transform.yaml``
(through :func:`wfit.calib.build_transform`) and ``truth.yaml`` (the generator's parameters) are written
alongside.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import awkward as ak
import numpy as np
import yaml

from wfit.atomic import atomic_path, write_text
from wfit.yamlfile import safe_load

from .data import TREE_NAME, iterate
from .features import derived_feature, feature_columns, wrap_phi
from .transform import build_transform

__all__ = [
    "DEFAULT_NONLINEAR",
    "FLAVOURS",
    "SyntheticTruth",
    "generate_jets",
    "load_truth",
    "write_synthetic",
]

#: Flavour classes, their (hadron_flavor, |parton_flavor| choices) and fractions of generated jets.
FLAVOURS: dict[str, tuple[int, tuple[int, ...], float]] = {
    "b": (5, (5,), 0.15),
    "c": (4, (4,), 0.15),
    "light": (0, (1, 2, 3), 0.35),
    "gluon": (0, (21,), 0.35),
}

#: Hand-chosen non-linear steps per feature for build_transform (a final linear step is fitted).
DEFAULT_NONLINEAR: dict[str, list[dict[str, Any]]] = {
    "pt": [{"type": "arcsinh", "params": {"scale": 10.0}}],
    "eta": [],
    "phi": [],
    "mass": [{"type": "arcsinh", "params": {"scale": 10.0}}],
    "area": [],
    "num_pv": [],
    "rho": [],
    "ch_pt": [{"type": "arcsinh", "params": {"scale": 0.1}}],
    "ch_rel_pt": [{"type": "arcsinh", "params": {"scale": 0.01}}],
    "ch_deta": [],
    "ch_dphi": [],
    "ch_dxy": [{"type": "abs"}, {"type": "arcsinh", "params": {"scale": 0.001}}],
    "ch_dz": [{"type": "abs"}, {"type": "arcsinh", "params": {"scale": 0.001}}],
    "ch_dxy_significance": [{"type": "arcsinh", "params": {"scale": 1.0}}],
    "ch_num_hits": [{"type": "arcsinh", "params": {"scale": 5.0}}],
    "ch_num_pixel_hits": [{"type": "arcsinh", "params": {"scale": 5.0}}],
    "ch_lost_hits": [],
    "ch_norm_chi2": [{"type": "arcsinh", "params": {"scale": 1.0}}],
    "ne_pt": [{"type": "arcsinh", "params": {"scale": 0.1}}],
    "ne_rel_pt": [{"type": "arcsinh", "params": {"scale": 0.01}}],
    "ne_deta": [],
    "ne_dphi": [],
    "ne_hcal_frac": [],
    "sv_pt": [{"type": "arcsinh", "params": {"scale": 0.1}}],
    "sv_rel_pt": [{"type": "arcsinh", "params": {"scale": 0.01}}],
    "sv_mass": [{"type": "arcsinh", "params": {"scale": 0.1}}],
    "sv_distance": [{"type": "arcsinh", "params": {"scale": 0.01}}],
    "sv_significance": [{"type": "arcsinh", "params": {"scale": 1.0}}],
    "sv_num_tracks": [{"type": "log"}],
}
_CATEGORICAL = {
    "ch_id": [-211, -13, -11, 11, 13, 211],
    "ch_pv_ass": [0, 1, 4, 5, 6, 7],
    "ne_id": [1, 2, 22, 130],
}

_JET_BRANCHES = (
    ("pt_gen", np.float32),
    ("eta_gen", np.float32),
    ("phi_gen", np.float32),
    ("mass_gen", np.float32),
    ("hadron_flavor", np.int32),
    ("parton_flavor", np.int32),
    ("num_pv", np.int32),
    ("rho", np.float32),
    ("exp_pileup", np.float32),
    ("pt", np.float32),
    ("pt_l1corr", np.float32),
    ("pt_full_corr", np.float32),
    ("eta", np.float32),
    ("phi", np.float32),
    ("mass", np.float32),
    ("area", np.float32),
)
_CONSTITUENT_BRANCHES = {
    "ch": (
        ("id", np.int32),
        ("pt", np.float32),
        ("eta", np.float32),
        ("phi", np.float32),
        ("pv_ass", np.int32),
        ("dxy", np.float32),
        ("dxy_significance", np.float32),
        ("dz", np.float32),
        ("num_hits", np.int32),
        ("num_pixel_hits", np.int32),
        ("lost_hits", np.int32),
        ("norm_chi2", np.float32),
    ),
    "ne": (
        ("id", np.int32),
        ("pt", np.float32),
        ("eta", np.float32),
        ("phi", np.float32),
        ("hcal_frac", np.float32),
    ),
    "sv": (
        ("mass", np.float32),
        ("pt", np.float32),
        ("distance", np.float32),
        ("significance", np.float32),
        ("num_tracks", np.int32),
    ),
}
_NEUTRAL_PU_DENSITY = 0.25  # neutral pileup pT per unit rho * area
_CHARGED_PU_MEAN_PT = 0.8  # GeV, mean pT of a charged pileup track


@dataclass(frozen=True)
class SyntheticTruth:
    """What the generator knows: its parameters and the irreducible resolution it injects.

    Attributes:
        seed: Seed of the generated set.
        n_jets: Jets written.
        pt_range: (min, max) of the log-uniform pt_gen spectrum, GeV.
        stochastic: ``a`` in ``sigma(pt_gen) = sqrt((a / sqrt(pt_gen))^2 + b^2)``, GeV^0.5.
        constant: ``b`` in the same formula.
        location: Directory written.
        standard_correction: The standard-like L2L3 table: ``{"log_pt_edges", "abs_eta_edges", "factor"}``.
    """

    seed: int
    n_jets: int
    pt_range: tuple[float, float] = (20.0, 2000.0)
    stochastic: float = 0.5
    constant: float = 0.03
    location: str = ""
    standard_correction: dict[str, list] = field(default_factory=dict)

    def resolution_floor(self, pt_gen: np.ndarray) -> np.ndarray:
        """Relative width ``sigma(pt_gen)`` of the injected smearing per jet (pt_gen in GeV)."""
        pt_gen = np.asarray(pt_gen, dtype=np.float64)
        return np.sqrt(self.stochastic**2 / pt_gen + self.constant**2)

    def floor_in_bins(
        self, pt_gen: np.ndarray, edges: np.ndarray, samples: int = 50, seed: int = 0
    ) -> np.ndarray:
        """The best achievable resolution per pt_gen bin: that of the smearing factor alone.

        Resolution is half the 16-84% interval of ``s`` over its median, as in :mod:`wfit.calib.report`,
        evaluated on ``samples`` draws of ``s`` per jet of ``pt_gen`` (so that the bin's pT mixture is
        included).

        Args:
            pt_gen: Generator-level pT of the evaluated jets, GeV.
            edges: Bin edges in pt_gen, GeV.
            samples: Draws per jet.
            seed: Seed of the draws.

        Returns:
            One value per bin (NaN for an empty bin).
        """
        rng = np.random.default_rng(seed)
        pt_gen = np.asarray(pt_gen, dtype=np.float64)
        out = np.full(len(edges) - 1, np.nan)
        which = np.digitize(pt_gen, edges) - 1
        for i in range(len(out)):
            sigma = self.resolution_floor(pt_gen[which == i])
            if sigma.size == 0:
                continue
            s = 1.0 + sigma[:, None] * rng.standard_normal((sigma.size, samples))
            q16, q50, q84 = np.quantile(s, [0.16, 0.5, 0.84])
            out[i] = 0.5 * (q84 - q16) / q50
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pt_range"] = list(self.pt_range)
        return d


def load_truth(location: str) -> SyntheticTruth:
    """Read ``truth.yaml`` written by :func:`write_synthetic`."""
    path = os.path.join(location, "truth.yaml")
    with open(path) as f:
        d = safe_load(f, source=path)
    d["pt_range"] = tuple(d["pt_range"])
    return SyntheticTruth(**d)


def _dirichlet_shares(
    rng: np.random.Generator, alpha: np.ndarray, jet: np.ndarray, n_jets: int
) -> np.ndarray:
    """Shares summing to 1 within each jet (``jet`` = jet index per particle), Dirichlet(alpha)."""
    g = rng.gamma(alpha)
    sums = np.bincount(jet, weights=g, minlength=n_jets)
    return g / sums[jet]


def _spread(rng: np.random.Generator, width: np.ndarray) -> np.ndarray:
    """Angular offsets from the jet axis (radians), Gaussian clipped to the jet cone R = 0.4."""
    return np.clip(rng.normal(0.0, width), -0.38, 0.38)


def generate_jets(
    n_jets: int,
    rng: np.random.Generator,
    truth: SyntheticTruth,
    standard: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate jets as flat/jagged columns in the shards' layout.

    Args:
        n_jets: Number of jets.
        rng: Random generator (all randomness is drawn from it).
        truth: Generator parameters (spectrum, smearing).
        standard: Standard correction table; None leaves ``pt_full_corr = pt_l1corr``.

    Returns:
        ``{"jets": {branch: numpy}, "ch": {field: flat numpy}, "ch_size": counts, "ne": ..., "sv": ...}``,
        constituent fields flat and ordered by decreasing pT within each jet.
    """
    n = int(n_jets)
    idx = np.arange(n)
    names = list(FLAVOURS)
    probs = np.array([FLAVOURS[k][2] for k in names])
    flav = rng.choice(len(names), size=n, p=probs / probs.sum())
    is_b, is_c, is_g = flav == 0, flav == 1, flav == 3
    hadron = np.array([FLAVOURS[k][0] for k in names], dtype=np.int32)[flav]
    light_pick = rng.choice(np.array([1, 2, 3]), size=n)
    parton_abs = np.select([is_b, is_c, is_g], [5, 4, 21], default=light_pick)
    parton = np.where(is_g, 21, parton_abs * rng.choice(np.array([-1, 1]), size=n)).astype(np.int32)

    lo, hi = truth.pt_range
    pt_gen = np.exp(rng.uniform(np.log(lo), np.log(hi), size=n))
    eta_gen = rng.uniform(-2.5, 2.5, size=n)
    phi_gen = rng.uniform(-np.pi, np.pi, size=n)
    mass_gen = pt_gen * rng.uniform(0.05, 0.2, size=n)
    num_pv = (1 + rng.poisson(25, size=n)).astype(np.int32)
    rho = np.clip(0.55 * num_pv + rng.normal(0.0, 1.5, size=n), 0.0, None)
    exp_pileup = np.clip(0.95 * num_pv + rng.normal(0.0, 1.0, size=n), 0.0, None)
    area = np.clip(rng.normal(0.5, 0.02, size=n), 0.4, 0.6)

    # True composition: charged, photon and neutral-hadron energy fractions.
    f_ch = rng.beta(np.where(is_g, 3.5, 4.0), 2.7)
    f_ph = (1.0 - f_ch) * rng.beta(6.0, 4.0, size=n)
    f_nh = 1.0 - f_ch - f_ph
    mult = (2.0 + 2.5 * np.log(pt_gen / 10.0)) * np.where(is_g, 1.4, 1.0) * np.where(is_b, 1.2, 1.0)
    alpha = np.where(is_g, 1.0, 0.6)  # larger alpha: more even sharing, softer particles (gluons)
    n_ch = 1 + rng.poisson(mult)
    n_ph = 1 + rng.poisson(0.7 * mult)
    n_nh = 1 + rng.poisson(0.25 * mult)
    sigma = truth.resolution_floor(pt_gen)
    smear = np.clip(1.0 + sigma * rng.standard_normal(n), 0.3, None)
    spread = np.where(is_g, 0.12, 0.08)

    def particles(counts: np.ndarray, frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        jet = np.repeat(idx, counts)
        p_true = pt_gen[jet] * frac[jet] * _dirichlet_shares(rng, alpha[jet], jet, n)
        return jet, p_true

    ch_jet, ch_true = particles(n_ch, f_ch)
    ph_jet, ph_true = particles(n_ph, f_ph)
    nh_jet, nh_true = particles(n_nh, f_nh)

    # Detector response per particle, then the common smearing of the jet.
    ch_reco = ch_true * smear[ch_jet]
    ph_reco = ph_true * (0.98 - 0.05 * np.exp(-ph_true / 5.0)) * smear[ph_jet]
    nh_resp = (0.80 - 0.40 * np.exp(-nh_true / 10.0)) * (1.0 - 0.04 * np.abs(eta_gen[nh_jet]))
    nh_reco = nh_true * nh_resp * smear[nh_jet]

    # Pileup: identifiable charged tracks; neutral photons with a total of exactly 0.25 rho * area.
    n_chpu = rng.poisson(0.6 * rho * area)
    chpu_jet = np.repeat(idx, n_chpu)
    chpu_pt = rng.exponential(_CHARGED_PU_MEAN_PT, size=chpu_jet.size) + 0.3
    n_nepu = np.full(n, 3)
    nepu_jet = np.repeat(idx, n_nepu)
    nepu_pt = (_NEUTRAL_PU_DENSITY * rho * area)[nepu_jet] * _dirichlet_shares(
        rng, np.full(nepu_jet.size, 2.0), nepu_jet, n
    )

    # Charged collection: hard tracks then pileup tracks, sorted by decreasing pT per jet.
    lepton = (is_b & (rng.random(n) < 0.25)) | (is_c & (rng.random(n) < 0.12))
    first_track = np.cumsum(n_ch) - n_ch
    ch_id = (211 * rng.choice(np.array([-1, 1]), size=ch_jet.size)).astype(np.int32)
    lep_rows = first_track[lepton] + rng.integers(0, n_ch[lepton])
    ch_id[lep_rows] = rng.choice(np.array([-13, -11, 11, 13]), size=lep_rows.size)
    hard_pv = rng.choice(np.array([7, 6, 5, 4]), size=ch_jet.size, p=[0.8, 0.1, 0.05, 0.05])
    heavy = (is_b | is_c)[ch_jet]
    displaced = heavy & (rng.random(ch_jet.size) < 0.3)
    dxy_hard = np.where(displaced, rng.laplace(0.0, 0.05, ch_jet.size), rng.normal(0.0, 0.002, ch_jet.size))
    ch = {
        "jet": np.concatenate([ch_jet, chpu_jet]),
        "pt": np.concatenate([ch_reco, chpu_pt]),
        "id": np.concatenate([ch_id, (211 * rng.choice(np.array([-1, 1]), chpu_jet.size)).astype(np.int32)]),
        "pv_ass": np.concatenate([hard_pv, rng.choice(np.array([0, 1]), size=chpu_jet.size)]),
        "dxy": np.concatenate([dxy_hard, rng.normal(0.0, 0.01, chpu_jet.size)]),
        "dz": np.concatenate([rng.normal(0.0, 0.005, ch_jet.size), rng.normal(0.0, 5.0, chpu_jet.size)]),
        "deta": np.concatenate([_spread(rng, spread[ch_jet]), rng.uniform(-0.38, 0.38, chpu_jet.size)]),
        "dphi": np.concatenate([_spread(rng, spread[ch_jet]), rng.uniform(-0.38, 0.38, chpu_jet.size)]),
    }
    m = ch["jet"].size
    ch["dxy_significance"] = np.abs(ch["dxy"]) / (0.002 + 0.01 / np.maximum(ch["pt"], 0.1))
    ch["num_hits"] = 8 + rng.poisson(10, m)
    ch["num_pixel_hits"] = rng.binomial(4, 0.9, m)
    ch["lost_hits"] = np.where(rng.random(m) < 0.9, -1, rng.integers(0, 3, m))
    ch["norm_chi2"] = np.round(np.exp(rng.normal(0.0, 0.5, m)))

    ne = {
        "jet": np.concatenate([ph_jet, nh_jet, nepu_jet]),
        "pt": np.concatenate([ph_reco, nh_reco, nepu_pt]),
        "id": np.concatenate(
            [np.full(ph_jet.size, 22), np.full(nh_jet.size, 130), np.full(nepu_jet.size, 22)]
        ),
        "deta": np.concatenate(
            [
                _spread(rng, spread[ph_jet]),
                _spread(rng, spread[nh_jet]),
                rng.uniform(-0.38, 0.38, nepu_jet.size),
            ]
        ),
        "dphi": np.concatenate(
            [
                _spread(rng, spread[ph_jet]),
                _spread(rng, spread[nh_jet]),
                rng.uniform(-0.38, 0.38, nepu_jet.size),
            ]
        ),
    }
    ne["hcal_frac"] = (ne["id"] == 130).astype(np.float64)

    # Reconstructed jet: scalar pT sum; pT-weighted axis.
    pt = np.bincount(ch["jet"], ch["pt"], n) + np.bincount(ne["jet"], ne["pt"], n)
    deta_jet = (
        np.bincount(ch["jet"], ch["pt"] * ch["deta"], n) + np.bincount(ne["jet"], ne["pt"] * ne["deta"], n)
    ) / pt
    dphi_jet = (
        np.bincount(ch["jet"], ch["pt"] * ch["dphi"], n) + np.bincount(ne["jet"], ne["pt"] * ne["dphi"], n)
    ) / pt
    eta = eta_gen + deta_jet
    phi = wrap_phi(phi_gen + dphi_jet)
    for coll in (ch, ne):
        coll["eta"] = eta_gen[coll["jet"]] + coll.pop("deta")
        coll["phi"] = wrap_phi(phi_gen[coll["jet"]] + coll.pop("dphi"))
    mass = mass_gen * (pt / pt_gen) * rng.uniform(0.95, 1.05, n)

    # Secondary vertices (b > c > fakes in light/gluon jets).
    p_sv1 = np.select([is_b, is_c], [0.6, 0.35], default=0.05)
    p_sv2 = np.where(is_b, 0.15, 0.0)
    u = rng.random(n)
    n_sv = (u < p_sv1 + p_sv2).astype(np.int64) + (u < p_sv2)
    sv_jet = np.repeat(idx, n_sv)
    ch_pt_sum = np.bincount(ch_jet, ch_reco, n)
    sv_mass = np.select(
        [is_b[sv_jet], is_c[sv_jet]],
        [rng.uniform(1.0, 4.5, sv_jet.size), rng.uniform(0.5, 2.0, sv_jet.size)],
        default=rng.uniform(0.3, 1.0, sv_jet.size),
    )
    sv_distance = rng.exponential(np.where(is_b[sv_jet], 0.3, 0.1))
    sv = {
        "jet": sv_jet,
        "pt": ch_pt_sum[sv_jet] * rng.uniform(0.1, 0.5, sv_jet.size),
        "mass": sv_mass,
        "distance": sv_distance,
        "significance": sv_distance / 0.03 * rng.uniform(0.5, 1.5, sv_jet.size),
        "num_tracks": 2 + rng.poisson(np.where(is_b[sv_jet], 1.5, 0.5)),
    }

    # Standard-like calibration: L1 offset (mean pileup), then a flavour-averaged L2L3 table.
    offset = (_NEUTRAL_PU_DENSITY + 0.6 * (_CHARGED_PU_MEAN_PT + 0.3)) * rho * area
    pt_l1 = np.maximum(pt - offset, 1.0)
    pt_full = pt_l1 * (_apply_table(standard, pt_l1, eta) if standard else 1.0)

    jets = {
        "pt_gen": pt_gen,
        "eta_gen": eta_gen,
        "phi_gen": phi_gen,
        "mass_gen": mass_gen,
        "hadron_flavor": hadron,
        "parton_flavor": parton,
        "num_pv": num_pv,
        "rho": rho,
        "exp_pileup": exp_pileup,
        "pt": pt,
        "pt_l1corr": pt_l1,
        "pt_full_corr": pt_full,
        "eta": eta,
        "phi": phi,
        "mass": mass,
        "area": area,
    }
    out: dict[str, Any] = {
        "jets": {
            k: np.asarray(v).astype(t)
            for (k, t), v in zip(_JET_BRANCHES, (jets[k] for k, _ in _JET_BRANCHES), strict=True)
        }
    }
    for name, coll in (("ch", ch), ("ne", ne), ("sv", sv)):
        order = np.lexsort((-coll["pt"], coll["jet"]))
        out[name] = {f: np.asarray(coll[f])[order].astype(t) for f, t in _CONSTITUENT_BRANCHES[name]}
        out[f"{name}_size"] = np.bincount(coll["jet"], minlength=n).astype(np.int32)
    return out


_LOG_PT_EDGES = np.linspace(np.log(10.0), np.log(4000.0), 25)
_ABS_ETA_EDGES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.6])


def _derive_table(jets: Mapping[str, np.ndarray]) -> dict[str, list]:
    """Median of pt_gen / pt_l1corr in bins of log(pt_l1corr) and |eta| (the flavour-averaged L2L3)."""
    x = np.log(jets["pt_l1corr"].astype(np.float64))
    a = np.abs(jets["eta"].astype(np.float64))
    r = jets["pt_gen"].astype(np.float64) / jets["pt_l1corr"]
    ix = np.clip(np.digitize(x, _LOG_PT_EDGES) - 1, 0, len(_LOG_PT_EDGES) - 2)
    ia = np.clip(np.digitize(a, _ABS_ETA_EDGES) - 1, 0, len(_ABS_ETA_EDGES) - 2)
    factor = np.full((len(_ABS_ETA_EDGES) - 1, len(_LOG_PT_EDGES) - 1), np.nan)
    for i in range(factor.shape[0]):
        for j in range(factor.shape[1]):
            sel = (ia == i) & (ix == j)
            if sel.sum() >= 20:
                factor[i, j] = np.median(r[sel])
        good = np.isfinite(factor[i])
        centres = 0.5 * (_LOG_PT_EDGES[1:] + _LOG_PT_EDGES[:-1])
        factor[i] = np.interp(centres, centres[good], factor[i, good])
    return {
        "log_pt_edges": _LOG_PT_EDGES.tolist(),
        "abs_eta_edges": _ABS_ETA_EDGES.tolist(),
        "factor": factor.tolist(),
    }


def _apply_table(table: Mapping[str, Any], pt_l1: np.ndarray, eta: np.ndarray) -> np.ndarray:
    edges = np.asarray(table["log_pt_edges"])
    centres = 0.5 * (edges[1:] + edges[:-1])
    factor = np.asarray(table["factor"])
    ia = np.clip(np.digitize(np.abs(eta), np.asarray(table["abs_eta_edges"])) - 1, 0, factor.shape[0] - 1)
    x = np.log(pt_l1)
    out = np.empty_like(x)
    for i in range(factor.shape[0]):
        sel = ia == i
        out[sel] = np.interp(x[sel], centres, factor[i])
    return out


def _to_tree_arrays(gen: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(gen["jets"])
    for name in ("ch", "ne", "sv"):
        out[name] = ak.unflatten(ak.zip(gen[name]), gen[f"{name}_size"])
    return out


def _tree_types() -> dict[str, Any]:
    types: dict[str, Any] = {k: np.dtype(t) for k, t in _JET_BRANCHES}
    for name, fields in _CONSTITUENT_BRANCHES.items():
        inner = ", ".join(f"{f}: {np.dtype(t).name}" for f, t in fields)
        types[name] = ak.types.from_datashape(f"var * {{{inner}}}", highlevel=False)
    return types


def write_synthetic(
    location: str,
    n_jets: int,
    n_shards: int = 5,
    seed: int = 1,
    pt_range: tuple[float, float] = (20.0, 2000.0),
    stochastic: float = 0.5,
    constant: float = 0.03,
    calibration_jets: int = 100_000,
) -> SyntheticTruth:
    """Write a synthetic data directory (shards, data.yaml, transform.yaml, truth.yaml).

    Args:
        location: Output directory (local).
        n_jets: Total number of jets, split evenly over the shards.
        n_shards: Number of shard files.
        seed: Seed of everything (shard ``i`` draws from ``default_rng([seed, i])``).
        pt_range: pt_gen range of the log-uniform spectrum, GeV.
        stochastic: Stochastic term ``a`` of the injected smearing, GeV^0.5.
        constant: Constant term ``b`` of the injected smearing.
        calibration_jets: Size of the independent sample from which the standard correction is derived.

    Returns:
        The generator's truth (parameters, standard correction table, resolution floor).
    """
    import uproot

    if n_shards < 1 or n_jets < n_shards:
        raise ValueError(
            f"write_synthetic: need n_shards >= 1 and n_jets >= n_shards, got {n_jets}, {n_shards}"
        )
    truth = SyntheticTruth(
        seed=seed,
        n_jets=int(n_jets),
        pt_range=tuple(pt_range),
        stochastic=stochastic,
        constant=constant,
        location=str(location),
    )
    calib = generate_jets(calibration_jets, np.random.default_rng([seed, 1_000_000]), truth)
    table = _derive_table(calib["jets"])
    truth = SyntheticTruth(**{**truth.__dict__, "standard_correction": table})

    os.makedirs(os.path.join(location, "shards"), exist_ok=True)
    sizes = np.full(n_shards, n_jets // n_shards)
    sizes[: n_jets % n_shards] += 1
    entries = []
    for i, size in enumerate(sizes):
        gen = generate_jets(int(size), np.random.default_rng([seed, i]), truth, table)
        rel = f"shards/{i + 1}.root"
        path = os.path.join(location, rel)
        with atomic_path(path) as tmp, uproot.recreate(tmp) as f:
            f.mktree(
                TREE_NAME,
                _tree_types(),
                counter_name=lambda counted: f"{counted}_size",
                field_name=lambda outer, inner: f"{outer}_{inner}",
            )
            f[TREE_NAME].extend(_to_tree_arrays(gen))
        entries.append({"path": rel, "count": int(size)})
    # The linear steps are fitted on the shards as written, read back through the same code as training.
    names = list(DEFAULT_NONLINEAR)
    paths = [os.path.join(location, e["path"]) for e in entries]
    branches = sorted({b for n in names for b in ([n] if derived_feature(n) is None else derived_feature(n))})
    transform = build_transform(
        (feature_columns(chunk, names) for chunk in iterate(paths, branches, step_size=200_000)),
        DEFAULT_NONLINEAR,
        categorical=_CATEGORICAL,
    )
    write_text(os.path.join(location, "data.yaml"), yaml.safe_dump(entries, sort_keys=False))
    write_text(os.path.join(location, "transform.yaml"), yaml.safe_dump(transform.to_dict()))
    write_text(os.path.join(location, "truth.yaml"), yaml.safe_dump(truth.to_dict(), sort_keys=False))
    return truth
