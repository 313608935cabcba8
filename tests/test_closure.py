"""Closure: toy W events with injected helicity fractions and cross sections per (charge, |y_W|) bin
-> AngularCoefficientsProcessor + WTemplateProcessor -> workspace -> wfit.fitter, against the injected truth.

Truth: the templates come from a W sample generated with (A0, A4) per |y_W| bin and normalised to the
expected yield of the pseudo-data before its injected scaling; the pseudo-data are an independent W
sample with other (A0', A4') and a per-(charge, |y_W|) acceptance ``s``. The POI of component
(q, y, k) is therefore ``mu = s[q, y] f'_k(y) / f_k(y)``, with ``f`` the helicity fractions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wfit.fitter import fit_workspace
from wfit.processors import (
    AngularCoefficients,
    AngularCoefficientsProcessor,
    Sample,
    TemplateConfig,
    ToyConfig,
    WTemplateProcessor,
    build_workspace,
    run_templates,
    write_toy,
)

# coffea's NanoAODSchema warns about optional cross-reference branches that a toy file lacks.


def _closure(
    tmp: Path,
    *,
    n_mc: int,
    n_data: int,
    edges: tuple[float, ...],
    seed: int,
    n_eta: int = 48,
    n_pt: int = 30,
    channel: str = "mu",
) -> tuple[np.ndarray, ...]:
    ny = len(edges)
    common = dict(absy_edges=edges, qcd_scale=False, pdf=False, eff_groups=n_eta)
    if channel == "mu":
        cfg = TemplateConfig(eta_bins=(n_eta, -2.4, 2.4), pt_bins=(n_pt, 26.0, 56.0), **common)
    else:  # the electron channel: |eta| < 2.5, pT in [30, 60] GeV
        cfg = TemplateConfig.electron(eta_bins=(n_eta, -2.5, 2.5), pt_bins=(n_pt, 30.0, 60.0), **common)
    base = ToyConfig(
        absy_edges=edges, a0=tuple(np.linspace(0.1, 0.45, ny)), a4=tuple(np.linspace(-0.3, -1.2, ny)), lepton=channel
    )
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.75, 1.0, (2, ny))
    a0d = tuple(np.array(base.a0) + rng.uniform(-0.08, 0.08, ny))
    a4d = tuple(np.array(base.a4) + rng.uniform(-0.1, 0.1, ny))
    injected = ToyConfig(absy_edges=edges, a0=a0d, a4=a4d, yield_scale=tuple(map(tuple, scale)), lepton=channel)
    write_toy(tmp / "mc.root", n_mc, process="W", seed=seed + 1, config=base)
    write_toy(tmp / "data.root", {"W": n_data}, seed=seed + 2, config=injected, is_data=True)

    moments = run_templates(
        {"W": [str(tmp / "mc.root")]}, AngularCoefficientsProcessor(cfg), chunksize=1_000_000
    ).output
    coef = AngularCoefficients.from_moments(moments["W"]["moments"])
    proc = WTemplateProcessor(cfg, signal_datasets={"W"}, coefficients=coef)
    out = run_templates(
        {"W": [str(tmp / "mc.root")], "data": [str(tmp / "data.root")]}, proc, chunksize=1_000_000
    ).output
    # xsec * lumi = n_data: the templates predict the pseudo-data before the injected scaling.
    summary = build_workspace(
        out,
        tmp / "ws.hdf5",
        samples={"W": Sample("signal", xsec=1.0), "data": Sample("data")},
        config=cfg,
        lumi=float(n_data),
        systematics=["lumi", "muon"] if channel == "mu" else ["lumi", "eff"],
    )
    assert summary["missing_signals"] == []
    assert "lumi" in summary["systematics"]
    assert ("muonScale_eta0" if channel == "mu" else "effStat_eta0") in summary["systematics"]

    res = fit_workspace(tmp / "ws.hdf5")
    assert res.ok, res.status
    f_mc, f_data = base.fractions(), injected.fractions()
    names = list(res.names[: len(summary["signals"])])
    assert names == summary["signals"]
    truth = []
    for name in names:
        q = 0 if name.startswith("Wplus") else 1
        iy = int(name.split("_")[1][1:])
        k = "LR0".index(name[-1])
        truth.append(scale[q, iy] * f_data[k, iy] / f_mc[k, iy])
    values = np.asarray(res.values[: len(names)])
    errors = np.asarray(res.errors[: len(names)])
    return values, errors, np.asarray(truth)


def test_closure_small(tmp_path: Path) -> None:
    """A quick chain check on (24 eta x 15 pT x 2) bins: 18 POIs, each within 3.5 sigma of the truth."""
    values, errors, truth = _closure(
        tmp_path, n_mc=600_000, n_data=100_000, edges=(0.0, 1.25, 2.5), seed=100, n_eta=24, n_pt=15
    )
    pulls = (values - truth) / errors
    assert np.all(np.isfinite(pulls))
    assert np.all(np.abs(pulls) < 3.5), pulls


def test_closure_small_electron_channel(tmp_path: Path) -> None:
    """The same chain in the electron channel, on toy W -> e nu events (ToyConfig(lepton="e")) with the electron
    selection (TemplateConfig.electron(), 25 eta x 15 pT x 2 bins): 18 POIs, each within 3.5 sigma of the truth."""
    values, errors, truth = _closure(
        tmp_path, n_mc=600_000, n_data=100_000, edges=(0.0, 1.25, 2.5), seed=200, n_eta=25, n_pt=15, channel="e"
    )
    pulls = (values - truth) / errors
    assert np.all(np.isfinite(pulls))
    assert np.all(np.abs(pulls) < 3.5), pulls


@pytest.mark.slow
def test_closure_pulls(tmp_path: Path) -> None:
    """36 POIs (|y_W| bins of 0.5 up to 2.5 plus overflow): within 3 sigma, pulls with mean 0 and RMS 1."""
    values, errors, truth = _closure(
        tmp_path, n_mc=4_000_000, n_data=500_000, edges=(0.0, 0.5, 1.0, 1.5, 2.0, 2.5), seed=10
    )
    pulls = (values - truth) / errors
    assert np.all(np.abs(pulls) < 3.0), pulls
    assert abs(pulls.mean()) < 0.3, pulls
    assert abs(np.sqrt(np.mean(pulls**2)) - 1.0) < 0.3, pulls
