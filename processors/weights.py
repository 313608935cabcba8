"""Event weights of simulated events and their variations: scale factors, pileup, prefiring, QCD scales, PDFs.

The nominal weight of a simulated event is sign(genWeight) x pileup weight x prefiring weight (where
available) x the scale factor of its selected lepton. A variation is a per-event ratio to that nominal
weight, keyed by its histogram name in :data:`~wfit.processors.systematics.SYSTEMATICS`.

Inputs, in order of preference:

* pileup: NanoAODTools' ``puWeight``/``puWeightUp``/``puWeightDown`` friend branches, else the correction
  ``pileup(nTrueInt, systematic)`` of the correction set evaluated at ``Pileup_nTrueInt``;
* prefiring: ``L1PreFiringWeight_Nom/Up/Dn``, else ``PrefireWeight``/``PrefireWeight_Up``/``_Down``;
* scale factors: the correction ``SF_CORRECTIONS[channel](eta, pt, systematic)``;
* QCD scales and PDFs: ``LHEScaleWeight`` and ``LHEPdfWeight``.

An input that is missing (a branch, a correction, or a branch with zero entries per event) skips that
variation and is recorded through the ``skip(variation, reason)`` callback; it never raises.

Example:
    >>> from wfit.processors.config import TemplateConfig
    >>> weight_branches(TemplateConfig(prefire=False, variations=False))
    ['Pileup_nTrueInt', 'puWeight', 'puWeightUp', 'puWeightDown']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import awkward as ak
import numpy as np

from .config import TemplateConfig
from .corrections import PILEUP_CORRECTION, SF_CORRECTIONS
from .reading import jagged_matrix
from .selection import Selection
from .systematics import SYSTEMATICS, pdf_variations, qcd_scale_variations

__all__ = [
    "Skip",
    "event_weights",
    "lepton_weights",
    "lhe_variations",
    "ptw_bin",
    "smooth_modes",
    "unit_pt",
    "weight_branches",
]

#: ``skip(variation, reason)``: records that a variation could not be filled and why.
Skip = Callable[[str, str], None]

_PU_FRIENDS = ("puWeight", "puWeightUp", "puWeightDown")


def weight_branches(config: TemplateConfig) -> list[str]:
    """The branches that the weights of ``config`` read (alternatives included: a file has some of them)."""
    out: list[str] = []
    if config.pileup:
        out += ["Pileup_nTrueInt", *_PU_FRIENDS]
    if config.prefire:
        out += ["L1PreFiringWeight_Nom", "PrefireWeight"]
        if config.variations:
            out += ["L1PreFiringWeight_Up", "L1PreFiringWeight_Dn", "PrefireWeight_Up", "PrefireWeight_Down"]
    if config.variations:
        out += ["LHEScaleWeight"] if config.qcd_scale else []
        out += ["LHEPdfWeight"] if config.pdf else []
    return out


def _ratios(name: str, nom: np.ndarray, up: np.ndarray, down: np.ndarray) -> dict[str, np.ndarray]:
    """The up and down variations of systematic ``name`` relative to ``nom`` (1 where ``nom`` is 0)."""
    syst = SYSTEMATICS[name]
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            syst.histogram("Up"): np.where(nom != 0, up / nom, 1.0),
            syst.histogram("Down"): np.where(nom != 0, down / nom, 1.0),
        }


def _pileup(
    events: Any, n: int, needed: np.ndarray, config: TemplateConfig, cset: Any, skip: Skip
) -> list[np.ndarray] | None:
    """(nominal, up, down) pileup weights per event, or None (recorded as skipped)."""
    fields = set(events.fields)
    if set(_PU_FRIENDS) <= fields:  # NanoAODTools friend branches
        return [np.asarray(ak.to_numpy(events[b]), dtype=np.float64) for b in _PU_FRIENDS]
    if "Pileup" in fields and "nTrueInt" in events.Pileup.fields:
        if cset is not None and PILEUP_CORRECTION in cset:
            ntrue = np.asarray(ak.to_numpy(events.Pileup.nTrueInt), dtype=np.float64)[needed]
            corr = cset[PILEUP_CORRECTION]
            systs = ("nominal", "up", "down") if config.variations else ("nominal",)
            pu = [np.ones(n) for _ in systs]
            for full, syst in zip(pu, systs, strict=True):
                full[needed] = corr.evaluate(ntrue, syst)
            return pu + [pu[0]] * (3 - len(pu))
        skip("pileup", f"no correction {PILEUP_CORRECTION!r} in the corrections file")
        return None
    skip("pileup", "no puWeight or Pileup_nTrueInt branch")
    return None


def _prefire(events: Any, config: TemplateConfig, skip: Skip) -> list[np.ndarray] | None:
    """(nominal, up, down) prefiring weights per event (up and down only with variations), or None."""
    fields = set(events.fields)
    names = None
    if "L1PreFiringWeight" in fields and {"Nom", "Up", "Dn"} <= set(events.L1PreFiringWeight.fields):
        names = [("L1PreFiringWeight", f) for f in ("Nom", "Up", "Dn")]
    elif "PrefireWeight" in fields:
        if {"PrefireWeight_Up", "PrefireWeight_Down"} <= fields:
            names = [("PrefireWeight", None), ("PrefireWeight_Up", None), ("PrefireWeight_Down", None)]
    if names is None:
        skip("prefire", "no L1PreFiringWeight_Nom/Up/Dn (or PrefireWeight) branches")
        return None
    return [
        np.asarray(ak.to_numpy(events[b] if f is None else events[b][f]), dtype=np.float64)
        for b, f in (names if config.variations else names[:1])  # Up/Down only when filled
    ]


def event_weights(
    events: Any, sign: np.ndarray, needed: np.ndarray, config: TemplateConfig, cset: Any, skip: Skip
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Nominal per-event weight (sign x pileup x prefiring) and relative variations (full length).

    Args:
        events: A chunk of simulated events.
        sign: sign(genWeight) per event.
        needed: The events that some selection fills: corrections are evaluated for those only (the others
            get a pileup weight of 1).
        config: Which weights to apply, and whether to vary them.
        cset: The correction set (or None).
        skip: Records a variation whose inputs are missing.
    """
    w = sign.copy()
    variations: dict[str, np.ndarray] = {}
    if config.pileup:
        pu = _pileup(events, len(sign), needed, config, cset, skip)
        if pu is not None:
            nom, up, down = pu
            w = w * nom
            if config.variations:
                variations.update(_ratios("pileup", nom, up, down))
    if config.prefire:
        pf = _prefire(events, config, skip)
        if pf is not None:
            nom = pf[0]
            w = w * nom
            if config.variations:
                variations.update(_ratios("prefire", nom, *pf[1:]))
    return w, variations


def lepton_weights(
    sel: Selection,
    config: TemplateConfig,
    cset: Any,
    skip: Skip | None,
    *,
    corrections: str | None = None,
    variations: bool = True,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Scale factor of the selected lepton of each selected event of simulation and, with ``variations``
    (and ``config.variations``), its relative up/down variation.

    Args:
        sel: The selection.
        config: The channel (which correction) and whether to vary it.
        cset: The correction set (or None: the scale factors are then 1, recorded through ``skip``).
        skip: Records a missing correction (None: not recorded).
        corrections: The correction file's name, for the record.
        variations: Compute the variations.
    """
    ones = np.ones(len(sel.pt))
    name = SF_CORRECTIONS[config.channel]
    if cset is None or name not in cset:
        if skip is not None:
            skip("effStat", f"no correction {name!r} (corrections={corrections!r})")
        return ones, {}
    corr = cset[name]
    nom = np.asarray(corr.evaluate(sel.eta, sel.pt, "nominal"), dtype=np.float64)
    if not (config.variations and variations):
        return nom, {}
    up = np.asarray(corr.evaluate(sel.eta, sel.pt, "up"), dtype=np.float64)
    down = np.asarray(corr.evaluate(sel.eta, sel.pt, "down"), dtype=np.float64)
    if not config.eff_parameters:
        return nom, _ratios("effStat", nom, up, down)
    return nom, _smooth_modes(nom, up, down, sel.pt, config)


def unit_pt(pt: np.ndarray, config: TemplateConfig) -> np.ndarray:
    """pT mapped linearly onto [-1, 1] over the template pT range, clipped outside it."""
    _, lo, hi = config.pt_bins
    return np.clip(2.0 * (np.asarray(pt, dtype=np.float64) - lo) / (hi - lo) - 1.0, -1.0, 1.0)


def smooth_modes(pt: np.ndarray, config: TemplateConfig) -> np.ndarray:
    """The efficiency's pT modes ``[eff_parameters, n]``: Legendre polynomials of degree 0, 1, 2 of pT mapped onto
    [-1, 1] over the template pT range (clipped outside it), divided by their root sum of squares, so that the
    squares of the modes add up to one at every pT."""
    x = unit_pt(pt, config)
    legendre = np.stack([np.ones_like(x), x, 0.5 * (3.0 * x * x - 1.0)])[: config.eff_parameters]
    return legendre / np.sqrt(np.sum(legendre**2, axis=0))


def _smooth_modes(
    nom: np.ndarray, up: np.ndarray, down: np.ndarray, pt: np.ndarray, config: TemplateConfig
) -> dict[str, np.ndarray]:
    """``effStatPar{k}{Up,Down}``: the relative scale-factor uncertainty (up and down) times mode k."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_up = np.where(nom != 0, up / nom - 1.0, 0.0)
        rel_down = np.where(nom != 0, 1.0 - down / nom, 0.0)
    syst = SYSTEMATICS["effStatPar{index}"]
    out: dict[str, np.ndarray] = {}
    for k, mode in enumerate(smooth_modes(pt, config)):
        out[syst.histogram("Up", index=k)] = 1.0 + rel_up * mode
        out[syst.histogram("Down", index=k)] = 1.0 - rel_down * mode
    return out


def lhe_variations(events: Any, mask: np.ndarray, config: TemplateConfig, skip: Skip) -> dict[str, np.ndarray]:
    """QCD scale and PDF weights of the selected events (``mask``) from ``LHEScaleWeight``/``LHEPdfWeight``."""
    out: dict[str, np.ndarray] = {}
    if config.qcd_scale:
        mat, why = jagged_matrix(events, "LHEScaleWeight", mask)
        if mat is None:
            skip("QCDscale", str(why))
        elif mat.shape[0]:
            if mat.shape[1] not in (8, 9):
                skip("QCDscale", f"LHEScaleWeight has {mat.shape[1]} weights per event, expected 9 or 8")
            else:
                out.update(qcd_scale_variations(mat, config.qcd_scale_pairs))
    if config.pdf:
        mat, why = jagged_matrix(events, "LHEPdfWeight", mask)
        if mat is None:
            skip("pdf", str(why))
        elif mat.shape[0]:
            out.update(pdf_variations(mat))
    return out


def ptw_bin(ptw: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """The W pT bin of each event: ``b`` for ``edges[b] <= pT < edges[b + 1]``, the last bin an overflow."""
    return np.clip(np.searchsorted(np.asarray(edges), ptw, side="right") - 1, 0, len(edges) - 1)

