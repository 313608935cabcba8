"""The systematics model of the CMS W helicity/rapidity analysis (``TemplateConfig.with_full_model``), piece by
piece against independent references: Legendre polynomials, the undecorrelated variations that the decorrelated
ones decompose, an exact per-bin momentum-scale re-selection written here with uproot and numpy, and the model's
stated log(kappa)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot
from numpy.polynomial import legendre

from wfit.processors import AngularCoefficients, Sample, TemplateConfig, WTemplateProcessor, build_workspace
from wfit.processors import run_templates, write_toy
from wfit.processors.config import CurvatureVariation
from wfit.processors.selection import Leptons, select_events
from wfit.processors.systematics import SYSTEMATICS, scale_curvature
from wfit.processors.weights import smooth_modes
from wfit.workspace import read_workspace

# Eight eta bins, six pT bins, two |y_W| bins (with the overflow) and three W pT bins: small, every piece present.
SMALL = dict(eta_bins=(8, -2.4, 2.4), pt_bins=(6, 26.0, 56.0), absy_edges=(0.0, 1.0), eff_groups=8)
PTW = (0.0, 5.0, 15.0)
STAT = 0.01  # a large statistical curvature shift, so that events migrate in the tests


def _config(**changes: Any) -> TemplateConfig:
    cfg = TemplateConfig(**SMALL).with_full_model(fake_eta_groups=4, qcd_ptw_edges=PTW)
    return cfg.replace(curvature=CurvatureVariation(stat_scale=STAT), **changes)


@pytest.fixture(scope="module")
def toys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    d = tmp_path_factory.mktemp("full")
    files = {}
    for name, process, n, seed in (("W", "W", 20_000, 31), ("Z", "Z", 8_000, 32)):
        write_toy(d / f"{name}.root", n, process=process, seed=seed)
        files[name] = [str(d / f"{name}.root")]
    write_toy(d / "data.root", {"W": 20_000, "Z": 2_000, "fakes": 8_000}, seed=33, is_data=True)
    files["data"] = [str(d / "data.root")]
    return files


SAMPLES = {"W": Sample("signal", 20_000.0), "Z": Sample("background", 2_000.0), "data": Sample("data")}


def _process(files: dict[str, list[str]], cfg: TemplateConfig, **options: Any) -> Any:
    coef = AngularCoefficients.constant(cfg, 0.2, -0.6)
    proc = WTemplateProcessor(cfg, signal_datasets={"W"} & set(files), coefficients=coef, **options)
    return run_templates(files, proc, status=False).output


@pytest.fixture(scope="module")
def built(toys: dict[str, list[str]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, dict, Any]:
    cfg = _config()
    out = _process(toys, cfg)
    path = tmp_path_factory.mktemp("ws") / "ws.hdf5"
    summary = build_workspace(out, path, samples=SAMPLES, config=cfg, lumi=1.0, fakes=True)
    return cfg, out, summary, read_workspace(path)


def _logk_up(ws: Any, nuisance: str, process: str) -> np.ndarray:
    """log(up / nominal) per bin of one process and nuisance."""
    i, p = ws.systs.index(nuisance), ws.procs.index(process)
    avg = ws.logk_avg[:, p, i]
    asym = list(ws.asym_idx)
    return avg + ws.logk_halfdiff[:, p, asym.index(i)] if i in asym else avg


def _bin_labels(cfg: TemplateConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eta index, pt index, charge) of each flat bin of the (eta, pt, charge) channel."""
    n_eta, n_pt = cfg.eta_bins[0], cfg.pt_bins[0]
    eta, pt, q = np.meshgrid(np.arange(n_eta), np.arange(n_pt), np.array([-1, 1]), indexing="ij")
    return eta.ravel(), pt.ravel(), q.ravel()


# ------------------------------------------------------------------------------------------- efficiencies
def test_smooth_modes_are_normalised_legendre_polynomials() -> None:
    cfg = _config()
    pt = np.linspace(20.0, 60.0, 41)  # beyond the template range at both ends: clipped there
    modes = smooth_modes(pt, cfg)
    x = np.clip((pt - 41.0) / 15.0, -1.0, 1.0)
    reference = np.stack([legendre.legval(x, np.eye(3)[k]) for k in range(3)])
    reference /= np.sqrt((reference**2).sum(axis=0))
    np.testing.assert_allclose(modes, reference, rtol=1e-14)
    np.testing.assert_allclose((modes**2).sum(axis=0), 1.0, rtol=1e-14)


def test_efficiency_modes_act_in_their_eta_bin_and_charge(built: Any) -> None:
    cfg, out, summary, ws = built
    eta, _, q = _bin_labels(cfg)
    h = out["Z"]["templates_syst"][{"component": 0}].project("syst", "eta", "pt", "charge")
    nominal = h[{"syst": "nominal"}].values().ravel()
    for k, g, charge in ((0, 2, 1), (1, 5, -1), (2, 0, 1)):
        name = SYSTEMATICS["effStatPar{index}"].nuisance(k, eta_group=g, charge=charge)
        up = h[{"syst": f"effStatPar{k}Up"}].values().ravel()
        inside = (eta == g) & (q == charge) & (nominal > 0)
        got = _logk_up(ws, name, "Z")
        np.testing.assert_allclose(got[inside], np.log(up[inside] / nominal[inside]), rtol=1e-10, atol=1e-14)
        assert np.all(got[~inside] == 0.0) and np.any(got[inside] != 0.0)
    # 8 eta bins x 2 charges x 3 modes
    assert sum(s.startswith("effStatPar") for s in ws.systs) == 8 * 2 * 3


# ------------------------------------------------------------------------------------------- QCD scales
def test_qcd_scales_in_w_pt_bins_decompose_the_undecorrelated_variation(toys: Any, built: Any) -> None:
    cfg, out, _, _ = built
    h = out["W"]["templates_syst"]
    nominal = h[{"syst": "nominal"}].values()
    for scale, shift in (("QCDscale_muR", "Up"), ("QCDscale_muRmuF", "Down")):
        total = sum(h[{"syst": f"{scale}_ptW{b}{shift}"}].values() - nominal for b in range(len(PTW)))
        reference = h[{"syst": f"{scale}{shift}"}].values() - nominal
        np.testing.assert_allclose(total, reference, rtol=1e-9, atol=1e-9 * np.abs(nominal).max())
        assert np.abs(reference).max() > 0
    # One W pT bin: the bin's variation is the undecorrelated one, sums of weights and of squared weights.
    one = _process({"W": toys["W"]}, cfg.replace(qcd_ptw_edges=(0.0,)))["W"]["templates_syst"]
    for field in ("value", "variance"):
        a = one[{"syst": "QCDscale_muF_ptW0Up"}].view()[field]
        b = one[{"syst": "QCDscale_muFUp"}].view()[field]
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())


def test_qcd_scales_are_decorrelated_by_charge_and_helicity(built: Any) -> None:
    cfg, _, _, ws = built
    for nuisance, charge, helicity in (("QCDscale_muR_ptW1_Wminus_R", "Wminus", "R"), ("QCDscale_muF_ptW0_Wplus_0", "Wplus", "0")):
        i = ws.systs.index(nuisance)
        acts = {p for j, p in enumerate(ws.procs) if np.any(ws.logk_avg[:, j, i] != 0)}
        assert acts and all(p.startswith(charge + "_") and p.endswith("_" + helicity) for p in acts), acts
    # The undecorrelated variations act on the backgrounds only, none on a W component.
    i = ws.systs.index("QCDscale_muR")
    acts = {p for j, p in enumerate(ws.procs) if np.any(ws.logk_avg[:, j, i] != 0)}
    assert acts == {"Z"}
    assert sum(s.startswith("QCDscale_") and "_ptW" in s for s in ws.systs) == 3 * len(PTW) * 2 * 3


# ------------------------------------------------------------------------------------------- momentum scale
def _exact_scale_templates(
    path: str, cfg: TemplateConfig, eta_bin: int, charge: int, scale: float
) -> tuple[np.ndarray, int]:
    """Signal-region (eta, pt, charge) counts of unit-weight events after scaling the curvature of the muons in
    one template eta bin with one charge, the MET balancing the change: read and selected here. Also the number of
    events, selected with or without the change, that have another muon besides one in that bin and charge."""
    t = uproot.open(path)["Events"]
    a = t.arrays(library="np", how=dict)

    def leptons(prefix: str, iso: str, tight: Any, loose: Any) -> Leptons:
        counts = a[f"n{prefix}"].astype(np.int64)
        flat = {k: np.concatenate(a[f"{prefix}_{k}"]).astype(np.float64) for k in ("pt", "eta", "phi", iso, "dxy", "dz")}
        return Leptons(counts, flat["pt"], flat["eta"], flat["phi"], np.concatenate(a[f"{prefix}_charge"]).astype(np.int64),
                       flat[iso], tight(a), loose(a), flat["dxy"], flat["dz"])  # fmt: skip

    muons = leptons("Muon", "pfRelIso04_all", lambda a: np.concatenate(a["Muon_tightId"]).astype(bool),
                    lambda a: np.concatenate(a["Muon_looseId"]).astype(bool))  # fmt: skip
    electrons = leptons("Electron", "pfRelIso03_all",
                        lambda a: np.concatenate(a["Electron_cutBased"]) >= cfg.electron_id_min,
                        lambda a: np.concatenate(a["Electron_cutBased"]) >= cfg.veto_electron_id_min)  # fmt: skip
    n_eta, lo, hi = cfg.eta_bins
    ieta = np.floor((muons.eta - lo) / (hi - lo) * n_eta).astype(np.int64)
    region = (ieta == eta_bin) & (muons.charge == charge)
    pt = scale_curvature(muons.pt, region, scale)
    evt = muons.event_index
    met, phi = a["MET_pt"].astype(np.float64), a["MET_phi"].astype(np.float64)
    met_x = met * np.cos(phi) - np.bincount(evt, (pt - muons.pt) * np.cos(muons.phi), len(muons.counts))
    met_y = met * np.sin(phi) - np.bincount(evt, (pt - muons.pt) * np.sin(muons.phi), len(muons.counts))
    sel = select_events(muons.with_pt(pt), electrons, np.hypot(met_x, met_y), np.arctan2(met_y, met_x), cfg)
    nominal = select_events(muons, electrons, met, phi, cfg)
    in_region = np.bincount(evt[region], minlength=len(muons.counts)) > 0
    ambiguous = int(np.count_nonzero(in_region & (muons.counts >= 2) & (sel.mask | nominal.mask)))
    sr = sel.in_signal_region(cfg)
    counts, _ = np.histogramdd(
        (sel.eta[sr], sel.pt[sr], sel.charge[sr]),
        bins=(np.linspace(lo, hi, n_eta + 1), np.linspace(cfg.pt_bins[1], cfg.pt_bins[2], cfg.pt_bins[0] + 1), [-2, 0, 2]),
    )
    return counts.ravel(), ambiguous


@pytest.mark.parametrize("dataset", ["W", "Z"])
def test_momentum_scale_per_eta_bin_and_charge_against_an_exact_reselection(toys: Any, tmp_path: Path, dataset: str) -> None:
    """The workspace takes nuisance (eta bin, charge) from the variation of every muon, in the bins of its selected
    muon; the exact variation scales only the muons of that bin and charge. They can differ only by the events
    with a second muon (Z's lost muon, an extra soft one), whose change moves the MET or crosses the veto
    threshold: at most one entry moved in each, counted in the reference."""
    cfg = _config(pileup=False, prefire=False, qcd_scale=False, pdf=False)  # unit weights
    out = _process({dataset: toys[dataset]}, cfg, corrections=None)
    path = tmp_path / "ws.hdf5"
    kind = "signal" if dataset == "W" else "background"
    build_workspace(out, path, samples={dataset: Sample(kind, 1.0)}, config=cfg, lumi=1.0, systematics=["muon"])
    ws = read_workspace(path)
    scale = float(out[dataset]["sumw_sign"])  # the templates are normalised to xsec x lumi = 1
    procs = [p for p in ws.procs if not p.endswith("_unmatched")]
    nominal = ws.norm[:, [ws.procs.index(p) for p in procs]].sum(axis=1) * scale
    reference_nominal, _ = _exact_scale_templates(toys[dataset][0], cfg, 0, 1, 0.0)
    np.testing.assert_allclose(nominal, reference_nominal, rtol=1e-9)
    for eta_bin, charge in ((3, 1), (4, -1), (0, -1)):
        name = SYSTEMATICS["muonScaleStat"].nuisance(eta_group=eta_bin, charge=charge)
        up = sum(ws.norm[:, ws.procs.index(p)] * np.exp(_logk_up(ws, name, p)) for p in procs) * scale
        exact, ambiguous = _exact_scale_templates(toys[dataset][0], cfg, eta_bin, charge, STAT)
        change = np.abs(exact - reference_nominal).sum()
        assert change > 10
        # Only an event with a second muon can differ, and it moves one entry of each.
        assert np.abs(up - exact).sum() <= 2 * ambiguous + 1e-9, (np.abs(up - exact).sum(), ambiguous, change)


# ------------------------------------------------------------------------------------------- normalisations
def test_longitudinal_components_are_constrained_not_free(built: Any) -> None:
    cfg, _, summary, ws = built
    longitudinal = [p for p in summary["signals"] if p.endswith("_0")]
    assert len(longitudinal) == 2 * cfg.n_absy
    assert set(ws.signals) == set(summary["pois"]) == set(summary["signals"]) - set(longitudinal)
    for p in longitudinal:
        name = f"longitudinal_{p[:-2]}"
        i, j = ws.systs.index(name), ws.procs.index(p)
        filled = ws.norm[:, j] > 0
        np.testing.assert_allclose(ws.logk_avg[filled, j, i], math.log(1.3), rtol=1e-14)
        others = np.delete(ws.logk_avg[:, :, i], j, axis=1)
        assert np.all(others == 0.0)


def test_fake_estimate_normalisation_and_shape_terms(built: Any) -> None:
    cfg, _, _, ws = built
    eta, pt, q = _bin_labels(cfg)
    j = ws.procs.index("Fakes")
    filled = ws.norm[:, j] > 0
    group = eta // (cfg.eta_bins[0] // cfg.fake_eta_groups)
    for g, charge in ((1, -1), (3, 1)):
        got = _logk_up(ws, SYSTEMATICS["fakeNormEta"].nuisance(eta_group=g, charge=charge), "Fakes")
        inside = (group == g) & (q == charge) & filled
        np.testing.assert_allclose(got[inside], math.log(1.1), rtol=1e-12)
        assert np.all(got[~inside] == 0.0)
    centres = 26.0 + 5.0 * (pt + 0.5)
    tilt = np.log(1 + 0.1 * (centres - 41.0) / 15.0)
    np.testing.assert_allclose(_logk_up(ws, "fakeShape", "Fakes")[filled], tilt[filled], rtol=1e-12)
    got = _logk_up(ws, "fakeShapeEta_eta2", "Fakes")
    np.testing.assert_allclose(got[filled & (group == 2)], tilt[filled & (group == 2)], rtol=1e-12)
    assert np.all(got[group != 2] == 0.0)
    assert sum(s.startswith("fake") for s in ws.systs) == 1 + 4 * 2 + 1 + 4


def test_model_size_by_group(built: Any) -> None:
    """The nuisances of each group, counted from the configuration."""
    cfg, _, _, ws = built
    n_pdf = 33 - 1  # the toy's LHEPdfWeight members after the nominal
    expected = {
        "eff": 8 * 2 * 3,
        "QCDscale": 3 * len(PTW) * 2 * 3 + 3,  # the signal's, and the undecorrelated ones of the background
        "pdf": n_pdf,
        "muon": 2 + 2 + 8 * 2,  # |eta| region scales and resolutions, the statistical scales
        "fakes": 1 + 4 * 2 + 1 + 4,
        "longitudinal": 2 * cfg.n_absy,
        "pileup": 1,
        "prefire": 1,
        "lumi": 1,
    }
    assert {g: len(ws.syst_groups[g]) for g in expected} == expected
    assert ws.nsyst == sum(expected.values())


def test_event_columns_refuse_w_pt_binned_scales() -> None:
    with pytest.raises(ValueError, match="qcd_ptw_edges=None"):
        WTemplateProcessor(_config(), event_columns=True)


def test_differentiable_model_has_the_full_models_terms(tmp_path: Path) -> None:
    """The cut-dependent expected precision (wfit.fitter.cutopt) with the eta-bin-and-charge terms (efficiency
    modes, statistical momentum scale) and the constrained longitudinal components equals the fitter's Asimov fit
    of the workspace built from the same events with hard cuts."""
    from tests.builders import write_column_toys
    from wfit.fitter import fit_workspace
    from wfit.fitter.cutopt import CutModel, Cuts, scan_by_refit

    cfg = _config(qcd_ptw_edges=None, lepton_pt_min=20.0, pt_bins=(6, 20.0, 56.0), pdf=False)
    _, columns = write_column_toys(tmp_path, 4000, config=cfg)
    samples = {"W": Sample("signal", 20000.0), "Z": Sample("background", 2000.0),
               "QCD": Sample("background", 20000.0, process="QCD")}  # fmt: skip
    model = CutModel(columns, samples, lumi=1.0)
    assert not any(n.endswith("_0") for n in model.signals)
    assert sum(n.startswith("muonScaleStat_") for n in model.nuisances) == 8 * 2
    assert sum(n.startswith("effStatPar") for n in model.nuisances) == 8 * 2 * 3
    cuts = Cuts(40.0, 0.15, 26.0)
    poi = "Wplus_y0_L"
    (sigma_fit,) = scan_by_refit(columns, samples, [cuts], poi, lumi=1.0, workdir=tmp_path)
    res = fit_workspace(tmp_path / "scan0.hdf5", asimov=True)
    assert res.ok and set(res.names) == set(model.names)
    for name in (poi, "Wminus_y1_R"):
        np.testing.assert_allclose(model.expected_uncertainty(cuts, name, None), res.errors[res.names.index(name)],
                                   rtol=1e-9)  # fmt: skip
