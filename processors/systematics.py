"""Systematic variations: event weights (scale factors, QCD scale, PDF, pileup, prefiring) and
varied lepton kinematics (momentum scale and resolution in curvature ``k = q / pT``).

Naming (the ``syst`` axis of the ``templates_syst`` histogram):

* ``nominal``;
* ``effStatUp``/``effStatDown``: all scale factors at +-1 sigma at once. The workspace builder splits
  them into one nuisance per group of template eta bins (``TemplateConfig.eff_groups``): since the
  varied weight of an event depends only on its selected lepton, the template of nuisance ``g`` is
  the nominal one outside the eta bins of ``g`` and ``effStat`` inside, which is exactly what filling
  ``eff_groups`` separate variations would give, at the cost of two fills;
* ``QCDscale_muR{Up,Down}``, ``QCDscale_muF{Up,Down}``, ``QCDscale_muRmuF{Up,Down}`` from
  ``LHEScaleWeight`` (7-point scheme; 9 weights with the nominal at index 4, or 8 without it; the
  weights are used as stored, ``w_var / w_nominal``);
* ``pdf{i}`` for ``LHEPdfWeight[i] / LHEPdfWeight[0]``, i >= 1 (Hessian eigenvectors, mirrored
  in the workspace);
* ``pileup{Up,Down}`` and ``prefire{Up,Down}``;
* ``muonScale_eta{r}{Up,Down}`` and ``muonResolution_eta{r}Up`` (resolution is mirrored) for the
  |eta| regions of :class:`~wfit.processors.config.CurvatureVariation`.

The resolution smearing uses normal deviates from a counter-based hash of (seed, run, lumi block,
event, lepton position), so that results do not depend on chunking or on the executor.

Example:
    >>> import numpy as np
    >>> z1 = deterministic_normal(1, np.array([1, 1]), np.array([2, 2]), np.array([3, 4]), np.array([0, 0]))
    >>> z2 = deterministic_normal(1, np.array([1]), np.array([2]), np.array([4]), np.array([0]))
    >>> bool(z1[1] == z2[0])
    True
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "deterministic_normal",
    "pdf_variations",
    "qcd_scale_variations",
    "scale_curvature",
    "smear_curvature",
]

_U64 = np.uint64


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # SplitMix64 finaliser (Steele, Lea, Flood 2014): a bijective avalanche mix of 64-bit words.
    with np.errstate(over="ignore"):
        x = x + _U64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


def deterministic_normal(
    seed: int, run: np.ndarray, lumi: np.ndarray, event: np.ndarray, position: np.ndarray
) -> np.ndarray:
    """Standard normal deviates that depend only on (seed, run, lumi block, event, position).

    Args:
        seed: Stream seed (different variations use different seeds).
        run, lumi, event: Event identifiers, one per deviate.
        position: Index of the object inside its event.

    Returns:
        float64 N(0, 1) deviates (Box-Muller on two 53-bit uniforms).
    """
    with np.errstate(over="ignore"):
        h = _splitmix64(np.full(np.shape(event), seed, dtype=np.uint64))
        for v in (run, lumi, event, position):
            h = _splitmix64(h ^ np.asarray(v).astype(np.int64).astype(np.uint64))
        h2 = _splitmix64(h ^ _U64(0xD1B54A32D192ED03))
    u1 = ((h >> _U64(11)).astype(np.float64) + 0.5) * 2.0**-53
    u2 = (h2 >> _U64(11)).astype(np.float64) * 2.0**-53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def scale_curvature(pt: np.ndarray, in_region: np.ndarray, scale: float) -> np.ndarray:
    """Multiply the curvature ``k = q / pT`` by ``1 + scale`` for the leptons in a region.

    Args:
        pt: Transverse momenta, GeV.
        in_region: Which leptons are varied.
        scale: Relative curvature shift (``pT -> pT / (1 + scale)``).

    Returns:
        Varied pT in GeV (float64).
    """
    return np.where(in_region, pt / (1.0 + scale), pt)


def smear_curvature(
    pt: np.ndarray, charge: np.ndarray, in_region: np.ndarray, sigma_k: float, normal: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Add ``sigma_k * normal`` (1/GeV) to the curvature ``k = q / pT`` of the leptons in a region.

    A constant curvature error gives a relative pT resolution ``sigma(pT)/pT = pT * sigma_k``. A
    curvature that changes sign flips the charge, as in a real track fit.

    Returns:
        Varied (pT in GeV, charge).
    """
    k = charge / pt + np.where(in_region, sigma_k * normal, 0.0)
    return 1.0 / np.abs(k), np.where(k > 0, 1, -1).astype(charge.dtype)


def qcd_scale_variations(lhe_scale: np.ndarray, pairs: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """Per-event multiplicative QCD scale weights from ``LHEScaleWeight``.

    Args:
        lhe_scale: ``[n_events, 9]`` (nominal at index 4) or ``[n_events, 8]`` (nominal dropped).
        pairs: Nuisance name -> (up index, down index) in the 9-weight convention.

    Returns:
        ``{name + "Up": w, name + "Down": w}``: the stored weights themselves, which NanoAOD defines as
        ``w_var / w_nominal`` (its index-4 entry is 1 up to the branch's reduced float precision).

    Raises:
        ValueError: For another number of weights.
    """
    n = lhe_scale.shape[1]
    if n == 9:
        idx = dict(pairs)
    elif n == 8:
        idx = {k: tuple(i - (i > 4) for i in v) for k, v in pairs.items()}
    else:
        raise ValueError(f"LHEScaleWeight has {n} weights per event; expected 9 (or 8 without the nominal)")
    out = {}
    for name, (up, down) in idx.items():
        out[name + "Up"] = lhe_scale[:, up]
        out[name + "Down"] = lhe_scale[:, down]
    return out


def pdf_variations(lhe_pdf: np.ndarray) -> dict[str, np.ndarray]:
    """Hessian PDF variations ``pdf{i} = LHEPdfWeight[i] / LHEPdfWeight[0]`` for i >= 1.

    Each member is one eigenvector direction (mirrored in the workspace); for sets with alphaS
    members (e.g. the last two of NNPDF3.1 Hessian's 103) those are treated the same way.
    """
    ref = np.asarray(lhe_pdf[:, 0], dtype=np.float64)
    # Member-major rows, written in one pass without temporaries: a column of the row-major matrix would be
    # a strided read touching every row's cache line once per member.
    ratios = np.empty((lhe_pdf.shape[1] - 1, lhe_pdf.shape[0]))
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(lhe_pdf[:, 1:].T, ref, out=ratios)
    ratios[:, ref == 0] = 1.0
    return {f"pdf{i + 1}": ratios[i] for i in range(len(ratios))}
