"""W helicity decomposition: generator W, Collins-Soper angle, angular coefficients and weights.

Convention for theta*: cos(theta*) is the polar angle in the Collins-Soper frame (Collins and Soper,
Phys. Rev. D 16 (1977) 2219; z axis along the sign of the W longitudinal momentum) of the
**right-handed-helicity decay fermion**: the charged antilepton l+ for W+ -> l+ nu, and the
antineutrino for W- -> l- nubar (equivalently, minus cos(theta*) of the charged lepton l-). With this
choice the same formulas describe both charges in terms of the physical W helicity,

    P_L = 3/8 (1 - c)^2,  P_R = 3/8 (1 + c)^2,  P_0 = 3/4 (1 - c^2),

and A4 has the same sign for W+ and W-. Had theta* been defined by the charged lepton for both
charges, A4 would flip sign for W- and its L and R labels would be swapped.

The angular distribution integrated over phi* is ``3/8 [(1 + c^2) + A0/2 (1 - 3 c^2) + A4 c]``,
``= sum_k f_k P_k(c)`` with ``f_L = (2 - A0 - A4)/4``, ``f_R = (2 - A0 + A4)/4``, ``f_0 = A0/2``, so
that ``A0 = 4 - 10 <c^2>`` and ``A4 = 4 <c>`` (moments over the full phase space). An event is split
into the three helicity components with weights ``w_k = f_k P_k(c) / sum_j f_j P_j(c)`` (they sum to 1).

Generator W: the hard-process (``statusFlags`` bit 7) charged lepton (|pdgId| 11, 13, 15) and
neutrino (12, 14, 16) of opposite pdgId sign, exactly one of each; leptons are treated as massless.

The template processor splits signal events into W charge x |y_W| x helicity components with
:class:`ComponentSplit` and :func:`expand_components`. This module is numpy only (awkward for reading a
NanoEvents chunk); the coffea processor that measures A0 and A4 is
:class:`wfit.processors.moments.AngularCoefficientsProcessor`.

Example:
    >>> import numpy as np
    >>> w = polarization_weights(np.array([0.3]), np.array([0.5]), np.array([-0.4]))
    >>> round(float(w.sum()), 12), w.shape
    (1.0, (3, 1))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import HELICITIES, TemplateConfig

__all__ = [
    "GEN_FIELDS",
    "AngularCoefficients",
    "ComponentSplit",
    "GenW",
    "collins_soper_costheta",
    "expand_components",
    "gen_w_from_arrays",
    "gen_w_from_events",
    "helicity_fractions",
    "polarization_weights",
]

_HARD_PROCESS_BIT = 7


def helicity_fractions(a0: np.ndarray, a4: np.ndarray) -> np.ndarray:
    """Helicity fractions ``[f_L, f_R, f_0]`` (shape ``[3, ...]``) from A0 and A4."""
    a0 = np.asarray(a0, dtype=np.float64)
    a4 = np.asarray(a4, dtype=np.float64)
    return np.stack([(2.0 - a0 - a4) / 4.0, (2.0 - a0 + a4) / 4.0, a0 / 2.0])


def polarization_weights(cos_theta: np.ndarray, a0: np.ndarray, a4: np.ndarray) -> np.ndarray:
    """Per-event helicity weights ``w_k = f_k P_k(c) / sum_j f_j P_j(c)``, shape ``[3, n]`` (L, R, 0).

    A0 and A4 are first clipped to the physical region ``0 <= A0 <= 2``, ``|A4| <= 2 - A0`` (all
    fractions non-negative), which only matters for coefficients measured in sparse bins.
    """
    c = np.asarray(cos_theta, dtype=np.float64)
    a0 = np.clip(np.asarray(a0, dtype=np.float64), 0.0, 2.0)
    lim = 2.0 - a0
    a4 = np.clip(np.asarray(a4, dtype=np.float64), -lim, lim)
    f = helicity_fractions(a0, a4)
    p = np.stack([0.375 * (1.0 - c) ** 2, 0.375 * (1.0 + c) ** 2, 0.75 * (1.0 - c * c)])
    num = f * p
    den = num.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(den > 0, num / den, 1.0 / 3.0)
    return w


def collins_soper_costheta(p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    """cos(theta*) of particle 1 in the Collins-Soper frame of the pair (1, 2).

    ``cos = sign(Q_z) 2 (p1+ p2- - p1- p2+) / (Q sqrt(Q^2 + Q_T^2))`` with ``p+- = (E +- p_z)/sqrt(2)``
    (Collins and Soper 1977, eq. 7); ``sign(0)`` is taken as +1.

    Args:
        p1, p2: Four-momenta ``[4, n]`` as (px, py, pz, E) in GeV.
    """
    q = p1 + p2
    m2 = q[3] ** 2 - q[0] ** 2 - q[1] ** 2 - q[2] ** 2
    qt2 = q[0] ** 2 + q[1] ** 2
    s2 = np.sqrt(0.5)
    p1p, p1m = s2 * (p1[3] + p1[2]), s2 * (p1[3] - p1[2])
    p2p, p2m = s2 * (p2[3] + p2[2]), s2 * (p2[3] - p2[2])
    sign = np.where(q[2] >= 0, 1.0, -1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = sign * 2.0 * (p1p * p2m - p1m * p2p) / np.sqrt(np.maximum(m2, 0.0) * (m2 + qt2))
    return np.clip(np.nan_to_num(c), -1.0, 1.0)


def _p4(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    pt = np.asarray(pt, dtype=np.float64)
    eta = np.asarray(eta, dtype=np.float64)
    phi = np.asarray(phi, dtype=np.float64)
    pz = pt * np.sinh(eta)
    return np.stack([pt * np.cos(phi), pt * np.sin(phi), pz, np.hypot(pt, pz)])


@dataclass(frozen=True)
class GenW:
    """Generator W -> l nu kinematics per event (massless leptons; GeV).

    Attributes:
        found: Whether the event has exactly one hard-process l nu pair of a W.
        charge: W charge (+1, -1; 0 where not found).
        pt, absy, mass: W transverse momentum, |rapidity| and mass (0 where not found).
        cos_theta: cos(theta*) in the Collins-Soper frame, module convention (0 where not found).
    """

    found: np.ndarray
    charge: np.ndarray
    pt: np.ndarray
    absy: np.ndarray
    mass: np.ndarray
    cos_theta: np.ndarray


def gen_w_from_arrays(
    counts: np.ndarray,
    pdg_id: np.ndarray,
    status_flags: np.ndarray,
    pt: np.ndarray,
    eta: np.ndarray,
    phi: np.ndarray,
) -> GenW:
    """Find the generator W -> l nu from flat ``GenPart`` arrays (see the module docstring)."""
    n = len(counts)
    evt = np.repeat(np.arange(n), counts)
    apdg = np.abs(pdg_id)
    hard = ((np.asarray(status_flags).astype(np.int64) >> _HARD_PROCESS_BIT) & 1) == 1
    is_l = hard & ((apdg == 11) | (apdg == 13) | (apdg == 15))
    is_nu = hard & ((apdg == 12) | (apdg == 14) | (apdg == 16))
    n_l = np.bincount(evt[is_l], minlength=n)
    n_nu = np.bincount(evt[is_nu], minlength=n)
    il = np.full(n, -1)
    inu = np.full(n, -1)
    il[evt[is_l]] = np.flatnonzero(is_l)
    inu[evt[is_nu]] = np.flatnonzero(is_nu)
    found = (n_l == 1) & (n_nu == 1)
    il, inu = il[found], inu[found]
    found_idx = np.flatnonzero(found)
    ok = np.sign(pdg_id[il]) != np.sign(pdg_id[inu])
    found[found_idx[~ok]] = False
    il, inu = il[ok], inu[ok]
    # pdgId > 0 is the negative lepton (l-) and the neutrino (nu); W charge = -sign(pdgId of l).
    charge_f = -np.sign(pdg_id[il]).astype(np.int64)
    pl = _p4(pt[il], eta[il], phi[il])
    pnu = _p4(pt[inu], eta[inu], phi[inu])
    # theta* of the right-handed daughter: l+ for W+, nubar for W-.
    p1 = np.where(charge_f > 0, pl, pnu)
    p2 = np.where(charge_f > 0, pnu, pl)
    q = pl + pnu
    m2 = q[3] ** 2 - q[0] ** 2 - q[1] ** 2 - q[2] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        y = 0.5 * np.log((q[3] + q[2]) / (q[3] - q[2]))

    def full(values: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
        out = np.zeros(n, dtype=dtype)
        out[found] = values
        return out

    return GenW(
        found=found,
        charge=full(charge_f, np.int64),
        pt=full(np.hypot(q[0], q[1])),
        absy=full(np.abs(np.nan_to_num(y))),
        mass=full(np.sqrt(np.maximum(m2, 0.0))),
        cos_theta=full(collins_soper_costheta(p1, p2)),
    )


#: The ``GenPart`` fields that :func:`gen_w_from_events` reads, in :func:`gen_w_from_arrays`' order.
GEN_FIELDS = ("pdgId", "statusFlags", "pt", "eta", "phi")


def gen_w_from_events(events: Any) -> GenW:
    """:func:`gen_w_from_arrays` on a NanoEvents chunk (reads ``GenPart_*``)."""
    import awkward as ak

    gp = events.GenPart
    counts = ak.to_numpy(ak.num(gp, axis=1))
    return gen_w_from_arrays(counts, *(ak.to_numpy(ak.flatten(gp[f], axis=1)) for f in GEN_FIELDS))


@dataclass(frozen=True)
class AngularCoefficients:
    """A0 and A4 per (W charge, |y_W| bin, pT_W bin), measured from MC moments.

    Attributes:
        absy_edges: |y_W| edges; an overflow bin above the last edge is included in the arrays.
        pt_edges: pT_W edges in GeV; an overflow bin is included.
        a0, a4: Arrays of shape ``[2, len(absy_edges), len(pt_edges)]``; charge index 0 is W+.
        sumw: Sum of weights per bin (0 marks an empty bin, where A0 = A4 = 0).
    """

    absy_edges: tuple[float, ...]
    pt_edges: tuple[float, ...]
    a0: np.ndarray
    a4: np.ndarray
    sumw: np.ndarray

    @classmethod
    def from_moments(cls, h: Any) -> AngularCoefficients:
        """Build from the ``moments`` histogram of
        :class:`~wfit.processors.moments.AngularCoefficientsProcessor`."""
        v = h.values()  # [charge(+1, -1), absy, pt, moment(1, c, c^2)]
        s0, s1, s2 = v[..., 0], v[..., 1], v[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_c = np.where(s0 > 0, s1 / s0, 0.0)
            mean_c2 = np.where(s0 > 0, s2 / s0, 0.4)
        absy = tuple(float(x) for x in h.axes["absy"].edges[:-1])
        pt = tuple(float(x) for x in h.axes["ptW"].edges[:-1])
        return cls(absy, pt, 4.0 - 10.0 * mean_c2, 4.0 * mean_c, s0)

    @classmethod
    def constant(cls, config: TemplateConfig, a0: float, a4: float) -> AngularCoefficients:
        """The same A0 and A4 everywhere (useful for tests and first iterations)."""
        shape = (2, len(config.absy_edges), len(config.coeff_pt_edges))
        return cls(
            config.absy_edges, config.coeff_pt_edges, np.full(shape, a0), np.full(shape, a4), np.ones(shape)
        )

    def lookup(self, charge: np.ndarray, absy: np.ndarray, pt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A0 and A4 for each event's W charge (+1/-1), |y_W| and pT_W (GeV)."""
        iq = np.where(charge > 0, 0, 1)
        iy = np.clip(np.searchsorted(self.absy_edges, absy, side="right") - 1, 0, len(self.absy_edges) - 1)
        ip = np.clip(np.searchsorted(self.pt_edges, pt, side="right") - 1, 0, len(self.pt_edges) - 1)
        return self.a0[iq, iy, ip], self.a4[iq, iy, ip]


@dataclass(frozen=True)
class ComponentSplit:
    """How each event of a signal chunk enters the W charge x |y_W| x helicity components.

    An event with a generator W enters the three helicity components of its charge and |y_W| bin with the
    weights of :func:`polarization_weights` (which sum to one); an event without one enters the unmatched
    component with weight 1. Component indices are those of
    :attr:`~wfit.processors.config.TemplateConfig.component_names`.

    Attributes:
        found: Whether the event has a generator W -> l nu.
        base: Component index of its left-handed component (right-handed ``base + 1``, longitudinal
            ``base + 2``).
        weights: Helicity weights ``[3, n_events]`` (L, R, 0).
        unmatched: Component index of the events without a generator W.
        pt: Generator W pT per event (GeV; 0 without a generator W), for the QCD scale decorrelation in W pT.
    """

    found: np.ndarray
    base: np.ndarray
    weights: np.ndarray
    unmatched: int
    pt: np.ndarray | None = None

    @classmethod
    def from_gen(cls, gen: GenW, coefficients: AngularCoefficients, config: TemplateConfig) -> ComponentSplit:
        """The split of events with these generator Ws, with A0 and A4 from ``coefficients``."""
        a0, a4 = coefficients.lookup(gen.charge, gen.absy, gen.pt)
        wpol = polarization_weights(gen.cos_theta, a0, a4)
        iy = np.clip(
            np.searchsorted(np.asarray(config.absy_edges), gen.absy, side="right") - 1, 0, config.n_absy - 1
        )
        base = (np.where(gen.charge > 0, 0, 1) * config.n_absy + iy) * len(HELICITIES)
        return cls(found=gen.found, base=base, weights=wpol, unmatched=config.unmatched_component, pt=gen.pt)


def expand_components(
    split: ComponentSplit | None, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fill entries of the selected events (``mask``): one per event and component it enters.

    Args:
        split: The signal split of the chunk, or None (one entry per event, component 0, weight 1).
        mask: Per-event selection.

    Returns:
        ``(position, component, weight factor)`` per entry; ``position`` indexes the selected events.

    Example:
        >>> rep, comp, fac = expand_components(None, np.array([True, False, True]))
        >>> rep.tolist(), comp.tolist(), fac.tolist()
        ([0, 1], [0, 0], [1.0, 1.0])
    """
    nsel = int(mask.sum())
    if split is None:
        return np.arange(nsel), np.zeros(nsel, dtype=np.int64), np.ones(nsel)
    found = split.found[mask]
    base = split.base[mask]
    wpol = split.weights[:, mask]
    pos = np.arange(nsel)
    m = pos[found]
    u = pos[~found]
    rep = np.concatenate([m, m, m, u])
    comp = np.concatenate([base[found], base[found] + 1, base[found] + 2, np.full(len(u), split.unmatched)])
    fac = np.concatenate([wpol[0, found], wpol[1, found], wpol[2, found], np.ones(len(u))])
    return rep, comp, fac
