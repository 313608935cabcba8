"""Four-vector kinematics of the toy generator: boosts, two-body decays in the Collins-Soper frame, helicity
angles drawn from their distributions.

Four-vectors are arrays ``[4, n]`` of (px, py, pz, E) in GeV; the Collins-Soper frame follows
:mod:`wfit.processors.helicity` (z along the bisector of the beams in the boson rest frame, oriented along the
boson's longitudinal direction).

Example:
    >>> import numpy as np
    >>> q = np.array([[10.0], [0.0], [30.0], [np.sqrt(80.0**2 + 10.0**2 + 30.0**2)]])
    >>> p1, p2 = decay_cs(q, np.array([0.3]), np.array([1.0]))
    >>> bool(np.allclose(p1 + p2, q))
    True
"""

from __future__ import annotations

import numpy as np

__all__ = ["E_BEAM", "boost", "decay_cs", "pt_eta_phi", "sample_costheta", "unit"]

E_BEAM = 6500.0  # GeV, the LHC beam energy of the toy (13 TeV collisions)


def boost(p: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Boost four-vectors ``[4, n]`` (px, py, pz, E) by velocity ``[3, n]``."""
    b2 = np.sum(beta * beta, axis=0)
    gamma = 1.0 / np.sqrt(1.0 - b2)
    bp = np.sum(beta * p[:3], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        g2 = np.where(b2 > 0, (gamma - 1.0) / b2, 0.0)
    vec = p[:3] + (g2 * bp + gamma * p[3]) * beta
    return np.concatenate([vec, (gamma * (p[3] + bp))[None]], axis=0)


def unit(v: np.ndarray) -> np.ndarray:
    """Unit three-vectors ``[3, n]``."""
    return v / np.linalg.norm(v, axis=0)


def decay_cs(q: np.ndarray, cos_theta: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two massless daughters of ``q`` with particle 1 at (cos_theta, phi) in the Collins-Soper frame."""
    n = q.shape[1]
    m = np.sqrt(np.maximum(q[3] ** 2 - np.sum(q[:3] ** 2, axis=0), 0.0))
    beta = q[:3] / q[3]
    beams = [
        np.stack([np.zeros(n), np.zeros(n), np.full(n, s * E_BEAM), np.full(n, E_BEAM)]) for s in (1, -1)
    ]
    b1, b2 = (unit(boost(b, -beta)[:3]) for b in beams)
    sign = np.where(q[2] >= 0, 1.0, -1.0)
    z = unit(b1 - b2) * sign
    x = -unit(b1 + b2)
    x = unit(x - np.sum(x * z, axis=0) * z)
    y = np.cross(z.T, x.T).T
    sin_theta = np.sqrt(1.0 - cos_theta**2)
    d = sin_theta * np.cos(phi) * x + sin_theta * np.sin(phi) * y + cos_theta * z
    half = 0.5 * m
    p1 = np.concatenate([half * d, half[None]], axis=0)
    p2 = np.concatenate([-half * d, half[None]], axis=0)
    return boost(p1, beta), boost(p2, beta)


def pt_eta_phi(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pT [GeV], eta, phi) of four-vectors ``[4, n]``; eta is clipped to +-20 along the beam."""
    pt = np.hypot(p[0], p[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(np.where(pt > 0, p[2] / pt, np.sign(p[2]) * 1e6))
    return pt, np.clip(eta, -20.0, 20.0), np.arctan2(p[1], p[0])


def sample_costheta(rng: np.random.Generator, pol: np.ndarray) -> np.ndarray:
    """cos(theta*) drawn for helicity states ``pol`` (0: left, 1: right, 2: longitudinal)."""
    n = len(pol)
    r = rng.random(n)
    cbrt = np.cbrt(r)
    c = np.where(pol == 0, 1.0 - 2.0 * cbrt, 2.0 * cbrt - 1.0)  # P_L ~ (1-c)^2, P_R ~ (1+c)^2
    # P_0 ~ 1 - c^2 on [-1, 1] is the law of the median of three uniforms (a Beta(2, 2) mapped to [-1, 1]).
    med = np.median(rng.random((3, n)), axis=0) * 2.0 - 1.0
    return np.where(pol == 2, med, c)
